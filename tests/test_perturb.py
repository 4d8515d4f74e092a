"""ssir_fast.ops.perturb against the float64 reference, opcheck, gradcheck and bad input."""
import pytest
import torch

import ssir_fast
from ssir_fast.ops import perturb
from ssir_fast.ops.perturb import perturb_torch, clip_bound
from ssir_fast.reference import perturb_reference

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
TOL = {torch.float64: 1e-12, torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 2e-2}
SHAPES = [(5, 7), (4, 3, 5, 7), (3, 150528), (2, 1), (6, 3, 1, 13), (9,)]


def _close(out, ref, dtype):
    tol = TOL[dtype]
    scale = ref.abs().max().clamp_min(1.0)
    err = (out.double().cpu() - ref.cpu()).abs().max()
    assert err <= tol * scale, f"max error {err} > {tol * scale}"


def test_extension_is_built():
    # CI builds the extension; the fallback is tested separately below.
    assert ssir_fast.HAS_EXTENSION


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", list(TOL))
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_reference(device, dtype, shape):
    torch.manual_seed(0)
    x = torch.randn(shape, device=device).to(dtype)
    g = torch.randn(shape, device=device).to(dtype)
    out = perturb(x, g, 0.3)
    _close(out, perturb_reference(x, g, 0.3), dtype)
    assert out.dtype == dtype and out.shape == x.shape


def test_hand_computed():
    x = torch.tensor([[1.0, 2.0], [0.0, 0.0], [5.0, 5.0]])
    g = torch.tensor([[3.0, 4.0], [0.0, 0.0], [0.0, -2.0]])
    out = perturb(x, g, 10.0, clip_min=-1.0, clip_max=6.0)
    # row 0: + 10 * (0.6, 0.8) = (7, 10) -> clipped to 6; row 1: zero gradient -> unchanged;
    # row 2: + 10 * (0, -1) = (5, -5) -> -5 clipped to -1.
    assert torch.equal(out, torch.tensor([[6.0, 6.0], [0.0, 0.0], [5.0, -1.0]]))


@pytest.mark.parametrize("device", DEVICES)
def test_norm_bound_and_zero_rows(device):
    x = torch.randn(8, 3, 4, 4, device=device)
    g = torch.randn(8, 3, 4, 4, device=device)
    g[[2, 5]] = 0
    out = perturb(x, g, 1e-3)
    r = (out - x).reshape(8, -1).norm(dim=1)
    assert torch.isfinite(out).all()
    assert torch.all(r <= 1e-3 * (1 + 1e-4))
    assert torch.equal(out[2], x[2]) and torch.equal(out[5], x[5])
    assert torch.allclose(r[[0, 1, 3]], torch.full((3,), 1e-3, device=device), rtol=1e-3)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_per_channel_clip(device, dtype):
    torch.manual_seed(1)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    lo, hi = (0 - mean) / std, (1 - mean) / std
    x = torch.randn(4, 3, 9, 11, device=device).to(dtype)
    g = torch.randn_like(x)
    out = perturb(x, g, 5.0, lo.to(device), hi.to(device))
    _close(out, perturb_reference(x, g, 5.0, lo, hi), dtype)
    for c in range(3):
        assert out[:, c].float().min() >= lo[c].to(dtype).float() - 1e-6
        assert out[:, c].float().max() <= hi[c].to(dtype).float() + 1e-6


@pytest.mark.parametrize("device", DEVICES)
def test_one_sided_clip(device):
    x = torch.randn(3, 50, device=device)
    g = torch.randn(3, 50, device=device)
    _close(perturb(x, g, 2.0, clip_min=-0.5), perturb_reference(x, g, 2.0, clip_min=-0.5),
           torch.float32)
    _close(perturb(x, g, 2.0, clip_max=torch.tensor(0.25)),
           perturb_reference(x, g, 2.0, clip_max=0.25), torch.float32)


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_and_offsets(device):
    base_x = torch.randn(6, 3, 10, 10, device=device)
    base_g = torch.randn(6, 3, 10, 10, device=device)
    x, g = base_x.permute(0, 2, 3, 1), base_g.transpose(2, 3).permute(0, 2, 3, 1)
    _close(perturb(x, g, 0.7), perturb_reference(x, g, 0.7), torch.float32)
    # Unaligned views (offset by one element) take the scalar path on CUDA.
    flat_x, flat_g = torch.randn(4 * 37 + 1, device=device), torch.randn(4 * 37 + 3, device=device)
    x, g = flat_x[1:].view(4, 37), flat_g[3:].view(4, 37)
    _close(perturb(x, g, 0.7), perturb_reference(x, g, 0.7), torch.float32)


