// Device-independent part of the bin_reduce op (docs/algorithm.md, section 4): the column layout
// of the per-bin table, argument checks, and the per-element formulas shared by the CPU and CUDA
// kernels.
//
// For each pair (p = pred, y = target) selected by the mask:
//   b      = clamp(floor((double(y) - y_min) / bin_width), 0, num_bins - 1), or for decimal widths
//            (0.1 m) the official DIR float32 rule floor(float32(y * 10)) - 7 (as LabelBins.index;
//            BinIndexer below, the same code on CPU and GPU)
//   e      = p - y,  a = |e|
//   log_a  = log(double(max(a, floor)))               (GM; a < floor is counted in N_FLOORED; the
//            log is taken in float64 on both devices: the column sums terms of both signs, so a
//            1-ulp float log error per pair does not cancel and the CPU and GPU sums would
//            drift apart by ~n * 2e-6 for floored pairs, log(1e-8) = -18.4)
//   pc, yc = max(p, floor), max(y, floor)             (ratio metrics assume positive depths)
//   q      = pc / yc,  r = max(q, 1/q)                (delta_k: r < 1.25^k, evaluated as
//                                                      pc < 1.25^k yc and yc < 1.25^k pc)
//   absrel = a / yc,   log10 = |log10(q)|
// Pairs with a non-finite p or y are excluded from every column but N_NONFINITE, which counts them
// in the target's bin (bin 0 when the target itself is not finite).
#pragma once
#include <torch/headeronly/macros/Macros.h>

#include <cfloat>
#include <cmath>
#include <cstdint>

#ifndef __CUDACC__
#include "stable_common.h"
#endif

namespace ssir_fast {
namespace bin_reduce {

// Columns of the [num_bins, kCols] float64 table; ssir_fast/ops/bin_reduce.py names them in the
// same order (tests/test_bin_reduce.py::test_columns_agree_with_the_cpp_enum reads this enum).
enum Col : int {
  COUNT = 0,         // pairs in the bin (finite, selected)
  SUM_ABS = 1,       // sum |e|
  SUM_SQ = 2,        // sum e^2
  SUM_LOG_ABS = 3,   // sum log(max(|e|, floor))
  N_FLOORED = 4,     // pairs with |e| < floor
  N_DELTA1 = 5,      // pairs with max(p/y, y/p) < 1.25
  N_DELTA2 = 6,      // ... < 1.25^2
  N_DELTA3 = 7,      // ... < 1.25^3
  SUM_ABSREL = 8,    // sum |e| / y
  SUM_LOG10 = 9,     // sum |log10 p - log10 y|
  N_OUT_OF_RANGE = 10,  // pairs whose target lies outside [y_min, y_min + num_bins * bin_width)
  N_NONFINITE = 11,  // excluded pairs with NaN/inf in p or y
  kCols = 12,
};

// Float sums first, then counts: the CUDA kernel keeps the two kinds in separate shared arrays.
constexpr int kNumSums = 5;
constexpr int kSumCols[kNumSums] = {SUM_ABS, SUM_SQ, SUM_LOG_ABS, SUM_ABSREL, SUM_LOG10};
constexpr int kNumCounts = 7;
constexpr int kCountCols[kNumCounts] = {COUNT, N_FLOORED, N_DELTA1, N_DELTA2, N_DELTA3,
                                        N_OUT_OF_RANGE, N_NONFINITE};

struct Params {
  double y_min;
  double bin_width;
  int64_t num_bins;
  double floor;
};

// Bin of a finite target, as LabelBins.index (ssir_fast/imbalance.py, whose docstring states the
// rule and its reason); sets `oor` when the index was clamped into an edge bin. Shared by the CPU
// and CUDA kernels so that both put every pair in the same bin. Two rules, chosen once per call
// from (y_min, bin_width, num_bins) with the same float64 tests as ops/binning.py decimal_rule:
//
//  * decimal rule, when bin_width is not a power of two, 1 / bin_width is an integer s in
//    [2, 2^24] (0.1 m: s = 10), y_min * s is an integer k0 and |k0| + num_bins <= 2^22:
//        b = floor(float32(float32(y) * float32(s))) - k0
//    the official DIR arithmetic (nyud2-dir: int(depth * np.float32(10)) on float32 depths, minus
//    bucket_start = 7). The float64 quotient (y - 0.7) / 0.1 puts a depth on a decimal edge one
//    bin low (0.9f -> 1.9999998 -> bin 1, bucket 8 instead of 9; ~0.5 % of millimetre depths).
//    y is clamped to the float32 range first (float64 targets), so the cast is defined.
//  * float64 rule otherwise (ages: width 1): b = floor((y - y_min) / bin_width). The float64
//    division is the costliest instruction of the loop (a long sequence on a GPU), so the
//    quotient is formed with the reciprocal: exact when bin_width is a power of two, otherwise
//    within 2 ulp, which can change the floor only next to an integer; there the division is
//    done after all.
struct BinIndexer {
  double y_min, bin_width, inv_width;
  int64_t num_bins;
  bool exact_inv;
  bool decimal;    // the decimal rule applies
  float scale;     // s = 1 / bin_width (decimal rule)
  double offset;   // k0 = y_min * s (decimal rule)

