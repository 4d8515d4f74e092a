// Device-independent part of the FDS ops (bin_feature_stats, fds_calibrate): argument checks and
// the per-bin affine coefficients of the calibration.
//
// Conventions shared by the CPU and CUDA kernels:
//  - bin_index is int64 [N]; a sample whose index is outside [0, num_bins) is ignored by
//    bin_feature_stats and passed through unchanged by fds_calibrate (use -1 to mask samples,
//    e.g. invalid depth pixels).
//  - bin_feature_stats: var is the unbiased per-bin variance (M2 / (n - 1)); a bin with one
//    sample has var 0, an empty bin has count 0, mean 0, var 0. Accumulation is float64, with
//    the data shifted by the bin's first sample so that var stays accurate when |mean| >> std.
//  - fds_calibrate: z' = (z - mu_b) * s_b + mu~_b with s_b = sqrt(clamp(var~_b / var_b, lo, hi)),
//    except, as the official DIR code (calibrate_mean_var in YyzHarry/imbalanced-regression):
//    a dimension whose running variance var_b[c] is exactly 0 is left unchanged (z'[c] = z[c]),
//    and every dimension of bin b is left unchanged when sum_c var_b[c] < 1e-10 (kFdsMinVarSum;
//    the sum is formed in float64). This hits every single-sample bin (var 0).
#pragma once
#include <ATen/ATen.h>

#include <cmath>

namespace ssir_fast {

inline void check_features(const at::Tensor& f, const char* op) {
  TORCH_CHECK_VALUE(f.dim() == 2, op, ": features must be 2-D [N, C], got shape ", f.sizes());
  const auto t = f.scalar_type();
  TORCH_CHECK_TYPE(t == at::kFloat || t == at::kHalf || t == at::kBFloat16 || t == at::kDouble, op,
              ": features must be float32, float16, bfloat16 or float64, got ", t);
}

inline void check_bin_index(const at::Tensor& idx, const at::Tensor& f, const char* op) {
  TORCH_CHECK_VALUE(idx.dim() == 1 && idx.size(0) == f.size(0), op,
              ": bin_index must have shape [N] = [", f.size(0), "], got ", idx.sizes());
  TORCH_CHECK_TYPE(idx.scalar_type() == at::kLong, op, ": bin_index must be int64, got ",
              idx.scalar_type());
  TORCH_CHECK_VALUE(idx.device() == f.device(), op, ": bin_index must be on features' device ",
              f.device(), ", got ", idx.device());
}

inline at::ScalarType stats_dtype(const at::Tensor& f) {
  return f.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

inline void check_stats_args(const at::Tensor& f, const at::Tensor& idx, int64_t num_bins) {
  check_features(f, "bin_feature_stats");
  check_bin_index(idx, f, "bin_feature_stats");
  TORCH_CHECK_VALUE(num_bins >= 1, "bin_feature_stats: num_bins must be >= 1, got ", num_bins);
}

inline void check_stat(const at::Tensor& s, const char* name, const at::Tensor& f,
                       const at::Tensor& ref) {
  TORCH_CHECK_VALUE(s.dim() == 2 && s.size(1) == f.size(1), "fds_calibrate: ", name,
              " must have shape [num_bins, C] with C = ", f.size(1), ", got ", s.sizes());
  TORCH_CHECK_VALUE(s.sizes() == ref.sizes(), "fds_calibrate: ", name, " must have the shape of mean ",
              ref.sizes(), ", got ", s.sizes());
  TORCH_CHECK_VALUE(s.device() == f.device(), "fds_calibrate: ", name, " must be on features' device ",
              f.device(), ", got ", s.device());
  TORCH_CHECK_TYPE(s.scalar_type() == at::kFloat || s.scalar_type() == at::kDouble, "fds_calibrate: ",
              name, " must be float32 or float64, got ", s.scalar_type());
}

inline void check_calibrate_args(const at::Tensor& f, const at::Tensor& idx, const at::Tensor& mean,
                                 const at::Tensor& var, const at::Tensor& smean,
                                 const at::Tensor& svar, double lo, double hi) {
  check_features(f, "fds_calibrate");
  check_bin_index(idx, f, "fds_calibrate");
  check_stat(mean, "mean", f, mean);
  check_stat(var, "var", f, mean);
  check_stat(smean, "smoothed_mean", f, mean);
  check_stat(svar, "smoothed_var", f, mean);
  TORCH_CHECK_VALUE(std::isfinite(lo) && lo >= 0, "fds_calibrate: lo must be finite and >= 0, got ", lo);
  TORCH_CHECK_VALUE(!std::isnan(hi) && hi >= lo, "fds_calibrate: hi must be >= lo, got lo=", lo,
              " hi=", hi);
}

// Bins whose running variances sum to less than this are not calibrated (official DIR code).
constexpr double kFdsMinVarSum = 1e-10;

// Per-bin affine map of the calibration, z' = z * scale + shift, computed in the accumulation
// type (float64 for float64 features, float32 otherwise); scale 1 and shift 0 (the identity)
// where the dimension or the whole bin is left unchanged. Cheap: [B, C] elements.
inline std::pair<at::Tensor, at::Tensor> calibration_coefficients(
    const at::Tensor& f, const at::Tensor& mean, const at::Tensor& var, const at::Tensor& smean,
    const at::Tensor& svar, double lo, double hi) {
  const auto acc = stats_dtype(f);
  at::Tensor v = var.to(acc), sv = svar.to(acc);
  at::Tensor keep = at::logical_or(v == 0, var.to(at::kDouble).sum(1, true) < kFdsMinVarSum);
  at::Tensor ratio = sv / at::where(v == 0, at::ones({}, v.options()), v);
  at::Tensor scale = at::where(keep, at::ones({}, v.options()), at::sqrt(at::clamp(ratio, lo, hi)));
  at::Tensor shift = at::where(keep, at::zeros({}, v.options()),
                               smean.to(acc) - mean.to(acc) * scale);
  return {scale.contiguous(), shift.contiguous()};
}

}  // namespace ssir_fast