@pytest.mark.parametrize("device", DEVICES)
def test_out_and_inplace(device):
    x = torch.randn(5, 2, 33, device=device)
    g = torch.randn(5, 2, 33, device=device)
    ref = perturb_reference(x, g, 0.5, -1.0, 1.0)
    out = torch.empty_like(x)
    assert perturb(x, g, 0.5, -1.0, 1.0, out=out) is out
    _close(out, ref, torch.float32)
    x2 = x.clone()
    assert perturb(x2, g, 0.5, -1.0, 1.0, out=x2) is x2
    _close(x2, ref, torch.float32)
    # non-contiguous in-place target
    x3 = x.clone().transpose(1, 2)
    g3 = g.transpose(1, 2)
    perturb(x3, g3, 0.5, out=x3)
    _close(x3, perturb_reference(x.transpose(1, 2), g3, 0.5), torch.float32)


@pytest.mark.parametrize("device", DEVICES)
def test_empty_batch(device):
    x = torch.empty(0, 3, 4, device=device)
    assert perturb(x, torch.empty_like(x), 0.1).shape == (0, 3, 4)
    x = torch.empty(4, 0, device=device)
    assert perturb(x, torch.empty_like(x), 0.1).shape == (4, 0)


def test_fallback_matches_kernel():
    x = torch.randn(4, 3, 5, 5)
    g = torch.randn_like(x)
    g[0] = 0
    lo = clip_bound(torch.tensor([-1.0, -0.5, 0.0]), "clip_min", x)
    hi = clip_bound(1.0, "clip_max", x)
    assert torch.allclose(perturb_torch(x, g, 0.9, lo, hi), perturb(x, g, 0.9, lo, hi), atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    x = torch.randn(4, 3, 6, 5, device=device)
    g = torch.randn_like(x)
    lo = torch.tensor([-1.0, -0.5, 0.0], device=device)
    hi = torch.tensor(1.5, device=device)
    torch.library.opcheck(torch.ops.ssir_fast.perturb.default, (x, g, 0.4, lo, hi))
    torch.library.opcheck(torch.ops.ssir_fast.perturb.default, (x, g, 0.4, None, None))
    torch.library.opcheck(torch.ops.ssir_fast.perturb.default,
                          (x.requires_grad_(), g.requires_grad_(), 0.4, lo, hi))
    torch.library.opcheck(torch.ops.ssir_fast.perturb_.default, (x.detach().clone(), g.detach(), 0.4, lo, None))
    torch.library.opcheck(torch.ops.ssir_fast.perturb_out.default,
                          (x.detach(), g.detach(), 0.4, None, hi, torch.empty_like(x)))


def test_gradcheck():
    torch.manual_seed(0)
    x = torch.randn(3, 2, 4, dtype=torch.float64, requires_grad=True)
    g = torch.randn(3, 2, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: perturb(a, b, 0.8), (x, g))
    # With bounds that clip some (not exactly on the boundary) elements.
    assert torch.autograd.gradcheck(lambda a, b: perturb(a, b, 0.8, -0.7, 0.9), (x, g))


def test_compile():
    def step(x, g):
        return perturb(x, g, 0.1, -2.0, 2.0) * 2

    x, g = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    assert torch.allclose(compiled(x, g), step(x, g))


@pytest.mark.parametrize("kwargs, exc, words", [
    (dict(g=torch.randn(4, 6)), ValueError, "same shape"),
    (dict(g=torch.randn(4, 5, dtype=torch.float64)), TypeError, "same dtype"),
    (dict(x=torch.ones(4, 5, dtype=torch.int32), g=torch.ones(4, 5, dtype=torch.int32)), TypeError, "x must be float32"),
    (dict(epsilon=-1.0), ValueError, "epsilon"),
    (dict(epsilon=float("nan")), ValueError, "epsilon"),
    (dict(epsilon=float("inf")), ValueError, "epsilon"),
    (dict(clip_min=1.0, clip_max=0.0), ValueError, "clip_min must be <= clip_max"),
    (dict(x=torch.randn(4, 3, 2), g=torch.randn(4, 3, 2), clip_min=torch.zeros(2)), ValueError, "per-channel"),
    (dict(x=torch.tensor(1.0), g=torch.tensor(1.0)), ValueError, "batch dimension"),
    (dict(out=torch.empty(3, 5)), ValueError, "out must match x"),
    (dict(clip_min=float("nan")), ValueError, "clip_min is NaN"),
])
def test_bad_input(kwargs, exc, words):
    args = dict(x=torch.randn(4, 5), g=torch.randn(4, 5), epsilon=0.1)
    args.update(kwargs)
    with pytest.raises(exc, match=words):
        perturb(**args)


def test_cpp_checks_name_arguments():
    # Direct torch.ops calls skip the Python wrapper: the C++ checks must still be readable.
    # TORCH_CHECK_VALUE: the same Python exception type as the fallback's checks
    with pytest.raises(ValueError, match="x and g must have the same shape"):
        torch.ops.ssir_fast.perturb(torch.randn(2, 3), torch.randn(2, 4), 0.1, None, None)
    with pytest.raises(ValueError, match="epsilon must be finite"):
        torch.ops.ssir_fast.perturb(torch.randn(2, 3), torch.randn(2, 3), -0.1, None, None)
    with pytest.raises(ValueError, match="per-channel clip_max"):
        torch.ops.ssir_fast.perturb(torch.randn(2, 3, 4), torch.randn(2, 3, 4), 0.1, None,
                                    torch.zeros(4))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_device_mismatch():
    with pytest.raises(ValueError, match="same device"):
        perturb(torch.randn(2, 3), torch.randn(2, 3, device="cuda"), 0.1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(256, 3, 224, 224), (4096, 128), (7, 1001), (3, 5)])
