"""Focal-R, Balanced MSE (BMC / GAI / BNI) and RankSim against float64 formulas written here."""
import math

import numpy as np
import pytest
import torch

import ssir_fast
from ssir_fast.imbalance import LabelBins
from ssir_fast.losses import (BalancedMSELoss, bmc_loss, bni_loss, fit_gmm, focal_l1, focal_mse,
                              gai_loss, ranksim)


def _data(n=16, shape=(1,), seed=0):
    g = torch.Generator().manual_seed(seed)
    p = torch.randn((n,) + shape, generator=g, dtype=torch.float64) * 5
    y = torch.randn((n,) + shape, generator=g, dtype=torch.float64) * 5
    return p, y


@pytest.mark.parametrize("activate", ["sigmoid", "tanh"])
@pytest.mark.parametrize("gamma", [1.0, 2.0])
def test_focal_hand(activate, gamma):
    p = torch.tensor([[1.0], [4.0]], dtype=torch.float64)
    y = torch.tensor([[0.0], [0.0]], dtype=torch.float64)
    act = (lambda a: math.tanh(a)) if activate == "tanh" else (lambda a: 2 / (1 + math.exp(-a)) - 1)
    want_l1 = (1 * act(0.2) ** gamma + 4 * act(0.8) ** gamma) / 2
    want_mse = (1 * act(0.2) ** gamma + 16 * act(0.8) ** gamma) / 2
    assert float(focal_l1(p, y, activate=activate, gamma=gamma)) == pytest.approx(want_l1, rel=1e-12)
    assert float(focal_mse(p, y, activate=activate, gamma=gamma)) == pytest.approx(want_mse, rel=1e-12)
    w = torch.tensor([2.0, 0.5], dtype=torch.float64)
    want_w = (2 * 1 * act(0.2) ** gamma + 0.5 * 4 * act(0.8) ** gamma) / 2
    assert float(focal_l1(p, y, w, activate=activate, gamma=gamma)) == pytest.approx(want_w, rel=1e-12)


def test_focal_dense_per_pixel_weights():
    p, y = _data(4, (1, 3, 3))
    w = torch.rand(4, 1, 3, 3, dtype=torch.float64)
    e = (p - y).abs()
    want = (w * e * (2 * torch.sigmoid(0.2 * e) - 1)).mean()
    torch.testing.assert_close(focal_l1(p, y, w), want)


def test_bmc_formula():
    p, y = _data(8)
    s2 = torch.tensor(2.0, dtype=torch.float64)
    pv, yv = p[:, 0].numpy(), y[:, 0].numpy()
    ce = []
    for i in range(8):
        logits = -(pv[i] - yv) ** 2 / (2 * 2.0)
        ce.append(-(logits[i] - np.log(np.exp(logits - logits.max()).sum()) - logits.max()))
    assert float(bmc_loss(p, y, s2)) == pytest.approx(np.mean(ce) * 4.0, rel=1e-10)


def test_gai_and_bni_formulas():
    p, y = _data(10)
    s2 = torch.tensor(1.5, dtype=torch.float64)
    gmm = {"means": torch.tensor([-3.0, 4.0], dtype=torch.float64),
           "variances": torch.tensor([1.0, 2.0], dtype=torch.float64),
           "weights": torch.tensor([0.3, 0.7], dtype=torch.float64)}
    pv, yv = p[:, 0].numpy(), y[:, 0].numpy()
    tot = 0.0
    for a, b in zip(pv, yv):
        terms = [math.log(w) - 0.5 * math.log(v + 1.5) - (a - m) ** 2 / (2 * (v + 1.5))
                 for m, v, w in zip([-3.0, 4.0], [1.0, 2.0], [0.3, 0.7])]
        tot += (a - b) ** 2 / 3.0 + 0.5 * math.log(1.5) + math.log(sum(math.exp(t) for t in terms))
    assert float(gai_loss(p, y, s2, gmm)) == pytest.approx(tot / 10 * 3.0, rel=1e-10)
    centers = torch.tensor([-5.0, 0.0, 5.0], dtype=torch.float64)
    pw = torch.tensor([0.2, 0.0, 0.8], dtype=torch.float64)  # an empty bin contributes nothing
    tot = 0.0
    for a, b in zip(pv, yv):
        bal = math.log(0.2 * math.exp(-(a + 5) ** 2 / 3.0) + 0.8 * math.exp(-(a - 5) ** 2 / 3.0))
        tot += (a - b) ** 2 / 3.0 + bal
    assert float(bni_loss(p, y, s2, centers, pw)) == pytest.approx(tot / 10 * 3.0, rel=1e-10)


