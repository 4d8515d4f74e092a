"""DIR evaluation: the fused bin_reduce op (through BinnedMetrics) vs the numpy loop of the
official DIR code vs a torch.bincount implementation, and GB/s vs a copy-bandwidth probe.

    pytest benchmarks/bench_bin_reduce.py --benchmark-only            # CPU (and CUDA when present)

Cases: "age_1e7" = 10^7 age predictions, 121 bins of 1 year; "depth" = dense depth maps
[N, 1, 480, 640] with 93 bins of 0.1 m and the depth metrics, 2*10^8 pixels by default
(SSIR_BENCH_DEPTH_PIXELS overrides it; the reply says which size ran). Every provider produces
the same group metrics (all / many / medium / few) from the same tensors; ratios are taken in the
same run. GB/s counts the bytes the op must read (pred + target [+ mask]) per second of a call;
the copy probe counts read + write of one copy. `run_gpu_selftest()` is the same comparison on
the GPU for benchmarks/gpu_check.sh (op vs torch.bincount and vs copy bandwidth).

Every case is timed once through `harness.Bench`: the op (through BinnedMetrics) is the case
pytest-benchmark reports, the bincount and numpy-loop baselines are further cases of the same
bench, one row each in benchmarks/results.jsonl. The numpy loop (host code, by far the slowest) and
the bincount baseline are timed once each (SSIR_BENCH_METRICS_REPEATS, default 5, for the op).
"""
import os

import numpy as np
import pytest
import torch

from harness import Bench, copy_bandwidth
from ssir_fast.imbalance import LabelBins
from ssir_fast.metrics import BinnedMetrics
from ssir_fast.ops.bin_reduce import bin_reduce_torch
from ssir_fast.reference import dir_shot_metrics_numpy

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
DEPTH_PIXELS = int(float(os.environ.get("SSIR_BENCH_DEPTH_PIXELS", 2e8)))
AGE_N = int(float(os.environ.get("SSIR_BENCH_AGE_N", 1e7)))  # the age_1e7 case's size
REPEATS = int(os.environ.get("SSIR_BENCH_METRICS_REPEATS", "5"))
H, W = 480, 640


