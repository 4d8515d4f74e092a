"""SSIRLoss: same loss and gradients as the literal Algorithm 1, model state left untouched."""
import copy

import pytest
import torch
from torch import nn

from ssir_fast import SSIRLoss
from ssir_fast.losses import weighted_mse
from ssir_fast.reference import naive_ssir_loss


def mlp(dtype=torch.float64):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(),
                         nn.Linear(16, 1)).to(dtype)


class SmallCNN(nn.Module):
    """Conv + BatchNorm + Dropout: the state SSIR must not disturb."""

    def __init__(self, dense=False):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.Dropout(0.3))
        self.dense = dense
        self.head = nn.Conv2d(8, 1, 1) if dense else nn.Linear(8, 1)

    def forward(self, x):
        h = self.features(x)
        return self.head(h) if self.dense else self.head(h.mean(dim=(2, 3)))


def _grads(model):
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("distance", ["l1", "mse", "huber"])
@pytest.mark.parametrize("n_steps", [1, 2, 3])
def test_fast_path_equals_literal_algorithm(distance, n_steps):
    torch.manual_seed(1)
    x = torch.randn(32, 6, dtype=torch.float64).clamp(-1.9, 1.9)  # inside the clip range
    y = torch.randn(32, dtype=torch.float64) * 3
    w = torch.rand(32, dtype=torch.float64) + 0.5
    noise = (torch.rand(32, 1, dtype=torch.float64) * 2 - 1)
    fast_model, naive_model = mlp(), mlp()
    kw = dict(bin_width=1.0, epsilon=0.05, lam=0.7, distance=distance, n_steps=n_steps,
              clip_min=-2.0, clip_max=2.0)
    res = SSIRLoss(**kw)(fast_model, x, y, weight=w, noise=noise)
    res.loss.backward()
    loss_ref, pred_ref, x_adv_ref = naive_ssir_loss(naive_model, x, y, weight=w, noise=noise, **kw)
    loss_ref.backward()
    assert torch.allclose(res.loss, loss_ref, rtol=1e-12, atol=1e-14)
    assert torch.allclose(res.x_adv, x_adv_ref, rtol=1e-12, atol=1e-14)
    for a, b in zip(_grads(fast_model), _grads(naive_model)):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-13)
    # The perturbation is real and bounded: 0 < ||x~ - x|| <= eps for every sample.
    r = (res.x_adv - x).norm(dim=1)
    assert torch.all(r <= 0.05 * (1 + 1e-9)) and torch.all(r > 0)


def test_dense_output_equals_literal_algorithm():
    torch.manual_seed(2)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, 1, 1)).double()
    ref_net = copy.deepcopy(net)
    x = torch.randn(4, 3, 6, 5, dtype=torch.float64)
    y = torch.rand(4, 1, 6, 5, dtype=torch.float64) * 5
    noise = (torch.rand(4, 1, 6, 5, dtype=torch.float64) * 2 - 1) * 0.1
    kw = dict(bin_width=0.1, epsilon=5e-3, lam=2.5, distance="mse", base_loss=weighted_mse)
    res = SSIRLoss(**kw)(net, x, y, noise=noise)
    res.loss.backward()
    loss_ref, _, _ = naive_ssir_loss(ref_net, x, y, noise=noise, **kw)
    loss_ref.backward()
    assert torch.allclose(res.loss, loss_ref, rtol=1e-12)
    for a, b in zip(_grads(net), _grads(ref_net)):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-13)


def test_leaves_batchnorm_buffers_and_rng_as_clean_forward():
    torch.manual_seed(3)
    model = SmallCNN().train()
    twin = copy.deepcopy(model)
    x, y = torch.randn(8, 3, 12, 12), torch.randn(8)

    torch.manual_seed(123)
    res = SSIRLoss(epsilon=1e-2, lam=1.0)(model, x, y)
    rng_after_ssir = torch.get_rng_state()
    # Nothing accumulated into parameter gradients by the perturbation passes.
    assert all(p.grad is None for p in model.parameters())
    res.loss.backward()  # the clean graph is still valid (no in-place buffer restore)

    torch.manual_seed(123)
    pred = twin(x)                         # the clean forward alone...
    torch.rand_like(pred)                  # ...and the noise draw
    assert torch.equal(torch.get_rng_state(), rng_after_ssir)
    assert torch.allclose(pred, res.pred)  # same dropout mask as the clean forward
    for (name, a), (_, b) in zip(model.named_buffers(), twin.named_buffers()):
        assert torch.equal(a, b), name
    assert int(model.features[1].num_batches_tracked) == 1


