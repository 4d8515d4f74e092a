"""The bin_reduce op (docs/algorithm.md, section 4) against a hand-computed table and the float64
numpy reference."""
import math

import numpy as np
import pytest
import torch

import ssir_fast
from ssir_fast.ops import bin_reduce
from ssir_fast.ops.bin_reduce import (COLUMNS, COUNT, N_DELTA1, N_NONFINITE, N_OUT_OF_RANGE,
                                      NUM_COLUMNS, SUM_ABS, bin_reduce_torch)
from ssir_fast.reference import bin_reduce_reference

needs_ext = pytest.mark.skipif(not ssir_fast.HAS_EXTENSION, reason="extension not built")
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
FL = 1e-8


def _row(p, y):
    """Hand formula for one pair's contribution (float64), columns as COLUMNS."""
    e = p - y
    a = abs(e)
    pc, yc = max(p, FL), max(y, FL)
    r = max(pc / yc, yc / pc)
    return [1, a, e * e, math.log(max(a, FL)), float(a < FL), float(r < 1.25), float(r < 1.5625),
            float(r < 1.953125), a / yc, abs(math.log10(pc) - math.log10(yc)), 0, 0]


def hand_table():
    """Bins [0,1), [1,2), [2,3). Pairs chosen so that every column is exercised."""
    t = np.zeros((3, NUM_COLUMNS))
    pairs = [
        (1.0, 0.5, 0, False),    # e = 0.5, ratio 2: no delta
        (0.5, 0.5, 0, False),    # zero error: floored, log = log(1e-8), all deltas
        (2.0, 1.75, 1, False),   # ratio 8/7: all deltas
        (3.0, 5.0, 2, True),     # above the range: last bin, counted; ratio 5/3: delta3 only
        (-1.0, -0.5, 0, True),   # below the range: first bin; p, y floored to 1e-8 for ratios
        (2.5, 2.0, 2, False),    # ratio exactly 1.25: not < 1.25 (delta1 0), delta2/3 1
    ]
    for p, y, b, oor in pairs:
        row = _row(p, y)
        row[N_OUT_OF_RANGE] = float(oor)
        t[b] += row
    p = torch.tensor([q[0] for q in pairs], dtype=torch.float32)
    y = torch.tensor([q[1] for q in pairs], dtype=torch.float32)
    return p, y, t


def test_columns_are_named():
    assert len(COLUMNS) == NUM_COLUMNS == 12


def test_hand_table():
    p, y, expected = hand_table()
    out = bin_reduce(p, y, 0.0, 1.0, 3)
    assert out.dtype == torch.float64 and out.shape == (3, NUM_COLUMNS)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-6, atol=0)
    # the spot values the table is about
    assert out[0, 4] == 1 and out[2, N_OUT_OF_RANGE] == 1 and out[0, N_OUT_OF_RANGE] == 1
    # bin 2: ratio 5/3 (delta3 only) and ratio exactly 1.25 (not < 1.25: delta2, delta3)
    assert out[2, N_DELTA1].item() == 0 and out[2, N_DELTA1 + 1].item() == 1
    assert out[2, N_DELTA1 + 2].item() == 2
    np.testing.assert_allclose(bin_reduce_torch(p, y, 0.0, 1.0, 3).numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(bin_reduce_reference(p, y, 0.0, 1.0, 3), expected, rtol=1e-12)


def _data(n, dtype, seed=0, shape=None, y_lo=0.5, y_hi=12.0):
    g = torch.Generator().manual_seed(seed)
    y = torch.rand(n, generator=g, dtype=torch.float64) * (y_hi - y_lo) + y_lo
    p = y + torch.randn(n, generator=g, dtype=torch.float64) * 1.5
    p[::97] = y[::97]  # some exact zero errors
    shape = shape or (n,)
    return p.to(dtype).reshape(shape), y.to(dtype).reshape(shape)


def _compare(out, ref, rtol):
    out = out.detach().cpu().double().numpy()
    counts = [i for i, c in enumerate(COLUMNS) if c.startswith(("n_", "count"))]
    sums = [i for i in range(NUM_COLUMNS) if i not in counts]
    # a ratio within one fp32 rounding of 1.25^k may land on either side: allow 1 count
    np.testing.assert_allclose(out[:, counts], ref[:, counts], atol=1, rtol=0)
    np.testing.assert_array_equal(out[:, [COUNT, N_OUT_OF_RANGE]], ref[:, [COUNT, N_OUT_OF_RANGE]])
    np.testing.assert_allclose(out[:, sums], ref[:, sums], rtol=rtol, atol=1e-9)


@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 2e-6), (torch.float64, 1e-10),
                                        (torch.float16, 2e-3), (torch.bfloat16, 2e-2)])
