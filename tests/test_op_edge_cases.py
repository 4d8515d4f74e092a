"""Op-level edge cases on every device: NaN/inf, denormal values, empty inputs, misaligned views,
5000- and 100000-bin tables. Each case runs on the CPU (the C++ kernel against the float64
reference, or the float64 PyTorch fallback where the reference has no rule for the case) and, on
a GPU, on CUDA (the CUDA kernel against the same); the CUDA cases skip without a GPU."""
import math

import numpy as np
import pytest
import torch

from ssir_fast.ops import bin_feature_stats, bin_reduce, fds_calibrate, perturb
from ssir_fast.ops.bin_reduce import COLUMNS, COUNT, N_NONFINITE, NUM_COLUMNS, bin_reduce_torch
from ssir_fast.ops.perturb import perturb_torch
from ssir_fast.reference import (bin_feature_stats_reference, bin_reduce_reference,
                                 fds_calibrate_reference, perturb_reference)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=cuda)]
TOL = {torch.float64: 1e-12, torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 2e-2}


def misaligned(t, offset):
    """`t`'s values in a view whose data starts `offset` elements into its storage (not 16-byte
    aligned for offset % (16 / element size) != 0): the kernels' scalar paths."""
    buf = torch.zeros(t.numel() + offset, dtype=t.dtype, device=t.device)
    view = buf[offset:].view(t.shape)
    view.copy_(t)
    return view


def _assert_close(out, want, dtype):
    out, want = out.detach().cpu().double(), want.detach().cpu().double()
    scale = want[torch.isfinite(want)].abs().max().clamp_min(1.0) if want.numel() else 1.0
    torch.testing.assert_close(out, want, rtol=0, atol=TOL[dtype] * scale, equal_nan=True)


# ---- perturb ----------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", list(TOL))
def test_perturb_empty(device, dtype):
    for shape in ((0, 3, 5), (4, 0), (0,)):
        x = torch.empty(shape, device=device, dtype=dtype)
        out = perturb(x, x, 0.3, -1.0, 1.0)
        assert out.shape == shape and out.dtype == dtype and out.device.type == device
    x = torch.empty(0, 3, 5, device=device, dtype=dtype, requires_grad=True)
    per_sample = torch.empty(0, device=device)
    perturb(x, x.detach(), per_sample, torch.tensor([-1.0, 0.0, -2.0]), 1.0).sum().backward()
    assert x.grad.shape == x.shape


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", list(TOL))
@pytest.mark.parametrize("offsets", [(1, 2, 3), (3, 0, 1), (0, 1, 0)])
def test_perturb_misaligned_views(device, dtype, offsets):
    torch.manual_seed(1)
    for shape, lo, hi in (((5, 1001), -1.0, 1.0),
                          ((3, 3, 17, 19), torch.tensor([-1.0, -0.5, -2.0]), torch.tensor([1.0, 0.5, 2.0])),
                          ((2, 20_003), None, None)):
        x0 = torch.randn(shape, device=device).to(dtype)
        g0 = torch.randn(shape, device=device).to(dtype)
        x, g = misaligned(x0, offsets[0]), misaligned(g0, offsets[1])
        out = misaligned(torch.empty_like(x0), offsets[2])
        eps = torch.rand(shape[0], device=device) + 0.1
        got = perturb(x, g, eps, lo, hi, out=out)
        assert got.data_ptr() == out.data_ptr()
        _assert_close(got, perturb_reference(x0, g0, eps, lo, hi), dtype)


def _nonfinite_inputs(device):
    x = torch.linspace(-0.9, 0.9, 5 * 37).reshape(5, 37)
    g = torch.cos(torch.arange(5 * 37.0)).reshape(5, 37)
    x[0, 3], x[1, 0], x[1, 36] = float("nan"), float("inf"), float("-inf")
    g[2, 5], g[3, 7], g[4, 1] = float("inf"), float("nan"), float("-inf")
    return x.to(device), g.to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("clip", [False, True])
def test_perturb_nonfinite_inputs(device, clip):
    """NaN/inf in x stay in their element (NaN is not clipped away: torch.clamp's rule); a row of
    g with inf or NaN has an inf/NaN norm: it gets no step, and its non-finite element gives NaN
    (0 * inf). The kernels must agree with the float64 PyTorch fallback, on every device."""
    x, g = _nonfinite_inputs(device)
    lo, hi = (torch.tensor(-0.5), torch.tensor(0.5)) if clip else (None, None)
    got = perturb(x, g, 0.3, lo, hi)
    want = perturb_torch(x.double().cpu(), g.double().cpu(), 0.3, lo, hi)
    assert torch.isnan(want[0, 3]) and torch.isnan(want[3, 7]) and torch.isnan(want[2, 5])
    _assert_close(got, want, torch.float32)
    # rows 2-4 (non-finite norm) get no step: their finite elements are clip(x)
    finite = torch.isfinite(g[2:].cpu())
    xc = x[2:].double().cpu()
    if clip:
        xc = xc.clamp(-0.5, 0.5)
    assert torch.equal(got[2:].double().cpu()[finite], xc[finite])


