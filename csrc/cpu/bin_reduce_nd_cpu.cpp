// CPU kernel of ssir_fast::bin_reduce_nd: one pass over the rows of (pred, target[, mask]) [R, D]
// filling the [prod(num_bins), 8 + D] float64 table (columns in bin_reduce_nd_common.h); the flat
// D-dimensional bin of each row is computed here, from the per-dimension bins.
//
// Small tables, as bin_reduce's CPU kernel: the rows are split into contiguous ranges, each
// accumulating into its own partial table, summed in range order at the end (deterministic for a
// fixed thread count). A D-dimensional grid can be large (up to 2^22 bins), and a partial table
// only pays when a range holds more rows than the table has entries (else zeroing and merging it
// costs more than the rows) and all of them fit in kPartialBytes. Otherwise the threads split the
// BINS instead: every thread reads all rows, computes their flat bins, and adds only the rows of
// its slice of the table to the output itself (no partials; each bin sums its rows in row order,
// so the result does not depend on the thread count). On a 10^6-bin grid the adds are scattered
// over an 88 MB table and dominated by cache misses, which this spreads over the cores.
#include <algorithm>
#include <cmath>
#include <vector>

#include "bin_reduce_nd_common.h"
#include "ops.h"

namespace ssir_fast {
namespace {

using namespace bin_reduce_nd;

constexpr int64_t kGrain = 1 << 14;            // rows per range, at least
constexpr int64_t kPartialBytes = int64_t(256) << 20;  // all partial tables together

// Adds rows [begin, end) whose flat bin lies in [bin_lo, bin_hi) to `table`.
template <typename scalar_t>
void reduce_range(const scalar_t* pred, const scalar_t* target, const bool* mask, int64_t begin,
                  int64_t end, int64_t bin_lo, int64_t bin_hi, const Params& P, double* table) {
  using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  const int D = P.dims, cols = P.cols();
  const double log_floor = std::log(P.floor);
  double abs_d[kMaxDims];
  for (int64_t r = begin; r < end; ++r) {
    if (mask != nullptr && !mask[r]) continue;
    const scalar_t* p = pred + r * D;
    const scalar_t* y = target + r * D;
    bool oor = false;
    const int64_t b = flat_bin<acc_t>(P, y, oor);
    if (b < bin_lo || b >= bin_hi) continue;
    double m, s, l2;
    const bool ok = row_errors<acc_t>(P, p, y, abs_d, m, s, l2);
    double* row = table + b * cols;
    if (!ok) {
      row[N_NONFINITE] += 1;
      continue;
    }
    const bool floored = m < P.floor;
    row[COUNT] += 1;
    row[SUM_ABS] += m;
    row[SUM_SQ] += s;
    row[SUM_LOG_ABS] += floored ? log_floor : std::log(m);
    row[N_FLOORED] += floored;
    row[SUM_L2] += l2;
    row[N_OUT_OF_RANGE] += oor;
    for (int d = 0; d < D; ++d) row[kFixedCols + d] += abs_d[d];
  }
}

template <typename scalar_t>
void reduce_all(const Tensor& pred, const Tensor& target, const Tensor& mask, int64_t rows,
                const Params& P, Tensor& out) {
  const int64_t width = P.num_flat * P.cols();
  const scalar_t* pp = static_cast<const scalar_t*>(pred.const_data_ptr());
  const scalar_t* tp = static_cast<const scalar_t*>(target.const_data_ptr());
  const bool* mp = mask.defined() ? mask.const_data_ptr<bool>() : nullptr;
  const int64_t nt = std::max<int64_t>(1, torch::stable::get_num_threads());
  const int64_t grain = std::max(kGrain, width);
  const int64_t by_memory = 1 + kPartialBytes / (width * static_cast<int64_t>(sizeof(double)));
  const int64_t ranges = std::max<int64_t>(
      1, std::min({nt, (rows + grain - 1) / grain, by_memory}));
  const int64_t by_rows = std::min(nt, (rows + kGrain - 1) / kGrain);  // without the table's cost
  double* op = out.mutable_data_ptr<double>();
  if (by_rows > ranges) {  // the table is too large for partials: split the bins
    const int64_t slices = std::min(by_rows, P.num_flat);
    torch::stable::parallel_for(0, slices, 1, [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) {
        reduce_range<scalar_t>(pp, tp, mp, 0, rows, k * P.num_flat / slices,
                               (k + 1) * P.num_flat / slices, P, op);
      }
    });
    return;
  }
  const int64_t per = (rows + ranges - 1) / ranges;
  std::vector<double> partial(static_cast<size_t>(ranges - 1) * width, 0.0);
  torch::stable::parallel_for(0, ranges, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      double* table = r == 0 ? op : partial.data() + (r - 1) * width;
      reduce_range<scalar_t>(pp, tp, mp, r * per, std::min(rows, (r + 1) * per), 0, P.num_flat,
                             P, table);
    }
  });
  for (int64_t r = 1; r < ranges; ++r) {
    const double* src = partial.data() + (r - 1) * width;
    for (int64_t j = 0; j < width; ++j) op[j] += src[j];
  }
}

}  // namespace

Tensor bin_reduce_nd_cpu(const Tensor& pred, const Tensor& target, std::vector<double> y_min,
                         std::vector<double> bin_width, std::vector<int64_t> num_bins,
                         OptTensor mask, double floor, bool allow_nonfinite) {
  const int64_t rows = check_args(pred, target, y_min, bin_width, num_bins, mask, floor);
  const Params P = make_params(y_min, bin_width, num_bins, floor);
  Tensor pc = contig(pred), tc = contig(target);
  Tensor mc = (mask.has_value() && mask->defined()) ? contig(*mask) : Tensor();
  Tensor out = zeros(pred, {P.num_flat, static_cast<int64_t>(P.cols())}, ScalarType::Double);
  if (rows > 0) {
    SSIR_DISPATCH_FLOATS(pc.scalar_type(), "bin_reduce_nd", [&] {
      reduce_all<scalar_t>(pc, tc, mc, rows, P, out);
    });
  }
  check_nonfinite(out, allow_nonfinite);
  return out;
}

}  // namespace ssir_fast

STABLE_TORCH_LIBRARY_IMPL(ssir_fast, CPU, m) {
  m.impl("bin_reduce_nd", TORCH_BOX(&ssir_fast::bin_reduce_nd_cpu));
}
