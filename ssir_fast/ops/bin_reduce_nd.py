"""Per-bin reduction of the errors of vector targets: `bin_reduce` over a D-dimensional grid of
label bins, the one pass behind the metrics of [N, D] targets.

pred and target are [..., D]; each row (p, y) of D values lands in the flat bin

    b = ((i_0 * n_1) + i_1) * n_2 + ...,   i_d = clamp(bin_d(y_d), 0, n_d - 1)

(row-major, as `LabelBins.index` of a grid; bin_d is bin_reduce's rule with (y_min[d],
bin_width[d]), the float32 decimal rule included), computed in the kernel. With e = p - y the
row adds to that bin's row of a [prod(num_bins), 8 + D] float64 table

    COUNT           n                           N_FLOORED       #{m < floor}
    SUM_ABS         sum m,  m = mean_d |e_d|    SUM_L2          sum ||e||_2
    SUM_SQ          sum mean_d e_d^2            N_OUT_OF_RANGE  #{rows with a y_d outside its bins}
    SUM_LOG_ABS     sum log max(m, floor)       N_NONFINITE     #{rows with NaN/inf}, excluded
    SUM_ABS_DIM + d sum |e_d|  (d = 0 .. D-1)                   from the other columns

so MAE (mean over the dimensions) = SUM_ABS / COUNT, the Euclidean error SUM_L2 / COUNT, the
per-dimension MAE column SUM_ABS_DIM + d over COUNT, and GM = exp(SUM_LOG_ABS / COUNT), the
geometric mean of the rows' mean absolute errors.

Precision: e_d in fp32 for fp32/fp16/bf16 inputs (fp64 for fp64), each row's reductions (m,
the squares, the norm, the log) and every sum in fp64; the bin index as bin_reduce's. The CPU
result is deterministic for a fixed thread count; the CUDA kernel adds with float64 atomics (the
last bits of the sums may vary from run to run). NaN/inf raise unless allow_nonfinite (on CUDA
that check reads one number back).

Kernels: csrc/cpu/bin_reduce_nd_cpu.cpp, csrc/cuda/bin_reduce_nd_cuda.cu
(csrc/bin_reduce_nd_common.h).
"""
import math
import numbers

import torch

from .._extension import HAS_EXTENSION
from .bin_reduce import DEFAULT_FLOOR
from .binning import MAX_BINS, raw_bin_index
from ._common import (fake_check_float, fake_check_same, refuse_differentiation,
                      require_tensor, typed_error, use_kernel)

__all__ = ["bin_reduce_nd", "bin_reduce_nd_torch", "nd_columns", "ND_FIXED_COLUMNS", "MAX_DIMS"]

ND_FIXED_COLUMNS = ("count", "sum_abs", "sum_sq", "sum_log_abs", "n_floored", "sum_l2",
                    "n_out_of_range", "n_nonfinite")
(COUNT, SUM_ABS, SUM_SQ, SUM_LOG_ABS, N_FLOORED, SUM_L2, N_OUT_OF_RANGE,
 N_NONFINITE) = range(len(ND_FIXED_COLUMNS))
SUM_ABS_DIM = len(ND_FIXED_COLUMNS)   # first per-dimension column
MAX_DIMS = 8


def nd_columns(dims):
    """The column names of a D-dim table: the fixed ones, then sum_abs_0 .. sum_abs_{D-1}."""
    return ND_FIXED_COLUMNS + tuple(f"sum_abs_{d}" for d in range(dims))


def _convert(pred, target, y_min, bin_width, num_bins, mask, floor):
    """Conversions (tensors required by name, sequences to float / int lists); the value checks
    are in C++ (csrc/bin_reduce_nd_common.h check_args) or `_check_args`."""
    require_tensor(pred, "pred")
    require_tensor(target, "target")
    if mask is not None:
        require_tensor(mask, "mask")
    out = []
    for name, v, kind in (("y_min", y_min, float), ("bin_width", bin_width, float),
                          ("num_bins", num_bins, int)):
        if isinstance(v, (numbers.Number, str, bytes)) or not hasattr(v, "__len__"):
            raise TypeError(f"bin_reduce_nd: {name} must be a sequence with one entry per "
                            f"dimension, got {v!r}")
        vals = list(v.tolist() if isinstance(v, torch.Tensor) else v)
        for k, x in enumerate(vals):
            ok = isinstance(x, numbers.Integral) if kind is int else isinstance(x, numbers.Real)
            if isinstance(x, bool) or not ok:
                raise TypeError(f"bin_reduce_nd: {name}[{k}] must be "
                                f"{'an integer' if kind is int else 'a number'}, got {x!r}")
        out.append([kind(x) for x in vals])
    flat = math.prod(out[2]) if out[2] else 0
    if flat > MAX_BINS:
        raise ValueError(f"bin_reduce_nd: num_bins = {tuple(out[2])} makes {flat} flat bins, more "
                         f"than {MAX_BINS}")
    return out[0], out[1], out[2], float(floor)