# A row of subnormal g: its fp32 sum of squares underflows. The step must then be none or one of
# norm eps along g, never longer than eps (the kernels rescale such a row, as BLAS nrm2 does).
DENORMAL_CASES = [pytest.param(dev, dt, n, id=f"{dev}-{str(dt)[6:]}-{n}", marks=m)
                  for dev, m in (("cpu", []), ("cuda", [cuda]))
                  for dt in (torch.float32, torch.bfloat16, torch.float16, torch.float64)
                  for n in (5, 33, 20_000)]


@pytest.mark.parametrize("device,dtype,n", DENORMAL_CASES)
def test_perturb_denormal_gradient_step_is_bounded(device, dtype, n):
    tiny = torch.finfo(dtype).tiny / 4   # subnormal in this dtype
    x = torch.zeros(2, n, device=device, dtype=dtype)
    g = torch.full((2, n), tiny, device=device, dtype=dtype)
    g[1] = -g[1]
    eps = 0.3
    step = (perturb(x, g, eps) - x).double().cpu()
    norms = step.norm(dim=1)
    for i in range(2):
        assert norms[i] == 0 or norms[i] == pytest.approx(eps, rel=TOL[dtype] * 4), norms
        # along g: every element moved alike, in g's sign
        assert torch.all(step[i] == step[i, 0]) and (step[i, 0] == 0 or
                                                    math.copysign(1, step[i, 0]) == (1 if i == 0 else -1))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", list(TOL))
def test_perturb_denormal_inputs_follow_the_reference(device, dtype):
    tiny = torch.finfo(dtype).tiny / 4
    torch.manual_seed(2)
    x = torch.full((3, 4, 11), tiny, device=device, dtype=dtype)
    x[1] = -x[1]
    g = torch.randn(3, 4, 11, device=device).to(dtype)
    _assert_close(perturb(x, g, 1e-3, -1.0, 1.0), perturb_reference(x, g, 1e-3, -1.0, 1.0), dtype)


# ---- bin_reduce -------------------------------------------------------------------------------
def _compare_tables(out, want, rtol, atol=1e-9):
    out, want = out.detach().cpu().double().numpy(), np.asarray(want, dtype=np.float64)
    counts = [i for i, c in enumerate(COLUMNS) if c.startswith(("n_", "count"))]
    sums = [i for i in range(NUM_COLUMNS) if i not in counts]
    # a ratio within one fp32 rounding of 1.25^k may land on either side: allow 1 count
    np.testing.assert_allclose(out[:, counts], want[:, counts], atol=1, rtol=0)
    np.testing.assert_array_equal(out[:, COUNT], want[:, COUNT])
    np.testing.assert_allclose(out[:, sums], want[:, sums], rtol=rtol, atol=atol)


def _pairs(n, seed, y_hi=10.0):
    g = torch.Generator().manual_seed(seed)
    y = torch.rand(n, generator=g, dtype=torch.float64) * y_hi + 0.05
    p = y + torch.randn(n, generator=g, dtype=torch.float64)
    return p.float(), y.float()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("num_bins", [5000, 100_000])
def test_bin_reduce_empty(device, num_bins):
    e = torch.empty(0, 7, device=device)
    for mask in (None, torch.zeros(0, 7, dtype=torch.bool, device=device)):
        out = bin_reduce(e, e, 0.0, 1e-4, num_bins, mask=mask)
        assert out.shape == (num_bins, NUM_COLUMNS) and out.device.type == device
        assert out.abs().sum().item() == 0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("num_bins", [5000, 100_000])
