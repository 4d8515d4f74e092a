"""Supervised regression losses with optional per-sample (or per-element) weights.

All losses take `pred` and `y` of the same shape ([N], [N, 1] or dense [N, 1, H, W]) and an
optional `weight` of shape [N] (per sample) or the shape of `pred` (per element, e.g. depth maps):

    L = mean_i [ w_i * mean_j D(pred_ij, y_ij) ]

with D = |e| (L1), e^2 (MSE) or Huber(e; beta) = 0.5 e^2 / beta if |e| < beta else |e| - 0.5 beta.
"""
import torch

__all__ = ["weighted_l1", "weighted_mse", "weighted_huber", "distance_per_sample", "DISTANCES"]


def _elementwise(kind, pred, y, beta=1.0):
    e = pred - y
    if kind == "l1":
        return e.abs()
    if kind == "mse":
        return e * e
    if kind == "huber":
        a = e.abs()
        return torch.where(a < beta, 0.5 * e * e / beta, a - 0.5 * beta)
    raise ValueError(f"distance must be one of {DISTANCES}, got {kind!r}")


DISTANCES = ("l1", "mse", "huber")


def distance_per_sample(kind, a, b, beta=1.0):
    """D(a_i, b_i) averaged over every non-batch element: returns shape [N]."""
    d = _elementwise(kind, a, b, beta)
    return d.reshape(d.shape[0], -1).mean(dim=1) if d.dim() > 1 else d


def _weighted(kind, pred, y, weight, beta=1.0):
    if pred.shape != y.shape:
        raise ValueError(f"pred and y must have the same shape, got {tuple(pred.shape)} and "
                         f"{tuple(y.shape)}")
    d = _elementwise(kind, pred, y, beta)
    if weight is None:
        return d.mean()
    if weight.shape == d.shape:
        return (d * weight).mean()
    if weight.dim() == 1 and weight.shape[0] == d.shape[0]:
        per_sample = d.reshape(d.shape[0], -1).mean(dim=1) if d.dim() > 1 else d
        return (per_sample * weight).mean()
    raise ValueError(f"weight must have shape [N] = [{d.shape[0]}] or the shape of pred "
                     f"{tuple(pred.shape)}, got {tuple(weight.shape)}")


def weighted_l1(pred, y, weight=None):
    """mean_i w_i * mean_j |pred_ij - y_ij|."""
    return _weighted("l1", pred, y, weight)


def weighted_mse(pred, y, weight=None):
    """mean_i w_i * mean_j (pred_ij - y_ij)^2."""
    return _weighted("mse", pred, y, weight)


def weighted_huber(pred, y, weight=None, beta=1.0):
    """mean_i w_i * mean_j Huber(pred_ij - y_ij; beta), beta = 1 by default."""
    return _weighted("huber", pred, y, weight, beta)
