"""Per-bin reduction of regression errors: the one pass behind the DIR metrics
(docs/algorithm.md, section 4).

For every selected pair (p, y) of `pred` and `target` (any matching shape; dense maps are
flattened) the op adds to row b of a [num_bins, 12] float64 table, where

    b = clamp(floor((y - y_min) / bin_width), 0, num_bins - 1)      (as LabelBins.index)

(for decimal widths such as 0.1 m, the official DIR rule floor(float32(y) * 10) - 7 instead: see
ssir_fast.ops.binning, whose `raw_bin_index` the fallback below calls)

and the columns (constants below, `COLUMNS` names them) hold

    COUNT           n                       N_FLOORED        #{|e| < floor}
    SUM_ABS         sum |e|,  e = p - y     N_DELTA1..3      #{max(p'/y', y'/p') < 1.25^k}, k=1,2,3
    SUM_SQ          sum e^2                 SUM_ABSREL       sum |e| / y'
    SUM_LOG_ABS     sum log max(|e|, floor) SUM_LOG10        sum |log10 p' - log10 y'|
    N_OUT_OF_RANGE  #{y outside [y_min, y_min + num_bins * bin_width)}, counted in the edge bin
    N_NONFINITE     #{p or y NaN/inf}, excluded from all other columns (bin 0 if y is not finite)

with p' = max(p, floor), y' = max(y, floor): the ratio metrics (delta, AbsRel, log10) are meant
for positive targets (depth). GM = exp(SUM_LOG_ABS / COUNT): an exact zero error would make the
geometric mean 0, so errors below `floor` (default 1e-8) count as `floor`; N_FLOORED says how often.

Precision: per-pair math in fp32 for fp32/fp16/bf16 inputs (fp64 for fp64), except the bin index
(the rule above, the same code on every device) and the log of SUM_LOG_ABS, which is fp64 on every
device (that column sums terms of both signs, so float log errors would not cancel: with floored
pairs, log(1e-8) = -18.4, one fp32 ulp is 2e-6 per pair); every sum in fp64.
The CPU result is deterministic for a fixed thread count; the CUDA kernel merges block partials
with float64 atomics, so the order of additions (and the last bits of the sums) may vary from run
to run. NaN/inf raise by default; on CUDA that check reads one number back (a device sync): pass
`allow_nonfinite=True` for a sync-free call and inspect the N_NONFINITE column yourself.

Kernels: csrc/cpu/bin_reduce_cpu.cpp, csrc/cuda/bin_reduce_cuda.cu; float64 reference:
ssir_fast.reference.bin_reduce_reference.
"""
import math
import numbers

import torch

from .._extension import HAS_EXTENSION
from .binning import raw_bin_index, check_num_bins
from ._common import (fake_check_float, fake_check_same, refuse_differentiation,
                      require_tensor, typed_error, use_kernel)

__all__ = ["bin_reduce", "bin_reduce_torch", "COLUMNS", "NUM_COLUMNS", "DEFAULT_FLOOR"]

COLUMNS = ("count", "sum_abs", "sum_sq", "sum_log_abs", "n_floored", "n_delta1", "n_delta2",
           "n_delta3", "sum_absrel", "sum_log10", "n_out_of_range", "n_nonfinite")
NUM_COLUMNS = len(COLUMNS)
(COUNT, SUM_ABS, SUM_SQ, SUM_LOG_ABS, N_FLOORED, N_DELTA1, N_DELTA2, N_DELTA3, SUM_ABSREL,
 SUM_LOG10, N_OUT_OF_RANGE, N_NONFINITE) = range(NUM_COLUMNS)
DEFAULT_FLOOR = 1e-8


def _convert(pred, target, y_min, bin_width, num_bins, mask, floor):
    """Conversions only (tensors required by name, numbers to float/int); the checks are in C++
    (csrc/bin_reduce_common.h check_args) or, on the fallback and in traced calls, `_check_args`."""
    require_tensor(pred, "pred")
    require_tensor(target, "target")
    if mask is not None:
        require_tensor(mask, "mask")
    if isinstance(num_bins, bool) or not isinstance(num_bins, numbers.Integral):
        raise TypeError(f"num_bins must be an integer, got {num_bins!r}")
    check_num_bins(int(num_bins), "bin_reduce: num_bins")
    return float(y_min), float(bin_width), int(num_bins), float(floor)


def _check_args(pred, target, y_min, bin_width, num_bins, mask, floor):
    """check_args of csrc/bin_reduce_common.h with torch._check (ValueError / TypeError as the C++
    TORCH_CHECK_VALUE / _TYPE): for the fake kernel and the fallback."""
    fake_check_same(pred, target, "bin_reduce", "pred", "target")
    fake_check_float(pred, "bin_reduce", "pred")
    torch._check_value(num_bins >= 1, lambda: f"bin_reduce: num_bins must be >= 1, got {num_bins}")
    torch._check_value(math.isfinite(bin_width) and bin_width > 0,
                       lambda: f"bin_reduce: bin_width must be finite and > 0, got {bin_width}")
    torch._check_value(math.isfinite(y_min), lambda: f"bin_reduce: y_min must be finite, got {y_min}")
    torch._check_value(math.isfinite(floor) and floor > 0,
                       lambda: f"bin_reduce: floor must be finite and > 0, got {floor}")
    if mask is not None:
        torch._check_type(mask.dtype == torch.bool,
                          lambda: f"bin_reduce: mask must be a bool tensor, got {mask.dtype}")
        torch._check_value(mask.shape == pred.shape, lambda: f"bin_reduce: mask must have pred's "
                           f"shape {tuple(pred.shape)}, got {tuple(mask.shape)}")
        torch._check_value(mask.device == pred.device, lambda: f"bin_reduce: mask must be on "
                           f"pred's device {pred.device}, got {mask.device}")


