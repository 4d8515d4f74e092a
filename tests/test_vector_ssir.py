"""SSIRLoss with vector outputs [N, D] against Algorithm 1 transcribed here with loops over the
samples and the output dimensions, in float64: exact mode, n_steps, subset, auto-epsilon, both
similarity rules (Definition 1), per-dimension bin widths and noise."""
import math

import pytest
import torch
from torch import nn

from ssir_fast import SSIRLoss
from ssir_fast.imbalance import LabelBins

WIDTHS = (0.5, 2.0)


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 12), nn.Tanh(), nn.Linear(12, 2)).double()


def _dist(kind, a, b, beta=1.0):
    """mean over the output dimensions, one loop step per dimension."""
    total = 0.0
    for j in range(a.shape[0]):
        e = a[j] - b[j]
        if kind == "l1":
            total = total + e.abs()
        elif kind == "mse":
            total = total + e * e
        else:
            small = float(e.detach().abs()) < beta
            total = total + (0.5 * e * e / beta if small else e.abs() - 0.5 * beta)
    return total / a.shape[0]


def _unit_step(model, x_i, point, target, eps_i, kind):
    """x_i + eps_i * g / ||g||, g = grad of D(f(point), target) at point (one sample)."""
    p = point.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(_dist(kind, model(p[None])[0], target), p)
    norm = math.sqrt(sum(float(v) ** 2 for v in g.reshape(-1)))
    return (x_i + eps_i * g / norm).detach() if norm > 0 else x_i.detach(), norm


def algorithm1(model, x, y, noise, widths, epsilon, lam, n_steps=2, kind="l1", weight=None,
               rows=None, rho=0.5, delta=None, similarity="dims"):
    """Algorithm 1 for vector outputs, literally: one sample at a time."""
    n, d = y.shape
    delta = widths if delta is None else delta
    with torch.no_grad():
        y_tilde = [model(x[i:i + 1])[0] + noise[i] for i in range(n)]
    rows = list(range(n)) if rows is None else [int(i) for i in rows]
    sup = 0.0
    for i in range(n):
        pred_i = model(x[i:i + 1])[0]
        w = 1.0 if weight is None else weight[i]
        sup = sup + w * sum((pred_i[j] - y[i, j]).abs() for j in range(d)) / d
    sup = sup / n
    cons, x_adv, similar, change, radii = 0.0, [], [], 0.0, []
    for i in rows:
        x_i = x[i]
        # step 1 from the clean point; auto: eps_i = rho * min_j delta_j / ||g1_i||
        _, g1 = _unit_step(model, x_i, x_i, y_tilde[i], 1.0, kind)
        if epsilon == "auto":
            tight = delta if similarity == "euclidean" else min(delta)
            eps_i = rho * tight / g1 if g1 > 0 else 0.0
        else:
            eps_i = epsilon
        radii.append(eps_i)
        point = x_i
        for _ in range(n_steps):
            point, _ = _unit_step(model, x_i, point, y_tilde[i], eps_i, kind)
        x_adv.append(point)
        out = model(point[None])[0]
        cons = cons + _dist(kind, out, y_tilde[i])
        with torch.no_grad():
            clean = model(x_i[None])[0]
            diff = [float(out[j] - clean[j]) for j in range(d)]
            change += sum(abs(diff[j]) / widths[j] for j in range(d)) / d
            if similarity == "euclidean":
                similar.append(math.sqrt(sum(v * v for v in diff)) < delta)
            else:
                elem = [float(_dist(kind, out[j:j + 1], clean[j:j + 1])) for j in range(d)]
                similar.append(all(elem[j] < delta[j] for j in range(d)))
    k = len(rows)
    loss = sup + lam * cons / k
    return dict(loss=loss, x_adv=torch.stack(x_adv), similarity=sum(similar) / k,
                output_change=change / k, radius=radii)


def _batch(n=10, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g, dtype=torch.float64)
    y = torch.randn(n, 2, generator=g, dtype=torch.float64) * torch.tensor([1.0, 4.0],
                                                                           dtype=torch.float64)
    w = torch.rand(n, generator=g, dtype=torch.float64) + 0.5
    noise = (torch.rand(n, 2, generator=g, dtype=torch.float64) * 2 - 1) * torch.tensor(
        WIDTHS, dtype=torch.float64)
    return x, y, w, noise


