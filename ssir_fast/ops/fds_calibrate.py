"""FDS feature calibration (docs/algorithm.md, section 4), one fused pass:

    z'_n = (z_n - mu_b) * sqrt(clamp(var~_b / var_b, lo, hi)) + mu~_b,     b = bin_index[n]

with (mu, var) the running per-bin statistics and (mu~, var~) their smoothed versions. As in the
official DIR code (`calibrate_mean_var`, YyzHarry/imbalanced-regression) a dimension with
var_b[c] == 0 is left unchanged, and so is every dimension of a bin with
sum_c var_b[c] < 1e-10 (MIN_VAR_SUM; e.g. a bin seen with one sample); samples whose bin is
outside [0, B) pass through unchanged. Differentiable w.r.t. the features:

    d z'_n / d z_n = sqrt(clamp(var~_b / var_b, lo, hi))    (diagonal, 1 where left unchanged;
                                                             the statistics are constants)

and the backward is the same fused op with zero means. Kernels: csrc/cpu/fds_calibrate_cpu.cpp,
csrc/cuda/fds_calibrate_cuda.cu.
"""
import math

import torch

from .._extension import HAS_EXTENSION
from ._common import (fake_check_float, require_tensor, typed_error, under_transform,
                      use_kernel)
from .bin_feature_stats import check_bin_index, check_index_shape

__all__ = ["fds_calibrate", "fds_calibrate_torch", "calibration_coefficients", "MIN_VAR_SUM"]

#: A bin whose running variances sum to less than this is not calibrated (official DIR code;
#: csrc/fds_common.h kFdsMinVarSum).
MIN_VAR_SUM = 1e-10


def _check_args(features, bin_index, mean, var, smoothed_mean, smoothed_var, lo, hi):
    """check_calibrate_args of csrc/fds_common.h with torch._check (ValueError / TypeError as the
    C++ TORCH_CHECK_VALUE / _TYPE): for the fake kernel and the fallback."""
    torch._check_value(features.dim() == 2, lambda: f"fds_calibrate: features must be 2-D [N, C], "
                       f"got shape {tuple(features.shape)}")
    fake_check_float(features, "fds_calibrate", "features")
    check_index_shape(bin_index, features, "fds_calibrate")
    c = features.shape[1]
    for t, name in ((mean, "mean"), (var, "var"), (smoothed_mean, "smoothed_mean"),
                    (smoothed_var, "smoothed_var")):
        torch._check_value(t.dim() == 2 and t.shape[1] == c and t.shape == mean.shape,
                           lambda: f"fds_calibrate: {name} must have shape [num_bins, C] with C = "
                                   f"{c} and the shape of mean {tuple(mean.shape)}, got {tuple(t.shape)}")
        torch._check_value(t.device == features.device, lambda: f"fds_calibrate: {name} must be on "
                           f"features' device {features.device}, got {t.device}")
        torch._check_type(t.dtype in (torch.float32, torch.float64), lambda: f"fds_calibrate: "
                          f"{name} must be float32 or float64, got {t.dtype}")
    torch._check_value(math.isfinite(lo) and lo >= 0,
                       lambda: f"fds_calibrate: lo must be finite and >= 0, got {lo}")
    torch._check_value(not math.isnan(hi) and hi >= lo,
                       lambda: f"fds_calibrate: hi must be >= lo, got lo={lo} hi={hi}")


def fds_calibrate(features, bin_index, mean, var, smoothed_mean, smoothed_var, lo=0.1, hi=10.0):
    """Calibrated features [N, C] (same dtype as `features`); see the module docstring.

    Args:
        features: [N, C] float tensor (the encoder output).
        bin_index: [N] integer bin of each sample; out-of-range indices pass through.
        mean, var, smoothed_mean, smoothed_var: [B, C] statistics (float32 or float64).
        lo, hi: clamp of the variance ratio ([0.1, 10] for age, [0.2, 5] for NYU).
    """
    require_tensor(features, "features")
    idx = check_bin_index(bin_index)
    for t, name in ((mean, "mean"), (var, "var"), (smoothed_mean, "smoothed_mean"),
                    (smoothed_var, "smoothed_var")):
        require_tensor(t, name)
        if not t.is_floating_point():  # before the conversion to float32/float64 below
            raise TypeError(f"{name} must be a float tensor, got {t.dtype}")
    lo, hi = float(lo), float(hi)
    stats = [t.detach().to(torch.float64 if t.dtype == torch.float64 else torch.float32)
             for t in (mean, var, smoothed_mean, smoothed_var)]
    if stats[0].dtype != stats[1].dtype or len({s.dtype for s in stats}) > 1:
        stats = [s.double() for s in stats]
    # torch.func transforms and forward-mode AD: the pure-PyTorch path, which they all support
    transformed = under_transform(features)
    if not transformed:
        _check_stat_values(stats)
    if transformed or not use_kernel(features.device):
        _check_args(features, idx, mean, var, smoothed_mean, smoothed_var, lo, hi)
        return fds_calibrate_torch(features, idx, *stats, lo, hi)
    try:
        return torch.ops.ssir_fast.fds_calibrate.default(features, idx, *stats, lo, hi)
    except ValueError as e:
        raise typed_error(e, lambda: _check_args(features, idx, mean, var, smoothed_mean,
                                                 smoothed_var, lo, hi)) from None