def test_cuda_equals_cpu(dtype, shape):
    x = torch.randn(shape).to(dtype)
    g = torch.randn(shape).to(dtype)
    cpu = perturb(x, g, 1e-3, -1.0, 1.0)
    gpu = perturb(x.cuda(), g.cuda(), 1e-3, -1.0, 1.0).cpu()
    assert (gpu.float() - cpu.float()).abs().max() <= TOL[dtype] * 4


# ---- per-sample epsilon ---------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", list(TOL))
@pytest.mark.parametrize("shape", [(5, 7), (4, 3, 5, 7), (3, 150528), (6, 1)])
def test_per_sample_epsilon_matches_reference(device, dtype, shape):
    torch.manual_seed(3)
    x = torch.randn(shape, device=device).to(dtype)
    g = torch.randn(shape, device=device).to(dtype)
    eps = torch.rand(shape[0], device=device) * 2
    eps[0] = 0.0  # a zero radius leaves its row unchanged
    out = perturb(x, g, eps)
    _close(out, perturb_reference(x, g, eps), dtype)
    assert torch.equal(out[0], x[0])
    lo, hi = -torch.ones(()), torch.ones(())
    _close(perturb(x, g, eps, -1.0, 1.0), perturb_reference(x, g, eps, lo, hi), dtype)


@pytest.mark.parametrize("device", DEVICES)
def test_per_sample_epsilon_sets_each_norm(device):
    x = torch.randn(6, 3, 4, 4, device=device, dtype=torch.float64)
    g = torch.randn_like(x)
    eps = torch.tensor([0.0, 1e-3, 0.5, 2.0, 7.0, 1e-6], device=device, dtype=torch.float64)
    r = (perturb(x, g, eps) - x).reshape(6, -1).norm(dim=1)
    torch.testing.assert_close(r, eps, rtol=1e-12, atol=1e-14)  # |x| ~ 1: out - x loses ~1e-16


@pytest.mark.parametrize("device", DEVICES)
def test_per_sample_epsilon_constant_equals_scalar(device):
    # A tensor of one value gives bit for bit the scalar result (the same radius is formed).
    x = torch.randn(5, 2, 33, device=device)
    g = torch.randn_like(x)
    assert torch.equal(perturb(x, g, torch.full((5,), 0.37, device=device, dtype=torch.float64)),
                       perturb(x, g, 0.37))


@pytest.mark.parametrize("device", DEVICES)
def test_per_sample_epsilon_out_and_inplace(device):
    x = torch.randn(4, 3, 50, device=device)
    g = torch.randn_like(x)
    eps = torch.tensor([0.1, 0.0, 3.0, 0.5], device=device)
    ref = perturb_reference(x, g, eps, -torch.ones(()), torch.ones(()))
    out = torch.empty_like(x)
    assert perturb(x, g, eps, -1.0, 1.0, out=out) is out
    _close(out, ref, torch.float32)
    x2 = x.clone()
    perturb(x2, g, eps, -1.0, 1.0, out=x2)
    _close(x2, ref, torch.float32)