def test_matches_float64_reference(dtype, rtol):
    # 300k pairs: several parallel_for ranges, so the per-thread partials are merged
    p, y = _data(300_000, dtype)
    out = bin_reduce(p, y, 1.0, 0.5, 20)
    # the reference sees the same (rounded) inputs
    _compare(out, bin_reduce_reference(p, y, 1.0, 0.5, 20), rtol)


def test_dense_maps_any_shape_and_noncontiguous():
    p, y = _data(2 * 3 * 40 * 50, torch.float32, shape=(2, 3, 40, 50))
    ref = bin_reduce_reference(p, y, 0.7, 0.1, 93)
    _compare(bin_reduce(p, y, 0.7, 0.1, 93), ref, 2e-6)
    pt, yt = p.transpose(2, 3), y.transpose(2, 3)  # same pairs, non-contiguous
    assert not pt.is_contiguous()
    _compare(bin_reduce(pt, yt, 0.7, 0.1, 93), ref, 2e-6)


def test_mask_selects_pairs():
    p, y = _data(50_000, torch.float32, shape=(10, 5000))
    mask = torch.rand(10, 5000, generator=torch.Generator().manual_seed(1)) < 0.3
    out = bin_reduce(p, y, 0.0, 1.0, 13, mask=mask)
    _compare(out, bin_reduce_reference(p[mask], y[mask], 0.0, 1.0, 13), 2e-6)
    _compare(bin_reduce_torch(p, y, 0.0, 1.0, 13, mask=mask),
             bin_reduce_reference(p, y, 0.0, 1.0, 13, mask=mask), 2e-6)
    assert bin_reduce(p, y, 0.0, 1.0, 13, mask=torch.zeros_like(mask)).abs().sum() == 0


def test_single_bin_and_out_of_range_everywhere():
    p, y = _data(1000, torch.float32)
    out = bin_reduce(p, y, 100.0, 1.0, 1)  # every target below the only bin
    assert out[0, COUNT] == 1000 and out[0, N_OUT_OF_RANGE] == 1000
    np.testing.assert_allclose(out[0, SUM_ABS].item(), (p - y).abs().double().sum().item(), rtol=1e-6)


def test_empty_input():
    e = torch.empty(0)
    out = bin_reduce(e, e, 0.0, 1.0, 4)
    assert out.shape == (4, NUM_COLUMNS) and out.abs().sum() == 0


def test_cpu_is_deterministic():
    p, y = _data(200_000, torch.float32)
    a, b = bin_reduce(p, y, 0.0, 0.25, 60), bin_reduce(p, y, 0.0, 0.25, 60)
    assert torch.equal(a, b)


def test_nonfinite_raises_or_is_counted():
    p, y = _data(1000, torch.float32)
    p[3], y[10], p[20], y[20] = float("nan"), float("inf"), float("-inf"), float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        bin_reduce(p, y, 0.0, 1.0, 12)
    with pytest.raises(ValueError, match="NaN or inf"):
        bin_reduce_torch(p, y, 0.0, 1.0, 12)
    out = bin_reduce(p, y, 0.0, 1.0, 12, allow_nonfinite=True)
    ref = bin_reduce_reference(p, y, 0.0, 1.0, 12)
    assert out[:, N_NONFINITE].sum() == 3 and out[:, COUNT].sum() == 997
    assert out[0, N_NONFINITE] >= 2  # non-finite targets are counted in bin 0
    _compare(out, ref, 2e-6)
    _compare(bin_reduce_torch(p, y, 0.0, 1.0, 12, allow_nonfinite=True), ref, 2e-6)