def make_case(name, device):
    """(pred, target, train_labels, bins, depth) for a case, generated on `device`."""
    g = torch.Generator(device=device).manual_seed(0)
    if name == "age_1e7":
        n = AGE_N
        y = torch.round(torch.rand(n, generator=g, device=device) ** 2 * 100)
        pred = y + 6 * torch.randn(n, generator=g, device=device)
        rng = np.random.default_rng(0)
        train = np.clip(np.round(rng.gamma(6.0, 6.0, 12_000)), 0, 100)
        return pred, y, train, LabelBins(0.0, 1.0, 121), False
    maps = max(1, DEPTH_PIXELS // (H * W))
    # smooth, spatially coherent depth: a ramp per map plus a little noise, in [0.7, 10)
    ramp = torch.linspace(0.0, 1.0, H, device=device).reshape(1, 1, H, 1)
    offset = torch.rand(maps, 1, 1, 1, generator=g, device=device)
    y = (0.7 + 9.29 * ((ramp * 0.6 + offset * 0.4) ** 1.5)).expand(maps, 1, H, W).contiguous()
    pred = y * (1 + 0.1 * torch.randn(y.shape, generator=g, device=device))
    train = (0.7 + 9.3 * np.random.default_rng(0).random(4000) ** 3)  # all three shot groups occur
    return pred, y, train, LabelBins(0.7, 0.1, 93), True


def providers(pred, y, train, bins, depth):
    counts = bins.counts(train)

    def ours():
        m = BinnedMetrics(bins=bins, train_counts=counts, depth=depth)
        return m.update(pred, y).compute()

    def bincount():
        m = BinnedMetrics(bins=bins, train_counts=counts, depth=depth)
        m._table = bin_reduce_torch(pred, y, bins.y_min, bins.bin_width, bins.num_bins)
        return m.compute()

    def numpy_loop():
        return dir_shot_metrics_numpy(pred.cpu().numpy(), y.cpu().numpy(), train, bins.y_min,
                                      bins.bin_width, bins.num_bins)

    return ours, bincount, numpy_loop


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", ["age_1e7", "depth"])
def test_metrics_speed(benchmark, device, case):
    pred, y, train, bins, depth = make_case(case, device)
    n = pred.numel()
    ours, bincount, numpy_loop = providers(pred, y, train, bins, depth)
    # the three agree before anything is timed
    a, b = ours(), bincount()
    for g in ("all", "many", "medium", "few"):
        assert a[g]["mae"] == pytest.approx(b[g]["mae"], rel=1e-5), g

    b = Bench(benchmark, f"metrics/{case}/{device}", device, elements=n)
    t_ours = b.case("ssir_fast", ours, repeats=REPEATS).median
    t_bincount = b.case("bincount", bincount, repeats=1).median
    t_numpy = None
    if device == "cpu":  # the numpy loop is host code: timed once, it is by far the slowest
        t_numpy = b.case("numpy_loop", numpy_loop, repeats=1, warmup=0).median
    nbytes = 2 * n * pred.element_size()
    copy = copy_bandwidth(256 * 2 ** 20 if device == "cpu" else 2 ** 30, device)
    gbps = nbytes / t_ours / 1e9
    b.finish(ours_s=t_ours, bincount_s=t_bincount, numpy_loop_s=t_numpy,
             speedup_vs_bincount=t_bincount / t_ours,
             speedup_vs_numpy_loop=None if t_numpy is None else t_numpy / t_ours,
             gbps=gbps, copy_gbps=copy, fraction_of_copy=gbps / copy)
    del pred, y


def run_gpu_selftest(pixels=2 * 10 ** 8, device="cuda"):
    """GPU check of benchmarks/gpu_check.sh: bin_reduce (through BinnedMetrics and alone) on a
    depth-sized input vs the torch.bincount implementation and vs copy bandwidth, then the op
    alone on the depth and age cases with and without a mask. Returns the result rows (also
    appended to benchmarks/results.jsonl). device="cpu" (at a small `pixels`) is the script's dry
    run: the same code path, so it cannot rot between GPU runs."""
    from ssir_fast.ops import bin_reduce
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("run_gpu_selftest needs a CUDA device (or device='cpu' for a dry run)")
    global DEPTH_PIXELS
    DEPTH_PIXELS = pixels
    pred, y, train, bins, depth = make_case("depth", device)
    ours, bincount, _ = providers(pred, y, train, bins, depth)
    a, b = ours(), bincount()
    assert a["all"]["mae"] == pytest.approx(b["all"]["mae"], rel=1e-5)
    cpu_check = bin_reduce(pred[:2].cpu(), y[:2].cpu(), 0.7, 0.1, 93)
    gpu_check = bin_reduce(pred[:2], y[:2], 0.7, 0.1, 93).cpu()
    np.testing.assert_allclose(gpu_check.numpy(), cpu_check.numpy(), rtol=1e-5, atol=1)
    op_only = lambda: bin_reduce(pred, y, 0.7, 0.1, 93, allow_nonfinite=True)  # noqa: E731
    b = Bench(None, f"metrics_gpu/depth_selftest/{device}", device, elements=pred.numel())
    t_op = b.case("op", op_only, repeats=5).median
    t_ours = b.case("ssir_fast", ours, repeats=5).median
    t_bincount = b.case("bincount", bincount, repeats=3).median
    copy = copy_bandwidth(2 ** 30 if device == "cuda" else 2 ** 26, device)
    nbytes = 2 * pred.numel() * pred.element_size()
    rows = b.finish(op_s=t_op, metrics_s=t_ours, bincount_s=t_bincount,
                    speedup_vs_bincount=t_bincount / t_ours, gbps=nbytes / t_op / 1e9,
                    copy_gbps=copy, fraction_of_copy=nbytes / t_op / 1e9 / copy)
    # the bin_reduce goal cases (BENCHMARKS.md), the op alone: depth (coherent, 93 bins) and age
    # (random order, 121 bins), each with and without a mask, as a fraction of copy bandwidth
    g = torch.Generator(device=device).manual_seed(1)
    y_age = torch.randint(0, 121, (pixels,), generator=g, device=device).float()
    p_age = y_age + 6 * torch.randn(pixels, generator=g, device=device)
    cases = (("depth", pred.reshape(-1), y.reshape(-1), 0.7, 0.1, 93),
             ("age", p_age, y_age, 0.0, 1.0, 121))
    for name, pp, yy, y0, w, nb in cases:
        # a mask of the case's own length (the depth maps hold maps * H * W elements, not
        # `pixels`: one mask of `pixels` elements failed the op's shape check there)
        mask = torch.rand(pp.numel(), generator=g, device=device) < 0.7
        for m in (None, mask):
            label = f"bin_reduce_{name}" + ("_mask" if m is not None else "")
            b = Bench(None, f"bin_reduce_gpu/{label}/{device}", device, elements=pp.numel())
            t = b.case("op", lambda: bin_reduce(pp, yy, y0, w, nb, mask=m, allow_nonfinite=True),
                       repeats=5).median
            nbytes = 2 * pp.numel() * pp.element_size() + (0 if m is None else m.numel())
            rows += b.finish(op_s=t, gbps=nbytes / t / 1e9, copy_gbps=copy,
                             fraction_of_copy=nbytes / t / 1e9 / copy)
    return rows


# ---- vector targets: bin_reduce_nd over a D-dim grid ----------------------------------------
# "gaze_2d": 10^6 rows (yaw, pitch) in a 90 x 60 grid of 1-degree bins; "pose_3d": 10^6 rows
# (yaw, pitch, roll) in a dense 3-D grid of 100^3 = 10^6 bins (the size grids must handle). Three
# providers in the same run, interleaved (harness.Bench.cases): the fused op (the flat D-dim bin
# computed in the kernel), the pure-PyTorch fallback (per-dimension bins, then one index_add_ of
# the [rows, 8 + D] values), and numpy (LabelBins.index on the host, then one np.bincount per
# column, float64).
ND_ROWS = int(float(os.environ.get("SSIR_BENCH_ND_ROWS", 1e6)))
ND_CASES = {"gaze_2d": ((-45.0, -30.0), (1.0, 1.0), (90, 60)),
            "pose_3d": ((-50.0, -50.0, -50.0), (1.0, 1.0, 1.0), (100, 100, 100))}


def make_nd_case(name, device, rows=None):
    rows = rows or ND_ROWS
    y0, w, nb = ND_CASES[name]
    g = torch.Generator(device=device).manual_seed(0)
    span = torch.tensor([b * ww for b, ww in zip(nb, w)], device=device)
    y = torch.tensor(y0, device=device) + torch.rand(rows, len(nb), generator=g,
                                                     device=device) ** 2 * span
    pred = y + 3 * torch.randn(y.shape, generator=g, device=device)
    return pred, y, LabelBins(y0, w, nb)


def numpy_nd_table(pred, y, bins):
    """The baseline: host bin index (LabelBins.index), float64 errors, one np.bincount per
    column; the same columns as bin_reduce_nd (n_nonfinite 0: the data are finite)."""
    p, t = pred.cpu().numpy().astype(np.float64), y.cpu().numpy().astype(np.float64)
    idx = bins.index(t)
    e = p - t
    a = np.abs(e)
    m, sq = a.mean(1), (e * e).sum(1)
    size = bins.size
    cols = [np.ones(len(p)), m, sq / bins.dim, np.log(np.maximum(m, 1e-8)), m < 1e-8,
            np.sqrt(sq), np.zeros(len(p)), np.zeros(len(p))] + [a[:, k] for k in range(bins.dim)]
    return np.stack([np.bincount(idx, weights=c, minlength=size) for c in cols], 1)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", list(ND_CASES))
def test_bin_reduce_nd_speed(benchmark, device, case):
    from ssir_fast.ops import bin_reduce_nd
    from ssir_fast.ops.bin_reduce_nd import bin_reduce_nd_torch
    pred, y, bins = make_nd_case(case, device)
    args = (bins.y_min, bins.bin_width, bins.num_bins)
    op = lambda: bin_reduce_nd(pred, y, *args)  # noqa: E731
    fallback = lambda: bin_reduce_nd_torch(pred, y, *args)  # noqa: E731
    host = lambda: numpy_nd_table(pred, y, bins)  # noqa: E731
    ref = host()
    for fn in (op, fallback):
        got = fn().cpu().numpy()
        np.testing.assert_array_equal(got[:, 0], ref[:, 0])
        np.testing.assert_allclose(got[:, 1:6], ref[:, 1:6], rtol=1e-4, atol=1e-3)
    b = Bench(benchmark, f"bin_reduce_nd/{case}/{device}", device, elements=pred.shape[0])
    ts = b.cases({"ssir_fast": op, "torch_index_add": fallback, "numpy_bincount": host},
                 repeats=REPEATS)
    t = {k: v.median for k, v in ts.items()}
    b.finish(dims=bins.dim, bins=bins.size, rows=pred.shape[0],
             speedup_vs_torch=t["torch_index_add"] / t["ssir_fast"],
             speedup_vs_numpy=t["numpy_bincount"] / t["ssir_fast"])


if __name__ == "__main__":  # python benchmarks/bench_bin_reduce.py [--device D] [--pixels N]
    import argparse
    ap = argparse.ArgumentParser(description="bin_reduce on a GPU vs torch.bincount and a copy probe")
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--pixels", type=int, default=2 * 10 ** 8,
                    help="elements of the depth and age cases (the depth maps round down to 480x640 maps)")
    a = ap.parse_args()
    if a.pixels < H * W:
        ap.error(f"--pixels must be >= {H * W} (one 480x640 depth map), got {a.pixels}")
    rows = run_gpu_selftest(a.pixels, a.device)
    print(f"bench_bin_reduce: {len(rows)} rows on {a.device}")
