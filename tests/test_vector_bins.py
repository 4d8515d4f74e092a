"""LabelBins over D-dimensional labels: the grid, its row-major flat index, counts, centres and
the refusals, against loops over the grid written here (float64, one label at a time)."""
import math

import numpy as np
import pytest
import torch

from ssir_fast.imbalance import LabelBins
from ssir_fast.ops.binning import MAX_BINS


def _loop_index(bins_1d, labels, clamp):
    """Flat row-major index of each row of labels [N, D], one dimension at a time by the
    float64 rule (power-of-two or integer widths only, where it is exact)."""
    out = []
    for row in labels:
        flat, bad = 0, False
        for (y0, w, n), v in zip(bins_1d, row):
            i = math.floor((float(v) - y0) / w)
            if not 0 <= i < n:
                if clamp:
                    i = min(max(i, 0), n - 1)
                else:
                    bad = True
            flat = flat * n + i
        out.append(-1 if bad else flat)
    return np.array(out, dtype=np.int64)


AXES = [(-3.0, 1.0, 90), (-1.0, 0.5, 8), (2.0, 0.25, 5)]


@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("clamp", [True, False])
def test_grid_index_matches_loop(d, clamp):
    axes = AXES[:d]
    bins = LabelBins(*(tuple(a[i] for a in axes) for i in range(3)), clamp=clamp)
    assert bins.vector and bins.dim == d and bins.grid == tuple(a[2] for a in axes)
    assert bins.size == math.prod(bins.grid)
    rng = np.random.default_rng(d)
    y = np.stack([rng.uniform(y0 - 2 * w, y0 + (n + 2) * w, 500) for y0, w, n in axes], 1)
    ref = _loop_index(axes, y, clamp)
    np.testing.assert_array_equal(bins.index(y), ref)
    t = bins.index(torch.tensor(y, dtype=torch.float64))
    assert t.dtype == torch.int64
    np.testing.assert_array_equal(t.numpy(), ref)
    counts = bins.counts(y)
    assert counts.dtype == np.int64 and counts.shape == (bins.size,)
    np.testing.assert_array_equal(counts, np.bincount(ref[ref >= 0], minlength=bins.size))


def test_scalar_bins_unchanged():
    bins = LabelBins(0.0, 1.0, 121)
    assert not bins.vector and bins.dim == 1 and bins.grid == (121,) and bins.size == 121
    assert bins.num_bins == 121 and bins.axis(0) is bins
    np.testing.assert_array_equal(bins.index(np.array([-3.0, 5.5, 200.0])), [0, 5, 120])


def test_contract_example_and_row_major_order():
    bins = LabelBins((0., -1.), (1., .5), (90, 8))
    assert bins.grid == (90, 8) and bins.size == 720
    assert bins.y_min == (0.0, -1.0) and bins.num_bins == (90, 8)
    # (i0, i1) = (3, 5) -> 3 * 8 + 5
    assert bins.index(np.array([[3.5, 1.6]])).tolist() == [29]
    assert bins.unravel(29).tolist() == [3, 5]
    ax = bins.axis(1)
    assert ax == LabelBins(-1.0, 0.5, 8) and not ax.vector
    assert bins.y_max == (90.0, 3.0)
    c = bins.centers()
    assert c.shape == (720, 2) and c.dtype == np.float64
    for flat in (0, 29, 719):
        i0, i1 = divmod(flat, 8)
        np.testing.assert_array_equal(c[flat], [i0 + 0.5, -1.0 + 0.5 * (i1 + 0.5)])


def test_decimal_width_per_axis_as_1d():
    bins = LabelBins((0.7, 0.0), (0.1, 1.0), (93, 4))
    depth = np.float32([0.9, 0.7, 1.3, 9.99])
    y = np.stack([depth.astype(np.float64), [0, 1, 2, 3]], 1)
    want = LabelBins(0.7, 0.1, 93).index(depth) * 4 + np.array([0, 1, 2, 3])
    np.testing.assert_array_equal(bins.index(y), want)


