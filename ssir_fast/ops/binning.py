"""The bin index rule shared by LabelBins, the metrics and the bin_reduce kernels.

    bin(y) = floor((y - y_min) / bin_width)                         (float64; exact for widths
                                                                     that are powers of two)
    bin(y) = floor(float32(float32(y) * float32(s))) - k0           (decimal widths, s = 1 / width,
                                                                     k0 = y_min * s)

The decimal rule is the official DIR arithmetic (nyud2-dir: `int(depth * np.float32(10))` minus
bucket_start 7); the reason and the exact conditions are in ssir_fast.imbalance's docstring. It
lives here, below the toolkit, because the kernels' fallback uses it: `BinIndexer` in
csrc/bin_reduce_common.h applies the same tests.
"""
import functools
import math

import numpy as np
import torch

__all__ = ["raw_bin_index", "decimal_rule", "MAX_BINS", "check_num_bins"]

# More label bins than this is a mistake (a bin width far below the labels' resolution): the
# per-bin tables would take gigabytes. 2^22 bins of a [B, 12] float64 table are 400 MB.
MAX_BINS = 1 << 22


def check_num_bins(num_bins, what="num_bins"):
    """ValueError for more than MAX_BINS bins, saying the memory it would take."""
    if num_bins > MAX_BINS:
        raise ValueError(f"{what} = {num_bins} label bins is too many (at most {MAX_BINS}; the "
                         f"per-bin table alone would take {num_bins * 96 / 2**30:.3g} GiB): use a "
                         f"larger bin width or a smaller label range")

_F32_MAX = float(np.finfo(np.float32).max)


@functools.lru_cache(maxsize=64)   # (a pure function of three numbers, asked every SSIR step)
def decimal_rule(y_min, bin_width, num_bins):
    """(s, k0) of the decimal bin rule (module docstring) for these bins, or None when the float64
    rule applies. The same float64 tests as `BinIndexer::make` in csrc/bin_reduce_common.h."""
    y_min, bin_width = float(y_min), float(bin_width)
    if math.frexp(bin_width)[0] == 0.5:          # power of two: the float64 quotient is exact
        return None
    inv = 1.0 / bin_width
    if not inv <= 2.0 ** 25:                    # also inf for a subnormal width
        return None
    s = float(round(inv))
    if not (2.0 <= s <= 2.0 ** 24 and abs(inv - s) <= 1e-9 * s):   # s exact in float32
        return None
    k = y_min * s
    k0 = float(round(k))
    if abs(k - k0) > 1e-9 * max(1.0, abs(k)) or abs(k0) + num_bins > 2.0 ** 22:
        return None
    return s, k0


def raw_bin_index(labels, y_min, bin_width, num_bins):
    """Unclamped bin position floor(...) of each label as float64 (tensor or ndarray, as the
    input), by the rule of the module docstring; `LabelBins.index` clamps it."""
    rule = decimal_rule(y_min, bin_width, num_bins)
    if isinstance(labels, torch.Tensor):
        if rule is None:
            v = labels.double()
            if y_min != 0:   # (y - 0 and y / 1 are y: no op for them, the common age bins)
                v = v - float(y_min)
            if bin_width != 1:
                v = v / float(bin_width)
            return torch.floor(v)
        s, k0 = rule
        if labels.dtype in (torch.float32, torch.float16, torch.bfloat16):
            yf = labels.float()
        else:
            yf = labels.double().clamp(-_F32_MAX, _F32_MAX).float()
        return torch.floor(yf * s).double() - k0          # float32 product, as the official code
    y = np.asarray(labels, dtype=np.float64)
    if rule is None:
        return np.floor((y - float(y_min)) / float(bin_width))
    s, k0 = rule
    yf = np.clip(y, -_F32_MAX, _F32_MAX).astype(np.float32)
    with np.errstate(over="ignore"):                      # |y| near float32 max -> inf: edge bin
        return np.floor(yf * np.float32(s)).astype(np.float64) - k0