def test_per_sample_epsilon_fallback_matches_kernel():
    x = torch.randn(4, 3, 5, 5)
    g = torch.randn_like(x)
    eps = torch.tensor([0.2, 0.0, 1.5, 0.9])
    lo, hi = clip_bound(-1.0, "clip_min", x), clip_bound(1.0, "clip_max", x)
    torch.testing.assert_close(perturb_torch(x, g, 1.0, lo, hi, eps), perturb(x, g, eps, lo, hi),
                               atol=1e-6, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_per_sample_epsilon_opcheck(device):
    x = torch.randn(4, 3, 6, 5, device=device)
    g = torch.randn_like(x)
    eps = torch.tensor([0.4, 0.0, 1.0, 2.5], device=device)
    lo = torch.tensor([-1.0, -0.5, 0.0], device=device)
    torch.library.opcheck(torch.ops.ssir_fast.perturb.default, (x, g, 1.0, lo, None, eps))
    torch.library.opcheck(torch.ops.ssir_fast.perturb.default,
                          (x.requires_grad_(), g.requires_grad_(), 0.5, None, None, eps))
    torch.library.opcheck(torch.ops.ssir_fast.perturb_.default,
                          (x.detach().clone(), g.detach(), 1.0, lo, None, eps))
    torch.library.opcheck(torch.ops.ssir_fast.perturb_out.default,
                          (x.detach(), g.detach(), 1.0, None, None, torch.empty_like(x), eps))


def test_per_sample_epsilon_gradcheck():
    torch.manual_seed(0)
    x = torch.randn(3, 2, 4, dtype=torch.float64, requires_grad=True)
    g = torch.randn(3, 2, 4, dtype=torch.float64, requires_grad=True)
    eps = torch.tensor([0.8, 0.0, 2.0], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a, b: perturb(a, b, eps), (x, g))
    assert torch.autograd.gradcheck(lambda a, b: perturb(a, b, eps, -0.7, 0.9), (x, g))


def test_per_sample_epsilon_is_not_differentiated():
    x = torch.randn(3, 4, requires_grad=True)
    g = torch.randn(3, 4)
    eps = torch.tensor([0.5, 1.0, 2.0], requires_grad=True)
    perturb(x, g, eps).sum().backward()
    assert eps.grad is None and x.grad is not None


def test_per_sample_epsilon_compile():
    def step(x, g, eps):
        return perturb(x, g, eps, -2.0, 2.0) * 2

    x, g, eps = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8), torch.rand(4)
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    assert torch.allclose(compiled(x, g, eps), step(x, g, eps))


@pytest.mark.parametrize("eps, exc, words", [
    (torch.ones(3), ValueError, r"shape \[N\] = \[4\]"),
    (torch.ones(4, 1), ValueError, r"shape \[N\] = \[4\]"),
    (torch.ones(()), ValueError, r"shape \[N\] = \[4\]"),
    (torch.ones(4, device="meta"), ValueError, "epsilon must be on x's device"),
    (torch.ones(4, dtype=torch.int64), TypeError, "epsilon must be a floating-point tensor"),
    (torch.tensor([0.1, -0.1, 0.2, 0.3]), ValueError, "finite and >= 0"),
    (torch.tensor([0.1, float("nan"), 0.2, 0.3]), ValueError, "finite and >= 0"),
    (torch.tensor([0.1, float("inf"), 0.2, 0.3]), ValueError, "finite and >= 0"),
])
def test_per_sample_epsilon_bad_input(eps, exc, words):
    with pytest.raises(exc, match=words):
        perturb(torch.randn(4, 5), torch.randn(4, 5), eps)


def test_per_sample_epsilon_cpp_checks():
    x, g = torch.randn(4, 5), torch.randn(4, 5)
    for eps, exc, words in ((torch.ones(3), ValueError, r"shape \[N\] = \[4\]"),
                            (torch.tensor([0.1, -1.0, 0.0, 0.0]), ValueError, "finite and >= 0"),
                            (torch.tensor([0.1, float("nan"), 0.0, 0.0]), ValueError, "finite and >= 0"),
                            # a stable-ABI kernel raises ValueError for every bad argument;
                            # the wrapper restores TypeError (test_per_sample_epsilon_bad_input)
                            (torch.ones(4, dtype=torch.int32), ValueError, "floating-point")):
        with pytest.raises(exc, match=words):
            torch.ops.ssir_fast.perturb(x, g, 1.0, None, None, eps)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(64, 3, 224, 224), (4096, 128), (7, 1001)])
