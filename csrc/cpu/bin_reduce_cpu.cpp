// CPU kernel of ssir_fast::bin_reduce: one pass over (pred, target[, mask]) filling a
// [num_bins, 12] float64 table of per-bin sums and counts (columns in bin_reduce_common.h).
//
// The flat input is split into one contiguous range per thread (at least kGrain pairs each); each
// range accumulates into its own partial table (no sharing, no atomics) and the partials are
// summed at the end, in range order, so the result is deterministic for a fixed thread count. Per-element math is fp32 for fp32/fp16/bf16
// (fp64 for fp64), the log of SUM_LOG_ABS and the bin index in fp64 (bin_reduce_common.h), and
// every sum is accumulated in float64. Consecutive pairs that fall in the same
// bin (depth maps: neighbouring pixels) are summed in registers and written to the table once per
// run, which keeps the store->load chain on one table row out of the inner loop.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "bin_reduce_common.h"
#include "ops.h"

namespace ssir_fast {
namespace {

using namespace bin_reduce;

constexpr int64_t kGrain = 1 << 15;

// Register accumulator for one run of pairs in the same bin.
struct Run {
  double s_abs = 0, s_sq = 0, s_log = 0, s_rel = 0, s_l10 = 0;
  int64_t n = 0, n_floor = 0, d1 = 0, d2 = 0, d3 = 0, n_oor = 0;

  void flush(double* row) {
    row[COUNT] += static_cast<double>(n);
    row[SUM_ABS] += s_abs;
    row[SUM_SQ] += s_sq;
    row[SUM_LOG_ABS] += s_log;
    row[N_FLOORED] += static_cast<double>(n_floor);
    row[N_DELTA1] += static_cast<double>(d1);
    row[N_DELTA2] += static_cast<double>(d2);
    row[N_DELTA3] += static_cast<double>(d3);
    row[SUM_ABSREL] += s_rel;
    row[SUM_LOG10] += s_l10;
    row[N_OUT_OF_RANGE] += static_cast<double>(n_oor);
    *this = Run();
  }
};

template <typename acc_t>
inline bool finite(acc_t v) {
  return std::isfinite(v);
}

template <typename scalar_t>
void reduce_range(const scalar_t* pred, const scalar_t* target, const bool* mask, int64_t begin,
                  int64_t end, const Params& P, double* table) {
  using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  const acc_t fl = static_cast<acc_t>(P.floor);
  const acc_t inv_ln10 = static_cast<acc_t>(1.0 / std::log(10.0));
  const acc_t t1 = acc_t(1.25), t2 = acc_t(1.5625), t3 = acc_t(1.953125);  // 1.25^k, exact
  const BinIndexer bin_of = BinIndexer::make(P);
  const double log_fl = std::log(static_cast<double>(fl));
  Run run;
  int64_t cur = -1;
  for (int64_t i = begin; i < end; ++i) {
    if (mask != nullptr && !mask[i]) continue;
    const acc_t p = static_cast<acc_t>(pred[i]);
    const acc_t y = static_cast<acc_t>(target[i]);
    bool oor = false;
    if (!finite(p) || !finite(y)) {
      const int64_t b = finite(y) ? bin_of(static_cast<double>(y), oor) : 0;
      table[b * kCols + N_NONFINITE] += 1;
      continue;
    }
    const int64_t b = bin_of(static_cast<double>(y), oor);
    if (b != cur) {
      if (cur >= 0) run.flush(table + cur * kCols);
      cur = b;
    }
    const acc_t e = p - y;
    const acc_t a = std::abs(e);
    const bool floored = a < fl;
    const acc_t pc = std::max(p, fl), yc = std::max(y, fl);
    // One division per pair: max(p/y, y/p) < t  <=>  p < t * y and y < t * p (p, y > 0).
    const acc_t iy = acc_t(1) / yc;
    const acc_t q = pc * iy;
    run.n += 1;
    run.s_abs += static_cast<double>(a);
    run.s_sq += static_cast<double>(e) * static_cast<double>(e);
    run.s_log += floored ? log_fl : std::log(static_cast<double>(a));  // float64: see common.h
    run.n_floor += floored;
    run.d1 += (pc < t1 * yc) & (yc < t1 * pc);
    run.d2 += (pc < t2 * yc) & (yc < t2 * pc);
    run.d3 += (pc < t3 * yc) & (yc < t3 * pc);
    run.s_rel += static_cast<double>(a * iy);
    run.s_l10 += static_cast<double>(std::abs(std::log(q)) * inv_ln10);
    run.n_oor += oor;
  }
  if (cur >= 0) run.flush(table + cur * kCols);
}

template <typename scalar_t>
void reduce_all(const Tensor& pred, const Tensor& target, const Tensor& mask, const Params& P,
                Tensor& out) {
  const int64_t n = pred.numel();
  const int64_t width = P.num_bins * kCols;
  const scalar_t* pp = static_cast<const scalar_t*>(pred.const_data_ptr());
  const scalar_t* tp = static_cast<const scalar_t*>(target.const_data_ptr());
  const bool* mp = mask.defined() ? mask.const_data_ptr<bool>() : nullptr;
  const int64_t nt = std::max<int64_t>(1, torch::stable::get_num_threads());
  const int64_t ranges = std::max<int64_t>(1, std::min(nt, (n + kGrain - 1) / kGrain));
  const int64_t per = (n + ranges - 1) / ranges;
  // One partial table per range; the first range writes straight into the output.
  std::vector<double> partial(static_cast<size_t>(ranges - 1) * width, 0.0);
  double* op = out.mutable_data_ptr<double>();
  torch::stable::parallel_for(0, ranges, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      double* table = r == 0 ? op : partial.data() + (r - 1) * width;
      reduce_range<scalar_t>(pp, tp, mp, r * per, std::min(n, (r + 1) * per), P, table);
    }
  });
  for (int64_t r = 1; r < ranges; ++r) {
    const double* src = partial.data() + (r - 1) * width;
    for (int64_t j = 0; j < width; ++j) op[j] += src[j];
  }
}

}  // namespace

Tensor bin_reduce_cpu(const Tensor& pred, const Tensor& target, double y_min, double bin_width,
                      int64_t num_bins, OptTensor mask, double floor, bool allow_nonfinite) {
  check_args(pred, target, y_min, bin_width, num_bins, mask, floor);
  const Params P{y_min, bin_width, num_bins, floor};
  // Flat contiguous views: no copy for contiguous inputs (dense maps are just flattened).
  Tensor pc = contig(pred), tc = contig(target);
  Tensor mc = (mask.has_value() && mask->defined()) ? contig(*mask) : Tensor();
  Tensor out = zeros(pred, {num_bins, kCols}, ScalarType::Double);
  if (pred.numel() > 0) {
    SSIR_DISPATCH_FLOATS(pc.scalar_type(), "bin_reduce", [&] {
      reduce_all<scalar_t>(pc, tc, mc, P, out);
    });
  }
  check_nonfinite(out, allow_nonfinite);
  return out;
}

}  // namespace ssir_fast

STABLE_TORCH_LIBRARY_IMPL(ssir_fast, CPU, m) {
  m.impl("bin_reduce", TORCH_BOX(&ssir_fast::bin_reduce_cpu));
}