  static BinIndexer make(const Params& P) {
    int exponent = 0;
    const bool pow2 = std::frexp(P.bin_width, &exponent) == 0.5;
    const double inv = 1.0 / P.bin_width;
    const double s = std::nearbyint(inv);
    const double k = P.y_min * s;
    const double k0 = std::nearbyint(k);
    const bool decimal = !pow2 && s >= 2.0 && s <= 16777216.0 &&  // s exact in float32 (2^24)
                         std::fabs(inv - s) <= 1e-9 * s &&
                         std::fabs(k - k0) <= 1e-9 * std::fmax(1.0, std::fabs(k)) &&
                         std::fabs(k0) + static_cast<double>(P.num_bins) <= 4194304.0;  // 2^22
    return {P.y_min, P.bin_width, inv, P.num_bins, pow2, decimal,
            decimal ? static_cast<float>(s) : 1.0f, decimal ? k0 : 0.0};
  }

  C10_HOST_DEVICE static float mul_rn(float a, float b) {
#ifdef __CUDA_ARCH__
    return __fmul_rn(a, b);  // never contracted into an FMA
#else
    return a * b;
#endif
  }

  C10_HOST_DEVICE int64_t operator()(double y, bool& oor) const {
    double t;
    if (decimal) {
      const double yc = ::fmin(::fmax(y, -static_cast<double>(FLT_MAX)), static_cast<double>(FLT_MAX));
      t = ::floor(static_cast<double>(mul_rn(static_cast<float>(yc), scale))) - offset;
    } else {
      const double d = y - y_min;
      const double q = d * inv_width;
      t = ::floor(q);
      const double tol = 1e-9 * (1.0 + ::fabs(q));
      if (!exact_inv && (q - t < tol || t + 1.0 - q < tol)) t = ::floor(d / bin_width);
    }
    const double nb = static_cast<double>(num_bins);
    oor = !(t >= 0 && t < nb);
    return t < 0 ? 0 : (t >= nb ? num_bins - 1 : static_cast<int64_t>(t));
  }
};

#ifndef __CUDACC__  // host-side checks (stable tensors); the .cu files need the formulas only
// Checks shared by all backends.
inline void check_args(const Tensor& pred, const Tensor& target, double y_min, double bin_width,
                       int64_t num_bins, const OptTensor& mask, double floor) {
  SSIR_CHECK(same_shape(pred, target), "bin_reduce: pred and target must have the same shape, "
             "got pred ", Shape{pred}, " and target ", Shape{target});
  SSIR_CHECK(pred.scalar_type() == target.scalar_type(), "bin_reduce: pred and target must have "
             "the same dtype, got pred ", pred.scalar_type(), " and target ", target.scalar_type());
  SSIR_CHECK(same_device(pred, target), "bin_reduce: pred and target must be on the same "
             "device, got pred on ", Where{pred}, " and target on ", Where{target});
  SSIR_CHECK(is_kernel_float(pred.scalar_type()),
             "bin_reduce: pred must be float32, float16, bfloat16 or float64, got ", pred.scalar_type());
  SSIR_CHECK(num_bins >= 1, "bin_reduce: num_bins must be >= 1, got ", num_bins);
  SSIR_CHECK(std::isfinite(bin_width) && bin_width > 0, "bin_reduce: bin_width must be finite and "
             "> 0, got ", bin_width);
  SSIR_CHECK(std::isfinite(y_min), "bin_reduce: y_min must be finite, got ", y_min);
  SSIR_CHECK(std::isfinite(floor) && floor > 0, "bin_reduce: floor must be finite and > 0, got ",
             floor);
  if (mask.has_value() && mask->defined()) {
    const Tensor& m = *mask;
    SSIR_CHECK(m.scalar_type() == ScalarType::Bool, "bin_reduce: mask must be a bool tensor, got ",
               m.scalar_type());
    SSIR_CHECK(same_shape(m, pred), "bin_reduce: mask must have pred's shape ", Shape{pred},
               ", got ", Shape{m});
    SSIR_CHECK(same_device(m, pred), "bin_reduce: mask must be on pred's device ", Where{pred},
               ", got ", Where{m});
  }
}

// Raises unless allow_nonfinite when column `column` of the table counted NaN/inf entries
// (`what`: "pairs" or "rows"). One read of the column (a device sync on CUDA, documented in the
// Python wrappers). Shared by bin_reduce and bin_reduce_nd.
inline void check_nonfinite_column(const Tensor& table, int64_t column, bool allow_nonfinite,
                                   const char* op, const char* what) {
  if (allow_nonfinite) return;
  Tensor col = torch::stable::select(table, 1, column);
  Tensor host = table.is_cpu() ? contig(col)
                               : torch::stable::to(col, torch::stable::Device(
                                                            torch::headeronly::DeviceType::CPU));
  host = contig(host);
  const double* p = host.const_data_ptr<double>();
  double bad = 0;
  for (int64_t i = 0; i < host.numel(); ++i) bad += p[i];
  SSIR_CHECK(bad == 0, op, ": pred or target contains NaN or inf (", static_cast<int64_t>(bad), " ",
             what, "); pass allow_nonfinite=True to count and exclude them");
}

inline void check_nonfinite(const Tensor& table, bool allow_nonfinite) {
  check_nonfinite_column(table, N_NONFINITE, allow_nonfinite, "bin_reduce", "pairs");
}
#endif  // __CUDACC__

}  // namespace bin_reduce
}  // namespace ssir_fast