def _check_args(pred, target, y_min, bin_width, num_bins, mask, floor):
    """check_args of csrc/bin_reduce_nd_common.h with torch._check: for the fake kernel and the
    fallback."""
    d = len(num_bins)
    torch._check_value(1 <= d <= MAX_DIMS, lambda: f"bin_reduce_nd: num_bins must have 1 to "
                       f"{MAX_DIMS} entries (one per dimension), got {d}")
    torch._check_value(len(y_min) == d and len(bin_width) == d, lambda: f"bin_reduce_nd: y_min, "
                       f"bin_width and num_bins must have one entry per dimension, got "
                       f"{len(y_min)}, {len(bin_width)} and {d}")
    fake_check_same(pred, target, "bin_reduce_nd", "pred", "target")
    fake_check_float(pred, "bin_reduce_nd", "pred")
    torch._check_value(pred.dim() >= 1 and pred.shape[-1] == d, lambda: f"bin_reduce_nd: pred "
                       f"must have shape [..., {d}] (one column per dimension of num_bins), got "
                       f"{list(pred.shape)}")
    for k in range(d):
        torch._check_value(num_bins[k] >= 1, lambda: f"bin_reduce_nd: num_bins[{k}] must be >= "
                           f"1, got {num_bins[k]}")
        torch._check_value(math.isfinite(bin_width[k]) and bin_width[k] > 0, lambda: f"bin_reduce"
                           f"_nd: bin_width[{k}] must be finite and > 0, got {bin_width[k]}")
        torch._check_value(math.isfinite(y_min[k]), lambda: f"bin_reduce_nd: y_min[{k}] must be "
                           f"finite, got {y_min[k]}")
    torch._check_value(math.isfinite(floor) and floor > 0,
                       lambda: f"bin_reduce_nd: floor must be finite and > 0, got {floor}")
    if mask is not None:
        torch._check_type(mask.dtype == torch.bool,
                          lambda: f"bin_reduce_nd: mask must be a bool tensor, got {mask.dtype}")
        torch._check_value(mask.shape == pred.shape[:-1], lambda: f"bin_reduce_nd: mask must "
                           f"have pred's leading shape (one flag per row of {list(pred.shape)}), "
                           f"got {list(mask.shape)}")
        torch._check_value(mask.device == pred.device, lambda: f"bin_reduce_nd: mask must be on "
                           f"pred's device {pred.device}, got {mask.device}")


def bin_reduce_nd(pred, target, y_min, bin_width, num_bins, mask=None, floor=DEFAULT_FLOOR,
                  allow_nonfinite=False):
    """Per-bin sums of the errors of vector targets: a [prod(num_bins), 8 + D] float64 tensor.

    Args:
        pred, target: [..., D] float32/float16/bfloat16/float64 tensors of the same shape, dtype
            and device.
        y_min, bin_width, num_bins: sequences of D entries, the bins of each dimension
            (`LabelBins.y_min`, `.bin_width`, `.num_bins` of a grid); at most 8 dimensions and
            2^22 flat bins.
        mask: optional bool tensor of pred's leading shape ([...]): only rows where it is True
            count, read by the kernel in the same pass.
        floor: tiny positive value for the GM log (module docstring).
        allow_nonfinite: count NaN/inf rows in N_NONFINITE and exclude them instead of raising.

    Not differentiable (torch.func.grad/jacrev/jvp raise)."""
    y_min, bin_width, num_bins, floor = _convert(pred, target, y_min, bin_width, num_bins, mask,
                                                 floor)
    refuse_differentiation("bin_reduce_nd", pred, target)
    if use_kernel(pred.device):
        try:
            return torch.ops.ssir_fast.bin_reduce_nd.default(
                pred, target, y_min, bin_width, num_bins, mask, floor, bool(allow_nonfinite))
        except ValueError as e:
            raise typed_error(e, lambda: _check_args(pred, target, y_min, bin_width, num_bins,
                                                     mask, floor)) from None
    _check_args(pred, target, y_min, bin_width, num_bins, mask, floor)
    return bin_reduce_nd_torch(pred, target, y_min, bin_width, num_bins, mask, floor,
                               allow_nonfinite)


