"""The bin_reduce_nd op (per-bin error sums of vector targets, the D-dim bin computed in the
kernel) against a float64 loop over the rows written here, the pure-PyTorch fallback, opcheck,
and the CUDA kernel where a GPU is present."""
import math

import numpy as np
import pytest
import torch

import ssir_fast
from ssir_fast.imbalance import LabelBins
from ssir_fast.ops import bin_reduce_nd
from ssir_fast.ops.bin_reduce_nd import (COUNT, N_FLOORED, N_NONFINITE, N_OUT_OF_RANGE, SUM_ABS,
                                         SUM_ABS_DIM, SUM_L2, bin_reduce_nd_torch, nd_columns)

needs_ext = pytest.mark.skipif(not ssir_fast.HAS_EXTENSION, reason="extension not built")
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
FL = 1e-8

AXES = [(0.0, 1.0, 6), (-1.0, 0.5, 5), (2.0, 0.25, 4)]


def loop_reference(pred, target, axes, mask=None, floor=FL):
    """float64, one row at a time: the flat row-major bin (power-of-two widths: the float64 floor
    is exact) and the row's errors, added to a [prod(n), 8 + D] table."""
    p = np.asarray(pred, dtype=np.float64).reshape(-1, len(axes))
    y = np.asarray(target, dtype=np.float64).reshape(-1, len(axes))
    keep = np.ones(len(p), bool) if mask is None else np.asarray(mask).reshape(-1)
    d = len(axes)
    table = np.zeros((math.prod(a[2] for a in axes), 8 + d))
    for row in range(len(p)):
        if not keep[row]:
            continue
        flat, oor = 0, False
        for (y0, w, n), v in zip(axes, y[row]):
            i = math.floor((v - y0) / w) if math.isfinite(v) else 0
            oor |= not 0 <= i < n
            flat = flat * n + min(max(i, 0), n - 1)
        if not (np.isfinite(p[row]).all() and np.isfinite(y[row]).all()):
            table[flat, 7] += 1
            continue
        errs = [p[row][k] - y[row][k] for k in range(d)]
        m = sum(abs(e) for e in errs) / d
        sq = sum(e * e for e in errs)
        table[flat, :8] += [1, m, sq / d, math.log(max(m, floor)), m < floor, math.sqrt(sq), oor, 0]
        for k in range(d):
            table[flat, 8 + k] += abs(errs[k])
    return table


def _data(d, n=2000, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    axes = AXES[:d]
    y = torch.stack([y0 - 2 * w + torch.rand(n, generator=g, dtype=torch.float64) * (nb + 4) * w
                     for y0, w, nb in axes], 1)
    p = y + torch.randn(n, d, generator=g, dtype=torch.float64)
    return p.to(dtype), y.to(dtype), axes


def _args(axes):
    return [a[0] for a in axes], [a[1] for a in axes], [a[2] for a in axes]


@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("fn", [bin_reduce_nd, bin_reduce_nd_torch])
def test_matches_loop_reference_float64(d, fn):
    p, y, axes = _data(d, dtype=torch.float64)
    p[:5] = y[:5]       # exact zeros: floored rows
    out = fn(p, y, *_args(axes))
    ref = loop_reference(p, y, axes)
    assert out.dtype == torch.float64 and out.shape == (math.prod(a[2] for a in axes), 8 + d)
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-12, atol=1e-9)
    assert out[:, N_FLOORED].sum() == 5 and out[:, N_OUT_OF_RANGE].sum() > 0


@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 1e-5), (torch.float16, 2e-3),
                                        (torch.bfloat16, 2e-2)])
def test_low_precision_inputs(dtype, rtol):
    p, y, axes = _data(2, dtype=dtype)
    out = bin_reduce_nd(p, y, *_args(axes))
    ref = loop_reference(p.double(), y.double(), axes)
    np.testing.assert_array_equal(out[:, COUNT].numpy(), ref[:, COUNT])
    np.testing.assert_allclose(out.numpy(), ref, rtol=rtol, atol=1e-3)
    np.testing.assert_allclose(out.numpy(), bin_reduce_nd_torch(p, y, *_args(axes)).numpy(),
                               rtol=1e-12, atol=1e-9)


def test_flat_index_is_labelbins_and_decimal_rule():
    """The kernel's flat bin is LabelBins.index of the grid, the 0.1 m float32 rule included."""
    bins = LabelBins((0.7, -1.0), (0.1, 0.5), (93, 4))
    depth = torch.arange(1, 10001, dtype=torch.float32) / 1000.0      # millimetre depths
    y = torch.stack([depth, torch.linspace(-2, 2, depth.numel())], 1)
    out = bin_reduce_nd(y + 0.01, y, bins.y_min, bins.bin_width, bins.num_bins)
    counts = torch.bincount(bins.index(y), minlength=bins.size)
    np.testing.assert_array_equal(out[:, COUNT].numpy(), counts.double().numpy())


