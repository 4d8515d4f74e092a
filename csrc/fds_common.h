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
#include <cmath>

namespace ssir_fast {

// Bins whose running variances sum to less than this are not calibrated (official DIR code).
constexpr double kFdsMinVarSum = 1e-10;

}  // namespace ssir_fast

#ifndef __CUDACC__  // host-side checks on stable tensors
#include "stable_common.h"

namespace ssir_fast {

inline void check_features(const Tensor& f, const char* op) {
  SSIR_CHECK(f.dim() == 2, op, ": features must be 2-D [N, C], got shape ", Shape{f});
  SSIR_CHECK(is_kernel_float(f.scalar_type()), op,
             ": features must be float32, float16, bfloat16 or float64, got ", f.scalar_type());
}

inline void check_bin_index(const Tensor& idx, const Tensor& f, const char* op) {
  SSIR_CHECK(idx.dim() == 1 && idx.size(0) == f.size(0), op, ": bin_index must have shape [N] = [",
             f.size(0), "], got ", Shape{idx});
  SSIR_CHECK(idx.scalar_type() == ScalarType::Long, op, ": bin_index must be int64, got ",
             idx.scalar_type());
  SSIR_CHECK(same_device(idx, f), op, ": bin_index must be on features' device ", Where{f},
             ", got ", Where{idx});
}

inline ScalarType stats_dtype(const Tensor& f) {
  return f.scalar_type() == ScalarType::Double ? ScalarType::Double : ScalarType::Float;
}

inline void check_stats_args(const Tensor& f, const Tensor& idx, int64_t num_bins) {
  check_features(f, "bin_feature_stats");
  check_bin_index(idx, f, "bin_feature_stats");
  SSIR_CHECK(num_bins >= 1, "bin_feature_stats: num_bins must be >= 1, got ", num_bins);
}

inline void check_stat(const Tensor& s, const char* name, const Tensor& f, const Tensor& ref) {
  SSIR_CHECK(s.dim() == 2 && s.size(1) == f.size(1), "fds_calibrate: ", name,
             " must have shape [num_bins, C] with C = ", f.size(1), ", got ", Shape{s});
  SSIR_CHECK(same_shape(s, ref), "fds_calibrate: ", name, " must have the shape of mean ",
             Shape{ref}, ", got ", Shape{s});
  SSIR_CHECK(same_device(s, f), "fds_calibrate: ", name, " must be on features' device ", Where{f},
             ", got ", Where{s});
  SSIR_CHECK(s.scalar_type() == ScalarType::Float || s.scalar_type() == ScalarType::Double,
             "fds_calibrate: ", name, " must be float32 or float64, got ", s.scalar_type());
}

inline void check_calibrate_args(const Tensor& f, const Tensor& idx, const Tensor& mean,
                                 const Tensor& var, const Tensor& smean, const Tensor& svar,
                                 double lo, double hi) {
  check_features(f, "fds_calibrate");
  check_bin_index(idx, f, "fds_calibrate");
  check_stat(mean, "mean", f, mean);
  check_stat(var, "var", f, mean);
  check_stat(smean, "smoothed_mean", f, mean);
  check_stat(svar, "smoothed_var", f, mean);
  SSIR_CHECK(std::isfinite(lo) && lo >= 0, "fds_calibrate: lo must be finite and >= 0, got ", lo);
  SSIR_CHECK(!std::isnan(hi) && hi >= lo, "fds_calibrate: hi must be >= lo, got lo=", lo, " hi=", hi);
}

// The four statistics as contiguous arrays of one dtype (float32, or float64 when any is).
struct Stats {
  Tensor mean, var, smean, svar;
  ScalarType dtype;
};
inline Stats common_stats(const Tensor& mean, const Tensor& var, const Tensor& smean,
                          const Tensor& svar) {
  const bool same = var.scalar_type() == mean.scalar_type() &&
                    smean.scalar_type() == mean.scalar_type() &&
                    svar.scalar_type() == mean.scalar_type();
  const ScalarType st = same ? mean.scalar_type() : ScalarType::Double;
  return {to_contiguous(mean, st), to_contiguous(var, st), to_contiguous(smean, st),
          to_contiguous(svar, st), st};
}

}  // namespace ssir_fast
#endif  // __CUDACC__
