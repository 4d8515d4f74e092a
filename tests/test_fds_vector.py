"""FDS over a D-dim grid of label bins (vector labels [N, D]) against float64 loops written here:
per-cell statistics, the per-dimension filling of empty cells, the separable smoothing with
reflect / replicate padding, and the calibration formula."""
import itertools
import math

import numpy as np
import pytest
import torch

from ssir_fast.fds import (FDS, feature_balance, fill_empty_bins, fill_empty_grid,
                           plot_feature_balance, smooth_grid_statistics, smooth_statistics)
from ssir_fast.imbalance import LabelBins, lds_kernel


def _cells(grid):
    return list(itertools.product(*(range(n) for n in grid)))


def _flat(cell, grid):
    f = 0
    for i, n in zip(cell, grid):
        f = f * n + i
    return f


def loop_smooth(stat, window, grid):
    """Direct D-dim correlation with the product window, torch's padding per dimension: reflect
    (i -> -i, 2(n-1) - i) when the dimension is longer than the half window, else replicate."""
    half = len(window) // 2
    out = np.zeros_like(stat)
    for cell in _cells(grid):
        acc = np.zeros(stat.shape[1])
        for offs in itertools.product(range(len(window)), repeat=len(grid)):
            w, src = 1.0, []
            for k, j in enumerate(offs):
                n, i = grid[k], cell[k] + j - half
                if n > half:
                    i = -i if i < 0 else (2 * (n - 1) - i if i >= n else i)
                else:
                    i = min(max(i, 0), n - 1)
                w *= window[j]
                src.append(i)
            acc += w * stat[_flat(src, grid)]
        out[_flat(cell, grid)] = acc
    return out


def loop_fill(stat, count, grid):
    """Empty cells filled along dimension 0, then 1, ...: on each line, linear interpolation
    between the nearest filled cells, the nearest one beyond the first / last."""
    x = stat.copy()
    filled = count > 0
    if filled.all() or not filled.any():
        return x
    for k in range(len(grid)):
        new_filled = filled.copy()
        others = [range(n) for i, n in enumerate(grid) if i != k]
        for rest in itertools.product(*others):
            line = [_flat(rest[:k] + (i,) + rest[k:], grid) for i in range(grid[k])]
            have = [i for i in range(grid[k]) if filled[line[i]]]
            if not have:
                continue
            for i in range(grid[k]):
                if filled[line[i]]:
                    continue
                lefts = [h for h in have if h < i]
                rights = [h for h in have if h > i]
                if not lefts:
                    x[line[i]] = x[line[rights[0]]]
                elif not rights:
                    x[line[i]] = x[line[lefts[-1]]]
                else:
                    a, b = lefts[-1], rights[0]
                    t = (i - a) / (b - a)
                    x[line[i]] = x[line[a]] * (1 - t) + x[line[b]] * t
                new_filled[line[i]] = True
        filled = new_filled
    return x


@pytest.mark.parametrize("grid", [(7,), (5, 4), (3, 4, 2), (2, 9)])
def test_smooth_grid_matches_direct_sum(grid):
    g = torch.Generator().manual_seed(len(grid))
    stat = torch.randn(math.prod(grid), 3, generator=g, dtype=torch.float64)
    w = lds_kernel("gaussian", 5, 2.0)
    window = torch.as_tensor(w / w.sum())
    out = smooth_grid_statistics(stat, window, grid)
    np.testing.assert_allclose(out.numpy(), loop_smooth(stat.numpy(), window.numpy(), grid),
                               rtol=1e-12, atol=1e-12)


def test_one_dim_grid_is_the_scalar_smoothing_and_filling():
    g = torch.Generator().manual_seed(0)
    stat = torch.randn(20, 4, generator=g)
    count = torch.tensor([0, 3, 0, 0, 5] * 4)
    window = torch.tensor([0.2, 0.6, 0.2])
    assert torch.equal(smooth_grid_statistics(stat, window, (20,)), smooth_statistics(stat, window))
    m1, v1 = fill_empty_bins(stat, stat.abs(), count)
    m2, v2 = fill_empty_grid(stat, stat.abs(), count, (20,))
    assert torch.equal(m1, m2) and torch.equal(v1, v2)