def test_mask_rows_and_dense_leading_shape():
    p, y, axes = _data(2, n=600)
    m = torch.rand(600, generator=torch.Generator().manual_seed(1)) < 0.4
    out = bin_reduce_nd(p.reshape(20, 30, 2), y.reshape(20, 30, 2), *_args(axes),
                        mask=m.reshape(20, 30))
    ref = loop_reference(p.double(), y.double(), axes, m.numpy())
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-5, atol=1e-4)
    # non-contiguous input (every other row)
    out2 = bin_reduce_nd(p[::2], y[::2], *_args(axes))
    np.testing.assert_allclose(out2.numpy(), loop_reference(p[::2].double(), y[::2].double(),
                                                            axes), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("fn", [bin_reduce_nd, bin_reduce_nd_torch])
def test_nonfinite_raises_or_is_counted(fn):
    p, y, axes = _data(2, n=100, dtype=torch.float64)
    p[3, 1] = float("nan")
    y[7, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or inf .*2 rows"):
        fn(p, y, *_args(axes))
    out = fn(p, y, *_args(axes), allow_nonfinite=True)
    np.testing.assert_allclose(out.numpy(), loop_reference(p, y, axes), rtol=1e-12, atol=1e-9)
    assert out[:, N_NONFINITE].sum() == 2 and out[:, COUNT].sum() == 98


def test_hand_values_one_row():
    out = bin_reduce_nd(torch.tensor([[3.0, 1.0]], dtype=torch.float64),
                        torch.tensor([[0.5, 5.0]], dtype=torch.float64), [0.0, 0.0], [1.0, 2.0],
                        [2, 2])
    # y = (0.5, 5.0): bins (0, clamp(2) = 1) -> flat 1, out of range; e = (2.5, -4)
    row = out[1].tolist()
    assert row[COUNT] == 1 and row[SUM_ABS] == 3.25 and row[SUM_L2] == math.sqrt(22.25)
    assert row[N_OUT_OF_RANGE] == 1 and row[SUM_ABS_DIM:] == [2.5, 4.0]
    assert out[[0, 2, 3]].abs().sum() == 0
    assert len(nd_columns(2)) == 10


def test_empty_input():
    e = torch.empty(0, 3)
    out = bin_reduce_nd(e, e, [0.0] * 3, [1.0] * 3, [2, 3, 4])
    assert out.shape == (24, 11) and out.abs().sum() == 0


def test_bad_arguments_name_the_argument():
    p = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="one entry per dimension"):
        bin_reduce_nd(p, p, [0.0], [1.0, 1.0], [3, 3])
    with pytest.raises(ValueError, match=r"pred must have shape \[\.\.\., 3\]"):
        bin_reduce_nd(p, p, [0.0] * 3, [1.0] * 3, [3] * 3)
    with pytest.raises(ValueError, match=r"bin_width\[1\] must be finite and > 0"):
        bin_reduce_nd(p, p, [0.0, 0.0], [1.0, 0.0], [3, 3])
    with pytest.raises(ValueError, match=r"num_bins\[0\] must be >= 1"):
        bin_reduce_nd(p, p, [0.0, 0.0], [1.0, 1.0], [0, 3])
    with pytest.raises(ValueError, match="1 to 8 entries"):
        bin_reduce_nd(torch.zeros(2, 9), torch.zeros(2, 9), [0.0] * 9, [1.0] * 9, [1] * 9)
    with pytest.raises(ValueError, match="more than 4194304"):
        bin_reduce_nd(p, p, [0.0, 0.0], [1.0, 1.0], [3000, 3000])
    with pytest.raises(TypeError, match="same dtype"):
        bin_reduce_nd(p, p.double(), [0.0, 0.0], [1.0, 1.0], [3, 3])
    with pytest.raises(TypeError, match="y_min must be a sequence"):
        bin_reduce_nd(p, p, 0.0, [1.0, 1.0], [3, 3])
    with pytest.raises(TypeError, match=r"num_bins\[1\] must be an integer"):
        bin_reduce_nd(p, p, [0.0, 0.0], [1.0, 1.0], [3, 2.5])
    with pytest.raises(ValueError, match="mask must have pred's leading shape"):
        bin_reduce_nd(p, p, [0.0, 0.0], [1.0, 1.0], [3, 3], mask=torch.ones(4, 2, dtype=bool))
    with pytest.raises(TypeError, match="mask must be a bool tensor"):
        bin_reduce_nd(p, p, [0.0, 0.0], [1.0, 1.0], [3, 3], mask=torch.ones(4))


@needs_ext
def test_kernel_checks_name_the_argument():
    p = torch.zeros(4, 2)
    with pytest.raises(ValueError, match=r"bin_reduce_nd: y_min\[0\] must be finite"):
        torch.ops.ssir_fast.bin_reduce_nd(p, p, [math.inf, 0.0], [1.0, 1.0], [3, 3])


@needs_ext
def test_cpu_kernel_is_deterministic_and_threaded_equal():
    p, y, axes = _data(3, n=70000, dtype=torch.float32, seed=3)
    a = bin_reduce_nd(p, y, *_args(axes))
    torch.testing.assert_close(a, bin_reduce_nd(p, y, *_args(axes)), rtol=0, atol=0)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = bin_reduce_nd(p, y, *_args(axes))
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(a, one, rtol=1e-12, atol=1e-9)


@needs_ext
def test_cpu_kernel_large_grid_splits_bins():
    """10^6 bins: the threads split the table (no partial tables); each bin sums its rows in row
    order, so 1 and 2 threads give the same bits, and the fallback agrees."""
    g = torch.Generator().manual_seed(5)
    y = torch.rand(40000, 3, generator=g, dtype=torch.float64) * 100
    p = y + torch.randn(40000, 3, generator=g, dtype=torch.float64)
    args = ([0.0] * 3, [1.0] * 3, [100] * 3)
    m = torch.rand(40000, generator=g) < 0.8
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        two = bin_reduce_nd(p, y, *args, mask=m)
        torch.set_num_threads(1)
        one = bin_reduce_nd(p, y, *args, mask=m)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)
    torch.testing.assert_close(two, bin_reduce_nd_torch(p, y, *args, mask=m), rtol=1e-12,
                               atol=1e-9)
    sel = m.nonzero().reshape(-1)[:300]       # spot check against the loop on some rows
    ref = loop_reference(p[sel], y[sel], [(0.0, 1.0, 100)] * 3)
    np.testing.assert_allclose(bin_reduce_nd(p[sel], y[sel], *args).numpy(), ref, rtol=1e-12,
                               atol=1e-9)