def test_cuda_per_sample_epsilon_equals_cpu(dtype, shape):
    x = torch.randn(shape).to(dtype)
    g = torch.randn(shape).to(dtype)
    eps = torch.rand(shape[0]) * 1e-2
    cpu = perturb(x, g, eps, -1.0, 1.0)
    gpu = perturb(x.cuda(), g.cuda(), eps.cuda(), -1.0, 1.0).cpu()
    assert (gpu.float() - cpu.float()).abs().max() <= TOL[dtype] * 4


def test_backward_forms_only_the_requested_gradients(monkeypatch):
    import sys
    mod = sys.modules["ssir_fast.ops.perturb"]  # (ssir_fast.ops.perturb is also the function)
    calls = []
    real = mod._grad_direction
    monkeypatch.setattr(mod, "_grad_direction", lambda *a: calls.append(1) or real(*a))
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    g = torch.randn(3, 5, dtype=torch.float64)
    w = torch.randn(3, 5, dtype=torch.float64)
    gx, = torch.autograd.grad((perturb(x, g, 0.7) * w).sum(), x)
    assert torch.equal(gx, w) and calls == []  # no clip, g constant: d/dx is the identity
    gx, = torch.autograd.grad((perturb(x, g, 0.7, -0.5, 0.5) * w).sum(), x)
    ref = perturb_reference(x, g, 0.7)
    assert torch.equal(gx, w * ((ref >= -0.5) & (ref <= 0.5))) and calls == []
    g.requires_grad_(True)
    gx, gg = torch.autograd.grad((perturb(x, g, 0.7, -0.5, 0.5) * w).sum(), (x, g))
    assert calls == [1]
    gg_only, = torch.autograd.grad((perturb(x.detach(), g, 0.7, -0.5, 0.5) * w).sum(), g)
    torch.testing.assert_close(gg_only, gg, rtol=0, atol=0)


def test_torch_func_transforms_equal_the_pure_pytorch_path():
    # the kernels have a reverse-mode formula only: under torch.func (and forward-mode AD) the op
    # takes its pure-PyTorch path; a zero tangent from jvp went unnoticed before
    from torch.func import grad, jacrev, jvp, vmap
    g0 = torch.Generator().manual_seed(3)
    x, g, v = (torch.randn(3, 2, 4, generator=g0, dtype=torch.float64) for _ in range(3))
    lo, hi = torch.tensor([-0.5, -1.0], dtype=torch.float64), 0.9
    op = lambda x, g: perturb(x, g, 0.7, lo, hi)  # noqa: E731
    lo_t, hi_t = clip_bound(lo, "lo"), clip_bound(hi, "hi")
    ref = lambda x, g: perturb_torch(x, g, 0.7, lo_t, hi_t)  # noqa: E731
    for argnums in (0, 1):
        torch.testing.assert_close(grad(lambda *a: op(*a).square().sum(), argnums)(x, g),
                                   grad(lambda *a: ref(*a).square().sum(), argnums)(x, g))
    torch.testing.assert_close(jacrev(op, argnums=1)(x, g), jacrev(ref, argnums=1)(x, g))
    tangent = jvp(lambda g: op(x, g), (g,), (v,))[1]
    torch.testing.assert_close(tangent, jvp(lambda g: ref(x, g), (g,), (v,))[1])
    assert tangent.abs().max() > 0
    # finite difference of the op itself (kernel) along v
    h = 1e-6
    fd = (perturb(x, g + h * v, 0.7, lo, hi) - perturb(x, g - h * v, 0.7, lo, hi)) / (2 * h)
    torch.testing.assert_close(tangent, fd, rtol=1e-5, atol=1e-7)
    xs, gs = x.unsqueeze(1), g.unsqueeze(1)   # vmap over the 3 rows: batches of one sample
    torch.testing.assert_close(vmap(op)(xs, gs), torch.stack([op(a, b) for a, b in zip(xs, gs)]))
    import torch.autograd.forward_ad as fwAD
    with fwAD.dual_level():
        out = fwAD.unpack_dual(perturb(x, fwAD.make_dual(g, v), 0.7, lo, hi)).tangent
    torch.testing.assert_close(out, tangent)