def test_dropout_masks_replayed_in_perturbation_passes():
    # With epsilon = 0, x~ = x and the same dropout mask: consistency is exactly |z|.
    model = SmallCNN().train()
    x, y = torch.randn(6, 3, 8, 8), torch.randn(6)
    noise = torch.full((6, 1), 0.25)
    res = SSIRLoss(epsilon=0.0, lam=1.0)(model, x, y, noise=noise)
    assert torch.allclose(res.consistency, torch.tensor(0.25), atol=1e-6)
    assert res.similarity == 1.0


def test_dense_cnn_with_batchnorm_trains():
    model = SmallCNN(dense=True).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(4, 3, 10, 10), torch.rand(4, 1, 10, 10)
    loss_fn = SSIRLoss(bin_width=0.1, epsilon=5e-4, lam=1.0, distance="mse",
                       clip_min=torch.tensor([-1.0, -1.0, -1.0]), clip_max=torch.ones(3))
    for _ in range(2):
        opt.zero_grad()
        res = loss_fn(model, x, y)
        res.loss.backward()
        opt.step()
    assert torch.isfinite(res.loss) and 0 <= float(res.similarity) <= 1
    assert res.x_adv.min() >= -1 and res.x_adv.max() <= 1


def test_bf16_autocast():
    model = SmallCNN().train()
    x, y = torch.randn(4, 3, 8, 8), torch.randn(4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        res = SSIRLoss(epsilon=1e-2)(model, x, y)
    res.loss.backward()
    assert torch.isfinite(res.loss)
    assert res.x_adv.dtype == torch.float32
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_compiled_model():
    torch._dynamo.reset()
    model = SmallCNN().train()
    compiled = torch.compile(model, backend="aot_eager")
    x, y = torch.randn(4, 3, 8, 8), torch.randn(4)
    loss_fn = SSIRLoss(epsilon=1e-2, lam=1.0)
    before = [b.clone() for b in model.buffers()]
    compiled(x)  # the reference state: one clean forward
    after_clean = [b.clone() for b in model.buffers()]
    for b, v in zip(model.buffers(), before):
        b.copy_(v)
    res = loss_fn(compiled, x, y, noise=torch.zeros(4, 1))
    res.loss.backward()
    assert torch.isfinite(res.loss)
    for b, v in zip(model.buffers(), after_clean):
        assert torch.equal(b, v)


def test_compiled_model_second_input_shape():
    # a compiled model recompiles for a new batch size (a partial last batch, a sanity-check
    # batch): the recompiled backward must not donate the buffers step 1 keeps
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
    compiled = torch.compile(model, backend="aot_eager")
    loss_fn = SSIRLoss(bin_width=1.0, epsilon=1e-2)
    for n in (32, 20, 7):
        x, y, z = torch.randn(n, 8), torch.randn(n), torch.rand(n, 1) - 0.5
        model.zero_grad()
        loss_fn(compiled, x, y, noise=z).loss.backward()
        got = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        loss_fn(model, x, y, noise=z).loss.backward()
        for a, b in zip(got, (p.grad for p in model.parameters())):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_bf16_autocast_keeps_label_precision():
    # 301 rounds to 300 in bf16: the loss must see 301 (gradient -1 on the bias), in float32
    model = nn.Linear(4, 1)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.fill_(300.0)
    x, y = torch.randn(6, 4), torch.full((6,), 301.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        res = SSIRLoss(bin_width=1.0, epsilon=0.0, lam=0.0)(model, x, y)
    assert res.supervised.dtype == torch.float32
    assert res.supervised.item() == 1.0
    res.loss.backward()
    assert model.bias.grad.item() == -1.0


def test_clean_target_option():
    model = mlp(torch.float32)
    x, y = torch.randn(8, 6), torch.randn(8)
    res = SSIRLoss(target="clean", distance="mse")(model, x, y)
    # Eq. 13: y~ = f(x) exactly; the step-1 gradient vanishes at r = 0, so x~ = x.
    assert torch.equal(res.target, res.pred.detach())
    assert torch.equal(res.x_adv, x)


@pytest.mark.parametrize("kwargs, words", [
    (dict(bin_width=0), "bin_width"),
    (dict(bin_width=float("nan")), "bin_width"),
    (dict(epsilon=-1), "epsilon"),
    (dict(lam=float("inf")), "lam"),
    (dict(distance="cosine"), "distance"),
    (dict(n_steps=0), "n_steps"),
    (dict(n_steps=1.5), "n_steps"),
    (dict(target="soft"), "target"),
    (dict(clip_min=1.0, clip_max=0.0), "clip_min must be <= clip_max"),
    (dict(clip_min=torch.zeros(2, 2)), "clip_min"),
])
def test_bad_options(kwargs, words):
    with pytest.raises(ValueError, match=words):
        SSIRLoss(**kwargs)


def test_bad_call_arguments():
    model, loss_fn = mlp(torch.float32), SSIRLoss()
    x = torch.randn(4, 6)
    with pytest.raises(ValueError, match="y contains NaN"):
        loss_fn(model, x, torch.tensor([0.0, float("nan"), 1.0, 2.0]))
    with pytest.raises(ValueError, match="y has 3 elements"):
        loss_fn(model, x, torch.zeros(3))
    with pytest.raises(ValueError, match="noise must have the shape"):
        loss_fn(model, x, torch.zeros(4), noise=torch.zeros(4, 2))
    with pytest.raises(ValueError, match="weight must have 4 rows"):
        loss_fn(model, x, torch.zeros(4), weight=torch.ones(3))
    with pytest.raises(ValueError, match="non-empty batch"):
        loss_fn(model, torch.zeros(0, 6), torch.zeros(0))
    with pytest.raises(TypeError, match="x must be a floating-point"):
        loss_fn(lambda t: t.float().sum(1), torch.ones(4, 6, dtype=torch.long), torch.zeros(4))


# ---- ablations, auto-epsilon, fast modes ---------------------------------------------------

def test_epsilon_zero_is_the_noise_only_ablation():
    # x~ = x: the consistency term is D(f(x), f(x) + z) = mean |z|, and the diagnostics are 0.
    model = mlp()
    x, y = torch.randn(10, 6, dtype=torch.float64), torch.randn(10, dtype=torch.float64)
    noise = torch.linspace(-0.9, 0.9, 10, dtype=torch.float64).reshape(10, 1)
    res = SSIRLoss(epsilon=0.0, lam=1.0)(model, x, y, noise=noise)
    assert torch.equal(res.x_adv, x)
    assert torch.allclose(res.consistency, noise.abs().mean(), rtol=1e-12)
    assert float(res.perturbation) == 0 and float(res.output_change) == 0
    assert float(res.similarity) == 1.0


def test_diagnostics_match_their_definitions():
    model = mlp()
    torch.manual_seed(4)
    x, y = torch.randn(12, 6, dtype=torch.float64), torch.randn(12, dtype=torch.float64)
    res = SSIRLoss(bin_width=0.5, epsilon=0.3, delta=0.05)(model, x, y)
    with torch.no_grad():
        fx, fa = model(x), model(res.x_adv)
    rel = ((res.x_adv - x).norm(dim=1) / x.norm(dim=1)).mean()
    change = (fa - fx).abs().mean() / 0.5
    similar = ((fa - fx).abs().squeeze(1) < 0.05).double().mean()
    assert torch.allclose(res.perturbation.double(), rel, rtol=1e-6)
    assert torch.allclose(res.output_change.double(), change, rtol=1e-6)
    assert torch.allclose(res.similarity.double(), similar)
    assert torch.allclose(res.radius.double(), torch.full((12,), 0.3, dtype=torch.float64))


def _input_jacobian_rows(model, x):
    """grad_x f(x_i) for a scalar-output model, one row per sample (float64)."""
    xr = x.detach().clone().requires_grad_(True)
    (j,) = torch.autograd.grad(model(xr).sum(), xr)
    return j


@pytest.mark.parametrize("n_steps", [1, 2])
@pytest.mark.parametrize("rho", [0.25, 1.0])
def test_auto_epsilon_bounds_first_order_output_change(n_steps, rho):
    # L1, scalar output: |grad f(x_i) . (x~_i - x_i)| <= rho * delta per sample; with one step
    # the direction is the step-1 gradient, so the bound is met with equality.
    model = mlp()
    torch.manual_seed(5)
    x, y = torch.randn(40, 6, dtype=torch.float64), torch.randn(40, dtype=torch.float64)
    delta = 0.8
    res = SSIRLoss(bin_width=2.0, delta=delta, epsilon="auto", rho=rho, n_steps=n_steps)(model, x, y)
    first_order = (_input_jacobian_rows(model, x) * (res.x_adv - x)).sum(dim=1).abs()
    assert torch.all(first_order <= rho * delta * (1 + 1e-9))
    if n_steps == 1:
        assert torch.allclose(first_order, torch.full_like(first_order, rho * delta), rtol=1e-9)
    # eps_i = rho * delta / ||grad_x D_i||, and ||grad_x D_i|| = ||grad_x f(x_i)|| for L1
    expect = rho * delta / _input_jacobian_rows(model, x).norm(dim=1)
    assert torch.allclose(res.radius.double(), expect, rtol=1e-6)


def test_auto_epsilon_bounds_first_order_distance_change_mse_with_cap():
    # Any distance: the step-1 objective D_i changes by at most rho * delta to first order.
    model = mlp()
    torch.manual_seed(6)
    x, y = torch.randn(30, 6, dtype=torch.float64), torch.randn(30, dtype=torch.float64)
    noise = torch.rand(30, 1, dtype=torch.float64) * 2 - 1
    loss_fn = SSIRLoss(epsilon="auto", rho=0.5, distance="mse", n_steps=2, eps_max=3.0)
    res = loss_fn(model, x, y, noise=noise)
    xr = x.clone().requires_grad_(True)
    d = ((model(xr) - res.target) ** 2).squeeze(1)
    (g1,) = torch.autograd.grad(d.sum(), xr)
    assert torch.all((g1 * (res.x_adv - x)).sum(dim=1).abs() <= 0.5 * 1.0 * (1 + 1e-9))
    expect = (0.5 / g1.norm(dim=1)).clamp(max=3.0)
    assert torch.allclose(res.radius.double(), expect, rtol=1e-6)
    assert torch.all((res.x_adv - x).norm(dim=1) <= 3.0 * (1 + 1e-9))


@pytest.mark.parametrize("distance", ["l1", "huber"])
@pytest.mark.parametrize("n_steps", [1, 2])
def test_auto_epsilon_and_subset_equal_literal_algorithm(distance, n_steps):
    torch.manual_seed(7)
    x = torch.randn(16, 6, dtype=torch.float64).clamp(-1.9, 1.9)
    y = torch.randn(16, dtype=torch.float64) * 3
    noise = torch.rand(16, 1, dtype=torch.float64) * 2 - 1
    rarity = torch.rand(16, dtype=torch.float64) + 0.1
    fast_model, naive_model = mlp(), mlp()
    kw = dict(bin_width=1.0, epsilon="auto", rho=0.7, eps_max=0.4, lam=0.7, distance=distance,
              n_steps=n_steps, clip_min=-2.0, clip_max=2.0)
    torch.manual_seed(8)
    res = SSIRLoss(subset=0.5, **kw)(fast_model, x, y, noise=noise, rarity=rarity)
    res.loss.backward()
    assert res.index.shape == (8,) and res.x_adv.shape == (8, 6)
    loss_ref, _, x_adv_ref = naive_ssir_loss(naive_model, x, y, noise=noise, index=res.index, **kw)
    loss_ref.backward()
    assert torch.allclose(res.loss, loss_ref, rtol=1e-12, atol=1e-14)
    assert torch.allclose(res.x_adv, x_adv_ref, rtol=1e-12, atol=1e-14)
    for a, b in zip(_grads(fast_model), _grads(naive_model)):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-13)


def test_one_step_equals_hand_written_one_step():
    # n_steps=1, the fast mode: x~ = x + eps g1 / ||g1|| with g1 from the clean graph, and the
    # loss mean|f(x) - y| + lam mean|f(x~) - y~|, written out here in float64.
    model = mlp()
    torch.manual_seed(9)
    x, y = torch.randn(8, 6, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    noise = torch.rand(8, 1, dtype=torch.float64) * 2 - 1
    res = SSIRLoss(epsilon=0.2, lam=0.3, n_steps=1)(model, x, y, noise=noise)
    xr = x.clone().requires_grad_(True)
    fx = model(xr)
    y_tilde = fx.detach() + noise
    (g1,) = torch.autograd.grad((fx - y_tilde).abs().sum(), xr)
    x_adv = x + 0.2 * g1 / g1.norm(dim=1, keepdim=True)
    loss = (model(x) - y[:, None]).abs().mean() + 0.3 * (model(x_adv) - y_tilde).abs().mean()
    assert torch.allclose(res.x_adv, x_adv, rtol=1e-12)
    assert torch.allclose(res.loss, loss, rtol=1e-12)


@pytest.mark.parametrize("floor", [True, False])
def test_subset_draw_takes_the_rows_torch_multinomial_would(floor):
    # the draw is torch.multinomial's own algorithm written out (without its validity checks,
    # which read the data back): the same generator state gives the same rows
    from ssir_fast.ssir import draw_subset
    for seed in range(50):
        n = 5 + 13 * seed
        w = torch.rand(n, generator=torch.Generator().manual_seed(seed)) ** 3 + 1e-3
        k = max(1, round(0.3 * n))
        a = torch.multinomial(w, k, generator=torch.Generator().manual_seed(seed)).sort().values
        b = draw_subset(w, 0.3, torch.Generator().manual_seed(seed), floor=floor)
        assert torch.equal(a, b), seed


def test_subset_draws_follow_the_weights():
    from ssir_fast.ssir import draw_subset
    w = torch.tensor([1.0, 2.0, 3.0, 4.0])
    gen = torch.Generator().manual_seed(0)
    trials = 10000   # sampling error of a frequency <= 0.005: 3 sigma inside atol
    # one draw per batch: P(i) = w_i / sum(w)
    ones = torch.zeros(4)
    for _ in range(trials):
        ones[draw_subset(w, 0.25, gen)] += 1
    assert torch.allclose(ones / trials, w / w.sum(), atol=0.015)
    # two draws of four, successive sampling: P(i in S) = p_i + sum_{j != i} p_j p_i / (1 - p_j)
    p = (w / w.sum()).double()
    exact = torch.tensor([p[i] + sum(p[j] * p[i] / (1 - p[j]) for j in range(4) if j != i)
                          for i in range(4)])
    twos = torch.zeros(4)
    for _ in range(trials):
        idx = draw_subset(w, 0.5, gen)
        assert idx.numel() == 2 and idx[0] < idx[1]
        twos[idx] += 1
    assert torch.allclose((twos / trials).double(), exact, atol=0.015)


def test_subset_rarity_is_inverse_bin_count():
    from ssir_fast.imbalance import LabelBins
    bins = LabelBins(0.0, 1.0, 4)
    loss_fn = SSIRLoss(subset=0.5, bins=bins, bin_counts=[10, 0, 5, 1])
    y = torch.tensor([0.5, 1.2, 2.9, 3.1, 7.0])  # 7.0 is clamped into the last bin
    assert torch.allclose(loss_fn.rarity(y), torch.tensor([0.1, 1.0, 0.2, 1.0, 1.0]))
    assert torch.equal(SSIRLoss(subset=0.5).rarity(y), torch.ones(5))
    # a rarity-0 row is drawn only when every positive row is taken
    from ssir_fast.ssir import draw_subset
    for seed in range(20):
        gen = torch.Generator().manual_seed(seed)
        assert 2 not in draw_subset(torch.tensor([1.0, 1.0, 0.0, 1.0]), 0.75, gen).tolist()


def test_bf16_perturbation_passes_with_fp32_model(monkeypatch):
    # Steps 2..n under bf16 autocast: the direction is close to fp32's, x~ stays fp32 and within
    # eps, and the consistency pass (which trains the model) is fp32. (bf16 passes whatever the
    # CPU: without native kernels they would otherwise stay fp32.)
    import ssir_fast.ssir_step as step_module
    monkeypatch.setattr(step_module, "_native_cpu_kernels", lambda dtype: True)
    model = SmallCNN().train()
    x, y = torch.randn(6, 3, 8, 8), torch.randn(6)
    noise = torch.rand(6, 1) * 2 - 1
    torch.manual_seed(0)
    exact = SSIRLoss(epsilon=0.5, lam=1.0)(model, x, y, noise=noise)
    torch.manual_seed(0)
    fast = SSIRLoss(epsilon=0.5, lam=1.0, perturb_autocast=torch.bfloat16)(model, x, y,
                                                                          noise=noise)
    fast.loss.backward()
    assert fast.x_adv.dtype == torch.float32
    assert torch.all((fast.x_adv - x).reshape(6, -1).norm(dim=1) <= 0.5 * (1 + 1e-5))
    cos = torch.nn.functional.cosine_similarity((fast.x_adv - x).reshape(6, -1),
                                                (exact.x_adv - x).reshape(6, -1))
    assert torch.all(cos > 0.9)
    assert torch.allclose(fast.loss, exact.loss, rtol=0.05)
    assert all(p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()
               for p in model.parameters())


@pytest.mark.parametrize("kwargs, words", [
    (dict(epsilon="big"), "epsilon must be a float >= 0 or 'auto'"),
    (dict(epsilon="auto", rho=0), "rho"),
    (dict(epsilon="auto", rho=1.5), "rho must be in"),
    (dict(epsilon="auto", eps_max=-1), "eps_max"),
    (dict(subset=0), "subset"),
    (dict(subset=1.5), "subset must be a fraction"),
    (dict(bin_counts=[1, 2]), "bins and bin_counts"),
    (dict(perturb_autocast=torch.float64), "perturb_autocast"),
])
def test_bad_fast_mode_options(kwargs, words):
    with pytest.raises(ValueError, match=words):
        SSIRLoss(**kwargs)


# ---- the SSIR flags of `ssir-fast train` ---------------------------------------------------

@pytest.mark.parametrize("flags, expect", [
    (["--epsilon", "0"], dict(epsilon=0.0, n_steps=2, subset=None, perturb_autocast=None)),
    (["--epsilon", "auto", "--ssir-rho", "0.25", "--ssir-eps-max", "2"],
     dict(epsilon="auto", rho=0.25, eps_max=2.0)),
    (["--n-steps", "1", "--ssir-subset", "0.5", "--ssir-bf16"],
     dict(n_steps=1, subset=0.5, perturb_autocast=torch.bfloat16)),
], ids=["eps0", "auto", "fast"])
def test_train_cli_flags_reach_the_loss_and_log_diagnostics(flags, expect, tmp_path, monkeypatch):
    import json
    import os
    from ssir_fast.cli import main
    from ssir_fast.train import trainer as T
    seen = {}
    real_setup = T.Trainer.setup

    def setup(self):
        real_setup(self)
        seen["loss"], seen["counts"] = self.losses.ssir, self.data.train_counts
    monkeypatch.setattr(T.Trainer, "setup", setup)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = str(tmp_path / "run")
        assert main(["train", "--data", "two_gaussians", "--ratio", "4", "--epochs", "2",
                     "--batch-size", "256", "--no-progress", "--ssir", *flags, "--out", out]) == 0
    finally:
        torch.set_num_threads(threads)
    for k, v in expect.items():
        assert getattr(seen["loss"], k) == v, k
    # the subset draw weights: 1 / training count of each label bin
    counts = torch.as_tensor(seen["counts"], dtype=torch.float64)
    assert torch.equal(seen["loss"].bin_rarity, 1 / counts.clamp(min=1))
    hist = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    for h in hist:
        assert 0 <= h["similarity"] <= 1 and h["perturbation"] >= 0 and h["output_change"] >= 0
    if flags[1] == "0":
        assert all(h["perturbation"] == 0 and h["output_change"] == 0 for h in hist)
    else:
        assert all(h["perturbation"] > 0 for h in hist)
    assert os.path.isfile(os.path.join(out, "similarity.png"))


def test_train_cli_rejects_bad_ssir_flags(capsys):
    from ssir_fast.cli import main
    for flags, words in [(["--ssir-rho", "2"], "--ssir-rho must be in"),
                         (["--ssir-subset", "0"], "--ssir-subset must be finite and > 0"),
                         (["--ssir-eps-max", "-1"], "--ssir-eps-max must be finite and > 0"),
                         (["--epsilon", "-1"], "--epsilon must be finite and >= 0")]:
        assert main(["train", "--data", "two_gaussians", "--ssir", *flags]) == 2
        assert words in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--data", "two_gaussians", "--ssir", "--epsilon", "large"])
    assert "--epsilon: expected a number or 'auto', got 'large'" in capsys.readouterr().err


def test_subset_passes_normalise_with_the_whole_batch_statistics():
    # BatchNorm, no dropout, eps = 0: the subset pass must be the clean forward's rows idx, with
    # the gradient through the whole-batch statistics. So the loss and every parameter gradient
    # equal those of supervised + lam * mean_{i in idx} |f(x)_i - y~_i| on one plain forward,
    # however skewed the drawn rows are; the running statistics stay those of one clean forward.
    torch.manual_seed(10)
    model = SmallCNN()
    model.features[6] = nn.Identity()   # no dropout
    model = model.double().train()
    twin, once = copy.deepcopy(model), copy.deepcopy(model)
    x = torch.randn(16, 3, 8, 8, dtype=torch.float64)
    x[:4] += 3.0                        # rare rows, far from the batch mean
    y = torch.randn(16, dtype=torch.float64)
    noise = torch.rand(16, 1, dtype=torch.float64) * 2 - 1
    rarity = torch.tensor([100.0] * 4 + [1.0] * 12)
    res = SSIRLoss(epsilon=0.0, lam=0.7, subset=0.25)(model, x, y, noise=noise, rarity=rarity)
    res.loss.backward()
    idx = res.index
    pred = twin(x)
    y_tilde = pred.detach() + noise
    ref = (pred - y[:, None]).abs().mean() + 0.7 * (pred[idx] - y_tilde[idx]).abs().mean()
    ref.backward()
    assert torch.allclose(res.loss, ref, rtol=1e-12)
    for a, b in zip(_grads(model), _grads(twin)):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)
    assert float(res.similarity) == 1.0 and float(res.output_change) < 1e-12
    once(x)
    for (name, a), (_, b) in zip(model.named_buffers(), once.named_buffers()):
        assert torch.equal(a, b), name


def test_donated_buffer_error_names_the_fix(monkeypatch):
    # a backward compiled elsewhere with donated buffers cannot keep its graph: the message says
    # what to set instead of torch's internal one alone
    import ssir_fast.ssir as ssir_module

    def refuse(*args, **kwargs):
        raise RuntimeError("This backward function was compiled with non-empty donated buffers")
    monkeypatch.setattr(ssir_module.torch.autograd, "grad", refuse)
    with pytest.raises(RuntimeError, match="donated_buffer = False"):
        SSIRLoss()(nn.Linear(3, 1), torch.randn(4, 3), torch.randn(4))


@pytest.mark.parametrize("before", [True, False])
def test_no_donated_buffers_sets_and_restores_the_flag(before):
    # inside: off; after the block, even one left by an exception, the caller's value again
    import torch._dynamo  # noqa: F401  (loaded, as by any torch.compile)
    import torch._functorch.config as functorch_config
    from ssir_fast.ssir_step import no_donated_buffers
    saved = functorch_config.donated_buffer
    functorch_config.donated_buffer = before
    try:
        with no_donated_buffers():
            assert functorch_config.donated_buffer is False
        assert functorch_config.donated_buffer is before
        with pytest.raises(KeyError):
            with no_donated_buffers():
                raise KeyError("x")
        assert functorch_config.donated_buffer is before
    finally:
        functorch_config.donated_buffer = saved


@pytest.mark.parametrize("native", [True, False])
def test_bf16_passes_on_a_cpu_without_bf16_kernels_stay_fp32(native, monkeypatch):
    # emulated bf16 matrix kernels would make the "fast" passes slower than fp32: there they run
    # in fp32 (exactly the fp32 step), said once per loss; nothing said where the CPU has them
    import warnings
    import ssir_fast.ssir_step as step_module
    monkeypatch.setattr(step_module, "_native_cpu_kernels", lambda dtype: native)
    dtypes = []
    model, x, y = nn.Linear(3, 1), torch.randn(4, 3), torch.randn(4)
    model.register_forward_hook(lambda m, i, out: dtypes.append(out.dtype))
    loss_fn = SSIRLoss(epsilon=0.1, perturb_autocast=torch.bfloat16)
    noise = torch.rand(4, 1) - 0.5
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        fast = loss_fn(model, x, y, noise=noise)
        loss_fn(model, x, y, noise=noise)
    said = [w for w in seen if "no native" in str(w.message)]
    assert len(said) == (0 if native else 1)
    # the passes: clean, step 2 (the autocast one), consistency
    assert dtypes[:3] == [torch.float32, torch.bfloat16 if native else torch.float32,
                          torch.float32]
    if not native:
        assert "perturb_autocast=torch.bfloat16" in str(said[0].message)
        assert "run in float32 here" in str(said[0].message)
        exact = SSIRLoss(epsilon=0.1)(model, x, y, noise=noise)
        assert torch.equal(fast.x_adv, exact.x_adv) and torch.equal(fast.loss, exact.loss)


def test_no_donated_buffers_leaves_the_flag_while_the_compiler_was_never_loaded(monkeypatch):
    # nothing compiled in the process: nothing to switch off (no config access a step)
    import sys
    import torch._functorch.config as functorch_config
    import ssir_fast.ssir_step as step_module
    assert step_module._compiler_loaded() == ("torch._dynamo" in sys.modules)
    monkeypatch.setattr(step_module, "_compiler_loaded", lambda: False)
    saved = functorch_config.donated_buffer
    functorch_config.donated_buffer = True
    try:
        with step_module.no_donated_buffers():
            assert functorch_config.donated_buffer is True
        assert functorch_config.donated_buffer is True
    finally:
        functorch_config.donated_buffer = saved


@pytest.mark.parametrize("subset", [None, 0.5])
def test_diagnostics_formed_when_read_equal_eager_ones_after_the_update(subset):
    # read after backward and an optimiser step, the diagnostics are those of the step (f(x~)
    # and f(x) as the step computed them, not recomputed with the new weights), and each is
    # formed once
    def run(read_before):
        model = mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        torch.manual_seed(3)
        x, y = torch.randn(16, 6, dtype=torch.float64), torch.randn(16, dtype=torch.float64)
        res = SSIRLoss(bin_width=0.5, epsilon=0.3, delta=0.05, subset=subset)(model, x, y)
        early = (res.similarity, res.perturbation, res.output_change, res.radius) \
            if read_before else None
        res.backward()
        opt.step()
        late = (res.similarity, res.perturbation, res.output_change, res.radius)
        return early, late, res
    early, same, res = run(True)
    _, late, _ = run(False)
    for a, b, c in zip(early, same, late):
        assert a is b                  # formed once, then kept
        assert torch.equal(a, c)       # read late: the step's values
    assert res.diagnose is None and res.reads == ()   # nothing held once formed


def test_diagnostics_refuse_a_tensor_of_the_step_changed_in_place():
    # without subset the perturbed rows are the caller's batch itself: changed before the
    # diagnostics are read, they cannot be formed right, so reading them raises
    model = mlp()
    x, y = torch.randn(8, 6, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    res = SSIRLoss(bin_width=0.5, epsilon=0.3)(model, x, y)
    x.add_(1.0)
    with pytest.raises(RuntimeError, match="changed in place after the step"):
        res.similarity


@pytest.mark.parametrize("shape", [(12,), (12, 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_step1_gradient_written_out_equals_autograd_through_the_distance(shape, dtype):
    # the L1 step-1 cotangent sign(f(x) - y~), formed directly, gives bit for bit the input
    # gradient autograd forms through sum_i |f(x_i) - y~_i| (bf16 outputs: cast as autograd casts)
    from ssir_fast.losses import distance_per_sample
    torch.manual_seed(0)
    lin = nn.Linear(5, 1).to(dtype)
    x = torch.randn(12, 5, dtype=dtype, requires_grad=True)
    pred = lin(x).reshape(shape)
    ref = pred.detach().to(torch.promote_types(dtype, torch.float32))
    y_tilde = ref + torch.rand_like(ref) - 0.5
    loss = SSIRLoss(bin_width=1.0)
    (fast,) = loss._step1_grad(pred, ref, y_tilde, x)
    (slow,) = torch.autograd.grad(distance_per_sample("l1", pred, y_tilde).sum(), x)
    assert torch.equal(fast, slow)


@pytest.mark.parametrize("width", [1.0, 0.1, 1e-3, 2.5, 1 / 3])
def test_noise_drawn_in_one_op_equals_the_formula(width):
    # y~ = f(x) + (2U - 1) dy: drawn with one uniform_ in float32, the same values and the same
    # generator state after as the formula's rand_like
    ref = torch.randn(257, 1)
    loss = SSIRLoss(bin_width=width)
    torch.manual_seed(11)
    fast = loss._noisy_target(ref, None)
    after_fast = torch.get_rng_state()
    torch.manual_seed(11)
    slow = ref + (torch.rand_like(ref) * 2 - 1) * width
    assert torch.equal(fast, slow)
    assert torch.equal(after_fast, torch.get_rng_state())
    assert float((fast - ref).abs().max()) <= width


def test_clean_target_ignores_a_given_noise():
    # target="clean" (Eq. 13): y~ = f(x) whatever noise is passed
    model, x, y = mlp(), torch.randn(6, 6, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    noise = torch.full((6, 1), 0.25, dtype=torch.float64)
    res = SSIRLoss(bin_width=0.5, epsilon=0.3, target="clean")(model, x, y, noise=noise)
    assert torch.equal(res.target, res.pred.detach())
    noisy = SSIRLoss(bin_width=0.5, epsilon=0.3)(model, x, y, noise=noise)
    assert torch.equal(noisy.target, noisy.pred.detach() + noise)