def bin_reduce_nd_torch(pred, target, y_min, bin_width, num_bins, mask=None, floor=DEFAULT_FLOOR,
                        allow_nonfinite=False):
    """Pure-PyTorch `bin_reduce_nd`: the flat index from per-dimension bins, then one
    `index_add_` of the [rows, 8 + D] per-row values (the fallback without the extension, and
    the baseline of the benchmarks). Same formulas and precision as the kernels."""
    d = len(num_bins)
    acc = torch.float64 if pred.dtype == torch.float64 else torch.float32
    p, y = pred.reshape(-1, d).to(acc), target.reshape(-1, d).to(acc)
    if mask is not None:
        m = mask.reshape(-1)
        p, y = p[m], y[m]
    size = math.prod(num_bins)
    cols = len(ND_FIXED_COLUMNS) + d
    out = torch.zeros(size, cols, dtype=torch.float64, device=pred.device)
    flat = torch.zeros(y.shape[0], dtype=torch.long, device=pred.device)
    oor = torch.zeros(y.shape[0], dtype=torch.bool, device=pred.device)
    for k in range(d):
        yk = y[:, k]
        t = raw_bin_index(torch.where(torch.isfinite(yk), yk, torch.full_like(yk, y_min[k])),
                          y_min[k], bin_width[k], num_bins[k])
        t = torch.where(torch.isfinite(yk), t, torch.zeros_like(t))
        oor |= (t < 0) | (t >= num_bins[k])
        flat = flat * num_bins[k] + t.clamp(0, num_bins[k] - 1).long()
    ok = (torch.isfinite(p) & torch.isfinite(y)).all(dim=1)
    if not bool(ok.all()):
        out[:, N_NONFINITE] = torch.bincount(flat[~ok], minlength=size).double()
        if not allow_nonfinite:
            raise ValueError(f"bin_reduce_nd: pred or target contains NaN or inf "
                             f"({int((~ok).sum())} rows); pass allow_nonfinite=True to count and "
                             f"exclude them")
        p, y, flat, oor = p[ok], y[ok], flat[ok], oor[ok]
    e = p - y
    a = e.abs().double()                         # |e_d| in the accumulation type, then fp64
    sq = (e.double() ** 2).sum(dim=1)
    m = a.sum(dim=1) / d
    vals = torch.empty(e.shape[0], cols, dtype=torch.float64, device=pred.device)
    vals[:, COUNT] = 1.0
    vals[:, SUM_ABS] = m
    vals[:, SUM_SQ] = sq / d
    vals[:, SUM_LOG_ABS] = torch.log(torch.clamp(m, min=floor))
    vals[:, N_FLOORED] = (m < floor).double()
    vals[:, SUM_L2] = torch.sqrt(sq)
    vals[:, N_OUT_OF_RANGE] = oor.double()
    vals[:, N_NONFINITE] = 0.0
    vals[:, SUM_ABS_DIM:] = a
    out.index_add_(0, flat, vals)
    return out


# ---- torch.compile support ----------------------------------------------------------------
if HAS_EXTENSION:

    @torch.library.register_fake("ssir_fast::bin_reduce_nd")
    def _bin_reduce_nd_fake(pred, target, y_min, bin_width, num_bins, mask=None,
                            floor=DEFAULT_FLOOR, allow_nonfinite=False):
        _check_args(pred, target, y_min, bin_width, num_bins, mask, floor)
        return pred.new_empty((math.prod(num_bins), len(ND_FIXED_COLUMNS) + len(num_bins)),
                              dtype=torch.float64)
