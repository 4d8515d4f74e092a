"""Separable smoothing of values on a D-dimensional grid of label bins (LDS in D dimensions).

For values v on a grid of shape (n_0, ..., n_{D-1}) and a symmetric window K_k per dimension,

    v~[i] = sum_{j_0..j_{D-1}} K_0[j_0] ... K_{D-1}[j_{D-1}] v[i_0 + j_0 - h_0, ..., i_{D-1} + j_{D-1} - h_{D-1}]

(h_k = len(K_k) // 2) is the D-dimensional correlation with the product kernel; it factors into
one 1-D pass per dimension, each as the 1-D LDS (`ssir_fast.imbalance._convolve`): padding
'constant' extends with zeros, 'reflect' with the half-sample mirror image (d c b a | a b c d |
d c b a, repeated for windows longer than the data), per dimension. A pass costs
len(K_k) multiply-adds per bin, so a 10^6-bin grid smooths in milliseconds.
"""
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

__all__ = ["smooth_axis", "smooth_grid"]


def smooth_axis(values, window, padding, axis):
    """The 1-D correlation of `values` (float64 ndarray) with `window` along `axis`."""
    v = np.moveaxis(np.asarray(values, dtype=np.float64), axis, -1)
    window = np.asarray(window, dtype=np.float64)
    half = len(window) // 2
    pad = [(0, 0)] * (v.ndim - 1) + [(half, half)]
    padded = np.pad(v, pad, mode="constant" if padding == "constant" else "symmetric")
    # [..., n, len(window)] windows as a view (no copy), reduced in one pass by matmul
    out = sliding_window_view(padded, len(window), axis=-1) @ window
    return np.moveaxis(out, -1, axis)


def smooth_grid(values, windows, paddings):
    """Smooth `values` (shape = the grid) with one window and one padding per dimension."""
    v = np.asarray(values, dtype=np.float64)
    if not (len(windows) == len(paddings) == v.ndim):
        raise ValueError(f"need one window and one padding per grid dimension ({v.ndim}), got "
                         f"{len(windows)} windows and {len(paddings)} paddings")
    for k, (w, p) in enumerate(zip(windows, paddings)):
        v = smooth_axis(v, w, p, k)
    return v
