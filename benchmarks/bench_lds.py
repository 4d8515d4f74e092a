"""LDS re-weighting over a D-dimensional grid of label bins: `bin_weights` (histogram, then the
separable D-dim correlation of ssir_fast.separable) against the direct D-dim correlation with the
product window (scipy.ndimage.correlate, numpy code), timed interleaved in the same run; plus the
scalar (D = 1) `bin_weights` of the age recipe, the path that must not get slower.

    pytest benchmarks/bench_lds.py --benchmark-only -s

Cases: "grid_2d" = 1000 x 1000 bins, "grid_3d" = 100^3 bins (both 10^6 bins, the size dense
grids must handle), 10^6 long-tailed labels, SQINV + LDS (gaussian, ks 5, sigma 2),
reflect padding; the smoothing alone is timed too (ours vs the direct correlation), on the same
effective counts. "age_1d": 10^6 ages, 121 bins, the DIR age recipe (the unchanged D = 1 path).
"""
import os

import numpy as np
import pytest
import scipy.ndimage

from harness import Bench
from ssir_fast.imbalance import LabelBins, bin_weights, lds_kernel
from ssir_fast.separable import smooth_grid

ROWS = int(float(os.environ.get("SSIR_BENCH_LDS_ROWS", 1e6)))
REPEATS = int(os.environ.get("SSIR_BENCH_LDS_REPEATS", "5"))
GRIDS = {"grid_2d": (1000, 1000), "grid_3d": (100, 100, 100)}


def _labels(grid, rows=ROWS):
    rng = np.random.default_rng(0)
    return np.stack([rng.gamma(2.0, n / 8, rows).clip(0, n - 1e-6) for n in grid], 1)


@pytest.mark.parametrize("case", list(GRIDS))
def test_lds_grid_speed(benchmark, case):
    grid = GRIDS[case]
    d = len(grid)
    bins = LabelBins((0.0,) * d, (1.0,) * d, grid)
    y = _labels(grid)
    window = lds_kernel("gaussian", 5, 2.0)
    product = window
    for _ in range(d - 1):
        product = np.multiply.outer(product, window)
    eff = np.sqrt(bins.counts(y).astype(np.float64)).reshape(grid)

    ours = lambda: smooth_grid(eff, [window] * d, ["reflect"] * d)  # noqa: E731
    direct = lambda: scipy.ndimage.correlate(eff, product, mode="reflect")  # noqa: E731
    np.testing.assert_allclose(ours(), direct(), rtol=1e-10, atol=1e-10)
    full = lambda: bin_weights(y, bins, "sqrt_inv", True, lds_padding="reflect")  # noqa: E731

    b = Bench(benchmark, f"lds/{case}/cpu", "cpu", elements=bins.size)
    ts = b.cases({"separable": ours, "direct_scipy": direct}, repeats=REPEATS)
    t_full = b.case("bin_weights_total", full, repeats=REPEATS).median
    b.finish(dims=d, bins=bins.size, rows=len(y), bin_weights_s=t_full,
             speedup_vs_direct=ts["direct_scipy"].median / ts["separable"].median)


def test_lds_age_1d_speed(benchmark):
    rng = np.random.default_rng(0)
    ages = np.clip(np.round(rng.gamma(6.0, 6.0, ROWS)), 0, 130)
    bins = LabelBins.dir_age(121)
    b = Bench(benchmark, "lds/age_1d/cpu", "cpu", elements=ROWS)
    b.case("bin_weights_sqinv_lds", lambda: bin_weights(ages, bins, "sqrt_inv", True),
           repeats=REPEATS)
    b.finish(bins=121, rows=ROWS)