def test_bad_arguments_name_the_argument():
    p, y = _data(10, torch.float32)
    with pytest.raises(ValueError, match="pred and target must have the same shape"):
        bin_reduce(p, y[:5], 0.0, 1.0, 3)
    with pytest.raises(TypeError, match="same dtype"):
        bin_reduce(p, y.double(), 0.0, 1.0, 3)
    with pytest.raises(TypeError, match="pred must be float"):
        bin_reduce(p.long(), y.long(), 0.0, 1.0, 3)
    with pytest.raises(ValueError, match="num_bins"):
        bin_reduce(p, y, 0.0, 1.0, 0)
    with pytest.raises(ValueError, match="bin_width"):
        bin_reduce(p, y, 0.0, 0.0, 3)
    with pytest.raises(ValueError, match="bin_width"):
        bin_reduce(p, y, 0.0, -1.0, 3)
    with pytest.raises(ValueError, match="y_min"):
        bin_reduce(p, y, float("nan"), 1.0, 3)
    with pytest.raises(TypeError, match="mask must be a bool"):
        bin_reduce(p, y, 0.0, 1.0, 3, mask=torch.ones(10))
    with pytest.raises(ValueError, match="mask must have pred's shape"):
        bin_reduce(p, y, 0.0, 1.0, 3, mask=torch.ones(9, dtype=torch.bool))
    with pytest.raises(TypeError, match="pred must be a torch.Tensor"):
        bin_reduce(p.numpy(), y, 0.0, 1.0, 3)


@needs_ext
def test_cpp_checks_name_the_argument():
    op = torch.ops.ssir_fast.bin_reduce.default
    p, y = _data(10, torch.float32)
    # A stable-ABI kernel raises ValueError for every bad argument (C++ std::invalid_argument);
    # the bin_reduce wrapper restores TypeError for dtype problems (test_bad_input above).
    for args, exc, msg in [((p, y[:5], 0.0, 1.0, 3), ValueError, "pred and target must have the same shape"),
                           ((p, y, 0.0, 1.0, 0), ValueError, "num_bins must be >= 1"),
                           ((p, y, 0.0, 0.0, 3), ValueError, "bin_width must be finite and > 0"),
                           ((p, y.half(), 0.0, 1.0, 3), ValueError, "same dtype")]:
        with pytest.raises(exc, match=msg):
            op(*args)
    with pytest.raises(ValueError, match="mask must be a bool"):
        op(p, y, 0.0, 1.0, 3, torch.ones(10))


@needs_ext
@pytest.mark.parametrize("with_mask", [False, True])
def test_opcheck(with_mask):
    p, y = _data(3000, torch.float32, shape=(3, 1000))
    mask = (torch.arange(3000) % 3 == 0).reshape(3, 1000) if with_mask else None
    torch.library.opcheck(torch.ops.ssir_fast.bin_reduce.default,
                          (p, y, 0.0, 1.0, 14, mask, 1e-8, False))


@needs_ext
def test_fake_kernel_shape():
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        p = torch.empty(4, 5)
        out = torch.ops.ssir_fast.bin_reduce.default(p, p, 0.0, 1.0, 7)
    assert out.shape == (7, NUM_COLUMNS) and out.dtype == torch.float64


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("num_bins", [93, 5000])  # shared-memory and global-atomic paths
def test_cuda_equals_cpu(dtype, num_bins):
    p, y = _data(1_000_003, dtype, shape=None, y_lo=0.5, y_hi=10.5)
    mask = torch.rand(p.shape, generator=torch.Generator().manual_seed(2)) < 0.5
    for m in (None, mask):
        cpu = bin_reduce(p, y, 0.7, 10.0 / num_bins, num_bins, mask=m)
        gpu = bin_reduce(p.cuda(), y.cuda(), 0.7, 10.0 / num_bins, num_bins,
                         mask=None if m is None else m.cuda())
        assert gpu.device.type == "cuda"
        _compare(gpu, cpu.numpy(), 1e-5 if dtype != torch.float64 else 1e-10)
    # unaligned views take the scalar path
    cpu = bin_reduce(p[1:], y[1:], 0.7, 0.1, 93)
    _compare(bin_reduce(p.cuda()[1:], y.cuda()[1:], 0.7, 0.1, 93), cpu.numpy(), 1e-5)


