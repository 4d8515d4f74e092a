// Device-independent part of the bin_reduce_nd op: per-bin error sums for vector targets, the
// D-dimensional version of bin_reduce (bin_reduce_common.h). Shared by the CPU and CUDA kernels.
//
// pred and target are [..., D] (rows of D values); for each row selected by the mask (a bool
// tensor of the leading shape):
//   i_d    = the bin of y_d in dimension d, by bin_reduce's rule (BinIndexer: clamped into the edge
//            bins, the same code and the same float32 decimal rule as LabelBins.index)
//   b      = ((i_0 * n_1) + i_1) * n_2 + ...        (row-major flat bin, as LabelBins.index)
//   e_d    = p_d - y_d (in the accumulation type: fp32 for fp32/fp16/bf16, fp64 for fp64)
//   m      = (1/D) sum_d |e_d|,  s = (1/D) sum_d e_d^2,  l2 = sqrt(sum_d e_d^2)   (float64)
//   log_m  = log(max(m, floor))  (float64; m < floor counted in N_FLOORED)
// A row with a non-finite p_d or y_d is excluded from every column but N_NONFINITE, counted in
// the bin of its target (a non-finite y_d counts as bin 0 of dimension d). N_OUT_OF_RANGE counts
// rows with any dimension outside its bins.
#pragma once
#include <torch/headeronly/macros/Macros.h>

#include <cmath>
#include <cstdint>
#ifndef __CUDACC__
#include <vector>
#endif

#include "bin_reduce_common.h"

