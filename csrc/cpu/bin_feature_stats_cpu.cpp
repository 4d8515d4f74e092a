// CPU kernel of ssir_fast::bin_feature_stats: per-bin count, mean and unbiased variance of
// features [N, C] in one pass over the features.
//
// Work split: the C columns are cut into chunks of kCols; each task owns one column chunk and
// scans all N rows once, adding row n's chunk into the accumulators of bin[n] (float64 sums of
// d = x - shift and d^2, shift = the value of the bin's first sample in that column). Tasks write
// disjoint outputs, so the result is deterministic and independent of the thread count. The
// accumulators of one task are 3 * S * kCols doubles for the S bins that hold a sample (600 KiB
// for 100 bins; never more than 3 * N * kCols, however large num_bins is); each row read is a
// contiguous kCols run (1 KiB for float32), which keeps the hardware prefetcher and TLB effective.
#include <algorithm>
#include <vector>

#include "fds_common.h"
#include "ops.h"

namespace ssir_fast {
namespace {

constexpr int64_t kCols = 256;

// slot[n]: the accumulator slot of sample n (-1: ignored); bins[s], count[s], first[s]: the bin,
// sample count and first sample of slot s.
template <typename scalar_t, typename out_t>
void stats_kernel(const scalar_t* fp, int64_t N, int64_t C, const std::vector<int64_t>& slot,
                  const std::vector<int64_t>& bins, const std::vector<int64_t>& count,
                  const std::vector<int64_t>& first, bool unbiased, out_t* mean, out_t* var) {
  const int64_t S = static_cast<int64_t>(bins.size());
  const int64_t chunks = (C + kCols - 1) / kCols;
  torch::stable::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<double> shift(S * kCols), s1(S * kCols), s2(S * kCols);
    for (int64_t ch = begin; ch < end; ++ch) {
      const int64_t c0 = ch * kCols, W = std::min(kCols, C - c0);
      std::fill(s1.begin(), s1.end(), 0.0);
      std::fill(s2.begin(), s2.end(), 0.0);
      for (int64_t k = 0; k < S; ++k) {
        const scalar_t* x = fp + first[k] * C + c0;
        for (int64_t j = 0; j < W; ++j) shift[k * kCols + j] = static_cast<double>(x[j]);
      }
      for (int64_t n = 0; n < N; ++n) {
        const int64_t k = slot[n];
        if (k < 0) continue;
        const scalar_t* x = fp + n * C + c0;
        const double* sh = shift.data() + k * kCols;
        double* a1 = s1.data() + k * kCols;
        double* a2 = s2.data() + k * kCols;
        for (int64_t j = 0; j < W; ++j) {
          const double d = static_cast<double>(x[j]) - sh[j];
          a1[j] += d;
          a2[j] += d * d;
        }
      }
      for (int64_t k = 0; k < S; ++k) {
        const int64_t n = count[k], b = bins[k];
        const int64_t dof = unbiased ? n - 1 : n;
        for (int64_t j = 0; j < W; ++j) {
          const double a1 = s1[k * kCols + j], a2 = s2[k * kCols + j];
          // std::max keeps a NaN (inf - inf) rather than hiding it as 0.
          const double m2 = std::max(a2 - a1 * a1 / n, 0.0);
          mean[b * C + c0 + j] = static_cast<out_t>(shift[k * kCols + j] + a1 / n);
          var[b * C + c0 + j] = static_cast<out_t>(dof > 0 ? m2 / dof : 0.0);
        }
      }
    }
  });
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor> bin_feature_stats_cpu(const Tensor& features,
                                                         const Tensor& bin_index,
                                                         int64_t num_bins, bool unbiased) {
  check_stats_args(features, bin_index, num_bins);
  const int64_t N = features.size(0), C = features.size(1), B = num_bins;
  Tensor f = contig(features);
  Tensor idx = contig(bin_index);
  const ScalarType acc = stats_dtype(features);
  Tensor count = zeros(idx, {B}, ScalarType::Long);
  Tensor mean = zeros(f, {B, C}, acc);
  Tensor var = zeros(f, {B, C}, acc);
  // Serial O(N) scan: counts, and a slot for each bin present, in order of first appearance
  // (its first sample is the shift of its sums).
  const int64_t* ip = idx.const_data_ptr<int64_t>();
  int64_t* cp = count.mutable_data_ptr<int64_t>();
  std::vector<int64_t> slot(N, -1), bins, first, slot_count;
  std::vector<int64_t> slot_of_bin;  // sized lazily: only when a sample is in range
  for (int64_t n = 0; n < N; ++n) {
    const int64_t b = ip[n];
    if (b < 0 || b >= B) continue;
    if (cp[b]++ == 0) {
      if (slot_of_bin.empty()) slot_of_bin.assign(B, -1);
      slot_of_bin[b] = static_cast<int64_t>(bins.size());
      bins.push_back(b);
      first.push_back(n);
      slot_count.push_back(0);
    }
    slot[n] = slot_of_bin[b];
    ++slot_count[slot[n]];
  }
  if (N == 0 || C == 0 || bins.empty()) return {count, mean, var};
  SSIR_DISPATCH_FLOATS(f.scalar_type(), "bin_feature_stats", [&] {
    const scalar_t* fp = static_cast<const scalar_t*>(f.const_data_ptr());
    if (acc == ScalarType::Double) {
      stats_kernel<scalar_t, double>(fp, N, C, slot, bins, slot_count, first, unbiased,
                                     mean.mutable_data_ptr<double>(), var.mutable_data_ptr<double>());
    } else {
      stats_kernel<scalar_t, float>(fp, N, C, slot, bins, slot_count, first, unbiased,
                                    mean.mutable_data_ptr<float>(), var.mutable_data_ptr<float>());
    }
  });
  return {count, mean, var};
}

}  // namespace ssir_fast

STABLE_TORCH_LIBRARY_IMPL(ssir_fast, CPU, m) {
  m.impl("bin_feature_stats", TORCH_BOX(&ssir_fast::bin_feature_stats_cpu));
}
