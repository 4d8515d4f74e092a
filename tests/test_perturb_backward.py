"""perturb's backward (w.r.t. x and g) against autograd through the eager formula, every bound
kind and dtype, values on the clip bounds included."""
import pytest
import torch

from ssir_fast.ops import perturb
from ssir_fast.ops.perturb import clip_bound, perturb_torch

TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 2e-2}


def _eager(x, g, eps, lo, hi, eps_rows):
    """perturb_torch's formula with the clip written out so that its gradient passes on the bounds
    (lo <= v <= hi), the op's rule. torch.clamp's own gradient there depends on the torch version
    (2.14 gives 0 for float bounds and 1/2 for tensor bounds, earlier versions 1)."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    n = x.shape[0]
    norm = g.reshape(n, -1).to(acc).norm(dim=1)
    radius = eps if eps_rows is None else (eps * eps_rows.double()).to(acc)
    scale = torch.where(norm > 0, radius / norm, torch.zeros_like(norm)).reshape(-1, 1, 1, 1)
    v = x.to(acc) + scale * g.to(acc)
    view = [None if b is None else b.reshape(1, -1, 1, 1) if b.numel() > 1 else b.reshape(())
            for b in (lo, hi)]
    if view[0] is not None or view[1] is not None:
        inside = torch.ones_like(v, dtype=torch.bool)
        if view[0] is not None:
            inside &= v.detach() >= view[0]
        if view[1] is not None:
            inside &= v.detach() <= view[1]
        v = torch.where(inside, v, torch.clamp(v.detach(), view[0], view[1]))
    return v.to(x.dtype)


@pytest.mark.parametrize("dtype", list(TOL))
@pytest.mark.parametrize("bounds", ["none", "scalar", "per_channel", "min_only"])
@pytest.mark.parametrize("per_sample", [False, True])
def test_backward_equals_autograd_through_the_eager_formula(dtype, bounds, per_sample):
    torch.manual_seed(0)
    x = torch.randn(5, 3, 4, 4, dtype=torch.float64) * 0.8
    g = torch.randn(5, 3, 4, 4, dtype=torch.float64)
    lo, hi = {"none": (None, None), "scalar": (-1.0, 1.0), "min_only": (-0.5, None),
              "per_channel": ([-1.0, -0.5, -2.0], [1.0, 0.4, 2.0])}[bounds]
    g[0] = 0.0                     # no direction: x passes through; on the bounds exactly:
    if lo is not None:             # the gradient passes there (lo <= v <= hi)
        x[0, :, 0] = torch.as_tensor(lo, dtype=torch.float64).reshape(-1, 1)
    if hi is not None:
        x[0, :, 1] = torch.as_tensor(hi, dtype=torch.float64).reshape(-1, 1)
    eps = torch.rand(5, dtype=torch.float64) * 0.9 + 0.1 if per_sample else 0.7
    w = torch.randn(5, 3, 4, 4, dtype=torch.float64)
    x, g, w = (t.to(dtype) for t in (x, g, w))
    eps_op = eps.to(dtype) if per_sample else eps

    xa, ga = x.clone().requires_grad_(True), g.clone().requires_grad_(True)
    gx, gg = torch.autograd.grad((perturb(xa, ga, eps_op, lo, hi) * w).sum(), (xa, ga))

    xb, gb = x.clone().requires_grad_(True), g.clone().requires_grad_(True)
    lo_t, hi_t = clip_bound(lo, "clip_min"), clip_bound(hi, "clip_max")
    ref = _eager(xb, gb, 1.0 if per_sample else eps, lo_t, hi_t, eps_op if per_sample else None)
    with torch.no_grad():   # the same values as the package's eager version
        torch.testing.assert_close(ref, perturb_torch(xb, gb, 1.0 if per_sample else eps, lo_t,
                                                      hi_t, eps_op if per_sample else None))
    rx, rg = torch.autograd.grad((ref * w).sum(), (xb, gb))
    tol = TOL[dtype]
    torch.testing.assert_close(gx, rx, rtol=tol, atol=tol)
    # row 0 has g = 0: the eager formula's gradient there is NaN (eps / ||g|| at 0), the op's 0
    torch.testing.assert_close(gg[1:], rg[1:], rtol=tol, atol=tol)
    assert torch.equal(gg[0], torch.zeros_like(gg[0]))