def test_one_dim_grid_takes_columns():
    bins = LabelBins((0.0,), (1.0,), (10,))
    assert bins.vector and bins.dim == 1 and bins.size == 10
    np.testing.assert_array_equal(bins.index(np.array([[2.5], [11.0]])), [2, 9])
    with pytest.raises(ValueError, match=r"labels must have shape \[N, 1\]"):
        bins.index(np.array([2.5, 11.0]))


def test_from_labels_per_dimension():
    y = np.array([[3.2, -0.7], [7.9, 0.2], [5.0, 1.4]])
    bins = LabelBins.from_labels(y, (1.0, 0.5))
    assert bins == LabelBins((3.0, -1.0), (1.0, 0.5), (5, 5))
    assert bins.counts(y).sum() == 3
    same = LabelBins.from_labels(torch.tensor(y), (1.0, 1.0), y_min=(0.0, -2.0))
    assert same.y_min == (0.0, -2.0) and same.num_bins == (8, 4)
    assert LabelBins.from_labels(y, 1.0, y_min=(0.0, -2.0)).bin_width == (1.0, 1.0)
    with pytest.raises(ValueError, match="bin_width must have one entry per label dimension"):
        LabelBins.from_labels(y, (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match=r"labels must have shape \[N, D\]"):
        LabelBins.from_labels(y.reshape(-1), (1.0, 1.0))
    # numbers for both: flattened into one dimension, as before
    assert not LabelBins.from_labels(y, 1.0).vector


def test_grid_refusals():
    with pytest.raises(ValueError, match="num_bins .* too many"):
        LabelBins((0.0, 0.0), (1.0, 1.0), (3000, 3000))
    big = LabelBins((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), (100, 100, 100))   # 10^6 bins work
    assert big.size == 10 ** 6 <= MAX_BINS
    with pytest.raises(ValueError, match="same length"):
        LabelBins((0.0, 0.0), (1.0,), (3, 3))
    with pytest.raises(ValueError, match="all numbers .* or all sequences"):
        LabelBins((0.0, 0.0), 1.0, (3, 3))
    with pytest.raises(ValueError, match="dimension 1: bin_width must be finite and > 0"):
        LabelBins((0.0, 0.0), (1.0, -1.0), (3, 3))
    with pytest.raises(ValueError, match="at least one dimension"):
        LabelBins((), (), ())
    with pytest.raises(TypeError, match=r"num_bins\[0\] must be a number"):
        LabelBins((0.0,), (1.0,), ("3",))
    with pytest.raises(ValueError, match=r"axis k must be an integer in \[0, 2\)"):
        LabelBins((0.0, 0.0), (1.0, 1.0), (3, 3)).axis(2)


def test_grid_counts_warn_far_outside_per_dimension():
    bins = LabelBins((0.0, 0.0), (1.0, 1.0), (10, 10))
    with pytest.warns(UserWarning, match=r"dimension 1"):
        bins.counts(np.array([[1.0, 1.0], [2.0, -50.0]]))


def test_grid_is_hashable_and_equal():
    a = LabelBins([0.0, 1.0], np.array([1.0, 2.0]), (3, 4))
    b = LabelBins((0.0, 1.0), (1.0, 2.0), (3, 4))
    assert a == b and hash(a) == hash(b)


# ---- re-weighting and LDS over the D-dim histogram -------------------------------------------

def _mirror(i, n):
    """Half-sample symmetric extension of index i into [0, n) (d c b a | a b c d | d c b a)."""
    m = i % (2 * n)
    return m if m < n else 2 * n - 1 - m


def _loop_weights(labels, axes, reweight, lds, windows, paddings, clip=(5, 1000)):
    """bin_weights for a grid, by loops: histogram, effective counts, the D-dim correlation with
    the product window summed directly (not one dimension at a time), 1 / c, mean 1."""
    import itertools
    grid = [a[2] for a in axes]
    counts = {}
    for row in labels:
        key = tuple(min(max(math.floor((float(v) - y0) / w), 0), n - 1)
                    for (y0, w, n), v in zip(axes, row))
        counts[key] = counts.get(key, 0) + 1
    cells = list(itertools.product(*(range(n) for n in grid)))
    c = {k: float(counts.get(k, 0)) for k in cells}
    if reweight == "sqrt_inv":
        eff = {k: math.sqrt(v) for k, v in c.items()}
    else:
        eff = {k: min(max(v, clip[0]), clip[1]) if clip else v for k, v in c.items()}
    if lds:
        smoothed = {}
        for cell in cells:
            total = 0.0
            for offs in itertools.product(*(range(len(w)) for w in windows)):
                weight, src = 1.0, []
                for k, (j, w, pad) in enumerate(zip(offs, windows, paddings)):
                    i = cell[k] + j - len(w) // 2
                    if not 0 <= i < grid[k]:
                        if pad == "constant":
                            weight = 0.0
                            break
                        i = _mirror(i, grid[k])
                    weight *= w[j]
                    src.append(i)
                if weight:
                    total += weight * eff[tuple(src)]
            smoothed[cell] = total
        eff = smoothed
    inv = {k: (1.0 / v if v > 0 else 0.0) for k, v in eff.items()}
    n = sum(c.values())
    s = n / sum(c[k] * inv[k] for k in cells)
    return np.array([inv[k] * s for k in cells])


GRID_AXES = [(0.0, 1.0, 12), (-1.0, 0.5, 7), (0.0, 2.0, 4)]


def _grid_labels(d, n=600, seed=0):
    rng = np.random.default_rng(seed)
    cols = [rng.gamma(2.0, 2.0, n), rng.normal(0.5, 0.6, n), rng.uniform(0, 8, n)]
    return np.stack(cols[:d], 1)


@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("reweight,lds,kernel,padding", [
    ("sqrt_inv", False, "gaussian", "constant"), ("inverse", False, "gaussian", "constant"),
    ("sqrt_inv", True, "gaussian", "constant"), ("sqrt_inv", True, "laplace", "reflect"),
    ("inverse", True, "triang", "reflect"), ("inverse", True, "gaussian", "mixed")])
def test_grid_bin_weights_match_loops(d, reweight, lds, kernel, padding):
    from ssir_fast.imbalance import bin_weights, lds_kernel
    axes = GRID_AXES[:d]
    bins = LabelBins(*(tuple(a[i] for a in axes) for i in range(3)))
    y = _grid_labels(d)
    paddings = (["constant", "reflect", "constant"][:d] if padding == "mixed"
                else [padding] * d)
    ks = 5 if d < 3 else 3
    w = bin_weights(y, bins, reweight, lds, kernel, ks, 2.0,
                    lds_padding=paddings if padding == "mixed" else padding)
    windows = [lds_kernel(kernel, ks, 2.0)] * d
    ref = _loop_weights(y, axes, reweight, lds, windows, paddings)
    assert w.shape == (bins.size,)
    np.testing.assert_allclose(w, ref, rtol=1e-12, atol=1e-14)
    per_sample = sample_weights_for(y, bins, reweight, lds, kernel, ks, paddings, padding)
    assert per_sample.shape == (len(y),)
    assert abs(per_sample.astype(np.float64).mean() - 1.0) < 1e-5


def sample_weights_for(y, bins, reweight, lds, kernel, ks, paddings, padding):
    from ssir_fast.imbalance import sample_weights
    return sample_weights(y, bins, reweight, lds, kernel, ks, 2.0,
                          lds_padding=paddings if padding == "mixed" else padding)


def test_grid_lds_window_longer_than_the_grid_reflects_repeatedly():
    from ssir_fast.imbalance import bin_weights, lds_kernel
    axes = [(0.0, 1.0, 3), (0.0, 1.0, 2)]
    bins = LabelBins((0.0, 0.0), (1.0, 1.0), (3, 2))
    y = np.array([[0.5, 0.5], [0.5, 0.5], [2.5, 1.5], [1.5, 0.5], [0.2, 1.2]])
    w = bin_weights(y, bins, "sqrt_inv", True, "triang", 9, lds_padding="reflect")
    win = lds_kernel("triang", 9)
    np.testing.assert_allclose(w, _loop_weights(y, axes, "sqrt_inv", True, [win, win],
                                                ["reflect", "reflect"]), rtol=1e-12)


def test_grid_per_dimension_ks_sigma():
    from ssir_fast.imbalance import bin_weights, lds_kernel
    axes = GRID_AXES[:2]
    bins = LabelBins((0.0, -1.0), (1.0, 0.5), (12, 7))
    y = _grid_labels(2)
    w = bin_weights(y, bins, "sqrt_inv", True, "gaussian", ks=(5, 3), sigma=(2.0, 1.0))
    ref = _loop_weights(y, axes, "sqrt_inv", True,
                        [lds_kernel("gaussian", 5, 2.0), lds_kernel("gaussian", 3, 1.0)],
                        ["constant", "constant"])
    np.testing.assert_allclose(w, ref, rtol=1e-12)
    with pytest.raises(ValueError, match="ks must be one value or one per dimension"):
        bin_weights(y, bins, "sqrt_inv", True, ks=(5, 3, 3))
    with pytest.raises(ValueError, match="lds_padding must be one of"):
        bin_weights(y, bins, "sqrt_inv", True, lds_padding=("reflect", "wrap"))


def test_one_dim_grid_equals_scalar_bins():
    """A D = 1 grid gives the scalar bins' weights (the scalar path itself is unchanged)."""
    from ssir_fast.imbalance import bin_weights
    rng = np.random.default_rng(3)
    ages = rng.normal(35, 12, 2000).clip(0, 130)
    scalar = LabelBins.dir_age(121)
    grid = LabelBins((0.0,), (1.0,), (121,))
    for reweight, lds in (("sqrt_inv", False), ("inverse", True), ("sqrt_inv", True)):
        a = bin_weights(ages, scalar, reweight, lds)
        b = bin_weights(ages[:, None], grid, reweight, lds)
        np.testing.assert_allclose(b, a, rtol=1e-14, atol=0)


def test_grid_lookup_sampler_and_refusals():
    from ssir_fast.imbalance import (bin_weights, lookup_weights, sample_weights,
                                     weighted_sampler)
    bins = LabelBins((0.0, -1.0), (1.0, 0.5), (12, 7))
    y = _grid_labels(2)
    w = bin_weights(y, bins, "inverse", True)
    t = lookup_weights(torch.tensor(y), w, bins)
    assert t.dtype == torch.float32 and t.shape == (len(y),)
    np.testing.assert_allclose(t.numpy(), w[bins.index(y)].astype(np.float32))
    np.testing.assert_array_equal(sample_weights(y, bins, "inverse", True), t.numpy())
    s = weighted_sampler(y, bins, "sqrt_inv", generator=torch.Generator().manual_seed(0))
    assert len(list(s)) == len(y)
    with pytest.raises(ValueError, match=r"weights_per_bin must have shape \[84\]"):
        lookup_weights(y, w[:-1], bins)
    with pytest.raises(ValueError, match=r"labels must be \[N, 2\]"):
        weighted_sampler(y[:, 0], bins)
    with pytest.raises(ValueError, match=r"labels must have shape \[N, 2\]"):
        bin_weights(y[:, :1], bins)
    # out-of-range rows get weight 0 with clamp=False
    strict = LabelBins((0.0, -1.0), (1.0, 0.5), (12, 7), clamp=False)
    ws = lookup_weights(np.array([[1.0, 0.0], [50.0, 0.0]]), np.ones(84), strict)
    np.testing.assert_array_equal(ws, [1.0, 0.0])