def _compare(res, fast_model, ref, ref_model):
    ref["loss"].backward()
    res.loss.backward()
    torch.testing.assert_close(res.loss, ref["loss"], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(res.x_adv, ref["x_adv"], rtol=1e-12, atol=1e-14)
    for a, b in zip(fast_model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-13)
    assert float(res.similarity) == pytest.approx(ref["similarity"], abs=1e-7)
    assert float(res.output_change) == pytest.approx(ref["output_change"], rel=1e-6)
    want = torch.tensor(ref["radius"], dtype=torch.float64)
    torch.testing.assert_close(res.radius.double(), want, rtol=1e-6, atol=0)


@pytest.mark.parametrize("kind", ["l1", "mse", "huber"])
@pytest.mark.parametrize("n_steps", [1, 2])
def test_vector_exact_equals_algorithm1(kind, n_steps):
    x, y, w, noise = _batch()
    fast, ref_model = mlp(), mlp()
    res = SSIRLoss(bin_width=WIDTHS, epsilon=0.3, lam=0.7, distance=kind, n_steps=n_steps)(
        fast, x, y, weight=w, noise=noise)
    ref = algorithm1(ref_model, x, y, noise, WIDTHS, 0.3, 0.7, n_steps, kind, w)
    _compare(res, fast, ref, ref_model)
    assert 0.0 < ref["similarity"] <= 1.0 or ref["similarity"] == 0.0


@pytest.mark.parametrize("similarity,delta", [("dims", None), ("dims", (0.05, 0.4)),
                                              ("euclidean", None), ("euclidean", 0.2)])
def test_vector_auto_epsilon_and_similarity_rules(similarity, delta):
    x, y, w, noise = _batch(12, seed=2)
    fast, ref_model = mlp(3), mlp(3)
    res = SSIRLoss(bin_width=WIDTHS, epsilon="auto", rho=0.9, lam=1.0, delta=delta,
                   similarity=similarity)(fast, x, y, weight=w, noise=noise)
    ref_delta = delta if delta is not None else (min(WIDTHS) if similarity == "euclidean"
                                                 else WIDTHS)
    ref = algorithm1(ref_model, x, y, noise, WIDTHS, "auto", 1.0, 2, "l1", w, rho=0.9,
                     delta=ref_delta, similarity=similarity)
    _compare(res, fast, ref, ref_model)


def test_similarity_rules_differ_on_a_known_output_change():
    # a large radius: some pairs leave their bins; the box (0.5, 2.0) accepts more pairs than
    # the ball of radius 0.5, and a ball of radius 5 accepts them all
    x, y, w, noise = _batch(12, seed=5)
    fast, ref_model = mlp(4), mlp(4)
    rates = []
    for rule, delta in (("dims", None), ("euclidean", None), ("euclidean", 5.0)):
        res = SSIRLoss(bin_width=WIDTHS, epsilon=2.0, similarity=rule, delta=delta)(
            fast, x, y, noise=noise)
        ref = algorithm1(ref_model, x, y, noise, WIDTHS, 2.0, 0.1, delta=delta or (
            min(WIDTHS) if rule == "euclidean" else WIDTHS), similarity=rule)
        assert float(res.similarity) == pytest.approx(ref["similarity"], abs=1e-7)
        rates.append(ref["similarity"])
    assert 0 < rates[1] < rates[0] < rates[2] == 1.0


def test_vector_subset_equals_algorithm1_on_the_drawn_rows():
    x, y, w, noise = _batch(16, seed=3)
    bins = LabelBins((-3.0, -12.0), WIDTHS, (12, 12))
    counts = bins.counts(y)
    fast, ref_model = mlp(5), mlp(5)
    loss = SSIRLoss(bin_width=WIDTHS, epsilon=0.2, lam=0.5, subset=0.5, bins=bins,
                    bin_counts=counts)
    torch.manual_seed(0)
    res = loss(fast, x, y, weight=w, noise=noise)
    assert res.index.numel() == 8
    ref = algorithm1(ref_model, x, y, noise, WIDTHS, 0.2, 0.5, 2, "l1", w, rows=res.index)
    _compare(res, fast, ref, ref_model)
    # the rarity of a row is 1 / the training count of its joint (2-D) bin
    want = torch.tensor([1.0 / counts[bins.index(y[i:i + 1].numpy())[0]] for i in range(16)])
    torch.testing.assert_close(loss.rarity(y), want.float())


def test_noise_drawn_per_dimension_within_its_bin_width():
    torch.manual_seed(7)
    model = nn.Linear(5, 2).double()
    x = torch.randn(4000, 5, dtype=torch.float64)
    res = SSIRLoss(bin_width=WIDTHS, epsilon=0.0)(model, x, torch.zeros(4000, 2,
                                                                        dtype=torch.float64))
    with torch.no_grad():
        z = res.target - model(x)
    for j, wj in enumerate(WIDTHS):
        assert float(z[:, j].abs().max()) <= wj
        assert float(z[:, j].abs().max()) > 0.98 * wj            # fills [-w_j, w_j]
        assert float(z[:, j].abs().mean()) == pytest.approx(wj / 2, rel=0.05)   # uniform


def test_one_width_for_every_dimension_and_scalar_unchanged():
    x, y, w, noise = _batch()
    fast, ref_model = mlp(6), mlp(6)
    res = SSIRLoss(bin_width=0.5, epsilon=0.3)(fast, x, y, weight=w, noise=noise)
    ref = algorithm1(ref_model, x, y, noise, (0.5, 0.5), 0.3, 0.1, weight=w)
    _compare(res, fast, ref, ref_model)
    # a one-entry sequence is the scalar rule
    assert SSIRLoss(bin_width=[0.5]).bin_width == 0.5


def test_vector_bad_arguments():
    model = mlp()
    x, y, _, _ = _batch()
    with pytest.raises(ValueError, match=r"2 dimensions.*\[N, 2\]"):
        SSIRLoss(bin_width=(1.0, 1.0))(nn.Linear(5, 3).double(), x, torch.zeros(10, 3,
                                                                               dtype=torch.float64))
    with pytest.raises(ValueError, match="similarity must be 'dims' or 'euclidean'"):
        SSIRLoss(similarity="box")
    with pytest.raises(ValueError, match="one number with similarity='euclidean'"):
        SSIRLoss(bin_width=WIDTHS, similarity="euclidean", delta=(1.0, 2.0))
    with pytest.raises(ValueError, match=r"delta must have one entry per dimension \(2\)"):
        SSIRLoss(bin_width=WIDTHS, delta=(1.0, 2.0, 3.0))
    with pytest.raises(ValueError, match=r"bin_width\[1\] must be finite and > 0"):
        SSIRLoss(bin_width=(1.0, -1.0))
    with pytest.raises(ValueError, match=r"give 2 dimensions.*\[N, 2\], got \(10, 1\)"):
        SSIRLoss(delta=(0.1, 0.2))(nn.Linear(5, 1).double(), x, y[:, :1])
    assert SSIRLoss(bin_width=WIDTHS)(model, x, y).loss.isfinite()


@pytest.mark.parametrize("mode", ["clean", "eps0", "mse-clean"])
def test_vector_ablation_modes_equal_algorithm1(mode):
    # target="clean" is z = 0 (Eq. 13); epsilon=0 keeps x~ = x (the output-noise ablation)
    x, y, w, noise = _batch(8, seed=9)
    fast, ref_model = mlp(7), mlp(7)
    kind = "mse" if mode == "mse-clean" else "l1"
    if mode == "eps0":
        res = SSIRLoss(bin_width=WIDTHS, epsilon=0.0, lam=1.0)(fast, x, y, weight=w, noise=noise)
        ref = algorithm1(ref_model, x, y, noise, WIDTHS, 0.0, 1.0, weight=w)
        assert torch.equal(res.x_adv, x)
    else:
        res = SSIRLoss(bin_width=WIDTHS, epsilon=0.2, lam=1.0, target="clean", distance=kind)(
            fast, x, y, weight=w)
        ref = algorithm1(ref_model, x, y, torch.zeros_like(noise), WIDTHS, 0.2, 1.0, kind=kind,
                         weight=w)
    _compare(res, fast, ref, ref_model)


def test_vector_bf16_perturbation_passes_stay_within_the_radius(monkeypatch):
    import ssir_fast.ssir_step as step_module   # bf16 passes whatever the CPU
    monkeypatch.setattr(step_module, "_native_cpu_kernels", lambda dtype: True)
    x, y, w, noise = _batch(16, seed=11)
    model = mlp(8).float()
    xf, yf, zf = x.float(), y.float(), noise.float()
    exact = SSIRLoss(bin_width=WIDTHS, epsilon=0.3)(model, xf, yf, noise=zf)
    fast = SSIRLoss(bin_width=WIDTHS, epsilon=0.3, perturb_autocast=torch.bfloat16)(
        model, xf, yf, noise=zf)
    moved = (fast.x_adv - xf).norm(dim=1)
    assert torch.all(moved <= 0.3 * (1 + 1e-5)) and torch.all(moved > 0)
    # the direction comes from bf16 passes: the consistency term stays close to the exact one
    got, want = float(fast.consistency.detach()), float(exact.consistency.detach())
    assert got == pytest.approx(want, rel=0.05)