def test_bni_prior_sits_on_labels_k_as_official():
    """BalancedMSE's imdb-wiki-dir `get_bucket_info`, transcribed: bucket_centers = the integer
    labels k, bucket_weights = count_k / total. The module's BNI loss equals bni_loss on that
    prior (and not on the bin centres k + 0.5)."""
    ages = np.array([20, 20, 21, 23, 23, 23, 40.7, 0.2])
    counts = {k: 0 for k in range(121)}
    for a in ages:
        counts[int(a)] += 1
    centers = torch.tensor([float(k) for k in counts], dtype=torch.float64)
    weights = torch.tensor([v for v in counts.values()], dtype=torch.float64) / len(ages)
    mod = BalancedMSELoss("bni", init_noise_sigma=1.3, learn_sigma=False, bins=LabelBins.dir_age(),
                          train_labels=ages).double()
    torch.testing.assert_close(mod.bucket_centers, centers)
    torch.testing.assert_close(mod.bucket_weights, weights)
    p = torch.tensor([[19.6], [22.4], [30.0]], dtype=torch.float64)
    y = torch.tensor([[20.0], [23.0], [41.0]], dtype=torch.float64)
    s2 = torch.tensor(1.3 ** 2, dtype=torch.float64)
    ref = bni_loss(p, y, s2, centers, weights)
    torch.testing.assert_close(mod(p, y), ref)
    assert abs(float(bni_loss(p, y, s2, centers + 0.5, weights)) - float(ref)) > 1e-3


def test_fit_gmm_recovers_mixture():
    rng = np.random.default_rng(0)
    y = np.concatenate([rng.normal(20, 2, 3000), rng.normal(60, 5, 1000)])
    g = fit_gmm(y, n_components=2)
    order = torch.argsort(g["means"])
    torch.testing.assert_close(g["means"][order], torch.tensor([20.0, 60.0], dtype=torch.float64), atol=0.5, rtol=0)
    torch.testing.assert_close(g["weights"][order], torch.tensor([0.75, 0.25], dtype=torch.float64), atol=0.02, rtol=0)
    torch.testing.assert_close(g["variances"][order].sqrt(), torch.tensor([2.0, 5.0], dtype=torch.float64), atol=0.3, rtol=0)


@pytest.mark.parametrize("mode", ["bmc", "gai", "bni"])
def test_balanced_mse_module_learns_sigma_and_plugs_into_ssir(mode):
    torch.manual_seed(0)
    train_y = torch.randn(200) * 10 + 30
    loss = BalancedMSELoss(mode, init_noise_sigma=2.0, bins=LabelBins.from_labels(train_y, 1.0),
                           train_labels=train_y)
    model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    x, y = torch.randn(16, 3), train_y[:16]
    res = ssir_fast.SSIRLoss(base_loss=loss)(model, x, y, weight=torch.rand(16))
    res.loss.backward()
    assert loss.noise_sigma.grad is not None and torch.isfinite(loss.noise_sigma.grad)
    fixed = BalancedMSELoss(mode, learn_sigma=False, bins=LabelBins.from_labels(train_y, 1.0),
                            train_labels=train_y)
    assert not any(True for _ in fixed.parameters())


def test_bmc_rejects_huge_dense_and_bad_args():
    with pytest.raises(ValueError, match="bni"):
        bmc_loss(torch.zeros(2, 1, 100, 100), torch.zeros(2, 1, 100, 100), torch.tensor(1.0))
    with pytest.raises(ValueError, match="train_labels"):
        BalancedMSELoss("gai")
    with pytest.raises(ValueError, match="mode"):
        BalancedMSELoss("xyz")