namespace ssir_fast {
namespace bin_reduce_nd {

// Columns of the [prod(num_bins), kFixedCols + D] float64 table; ssir_fast/ops/bin_reduce_nd.py
// names them in the same order. Columns kFixedCols + d hold sum |e_d| (per-dimension MAE).
enum Col : int {
  COUNT = 0,           // rows in the bin (finite, selected)
  SUM_ABS = 1,         // sum m (mean absolute error over the dimensions)
  SUM_SQ = 2,          // sum s (mean squared error over the dimensions)
  SUM_LOG_ABS = 3,     // sum log(max(m, floor))
  N_FLOORED = 4,       // rows with m < floor
  SUM_L2 = 5,          // sum l2 (Euclidean error)
  N_OUT_OF_RANGE = 6,  // rows with a target dimension outside its bins
  N_NONFINITE = 7,     // excluded rows with NaN/inf in p or y
  kFixedCols = 8,
};

// At most this many dimensions (the per-dimension indexers are passed by value to the kernels).
constexpr int kMaxDims = 8;

struct Params {
  int dims;
  int64_t num_bins[kMaxDims];   // per dimension
  bin_reduce::BinIndexer index[kMaxDims];
  int64_t num_flat;             // prod(num_bins)
  double floor;
  C10_HOST_DEVICE int cols() const { return kFixedCols + dims; }
};

C10_HOST_DEVICE inline bool is_finite(double v) {
#ifdef __CUDA_ARCH__
  return isfinite(v);
#else
  return std::isfinite(v);
#endif
}

// The flat bin of a row of targets y[0..D); oor: some dimension was clamped into an edge bin.
// Non-finite targets (rows counted as N_NONFINITE only) go to bin 0 of their dimension. The
// value binned is double(acc_t(y_d)), as in bin_reduce.
template <typename acc_t, typename T>
C10_HOST_DEVICE inline int64_t flat_bin(const Params& P, const T* y, bool& oor) {
  int64_t flat = 0;
  oor = false;
  for (int d = 0; d < P.dims; ++d) {
    const double v = static_cast<double>(static_cast<acc_t>(y[d]));
    bool o = false;
    const int64_t i = is_finite(v) ? P.index[d](v, o) : 0;
    oor = oor || o;
    flat = flat * P.num_bins[d] + i;
  }
  return flat;
}

// The errors of one row (module comment): abs_d[d] = |e_d|, m, s, l2. False when a value of the
// row is not finite (the outputs are then meaningless).
template <typename acc_t, typename T>
C10_HOST_DEVICE inline bool row_errors(const Params& P, const T* p, const T* y, double* abs_d,
                                       double& m, double& s, double& l2) {
  double sa = 0, sq = 0;
  bool ok = true;
  for (int d = 0; d < P.dims; ++d) {
    const acc_t pv = static_cast<acc_t>(p[d]), yv = static_cast<acc_t>(y[d]);
    ok = ok && is_finite(static_cast<double>(pv)) && is_finite(static_cast<double>(yv));
    const acc_t e = pv - yv;
    const double a = static_cast<double>(e < acc_t(0) ? -e : e);
    abs_d[d] = a;
    sa += a;
    sq += static_cast<double>(e) * static_cast<double>(e);
  }
  m = sa / P.dims;
  s = sq / P.dims;
  l2 = ::sqrt(sq);
  return ok;
}

#ifndef __CUDACC__  // host-side checks (stable tensors)
inline Params make_params(const std::vector<double>& y_min, const std::vector<double>& bin_width,
                          const std::vector<int64_t>& num_bins, double floor) {
  Params P{};
  P.dims = static_cast<int>(num_bins.size());
  P.num_flat = 1;
  P.floor = floor;
  for (int d = 0; d < P.dims; ++d) {
    P.num_bins[d] = num_bins[d];
    P.index[d] = bin_reduce::BinIndexer::make(
        bin_reduce::Params{y_min[d], bin_width[d], num_bins[d], floor});
    P.num_flat *= num_bins[d];
  }
  return P;
}

// Checks shared by all backends; returns the number of rows.
inline int64_t check_args(const Tensor& pred, const Tensor& target,
                          const std::vector<double>& y_min, const std::vector<double>& bin_width,
                          const std::vector<int64_t>& num_bins, const OptTensor& mask,
                          double floor) {
  const size_t D = num_bins.size();
  SSIR_CHECK(D >= 1 && D <= static_cast<size_t>(kMaxDims), "bin_reduce_nd: num_bins must have "
             "1 to ", kMaxDims, " entries (one per dimension), got ", D);
  SSIR_CHECK(y_min.size() == D && bin_width.size() == D, "bin_reduce_nd: y_min, bin_width and "
             "num_bins must have one entry per dimension, got ", y_min.size(), ", ",
             bin_width.size(), " and ", D);
  SSIR_CHECK(same_shape(pred, target), "bin_reduce_nd: pred and target must have the same shape, "
             "got pred ", Shape{pred}, " and target ", Shape{target});
  SSIR_CHECK(pred.scalar_type() == target.scalar_type(), "bin_reduce_nd: pred and target must "
             "have the same dtype, got pred ", pred.scalar_type(), " and target ",
             target.scalar_type());
  SSIR_CHECK(same_device(pred, target), "bin_reduce_nd: pred and target must be on the same "
             "device, got pred on ", Where{pred}, " and target on ", Where{target});
  SSIR_CHECK(is_kernel_float(pred.scalar_type()), "bin_reduce_nd: pred must be float32, float16, "
             "bfloat16 or float64, got ", pred.scalar_type());
  SSIR_CHECK(pred.dim() >= 1 && pred.size(pred.dim() - 1) == static_cast<int64_t>(D),
             "bin_reduce_nd: pred must have shape [..., ", D, "] (one column per dimension of "
             "num_bins), got ", Shape{pred});
  double flat = 1;
  for (size_t d = 0; d < D; ++d) {
    SSIR_CHECK(num_bins[d] >= 1, "bin_reduce_nd: num_bins[", d, "] must be >= 1, got ",
               num_bins[d]);
    SSIR_CHECK(std::isfinite(bin_width[d]) && bin_width[d] > 0, "bin_reduce_nd: bin_width[", d,
               "] must be finite and > 0, got ", bin_width[d]);
    SSIR_CHECK(std::isfinite(y_min[d]), "bin_reduce_nd: y_min[", d, "] must be finite, got ",
               y_min[d]);
    flat *= static_cast<double>(num_bins[d]);
  }
  SSIR_CHECK(flat <= 4194304.0, "bin_reduce_nd: num_bins make ", flat, " flat bins, more than "
             "2^22 = 4194304");
  SSIR_CHECK(std::isfinite(floor) && floor > 0, "bin_reduce_nd: floor must be finite and > 0, "
             "got ", floor);
  const int64_t rows = pred.numel() / static_cast<int64_t>(D);
  if (mask.has_value() && mask->defined()) {
    const Tensor& m = *mask;
    SSIR_CHECK(m.scalar_type() == ScalarType::Bool, "bin_reduce_nd: mask must be a bool tensor, "
               "got ", m.scalar_type());
    bool ok = m.dim() == pred.dim() - 1;
    for (int64_t k = 0; ok && k < m.dim(); ++k) ok = m.size(k) == pred.size(k);
    SSIR_CHECK(ok, "bin_reduce_nd: mask must have pred's leading shape (one flag per row of ",
               Shape{pred}, "), got ", Shape{m});
    SSIR_CHECK(same_device(m, pred), "bin_reduce_nd: mask must be on pred's device ",
               Where{pred}, ", got ", Where{m});
  }
  return rows;
}

// Raises unless allow_nonfinite when the table counted NaN/inf rows (one read of the column).
inline void check_nonfinite(const Tensor& table, bool allow_nonfinite) {
  bin_reduce::check_nonfinite_column(table, N_NONFINITE, allow_nonfinite, "bin_reduce_nd", "rows");
}
#endif  // __CUDACC__

}  // namespace bin_reduce_nd
}  // namespace ssir_fast
