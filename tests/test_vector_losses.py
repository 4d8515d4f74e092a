"""Losses on vector targets [N, D] against float64 loops written here: L1/MSE/Huber/Focal-R (mean
over dimensions, per-sample weights), the multi-dimensional BMC, GAI/BNI and SMOGN refusals,
RankSim with Euclidean label distances."""
import math

import numpy as np
import pytest
import torch

from ssir_fast.imbalance import LabelBins
from ssir_fast.losses import (BalancedMSELoss, bmc_loss, bmc_loss_md, bni_loss, focal_l1,
                              focal_mse, gai_loss, ranksim, weighted_huber, weighted_l1,
                              weighted_mse)
from ssir_fast.resample import smogn, smoter


def _data(n=12, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(n, d, generator=g, dtype=torch.float64) * 3
    y = torch.randn(n, d, generator=g, dtype=torch.float64) * 3
    w = torch.rand(n, generator=g, dtype=torch.float64) + 0.1
    return p, y, w


def _loop_loss(p, y, w, elem):
    """mean_i w_i mean_j elem(p_ij - y_ij), by loops."""
    n, d = p.shape
    total = 0.0
    for i in range(n):
        total += w[i] * sum(elem(float(p[i, j] - y[i, j])) for j in range(d)) / d
    return total / n


def _huber(e, beta=1.0):
    return 0.5 * e * e / beta if abs(e) < beta else abs(e) - 0.5 * beta


def _focal(base, beta=0.2, gamma=1.0):
    return lambda e: base(e) * (2 / (1 + math.exp(-beta * abs(e))) - 1) ** gamma


@pytest.mark.parametrize("name,fn,elem", [
    ("l1", weighted_l1, abs),
    ("mse", weighted_mse, lambda e: e * e),
    ("huber", weighted_huber, _huber),
    ("focal_l1", focal_l1, _focal(abs)),
    ("focal_mse", focal_mse, _focal(lambda e: e * e)),
])
def test_supervised_losses_vector(name, fn, elem):
    p, y, w = _data()
    want = _loop_loss(p.numpy(), y.numpy(), w.numpy(), elem)
    assert float(fn(p, y, w)) == pytest.approx(want, rel=1e-12)
    assert float(fn(p, y)) == pytest.approx(_loop_loss(p.numpy(), y.numpy(), np.ones(12), elem),
                                           rel=1e-12)


def _bmc_md_loop(p, y, s2, w=None):
    """Official bmc_loss_md: logits_ij = log N(y_j; p_i, s2 I) (with the constant), CE to the
    diagonal, times 2 s2."""
    n, d = p.shape
    ce = []
    for i in range(n):
        logits = np.array([-0.5 * d * math.log(2 * math.pi * s2)
                           - sum((p[i, k] - y[j, k]) ** 2 for k in range(d)) / (2 * s2)
                           for j in range(n)])
        top = logits.max()
        ce.append(-(logits[i] - top - math.log(np.exp(logits - top).sum())))
    ce = np.array(ce)
    if w is not None:
        ce = ce * w
    return ce.mean() * 2 * s2


def test_bmc_md_matches_loop_and_official_form():
    p, y, w = _data(9, 2)
    s2 = torch.tensor(1.7, dtype=torch.float64)
    want = _bmc_md_loop(p.numpy(), y.numpy(), 1.7)
    assert float(bmc_loss_md(p, y, s2)) == pytest.approx(want, rel=1e-10)
    want_w = _bmc_md_loop(p.numpy(), y.numpy(), 1.7, w.numpy())
    assert float(bmc_loss_md(p, y, s2, w)) == pytest.approx(want_w, rel=1e-10)
    # the official code's form through torch.distributions (identity covariance)
    eye = torch.eye(2, dtype=torch.float64)
    mvn = torch.distributions.MultivariateNormal(p[:, None, :], s2 * eye)
    logits = mvn.log_prob(y[None, :, :])
    official = torch.nn.functional.cross_entropy(logits, torch.arange(9)) * 2 * s2
    torch.testing.assert_close(bmc_loss_md(p, y, s2), official)


def test_bmc_md_one_dim_is_bmc():
    p, y, _ = _data(10, 1)
    s2 = torch.tensor(0.8, dtype=torch.float64)
    torch.testing.assert_close(bmc_loss_md(p, y, s2), bmc_loss(p, y, s2))


def test_balanced_mse_module_vector():
    p, y, w = _data(8, 3)
    mod = BalancedMSELoss("bmc", init_noise_sigma=1.3, learn_sigma=True).double()
    loss = mod(p.requires_grad_(True), y, w)
    assert float(loss.detach()) == pytest.approx(_bmc_md_loop(p.detach().numpy(), y.numpy(), 1.69,
                                                     w.numpy()), rel=1e-6)
    loss.backward()
    assert mod.noise_sigma.grad is not None and torch.isfinite(mod.noise_sigma.grad)
    with pytest.raises(ValueError, match="per-sample weights"):
        bmc_loss_md(p.detach(), y, torch.tensor(1.0), torch.ones_like(y))


def test_gai_bni_refuse_vector_targets():
    p, y, _ = _data(6, 2)
    bins2 = LabelBins((-10.0, -10.0), (1.0, 1.0), (20, 20))
    with pytest.raises(ValueError, match="mode='bni' needs scalar label bins.*2 dimensions"):
        BalancedMSELoss("bni", bins=bins2, train_labels=y)
    with pytest.raises(ValueError, match="vector target.*D = 2.*mode='bmc'"):
        BalancedMSELoss("gai", train_labels=y)
    gmm = {"means": torch.zeros(2, dtype=torch.float64),
           "variances": torch.ones(2, dtype=torch.float64),
           "weights": torch.full((2,), 0.5, dtype=torch.float64)}
    mod = BalancedMSELoss("gai", gmm=gmm)
    with pytest.raises(ValueError, match="mode='gai'.*vector target"):
        mod(p, y)
    with pytest.raises(ValueError, match="mode='gai'.*vector target"):
        gai_loss(p, y, torch.tensor(1.0), gmm)
    with pytest.raises(ValueError, match="mode='bni'.*vector target"):
        bni_loss(p, y, torch.tensor(1.0), torch.zeros(3), torch.full((3,), 1 / 3))


def _ranks_loop(row):
    """(rank + 1) / n with rank 0 for the largest; ties: the later index ranks first."""
    n = len(row)
    order = sorted(range(n), key=lambda j: (row[j], j), reverse=True)
    out = [0.0] * n
    for r, j in enumerate(order):
        out[j] = (r + 1) / n
    return out


def test_ranksim_vector_euclidean_label_distance():
    g = torch.Generator().manual_seed(3)
    feats = torch.randn(7, 5, generator=g, dtype=torch.float64)
    y = torch.randn(7, 2, generator=g, dtype=torch.float64)   # all rows distinct
    got = ranksim(feats, y, gamma=10.0)
    f = feats.numpy() / np.linalg.norm(feats.numpy(), axis=1, keepdims=True)
    yn = y.numpy()
    total = 0.0
    for i in range(7):
        sim = [float(f[i] @ f[j]) for j in range(7)]
        lab = [-math.sqrt(sum((yn[i, k] - yn[j, k]) ** 2 for k in range(2))) for j in range(7)]
        rs, rl = _ranks_loop(sim), _ranks_loop(lab)
        total += sum((a - b) ** 2 for a, b in zip(rs, rl)) / 7
    assert float(got) == pytest.approx(10.0 * total, rel=1e-12)


def test_ranksim_vector_duplicate_rows_once():
    g = torch.Generator().manual_seed(4)
    feats = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([[0., 1.], [0., 1.], [2., 0.], [0., 2.], [2., 0.], [5., 5.]],
                     dtype=torch.float64)
    loss = ranksim(feats, y, generator=torch.Generator().manual_seed(0))
    loss.backward()
    # four distinct label rows: exactly one representative of each duplicated pair gets gradient
    touched = (feats.grad.abs().sum(dim=1) > 0).tolist()
    assert touched[5] and touched[3]
    assert touched[0] != touched[1] and touched[2] != touched[4]


def test_smogn_smoter_refuse_vector_targets():
    x = np.random.default_rng(0).normal(size=(30, 3))
    y = np.random.default_rng(1).normal(size=(30, 2))
    for fn in (smogn, smoter):
        with pytest.raises(ValueError, match=r"vector target of shape \(30, 2\).*D = 2"):
            fn(x, y)