@pytest.mark.parametrize("offset", [0, 1, 3])
def test_bin_reduce_many_bins_misaligned_masked(device, num_bins, offset):
    """The global-atomic path (bins beyond shared memory) on a misaligned view, with and without a
    mask, against the PyTorch fallback on the same fp32 pairs (the per-bin numpy reference is too
    slow at 10^5 bins); with 2 pairs a bin, the log sums nearly cancel: an absolute tolerance."""
    p, y = _pairs(200_003, seed=num_bins + offset)
    mask = torch.rand(p.shape, generator=torch.Generator().manual_seed(offset)) < 0.6
    width = 10.0 / num_bins
    pv, yv = misaligned(p.to(device), offset), misaligned(y.to(device), offset)
    mv = misaligned(mask.to(device), offset)
    for m, mcpu in ((None, None), (mv, mask)):
        out = bin_reduce(pv, yv, 0.05, width, num_bins, mask=m)
        want = bin_reduce_torch(p, y, 0.05, width, num_bins, mask=mcpu)
        assert out.shape == (num_bins, NUM_COLUMNS)
        _compare_tables(out, want, 1e-5, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("num_bins", [93, 5000, 100_000])
def test_bin_reduce_nonfinite_and_denormal(device, num_bins):
    p, y = _pairs(50_001, seed=7)
    tiny = torch.finfo(torch.float32).tiny / 4
    p[::1000], y[5::1000] = tiny, tiny                    # subnormal predictions and targets
    p[11], p[12], p[13] = float("nan"), float("inf"), float("-inf")
    y[21], y[22], y[23] = float("nan"), float("inf"), float("-inf")
    p[31], y[31] = float("inf"), float("inf")
    pd, yd = p.to(device), y.to(device)
    with pytest.raises(ValueError, match="NaN or inf"):
        bin_reduce(pd, yd, 0.05, 10.0 / num_bins, num_bins)
    out = bin_reduce(pd, yd, 0.05, 10.0 / num_bins, num_bins, allow_nonfinite=True)
    assert out[:, N_NONFINITE].sum().item() == 7 and out[:, COUNT].sum().item() == 50_001 - 7
    if num_bins <= 5000:
        want = bin_reduce_reference(p, y, 0.05, 10.0 / num_bins, num_bins)
    else:
        want = bin_reduce_torch(p, y, 0.05, 10.0 / num_bins, num_bins, allow_nonfinite=True)
    _compare_tables(out, want, 1e-5, atol=1e-6)


# ---- bin_feature_stats and fds_calibrate ------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fds_ops_empty(device, dtype):
    f = torch.empty(0, 5, device=device, dtype=dtype)
    idx = torch.empty(0, dtype=torch.long, device=device)
    count, mean, var = bin_feature_stats(f, idx, 5000)
    assert count.shape == (5000,) and mean.shape == var.shape == (5000, 5)
    assert count.sum().item() == 0 and mean.abs().sum().item() == 0 and var.abs().sum().item() == 0
    out = fds_calibrate(f, idx, mean, var, mean, var + 1)
    assert out.shape == (0, 5) and out.device.type == device


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fds_ops_5000_bins_misaligned_denormal_nonfinite(device, dtype):
    """5000 bins (most with 0-2 samples), a misaligned features view, a bin of subnormal features
    (variance 0: left unchanged) and a sample with NaN (its bin's statistics are NaN, which
    fds_calibrate refuses on the CPU), against the float64 references."""
    g = torch.Generator().manual_seed(3)
    n, c, b = 6007, 7, 5000
    f = torch.randn(n, c, generator=g, dtype=torch.float64).to(dtype)
    idx = torch.randint(-1, b - 10, (n,), generator=g)   # no random sample in the last 10 bins
    idx[idx == 123] = -1
    idx[:40] = 17                                        # one well-filled bin
    idx[40:45], f[40:45] = b - 1, torch.finfo(dtype).tiny / 4
    idx[46], idx[47] = b, b + 7                          # outside [0, b): ignored
    idx[50], f[50, 2] = 123, float("nan")
    fv, iv = misaligned(f.to(device), 1), misaligned(idx.to(device), 1)
    count, mean, var = bin_feature_stats(fv, iv, b)
    rc, rm, rv = bin_feature_stats_reference(f, idx, b)
    assert torch.equal(count.cpu(), rc)
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    torch.testing.assert_close(mean.cpu().double(), rm, rtol=tol, atol=tol, equal_nan=True)
    torch.testing.assert_close(var.cpu().double(), rv, rtol=tol, atol=tol, equal_nan=True)
    assert count[b - 1] == 5 and var[b - 1].abs().sum().item() == 0 and torch.isnan(mean[123, 2])
    sm, sv = mean + 0.25, var * 2 + 0.5
    if device == "cpu":   # NaN statistics would calibrate every feature of the bin to NaN: refused
        with pytest.raises(ValueError, match="mean contains NaN or inf"):
            fds_calibrate(fv, iv, mean, var, sm, sv)
    mean, var, sm, sv = (t.nan_to_num() for t in (mean, var, sm, sv))
    rows = slice(0, 400)          # the per-sample reference is a Python loop: a few hundred rows
    out = fds_calibrate(fv, iv, mean, var, sm, sv)
    want = fds_calibrate_reference(f[rows], idx[rows], mean, var, sm, sv, 0.1, 10.0)
    torch.testing.assert_close(out[rows].cpu().double(), want, rtol=tol * 4, atol=tol * 4,
                               equal_nan=True)
    assert torch.equal(out[40:45].cpu(), f[40:45])       # zero-variance bin: unchanged