# ---- RankSim: a literal float64 transcription of Gong et al. 2022 (batchwise_ranking_regularizer)

def _ref_rank_normalised(row):
    """rank(seq) = argsort(argsort(seq) flipped): 0 for the largest value (ties: the later index
    first, as the paper's code on CPU, whose sort is stable); normalised (rank + 1) / n."""
    a = np.asarray(row, dtype=np.float64)
    order = np.argsort(a, kind="stable")[::-1]
    return (np.argsort(order, kind="stable") + 1.0) / a.size


class _RefTrueRanker(torch.autograd.Function):
    """Blackbox combinatorial-solver differentiation of the ranking (Vlastelica et al. 2020):
    forward r = rank(s); backward with incoming g: grad_s = -(rank(s) - rank(s + lam g)) / lam
    (the paper adds 1e-8 to lam)."""

    @staticmethod
    def forward(ctx, seq, lam):
        ctx.lam = lam
        ctx.save_for_backward(seq)
        return torch.from_numpy(_ref_rank_normalised(seq.numpy()))

    @staticmethod
    def backward(ctx, g):
        (seq,) = ctx.saved_tensors
        r = _ref_rank_normalised(seq.numpy())
        r_prime = _ref_rank_normalised((seq + ctx.lam * g).numpy())
        return torch.from_numpy(-(r - r_prime) / (ctx.lam + 1e-8)), None


def _ranksim_reference(feat, y, gamma=100.0, lam=2.0):
    """gamma * sum_i MSE(rank(S_i), rank(-|y_i - y|)), S_ij = cos(x_i, x_j), one row at a time;
    `y` holds distinct labels (the caller picks one sample per label). Float64, autograd through
    the cosine similarities."""
    x = feat.reshape(feat.shape[0], -1)
    z = x / x.norm(dim=1, keepdim=True)
    xxt = z @ z.t()
    loss = torch.zeros((), dtype=torch.float64)
    for i in range(len(y)):
        label_ranks = torch.from_numpy(_ref_rank_normalised(-np.abs(y[i] - y)))
        feature_ranks = _RefTrueRanker.apply(xxt[i], lam)
        loss = loss + torch.mean((feature_ranks - label_ranks) ** 2)
    return gamma * loss


def _value_and_grad(fn, feat, *args, **kw):
    f = feat.clone().requires_grad_(True)
    v = fn(f, *args, **kw)
    v.backward()
    return float(v.detach()), f.grad


def test_ranksim_blackbox_gradient_sign_by_hand():
    """seq [0, 1], g = [1, 0] (the loss grows with element 0's rank): rank [1, 1/2], rank(seq + 2g)
    = [1/2, 1], grad = -([1, 1/2] - [1/2, 1]) / 2 = [-1/4, 1/4]: descent raises element 0."""
    from ssir_fast.losses import _BlackboxRank
    s = torch.tensor([[0.0, 1.0]], dtype=torch.float64, requires_grad=True)
    r = _BlackboxRank.apply(s, 2.0)
    assert r.tolist() == [[1.0, 0.5]]
    r.backward(torch.tensor([[1.0, 0.0]], dtype=torch.float64))
    torch.testing.assert_close(s.grad, torch.tensor([[-0.25, 0.25]], dtype=torch.float64),
                               rtol=1e-7, atol=0)


@pytest.mark.parametrize("labels", ["continuous", "integer_ties"])
@pytest.mark.parametrize("lam", [2.0, 0.5])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_ranksim_value_and_gradient_vs_paper(labels, lam, dtype):
    g = torch.Generator().manual_seed(3)
    n = 24
    if labels == "continuous":   # no ties anywhere
        y = torch.rand(n, generator=g, dtype=torch.float64) * 50
    else:                        # distinct integer ages: many ties |y_i - y_j| = |y_i - y_k|
        y = torch.randperm(40, generator=g)[:n].double()
    feat = torch.randn(n, 3, 4, generator=g, dtype=torch.float64)  # flattened like the paper
    v_ref, g_ref = _value_and_grad(_ranksim_reference, feat, y.numpy(), 100.0, lam)
    v, grad = _value_and_grad(ranksim, feat.to(dtype), y.to(dtype), gamma=100.0, lam=lam)
    assert v == pytest.approx(v_ref, rel=1e-6 if dtype == torch.float32 else 1e-12)
    assert float(g_ref.abs().sum()) > 0
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad.double(), g_ref, **tol)


