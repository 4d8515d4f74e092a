"""The DIR metrics of vector targets: what `BinnedMetrics` does differently when its bins are a
D-dimensional grid (`LabelBins` built from per-dimension sequences) and pred / target are
[..., D].

A test row (p, y) falls in the flat grid bin of y (`LabelBins.index`); its shot group comes from
the number of TRAINING rows in that D-dim bin, with the thresholds of the scalar case (many >
100, few < 20). With e = p - y and m = (1/D) sum_d |e_d|, over the rows P of a group:

    mae   = sum m / |P|                      (the MAE, averaged over the dimensions)
    mse   = sum (1/D) sum_d e_d^2 / |P|,     rmse = sqrt(mse)
    gm    = exp(sum log max(m, floor) / |P|) (geometric mean of the rows' MAE)
    l2    = sum ||e||_2 / |P|                (the Euclidean error)
    mae_d = sum |e_d| / |P|,  d = 0 .. D-1   (per dimension, keys "mae_0", "mae_1", ...)
    bmae  = mean over the group's non-empty test bins of that bin's mae

One [prod(grid), 8 + D] float64 table per batch from the fused op `bin_reduce_nd`, which forms
the D-dim bin index in the kernel; its first five columns (count, sum_abs, sum_sq, sum_log_abs,
n_floored) are those of the scalar table, so the shared summary code reads both.
"""
import numpy as np
import torch

from .ops.bin_reduce_nd import (N_NONFINITE, N_OUT_OF_RANGE, SUM_ABS_DIM, SUM_L2, bin_reduce_nd,
                                ND_FIXED_COLUMNS)

__all__ = ["vector_keys", "vector_table", "vector_summary", "vector_per_bin", "vector_columns",
           "vector_counts"]


def vector_columns(bins):
    """Number of columns of a grid's per-bin table."""
    return len(ND_FIXED_COLUMNS) + bins.dim


def vector_keys(bins):
    """The metric keys a group reports beyond the scalar ones."""
    return ("l2",) + tuple(f"mae_{d}" for d in range(bins.dim))


@torch.no_grad()
def vector_table(pred, target, mask, bins, floor, allow_nonfinite):
    """(the batch's [size, 8 + D] table, target, mask as converted): pred [..., D] (or any
    shape with D values per row), target with pred's number of elements, mask one flag per row."""
    d = bins.dim
    if pred.dim() == 0 or pred.shape[-1] != d:
        if pred.numel() % d:
            raise ValueError(f"pred must have shape [N, {d}] (one column per dimension of the "
                             f"bins' grid {bins.grid}), got {tuple(pred.shape)}")
        pred = pred.reshape(-1, d)
    if target.shape != pred.shape:
        target = target.reshape(pred.shape)
    if mask is not None:
        lead = pred.shape[:-1]
        if mask.shape != lead:
            if mask.numel() != int(np.prod(lead)):
                raise ValueError(f"mask must hold one flag per row of pred ({tuple(lead)}), got "
                                 f"shape {tuple(mask.shape)}")
            mask = mask.reshape(lead)
    part = bin_reduce_nd(pred.detach(), target.detach(), bins.y_min, bins.bin_width,
                         bins.num_bins, mask=mask, floor=floor, allow_nonfinite=allow_nonfinite)
    return part, target, mask


def vector_summary(t, n):
    """The grid-only metrics of a group's rows of the table t (numpy), n rows in all (> 0)."""
    out = {"l2": t[:, SUM_L2].sum() / n}
    for k in range(t.shape[1] - SUM_ABS_DIM):
        out[f"mae_{k}"] = t[:, SUM_ABS_DIM + k].sum() / n
    return out


def vector_per_bin(bins, t, safe):
    """The grid-only per-bin columns: each dimension's bin edges, l2 and mae_d."""
    idx = bins.unravel(np.arange(bins.size))
    cols = {}
    for k, ax in enumerate(bins.axes()):
        edges = ax.edges()
        cols[f"bin_lo_{k}"] = edges[idx[:, k]]
        cols[f"bin_hi_{k}"] = edges[idx[:, k] + 1]
    cols["l2"] = t[:, SUM_L2] / safe
    for k in range(bins.dim):
        cols[f"mae_{k}"] = t[:, SUM_ABS_DIM + k] / safe
    return cols


def vector_counts(t):
    """(n_out_of_range, n_nonfinite) of a grid table."""
    return int(t[:, N_OUT_OF_RANGE].sum()), int(t[:, N_NONFINITE].sum())