@cuda
def test_cuda_depth_map_and_nonfinite():
    p, y = _data(4 * 480 * 640, torch.float32, shape=(4, 1, 480, 640))
    y = torch.sort(y.reshape(4, -1), dim=1).values.reshape(p.shape)  # spatially coherent bins
    cpu = bin_reduce(p, y, 0.7, 0.1, 93)
    _compare(bin_reduce(p.cuda(), y.cuda(), 0.7, 0.1, 93), cpu.numpy(), 1e-5)
    p[0, 0, 0, :3] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        bin_reduce(p.cuda(), y.cuda(), 0.7, 0.1, 93)
    out = bin_reduce(p.cuda(), y.cuda(), 0.7, 0.1, 93, allow_nonfinite=True)
    assert out[:, N_NONFINITE].sum().item() == 3


@cuda
def test_cuda_opcheck():
    p, y = _data(3000, torch.float32, shape=(3, 1000))
    torch.library.opcheck(torch.ops.ssir_fast.bin_reduce.default,
                          (p.cuda(), y.cuda(), 0.0, 1.0, 14, None, 1e-8, False))


def test_device_mismatch_names_the_arguments():
    p, y = _data(10, torch.float32)
    with pytest.raises(ValueError, match="pred and target must be on the same device"):
        bin_reduce(p, y.to("meta"), 0.0, 1.0, 3)
    with pytest.raises(ValueError, match="mask must be on pred's device"):
        bin_reduce(p, y, 0.0, 1.0, 3, mask=torch.ones(10, dtype=torch.bool, device="meta"))


@needs_ext
def test_torch_compile_fullgraph():
    p, y = _data(5000, torch.float32)

    def f(p, y):
        return bin_reduce(p * 1.0, y, 0.0, 1.0, 14)

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(p, y), bin_reduce(p, y, 0.0, 1.0, 14))


@pytest.mark.parametrize("y_min,width,num_bins", [(0.7, 0.1, 93), (0.0, 1.0, 121), (-3.0, 0.3, 50),
                                                  (0.0, 0.25, 40), (0.0, 0.05, 200), (-1.0, 0.2, 60),
                                                  (0.75, 0.1, 20), (1e6, 0.1, 10)])
def test_bins_match_labelbins_at_the_edges(y_min, width, num_bins):
    """Targets on and next to every bin edge (fp32 and fp64) land where LabelBins puts them."""
    from ssir_fast.imbalance import LabelBins
    edges = torch.tensor(LabelBins(y_min, width, num_bins).edges())
    for dtype in (torch.float32, torch.float64):
        e = edges.to(dtype)
        y = torch.cat([e, torch.nextafter(e, e + 1), torch.nextafter(e, e - 1)])
        counts = bin_reduce(y + 0.5, y, y_min, width, num_bins)[:, COUNT]
        expected = np.bincount(LabelBins(y_min, width, num_bins).index(y.double().numpy()),
                               minlength=num_bins)
        np.testing.assert_array_equal(counts.numpy(), expected)
        np.testing.assert_array_equal(bin_reduce_torch(y + 0.5, y, y_min, width, num_bins)[:, COUNT]
                                      .numpy(), expected)
        np.testing.assert_array_equal(bin_reduce_reference(y + 0.5, y, y_min, width, num_bins)
                                      [:, COUNT], expected)


