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


def _ranksim_reference(feat, y, gamma, lam):
    """Per-row loop as in the RankSim paper (no duplicate labels here)."""
    z = torch.nn.functional.normalize(feat, dim=1)
    s = (z @ z.t()).detach()
    n = len(y)
    tot = 0.0
    for i in range(n):
        def rank(v):
            order = np.argsort(-v, kind="stable")
            r = np.empty(n)
            r[order] = np.arange(n)
            return (r + 1) / n
        tot += np.mean((rank(s[i].numpy()) - rank(-np.abs(y[i] - y))) ** 2)
    return gamma * tot


def test_ranksim_value_and_gradient():
    torch.manual_seed(0)
    f = torch.randn(12, 6, dtype=torch.float64, requires_grad=True)
    y = torch.arange(12, dtype=torch.float64) * 1.5
    val = ranksim(f, y)
    assert float(val.detach()) == pytest.approx(_ranksim_reference(f.detach(), y.numpy(), 100.0, 2.0), rel=1e-12)
    val.backward()
    assert f.grad is not None and float(f.grad.abs().sum()) > 0
    # duplicate labels: one representative per label, reproducible with a generator
    y2 = torch.tensor([0.0, 0.0, 1.0, 2.0, 2.0, 3.0] * 2, dtype=torch.float64)
    a = ranksim(f, y2, generator=torch.Generator().manual_seed(1))
    b = ranksim(f, y2, generator=torch.Generator().manual_seed(1))
    assert float(a.detach()) == float(b.detach())