@pytest.mark.parametrize("shape", [(0, 4), (3, 0)])
def test_empty_batch_with_gradients(shape):
    x = torch.zeros(shape, requires_grad=True)
    g = torch.zeros(shape, requires_grad=True)
    perturb(x, g, 0.5, -1.0, 1.0).sum().backward()
    assert x.grad.shape == shape and g.grad.shape == shape
    args = (torch.zeros(shape, requires_grad=True), torch.zeros(shape, requires_grad=True), 0.5,
            None, None)
    torch.library.opcheck(torch.ops.ssir_fast.perturb.default, args)


class _Bounded(torch.nn.Module):
    def __init__(self, lo, hi):
        super().__init__()
        self.register_buffer("lo", lo)
        self.register_buffer("hi", hi)

    def forward(self, x, g):
        return perturb(x, g, 0.5, self.lo, self.hi)


@pytest.mark.parametrize("kind", ["channels", "0-d", "list", "buffers"])
def test_compile_fullgraph_and_export_with_tensor_bounds(kind):
    # the NaN check on a bound read its value on the host: a traced bound has none
    torch._dynamo.reset()
    x, g = torch.randn(4, 3, 5), torch.randn(4, 3, 5)
    lo, hi = {"channels": (torch.tensor([-1.0, -0.2, 0.0]), torch.tensor([1.0, 0.3, 0.5])),
              "0-d": (torch.tensor(-0.3), torch.tensor(0.4)),
              "list": ([-1.0, -0.2, 0.0], [1.0, 0.3, 0.5]),
              "buffers": (torch.tensor([-1.0, -0.2, 0.0]), torch.tensor([1.0, 0.3, 0.5]))}[kind]
    expect = perturb_reference(x, g, 0.5, lo, hi).float()
    if kind == "buffers":
        fn = _Bounded(lo, hi)
    else:
        fn = lambda x, g: perturb(x, g, 0.5, lo, hi)  # noqa: E731
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x, g), expect)
    module = fn if kind == "buffers" else _Bounded(*(torch.as_tensor(b) for b in (lo, hi)))
    exported = torch.export.export(module, (x, g))
    torch.testing.assert_close(exported.module()(x, g), expect)


# ---- NaN never becomes a clip bound; empty per-channel bounds; host bounds without a sync ----
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device"))])
def test_nan_is_kept_by_the_clip(device):
    x = torch.tensor([[float("nan"), 0.5, 0.2]], device=device)
    g = torch.ones(1, 3, device=device)
    out = perturb(x, g, 0.1, 0.0, 1.0)
    assert torch.isnan(out[0, 0]) and not torch.isnan(out[0, 1:]).any()
    ref = perturb_torch(x, g, 0.1, clip_bound(0.0, "lo", x), clip_bound(1.0, "hi", x))
    assert torch.equal(torch.isnan(out), torch.isnan(ref))
    # a NaN gradient element stays NaN in the output, as in the fallback
    g_nan = torch.tensor([[float("nan"), 1.0, 1.0]], device=device)
    x0 = torch.zeros(1, 3, device=device)
    out = perturb(x0, g_nan, 0.1, 0.0, 1.0)
    ref = perturb_torch(x0, g_nan, 0.1, clip_bound(0.0, "lo", x0), clip_bound(1.0, "hi", x0))
    assert torch.isnan(out[0, 0]) and torch.equal(torch.isnan(out), torch.isnan(ref))


def test_empty_per_channel_bound_gives_an_empty_result():
    x, g = torch.randn(2, 0, 3), torch.randn(2, 0, 3)
    out = perturb(x, g, 0.1, torch.empty(0), None)
    assert out.shape == (2, 0, 3)
    assert perturb(x, g, 0.1, torch.empty(0), torch.empty(0)).shape == (2, 0, 3)
    ref = perturb_torch(x, g, 0.1, torch.empty(0), None)
    assert ref.shape == out.shape


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("lo, hi", [(0.0, 1.0), ([0.0, 0.1, 0.2], [1.0, 1.0, 1.0]),
                                    (torch.zeros(3), torch.ones(3))])
def test_host_bounds_reach_cuda_without_a_sync(lo, hi):
    x = torch.rand(4, 3, 8, device="cuda")
    g = torch.randn_like(x)
    ref = perturb_torch(x, g, 0.1, clip_bound(lo, "lo", x), clip_bound(hi, "hi", x))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = perturb(x, g, 0.1, lo, hi)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.allclose(out, ref)