def _official_nyud2_bucket(depth32):
    """nyud2-dir `get_bin_idx`: min(int(x * np.float32(10)), 99) on a float32 depth, transcribed
    on numpy float32 scalars; buckets below bucket_start = 7 merged into bucket 7."""
    return np.array([max(min(int(v * np.float32(10)), 99), 7) for v in depth32], dtype=np.int64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_nyud2_millimetre_depths_bin_as_the_official_code(dtype):
    """Every millimetre depth 0.001..10 m (float32, as the official test loader: mm / 1000) goes to
    the official bucket - 7 in the kernel, the fallback and the reference, and where LabelBins puts
    it; fp16/bf16 targets are binned by their own (rounded) value, the same way everywhere."""
    from ssir_fast.imbalance import LabelBins
    y = (torch.arange(1, 10001, dtype=torch.int32).float() / 1000).to(dtype)
    y32 = y.float().numpy()                       # the value every path bins (exact for all dtypes)
    official = _official_nyud2_bucket(y32) - 7
    want = np.bincount(official, minlength=93)
    raw = np.array([int(v * np.float32(10)) for v in y32])     # official bucket before merging
    oor = np.zeros(93)
    oor[0], oor[92] = (raw < 7).sum(), (raw > 99).sum()        # merged into the edge bins
    np.testing.assert_array_equal(LabelBins(0.7, 0.1, 93).index(y.double().numpy()), official)
    p = y + 0.25
    tables = {"op": bin_reduce(p, y, 0.7, 0.1, 93), "fallback": bin_reduce_torch(p, y, 0.7, 0.1, 93)}
    if dtype in (torch.float32, torch.float64):
        tables["reference"] = torch.from_numpy(bin_reduce_reference(p, y, 0.7, 0.1, 93))
    for name, t in tables.items():
        np.testing.assert_array_equal(t[:, COUNT].numpy(), want, err_msg=name)
        np.testing.assert_array_equal(t[:, N_OUT_OF_RANGE].numpy(), oor, err_msg=name)
    if dtype == torch.float32:
        assert oor[0] == 699 and oor[92] == 1 and want[2] == 100   # 0.9 m in bucket 9 = bin 2
        m = torch.rand(y.shape, generator=torch.Generator().manual_seed(0)) < 0.5
        np.testing.assert_array_equal(bin_reduce(p, y, 0.7, 0.1, 93, mask=m)[:, COUNT].numpy(),
                                      np.bincount(official[m.numpy()], minlength=93))
    if torch.cuda.is_available():
        gpu = bin_reduce(p.cuda(), y.cuda(), 0.7, 0.1, 93).cpu()
        np.testing.assert_array_equal(gpu[:, COUNT].numpy(), want)
        np.testing.assert_array_equal(gpu[:, N_OUT_OF_RANGE].numpy(), oor)


@needs_ext
def test_nyud2_kernel_is_the_extension():
    # the test above exercised the C++ kernel, not only the fallback
    y = torch.tensor([0.9, 1.3, 8.4], dtype=torch.float32)
    t = torch.ops.ssir_fast.bin_reduce.default(y, y, 0.7, 0.1, 93, None, 1e-8, False)
    assert t[:, COUNT].nonzero().reshape(-1).tolist() == [2, 6, 77]


# ---- out-of-range and log-sum defects ---------------------------------------------------
def _cancelling_log_case(n_bins=50, per_bin=200, seed=5):
    """Pairs whose SUM_LOG_ABS nearly cancels per bin: |e| around 1 (log of both signs) plus a few
    exact zero errors (floored, log(1e-8) = -18.4) - the case where a float log drifts."""
    g = torch.Generator().manual_seed(seed)
    y = (torch.arange(n_bins).repeat_interleave(per_bin) + 0.5).double()
    e = torch.exp(torch.randn(y.shape, generator=g, dtype=torch.float64) * 0.3)
    sign = torch.where(torch.rand(y.shape, generator=g) < 0.5, -1.0, 1.0).double()
    p = y + sign * e
    p[::40] = y[::40]  # floored pairs
    return p.float(), y.float()


def test_log_column_in_float64_matches_the_reference():
    # The log is taken in float64 (both devices): SUM_LOG_ABS agrees with the float64 reference
    # to float64 rounding, not only to the fp32 per-pair tolerance.
    # Expected: float64 logs of the fp32 |e| (the per-pair math is fp32), summed per bin.
    p, y = _cancelling_log_case()
    a32 = torch.maximum((p - y).abs(), torch.tensor(FL, dtype=torch.float32)).numpy()
    want = np.bincount(np.floor(y.numpy()).astype(np.int64), weights=np.log(a32.astype(np.float64)),
                       minlength=50)
    np.testing.assert_allclose(bin_reduce(p, y, 0.0, 1.0, 50)[:, 3].numpy(), want, rtol=1e-12,
                               atol=1e-10)
    np.testing.assert_allclose(bin_reduce_torch(p, y, 0.0, 1.0, 50)[:, 3].numpy(), want,
                               rtol=1e-12, atol=1e-10)
    # and the fp32 rounding of |e| keeps it within the fp32 tolerance of the float64 reference
    ref = bin_reduce_reference(p, y, 0.0, 1.0, 50)
    np.testing.assert_allclose(want, ref[:, 3], rtol=1e-7)


@cuda
@pytest.mark.parametrize("num_bins", [50, 5000])
def test_cuda_log_column_equals_cpu(num_bins):
    # defect 2: fast-math __logf made SUM_LOG_ABS differ by 7.8e-5 relative at 5000 bins
    p, y = _cancelling_log_case(n_bins=num_bins, per_bin=200 if num_bins == 50 else 20)
    cpu = bin_reduce(p, y, 0.0, 1.0, num_bins).numpy()
    gpu = bin_reduce(p.cuda(), y.cuda(), 0.0, 1.0, num_bins).cpu().numpy()
    np.testing.assert_allclose(gpu[:, 3], cpu[:, 3], rtol=1e-12, atol=1e-10)
    _compare(torch.from_numpy(gpu), cpu, 1e-6)


@cuda
@pytest.mark.parametrize("with_mask", [False, True])
def test_cuda_nonfinite_raises_in_a_subprocess(with_mask):
    # defect 1: NaN with allow_nonfinite=False killed the process (SIGSEGV). Run it in a child so
    # that a crash fails this test instead of ending the test run.
    import subprocess
    import sys
    code = f"""
import torch
from ssir_fast.ops import bin_reduce
p = torch.rand(4, 1, 480, 640, device="cuda") + 1
y = torch.rand(4, 1, 480, 640, device="cuda") + 1
p[0, 0, 0, :3] = float("nan")
mask = torch.ones(p.shape, dtype=torch.bool, device="cuda") if {with_mask} else None
try:
    bin_reduce(p, y, 0.7, 0.1, 93, mask=mask)
except ValueError as e:
    assert "NaN or inf" in str(e), e
    print("raised")
out = bin_reduce(p, y, 0.7, 0.1, 93, mask=mask, allow_nonfinite=True)
assert out[:, 11].sum().item() == 3
print("counted")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"exit code {r.returncode}\n{r.stdout}\n{r.stderr}"
    assert "raised" in r.stdout and "counted" in r.stdout


def test_columns_agree_with_the_cpp_enum():
    # The column list is written twice (C++ enum, Python COLUMNS): this keeps them in step.
    import re
    from pathlib import Path
    src = (Path(__file__).resolve().parents[1] / "csrc" / "bin_reduce_common.h").read_text()
    start = src.index("enum Col")
    enum = src[start:src.index("kCols = ", start)]
    cpp = [(name.lower(), int(v)) for name, v in re.findall(r"\b([A-Z_0-9]+) = (\d+),", enum)]
    assert cpp == [(c, i) for i, c in enumerate(COLUMNS)]
    sums = re.search(r"kSumCols\[kNumSums\] = \{([^}]*)\}", src).group(1)
    counts = re.search(r"kCountCols\[kNumCounts\] = \{([^}]*)\}", src).group(1)
    named = [n.strip().lower() for n in (sums + "," + counts).split(",")]
    assert sorted(named) == sorted(COLUMNS)  # every column is a sum or a count, once


def test_decimal_bins_of_extreme_float64_targets():
    """float64 targets beyond the float32 range go to the edge bins (the decimal rule clamps y to
    float32 first), in the op, the fallback, the reference and LabelBins."""
    from ssir_fast.imbalance import LabelBins
    y = torch.tensor([1e300, -1e300, 3.4e38, -3.4e38, 0.9, 9.99, 10.0], dtype=torch.float64)
    want_bins = [92, 0, 92, 0, 2, 92, 92]
    assert LabelBins(0.7, 0.1, 93).index(y).tolist() == want_bins
    want = np.bincount(want_bins, minlength=93)
    oor = np.zeros(93)
    oor[0], oor[92] = 2, 3
    for t in (bin_reduce(y, y, 0.7, 0.1, 93), bin_reduce_torch(y, y, 0.7, 0.1, 93),
              torch.from_numpy(bin_reduce_reference(y, y, 0.7, 0.1, 93))):
        np.testing.assert_array_equal(t[:, COUNT].numpy(), want)
        np.testing.assert_array_equal(t[:, N_OUT_OF_RANGE].numpy(), oor)
