"""perturb keeps ||out_i - x_i|| = eps_i for gradients of any finite size: tiny (denormal) and
huge gradients in every dtype, row lengths around the CPU kernel's 16 lanes and its 2^14-element
chunks (the CUDA kernel's warp rows and 8192-element chunks lie in the same range), against a
float64 reference whose norm is scaled by the largest entry (so it never under- or overflows)."""
import pytest
import torch

from ssir_fast import SSIRLoss
from ssir_fast.ops import perturb

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=cuda)]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# relative error of ||out - x|| allowed per dtype: the rounding of out (eps = 0.5, x = 0)
TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}
LENGTHS = [1, 15, 16, 17, 33, 75, 100, 2047, 2049, 16383, 16384, 16385, 2 * 16384 + 17]
MAGNITUDES = [1e-45, 1e-40, 1e-30, 1e-25, 1e-22, 1e-8, 1.0, 1e10, 1e19, 1e25, 1e38]
EPS = 0.5


def _magnitudes(dtype):
    """MAGNITUDES that the dtype holds as finite non-zero numbers, plus its smallest subnormal and
    its largest finite value (for float64: 1e300, whose row norms stay below the float64 max)."""
    fi = torch.finfo(dtype)
    top = 1e300 if dtype == torch.float64 else fi.max
    vals = [m for m in MAGNITUDES if fi.smallest_normal * fi.eps <= m <= fi.max]
    return vals + [fi.smallest_normal * fi.eps, top]


def _reference(g, eps):
    """eps * g / ||g|| per row in float64, the norm formed as m * ||g / m||, m = max |g|."""
    gd = g.double()
    m = gd.abs().amax(dim=1, keepdim=True)
    unit = (gd / m) / (gd / m).norm(dim=1, keepdim=True)
    return eps * unit


def _check(device, dtype, length, mag, rows=2):
    torch.manual_seed(length)
    direction = torch.rand(rows, length, dtype=torch.float64) * 0.5 + 0.5   # within 2x of mag
    if mag == torch.finfo(dtype).smallest_normal * torch.finfo(dtype).eps:
        direction.fill_(1.0)   # the smallest subnormal: nothing below it but 0
    direction[1] *= -1
    g = (direction * mag).to(dtype).to(device)
    assert (g != 0).all() and torch.isfinite(g).all()
    x = torch.zeros(rows, length, dtype=dtype, device=device)
    out = perturb(x, g, EPS)
    r = (out.double() - x.double()).norm(dim=1).cpu()
    tol = TOL[dtype]
    assert torch.isfinite(out).all(), f"{dtype} len {length} |g|~{mag:g}: non-finite output"
    assert (r <= EPS * (1 + tol)).all() and (r >= EPS * (1 - tol)).all(), \
        f"{dtype} len {length} |g|~{mag:g}: ||out - x|| = {r.tolist()}, eps = {EPS}"
    ref = _reference(g.cpu(), EPS)
    err = (out.double().cpu() - ref).abs().max().item()
    assert err <= 4 * tol * ref.abs().max().item(), f"{dtype} len {length} |g|~{mag:g}: {err}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("length", LENGTHS)
def test_norm_bound_any_gradient_size(device, dtype, length):
    for mag in _magnitudes(dtype):
        _check(device, dtype, length, mag)


@pytest.mark.parametrize("device", DEVICES)
def test_issue_examples(device):
    """The reported cases: rows of 1e-25 and 1e-22 (float32, 100 elements) and a 75-element row
    of 1e-45, with x = 0 and eps = 1e-3: each row moves by exactly eps."""
    for value, length in ((1e-25, 100), (1e-22, 100), (1e-45, 75)):
        x = torch.zeros(2, length, device=device)
        g = torch.full((2, length), value, device=device)
        r = perturb(x, g, 1e-3).norm(dim=1)
        assert torch.allclose(r, torch.full_like(r, 1e-3), rtol=1e-5), (value, length, r)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mixed_magnitudes_and_clip(device, dtype):
    """One huge entry among tiny ones (the tiny ones vanish next to it), and the exact path with
    clipping: a 1e-44 gradient whose eps / ||g|| overflows float32 still respects the bounds."""
    g = torch.full((1, 16385), 1e-30, dtype=dtype, device=device)
    g[0, 7] = 1e30
    out = perturb(torch.zeros_like(g), g, EPS)
    assert out[0, 7].item() == pytest.approx(EPS, rel=1e-6)
    assert (out.double().norm() - EPS).abs() <= 1e-6
    x = torch.full((2, 75), 0.9, dtype=dtype, device=device)
    g = torch.full((2, 75), 1e-44 if dtype == torch.float32 else 1e-300, dtype=dtype,
                   device=device)
    g[1] *= -1
    out = perturb(x, g, 1.0, clip_min=-1.0, clip_max=1.0)
    step = 1.0 / 75 ** 0.5
    assert torch.allclose(out[0].double(), torch.ones(75, dtype=torch.float64, device=device))
    assert torch.allclose(out[1].double(), torch.full((75,), 0.9 - step, dtype=torch.float64,
                                                      device=device), rtol=1e-6)


class Scale(torch.nn.Module):
    def __init__(self, factor):
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return x * self.factor


@pytest.mark.parametrize("device", DEVICES)
def test_ssir_loss_tiny_output_scale_keeps_bound(device):
    """A model whose output is scaled by 1e-24 gives input gradients of ~1e-24: the perturbed
    inputs of SSIRLoss(epsilon=1e-3) still lie within 1e-3 of x (was 4.14e-3)."""
    torch.manual_seed(0)
    net = torch.nn.Linear(100, 1).to(device)
    model = torch.nn.Sequential(net, Scale(1e-24))
    loss = SSIRLoss(epsilon=1e-3, lam=1.0, bin_width=1.0)
    x = torch.randn(8, 100, device=device)
    y = torch.randn(8, 1, device=device) * 1e-24
    seen = []
    orig = net.forward

    def spy(inp):
        if inp.data_ptr() != x.data_ptr():
            seen.append((inp.detach() - x).norm(dim=1).max().item())
        return orig(inp)

    net.forward = spy
    loss(model, x, y)
    assert seen and max(seen) <= 1e-3 * (1 + 1e-4), seen