def bin_reduce(pred, target, y_min, bin_width, num_bins, mask=None, floor=DEFAULT_FLOOR,
               allow_nonfinite=False):
    """Per-bin sums and counts of the errors pred - target: a [num_bins, 12] float64 tensor.

    Args:
        pred, target: float32/float16/bfloat16/float64 tensors of the same shape, dtype and device.
        y_min, bin_width, num_bins: uniform bins [y_min + b * bin_width, y_min + (b+1) * bin_width).
        mask: optional bool tensor of pred's shape; only pairs where it is True count. It is read
            by the kernel in the same pass (no gathered copy of pred/target is made).
        floor: tiny positive value for the GM log and the ratio metrics (module docstring).
        allow_nonfinite: count NaN/inf pairs in N_NONFINITE and exclude them instead of raising.

    The table is on pred's device; the columns are described in the module docstring. Not
    differentiable: torch.func.grad/jacrev/jvp over pred or target raise; vmap works (a
    per-sample loop).
    """
    y_min, bin_width, num_bins, floor = _convert(pred, target, y_min, bin_width, num_bins, mask,
                                                 floor)
    refuse_differentiation("bin_reduce", pred, target)
    if use_kernel(pred.device):
        try:
            return torch.ops.ssir_fast.bin_reduce.default(pred, target, y_min, bin_width, num_bins,
                                                          mask, floor, bool(allow_nonfinite))
        except ValueError as e:
            raise typed_error(e, lambda: _check_args(pred, target, y_min, bin_width, num_bins,
                                                     mask, floor)) from None
    _check_args(pred, target, y_min, bin_width, num_bins, mask, floor)
    return bin_reduce_torch(pred, target, y_min, bin_width, num_bins, mask, floor,
                            allow_nonfinite)


def bin_reduce_torch(pred, target, y_min, bin_width, num_bins, mask=None, floor=DEFAULT_FLOOR,
                     allow_nonfinite=False):
    """Pure-PyTorch `bin_reduce` with one `torch.bincount` per column (the fallback when the
    extension is not built, and the "torch.bincount" baseline of the benchmarks).

    Same formulas and precision as the kernels (per-pair math in fp32, or fp64 for fp64 inputs)."""
    acc = torch.float64 if pred.dtype == torch.float64 else torch.float32
    p, y = pred.reshape(-1).to(acc), target.reshape(-1).to(acc)
    if mask is not None:
        m = mask.reshape(-1)
        p, y = p[m], y[m]
    out = torch.zeros(num_bins, NUM_COLUMNS, dtype=torch.float64, device=pred.device)
    ok = torch.isfinite(p) & torch.isfinite(y)
    all_ok = bool(ok.all())
    if not all_ok:
        bad = ~ok
        yb = y[bad]
        bidx = torch.where(torch.isfinite(yb), raw_bin_index(yb, y_min, bin_width, num_bins),
                           torch.zeros_like(yb, dtype=torch.float64))
        bidx = bidx.clamp(0, num_bins - 1).long()
        out[:, N_NONFINITE] = torch.bincount(bidx, minlength=num_bins).double()
        if not allow_nonfinite:
            raise ValueError(f"pred or target contains NaN or inf ({int(bad.sum())} pairs); pass "
                             f"allow_nonfinite=True to count and exclude them")
        p, y = p[ok], y[ok]
    t = raw_bin_index(y, y_min, bin_width, num_bins)
    oor = (t < 0) | (t >= num_bins)
    b = t.clamp_(0, num_bins - 1).long()
    e = p - y
    a = e.abs()
    fl = torch.tensor(floor, dtype=acc, device=p.device)
    pc, yc = torch.maximum(p, fl), torch.maximum(y, fl)
    q = pc / yc
    r = torch.maximum(q, 1 / q)

    def col(weights=None):
        w = None if weights is None else weights.double()
        return torch.bincount(b, weights=w, minlength=num_bins).double()

    out[:, COUNT] = col()
    out[:, SUM_ABS] = col(a)
    out[:, SUM_SQ] = col(e.double() ** 2)
    out[:, SUM_LOG_ABS] = col(torch.log(torch.maximum(a, fl).double()))
    out[:, N_FLOORED] = col(a < fl)
    for k, c in ((1, N_DELTA1), (2, N_DELTA2), (3, N_DELTA3)):
        out[:, c] = col(r < 1.25 ** k)
    out[:, SUM_ABSREL] = col(a / yc)
    out[:, SUM_LOG10] = col(torch.log(q).abs() / math.log(10.0))
    out[:, N_OUT_OF_RANGE] = col(oor)
    return out


# ---- torch.compile support ----------------------------------------------------------------
if HAS_EXTENSION:

    @torch.library.register_fake("ssir_fast::bin_reduce")
    def _bin_reduce_fake(pred, target, y_min, bin_width, num_bins, mask=None, floor=DEFAULT_FLOOR,
                         allow_nonfinite=False):
        _check_args(pred, target, y_min, bin_width, num_bins, mask, floor)
        return pred.new_empty((num_bins, NUM_COLUMNS), dtype=torch.float64)