def _check_stat_values(stats):
    """NaN/inf statistics or a negative variance would make every calibrated feature NaN: refused
    where reading them costs no device sync (CPU tensors; FDS checks its own once per epoch)."""
    names = ("mean", "var", "smoothed_mean", "smoothed_var")
    for t, name in zip(stats, names):
        if t.device.type != "cpu" or t.numel() == 0:
            continue
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"fds_calibrate: {name} contains NaN or inf")
        if name.endswith("var") and bool((t < 0).any()):
            raise ValueError(f"fds_calibrate: {name} has negative entries (a variance is >= 0)")


def calibration_coefficients(features_dtype, mean, var, smoothed_mean, smoothed_var, lo, hi):
    """(scale, shift) [B, C] with z' = z * scale + shift, in the accumulation dtype; the identity
    (1, 0) where var == 0 or the bin's variances sum (in float64) to < MIN_VAR_SUM."""
    acc = torch.float64 if features_dtype == torch.float64 else torch.float32
    v, sv = var.to(acc), smoothed_var.to(acc)
    keep = (v == 0) | (var.double().sum(1, keepdim=True) < MIN_VAR_SUM)
    ratio = sv / torch.where(v == 0, torch.ones_like(v), v)
    scale = torch.where(keep, torch.ones_like(v), torch.clamp(ratio, lo, hi).sqrt())
    shift = torch.where(keep, torch.zeros_like(v), smoothed_mean.to(acc) - mean.to(acc) * scale)
    return scale, shift


def fds_calibrate_torch(features, bin_index, mean, var, smoothed_mean, smoothed_var, lo, hi):
    """Eager PyTorch version (fallback and benchmark baseline); differentiable through autograd."""
    scale, shift = calibration_coefficients(features.dtype, mean, var, smoothed_mean, smoothed_var,
                                            lo, hi)
    b = mean.shape[0]
    idx = bin_index.long()
    valid = (idx >= 0) & (idx < b)
    safe = idx.clamp(0, b - 1)
    acc = scale.dtype
    out = features.to(acc) * scale[safe] + shift[safe]
    return torch.where(valid[:, None], out, features.to(acc)).to(features.dtype)


if HAS_EXTENSION:

    @torch.library.register_fake("ssir_fast::fds_calibrate")
    def _fds_calibrate_fake(features, bin_index, mean, var, smoothed_mean, smoothed_var, lo, hi):
        _check_args(features, bin_index, mean, var, smoothed_mean, smoothed_var, lo, hi)
        return torch.empty_like(features, memory_format=torch.contiguous_format)

    def _setup_context(ctx, inputs, output):
        features, bin_index, mean, var, smoothed_mean, smoothed_var, lo, hi = inputs
        ctx.save_for_backward(bin_index, var, smoothed_var)
        ctx.lo, ctx.hi = lo, hi

    def _backward(ctx, grad):
        """grad_z = grad * scale[b] (grad unchanged for ignored samples): the op with zero means."""
        bin_index, var, smoothed_var = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None, None, None, None
        zeros = torch.zeros_like(var)
        grad_features = torch.ops.ssir_fast.fds_calibrate.default(
            grad.contiguous(), bin_index, zeros, var, zeros, smoothed_var, ctx.lo, ctx.hi)
        return grad_features, None, None, None, None, None, None, None

    torch.library.register_autograd("ssir_fast::fds_calibrate", _backward,
                                    setup_context=_setup_context)