def test_ranksim_duplicate_labels_one_representative_each():
    """With duplicate labels the regulariser runs on one random sample per label. Duplicates are
    given identical features here, so the value is the reference on the unique labels whatever
    the pick, and each label's gradient (summed over its copies) is the reference gradient."""
    g = torch.Generator().manual_seed(5)
    uniq = torch.tensor([3.0, 7.0, 8.0, 12.0, 20.0, 21.0, 33.0], dtype=torch.float64)
    base = torch.randn(uniq.numel(), 6, generator=g, dtype=torch.float64)
    copies = torch.tensor([0, 1, 1, 2, 3, 3, 3, 4, 5, 6, 6, 0])
    feat, y = base[copies], uniq[copies]
    v_ref, g_ref = _value_and_grad(_ranksim_reference, base, uniq.numpy())
    for seed in range(4):
        v, grad = _value_and_grad(ranksim, feat, y, generator=torch.Generator().manual_seed(seed))
        assert v == pytest.approx(v_ref, rel=1e-12)
        summed = torch.zeros_like(base).index_add_(0, copies, grad)
        torch.testing.assert_close(summed, g_ref, rtol=1e-10, atol=1e-12)
        # only one copy per label receives a gradient
        assert int((grad.abs().sum(1) > 0).sum()) <= uniq.numel()
    a = ranksim(feat, y, generator=torch.Generator().manual_seed(1))
    b = ranksim(feat, y, generator=torch.Generator().manual_seed(1))
    assert float(a.detach()) == float(b.detach())


def test_ssir_loss_refuses_targets_of_another_batch_shape():
    """A [4, 2] target for a model output of [8, 1] has the right number of elements but pairs
    labels with the wrong samples: refused. [8] and [8, 1] targets for [8, 1] outputs are fine."""
    model = torch.nn.Linear(3, 1)
    x = torch.randn(8, 3)
    loss = ssir_fast.SSIRLoss()
    with pytest.raises(ValueError, match=r"y has shape \(4, 2\) but the model's output has shape "
                                         r"\(8, 1\)"):
        loss(model, x, torch.zeros(4, 2))
    for y in (torch.zeros(8), torch.zeros(8, 1)):
        assert torch.isfinite(loss(model, x, y).loss)


@pytest.mark.parametrize("loss", [
    lambda p, y: ssir_fast.losses.weighted_l1(p, y),
    lambda p, y: ssir_fast.losses.weighted_mse(p, y),
    lambda p, y: focal_l1(p, y), lambda p, y: focal_mse(p, y),
    lambda p, y: BalancedMSELoss("bmc")(p, y)], ids=["l1", "mse", "focal_l1", "focal_mse", "bmc"])
def test_losses_widen_bf16_predictions_and_keep_label_precision(loss):
    # a bf16 prediction (autocast) against float32 labels: computed in float32 with the labels as
    # given, equal to the same loss on the widened prediction (bf16 math would round 301 to 300)
    pred = torch.tensor([[300.0], [298.0], [305.0]], dtype=torch.bfloat16, requires_grad=True)
    y = torch.tensor([[301.0], [299.5], [303.25]])
    out = loss(pred, y)
    assert out.dtype == torch.float32
    ref_pred = pred.detach().float().requires_grad_(True)
    ref = loss(ref_pred, y)
    torch.testing.assert_close(out, ref)
    out.backward(); ref.backward()
    torch.testing.assert_close(pred.grad.float(), ref_pred.grad.to(torch.bfloat16).float())
    low = loss(pred.detach(), y.to(torch.bfloat16))   # both bf16: still float32 math
    assert low.dtype == torch.float32
