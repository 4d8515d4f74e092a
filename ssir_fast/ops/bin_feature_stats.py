"""Per-bin feature statistics (docs/algorithm.md, section 4), for FDS and the feature-balance
metric.

For features z [N, C] and bin indices b [N] (samples with b outside [0, B) are ignored):

    count_k = #{n : b_n = k}
    mean_k  = (1 / count_k) sum_{b_n = k} z_n
    var_k   = (1 / (count_k - 1)) sum_{b_n = k} (z_n - mean_k)^2      (unbiased; 0 when count_k <= 1)

One pass over the features with float64 accumulation (sums shifted by each bin's first sample).
Outputs: count int64 [B], mean and var [B, C] in float32 (float64 for float64 features).
Kernels: csrc/cpu/bin_feature_stats_cpu.cpp, csrc/cuda/bin_feature_stats_cuda.cu (deterministic,
no atomics). Not differentiable (statistics are buffers).
"""
import numbers

import torch

from .._extension import HAS_EXTENSION
from ._common import (fake_check_float, refuse_differentiation, require_tensor, typed_error,
                      use_kernel)

__all__ = ["bin_feature_stats", "bin_feature_stats_torch", "check_bin_index"]


def check_bin_index(bin_index, name="bin_index"):
    """Conversion of bin_index to the int64 the kernels take (any integer dtype is accepted); its
    shape and device are checked by the op (C++, or `_check_args` on the fallback)."""
    require_tensor(bin_index, name)
    if bin_index.dtype.is_floating_point or bin_index.dtype == torch.bool or bin_index.is_complex():
        raise TypeError(f"{name} must be an integer tensor, got {bin_index.dtype}")
    return bin_index.long()


def _check_args(features, bin_index, num_bins):
    """check_stats_args of csrc/fds_common.h with torch._check (ValueError / TypeError as the C++
    TORCH_CHECK_VALUE / _TYPE): for the fake kernel and the fallback."""
    torch._check_value(features.dim() == 2, lambda: f"bin_feature_stats: features must be 2-D "
                       f"[N, C], got shape {tuple(features.shape)}")
    fake_check_float(features, "bin_feature_stats", "features")
    check_index_shape(bin_index, features, "bin_feature_stats")
    torch._check_value(num_bins >= 1, lambda: f"bin_feature_stats: num_bins must be >= 1, got {num_bins}")


def check_index_shape(bin_index, features, op):
    n = features.shape[0]
    torch._check_value(bin_index.dim() == 1 and bin_index.shape[0] == n, lambda: f"{op}: bin_index "
                       f"must have shape [N] = [{n}], got {tuple(bin_index.shape)}")
    torch._check_value(bin_index.device == features.device, lambda: f"{op}: bin_index must be on "
                       f"features' device {features.device}, got {bin_index.device}")


def bin_feature_stats(features, bin_index, num_bins, unbiased=True):
    """(count [B] int64, mean [B, C], var [B, C]) of `features` [N, C] grouped by `bin_index` [N].

    Indices outside [0, num_bins) are ignored (use -1 to mask samples). `unbiased=False` gives
    the population variance M2 / n. Not differentiable (the statistics are constants):
    torch.func.grad/jacrev/jvp over `features` raise; vmap works (a per-sample loop)."""
    require_tensor(features, "features")
    refuse_differentiation("bin_feature_stats", features)
    idx = check_bin_index(bin_index)
    if isinstance(num_bins, bool) or not isinstance(num_bins, numbers.Integral):
        raise TypeError(f"num_bins must be an integer, got {num_bins!r}")
    num_bins = int(num_bins)
    if not use_kernel(features.device):
        _check_args(features, idx, num_bins)
        return bin_feature_stats_torch(features, idx, num_bins, unbiased)
    try:
        return tuple(torch.ops.ssir_fast.bin_feature_stats.default(features.detach(), idx, num_bins,
                                                                   bool(unbiased)))
    except ValueError as e:
        raise typed_error(e, lambda: _check_args(features, idx, num_bins)) from None


def bin_feature_stats_torch(features, bin_index, num_bins, unbiased=True):
    """Eager PyTorch version (fallback and benchmark baseline): float64 shifted sums, index_add_."""
    n, c = features.shape
    acc = torch.float64 if features.dtype == torch.float64 else torch.float32
    dev = features.device
    idx = bin_index.long()
    valid = (idx >= 0) & (idx < num_bins)
    key = torch.where(valid, idx, torch.full_like(idx, num_bins))
    count = torch.zeros(num_bins + 1, dtype=torch.long, device=dev).index_add_(
        0, key, torch.ones_like(key))[:num_bins]
    pos = torch.arange(n, device=dev)
    first = torch.full((num_bins + 1,), n, dtype=torch.long, device=dev).scatter_reduce_(
        0, key, pos, "amin")[:num_bins]
    z = features.detach().double()
    shift = torch.zeros(num_bins + 1, c, dtype=torch.float64, device=dev)
    if n:
        shift[:num_bins] = torch.where((first < n)[:, None], z[first.clamp(max=n - 1)], 0.0)
    d = z - shift[key]
    s1 = torch.zeros(num_bins + 1, c, dtype=torch.float64, device=dev).index_add_(0, key, d)
    s2 = torch.zeros(num_bins + 1, c, dtype=torch.float64, device=dev).index_add_(0, key, d * d)
    cnt = count.double()[:, None]
    safe = cnt.clamp(min=1)
    s1, s2 = s1[:num_bins], s2[:num_bins]
    mean = torch.where(cnt > 0, shift[:num_bins] + s1 / safe, 0.0)
    m2 = (s2 - s1 * s1 / safe).clamp(min=0)
    dof = cnt - 1 if unbiased else cnt
    var = torch.where(dof > 0, m2 / dof.clamp(min=1), 0.0)
    return count, mean.to(acc), var.to(acc)


if HAS_EXTENSION:

    @torch.library.register_fake("ssir_fast::bin_feature_stats")
    def _bin_feature_stats_fake(features, bin_index, num_bins, unbiased=True):
        _check_args(features, bin_index, num_bins)
        acc = torch.float64 if features.dtype == torch.float64 else torch.float32
        c = features.shape[1]
        return (features.new_empty((num_bins,), dtype=torch.long),
                features.new_empty((num_bins, c), dtype=acc),
                features.new_empty((num_bins, c), dtype=acc))