@pytest.mark.parametrize("grid", [(5, 4), (3, 4, 2), (6, 1)])
def test_fill_empty_grid_matches_loops(grid):
    g = torch.Generator().manual_seed(sum(grid))
    b = math.prod(grid)
    mean = torch.randn(b, 3, generator=g, dtype=torch.float64)
    var = torch.rand(b, 3, generator=g, dtype=torch.float64) + 0.5
    count = (torch.rand(b, generator=g) < 0.35).long() * 4
    count[b // 2] = 2   # at least one filled cell
    m, v = fill_empty_grid(mean, var, count, grid)
    np.testing.assert_allclose(m.numpy(), loop_fill(mean.numpy(), count.numpy(), grid),
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(v.numpy(), loop_fill(var.numpy(), count.numpy(), grid),
                               rtol=1e-12, atol=1e-12)
    assert torch.equal(m[count > 0], mean[count > 0])


def test_fds_on_a_grid_matches_loops():
    bins = LabelBins((0.0, 0.0), (1.0, 1.0), (5, 4))
    grid, C = bins.grid, 6
    g = torch.Generator().manual_seed(7)
    y = torch.stack([torch.rand(400, generator=g) * 3.5, torch.rand(400, generator=g) * 4], 1)
    feats = torch.randn(400, C, generator=g, dtype=torch.float64) * 2 + y[:, :1].double()
    fds = FDS(C, bins, kernel="gaussian", ks=3, sigma=1.0, clip=(0.1, 10.0)).double()
    fds.update(feats[:250], y[:250])
    fds.update(feats[250:], y[250:])
    fds.end_epoch(0)
    # by hand: cells by loops, unbiased statistics, fill, smooth, calibrate
    b = bins.size
    cells = [min(max(math.floor(r[0]), 0), 4) * 4 + min(max(math.floor(r[1]), 0), 3)
             for r in y.tolist()]
    count = np.bincount(cells, minlength=b)
    mean, var = np.zeros((b, C)), np.ones((b, C))
    for c in range(b):
        rows = feats.numpy()[np.array(cells) == c]
        if len(rows):
            mean[c] = rows.mean(0)
            var[c] = rows.var(0, ddof=1) if len(rows) > 1 else 0.0
    assert (count == 0).any() and (count > 0).any()
    mean, var = loop_fill(mean, count, grid), loop_fill(var, count, grid)
    w = lds_kernel("gaussian", 3, 1.0)
    w = (w / w.sum()).astype(np.float32).astype(np.float64)     # the window buffer is float32
    sm, sv = loop_smooth(mean, w, grid), loop_smooth(var, w, grid)
    np.testing.assert_allclose(fds.last_mean.numpy(), mean, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(fds.smoothed_mean.numpy(), sm, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(fds.smoothed_var.numpy(), sv, rtol=1e-9, atol=1e-9)
    fds.train()
    z = fds(feats, y, epoch=1)
    ratio = np.sqrt(np.clip(sv / np.where(var > 0, var, 1e-300), 0.1, 10.0))
    want = np.array([(feats.numpy()[i] - mean[c]) * ratio[c] + sm[c] for i, c in enumerate(cells)])
    np.testing.assert_allclose(z.detach().numpy(), want, rtol=1e-7, atol=1e-7)


def test_one_dim_grid_fds_equals_scalar_fds():
    g = torch.Generator().manual_seed(3)
    y = torch.rand(300, generator=g) * 30
    feats = torch.randn(300, 5, generator=g)
    a = FDS(5, LabelBins(0.0, 1.0, 30))
    b = FDS(5, LabelBins((0.0,), (1.0,), (30,)))
    for m, labels in ((a, y), (b, y[:, None])):
        m.update(feats, labels)
        m.end_epoch(0)
    for name in ("last_mean", "last_var", "smoothed_mean", "smoothed_var"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert torch.equal(a(feats, y, epoch=1), b(feats, y[:, None], epoch=1))


def test_grid_feature_balance_and_refusals():
    bins = LabelBins((0.0, 0.0), (1.0, 1.0), (3, 3))
    g = torch.Generator().manual_seed(4)
    y = torch.rand(200, 2, generator=g) * 3
    feats = torch.randn(200, 4, generator=g)
    v, c = feature_balance(feats, y, bins)
    assert v.shape == (9,) and c.sum() == 200
    cell = (y[:, 0].floor() * 3 + y[:, 1].floor()).long()
    k = int(cell[0])
    np.testing.assert_allclose(v[k], feats[cell == k].double().var(0).mean().item(), rtol=1e-5)
    fds = FDS(4, bins)
    with pytest.raises(ValueError, match=r"labels must be \[N, 2\]"):
        fds.update(feats, y[:, 0])
    with pytest.raises(ValueError, match=r"labels must be \[N, 2\]"):
        feature_balance(feats, y[:, 0], bins)
    with pytest.raises(ValueError, match="plot_feature_balance draws scalar bins"):
        plot_feature_balance(v, bins)