@needs_ext
@pytest.mark.parametrize("with_mask", [False, True])
def test_opcheck(with_mask):
    p, y, axes = _data(2, n=300)
    m = (torch.arange(300) % 3 == 0) if with_mask else None
    torch.library.opcheck(torch.ops.ssir_fast.bin_reduce_nd.default,
                          (p, y, *_args(axes), m, 1e-8, False))


@needs_ext
def test_torch_compile_fullgraph():
    p, y, axes = _data(2, n=256)
    fn = torch.compile(lambda a, b: bin_reduce_nd(a, b, *_args(axes)), fullgraph=True,
                       backend="eager")
    torch.testing.assert_close(fn(p, y), bin_reduce_nd(p, y, *_args(axes)))


def test_fallback_without_extension(monkeypatch):
    from ssir_fast import _extension
    p, y, axes = _data(2, n=500)
    want = bin_reduce_nd(p, y, *_args(axes))
    monkeypatch.setattr(_extension, "HAS_EXTENSION", False)
    torch.testing.assert_close(bin_reduce_nd(p, y, *_args(axes)), want, rtol=1e-12, atol=1e-9)


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("d,grid", [(1, None), (2, None), (3, None), (2, (300, 400))])
def test_cuda_equals_cpu(dtype, d, grid):
    p, y, axes = _data(d, n=50000, dtype=dtype)
    args = _args(axes)
    if grid is not None:     # a grid too large for the shared-memory table
        args = (args[0], [8.0 / grid[0], 4.0 / grid[1]], list(grid))
    m = torch.rand(50000, generator=torch.Generator().manual_seed(2)) < 0.7
    cpu = bin_reduce_nd(p, y, *args, mask=m)
    gpu = bin_reduce_nd(p.cuda(), y.cuda(), *args, mask=m.cuda())
    assert gpu.device.type == "cuda"
    np.testing.assert_array_equal(gpu[:, COUNT].cpu().numpy(), cpu[:, COUNT].numpy())
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-9, atol=1e-7)


@cuda
def test_cuda_nonfinite_and_opcheck():
    p, y, axes = _data(2, n=1000, dtype=torch.float32)
    p[10, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        bin_reduce_nd(p.cuda(), y.cuda(), *_args(axes))
    out = bin_reduce_nd(p.cuda(), y.cuda(), *_args(axes), allow_nonfinite=True)
    assert out[:, N_NONFINITE].sum().item() == 1
    p[10, 0] = 0.0
    torch.library.opcheck(torch.ops.ssir_fast.bin_reduce_nd.default,
                          (p.cuda(), y.cuda(), *_args(axes), None, 1e-8, False))
