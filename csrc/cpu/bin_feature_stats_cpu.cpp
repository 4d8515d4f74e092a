// CPU kernel of ssir_fast::bin_feature_stats: per-bin count, mean and unbiased variance of
// features [N, C] in one pass over the features.
//
// Work split: the C columns are cut into chunks of kCols; each task owns one column chunk and
// scans all N rows once, adding row n's chunk into the accumulators of bin[n] (float64 sums of
// d = x - shift and d^2, shift = the value of the bin's first sample in that column). Tasks write
// disjoint outputs, so the result is deterministic and independent of the thread count. The
// accumulators of one task are 3 * B * kCols doubles (600 KiB for 100 bins); each row read is a
// contiguous kCols run (1 KiB for float32), which keeps the hardware prefetcher and TLB effective.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "fds_common.h"
#include "ops.h"

namespace ssir_fast {
namespace {

constexpr int64_t kCols = 256;

template <typename scalar_t, typename out_t>
void stats_kernel(const at::Tensor& f, const int64_t* idx, int64_t B, const int64_t* count,
                  const int64_t* first, bool unbiased, out_t* mean, out_t* var) {
  const int64_t N = f.size(0), C = f.size(1);
  const scalar_t* fp = f.const_data_ptr<scalar_t>();
  const int64_t chunks = (C + kCols - 1) / kCols;
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<double> shift(B * kCols), s1(B * kCols), s2(B * kCols);
    for (int64_t ch = begin; ch < end; ++ch) {
      const int64_t c0 = ch * kCols, W = std::min(kCols, C - c0);
      std::fill(s1.begin(), s1.end(), 0.0);
      std::fill(s2.begin(), s2.end(), 0.0);
      for (int64_t b = 0; b < B; ++b) {
        if (count[b] == 0) continue;
        const scalar_t* x = fp + first[b] * C + c0;
        for (int64_t j = 0; j < W; ++j) shift[b * kCols + j] = static_cast<double>(x[j]);
      }
      for (int64_t n = 0; n < N; ++n) {
        const int64_t b = idx[n];
        if (b < 0 || b >= B) continue;
        const scalar_t* x = fp + n * C + c0;
        const double* sh = shift.data() + b * kCols;
        double* a1 = s1.data() + b * kCols;
        double* a2 = s2.data() + b * kCols;
        for (int64_t j = 0; j < W; ++j) {
          const double d = static_cast<double>(x[j]) - sh[j];
          a1[j] += d;
          a2[j] += d * d;
        }
      }
      for (int64_t b = 0; b < B; ++b) {
        const int64_t n = count[b];
        for (int64_t j = 0; j < W; ++j) {
          double m = 0, v = 0;
          if (n > 0) {
            const double a1 = s1[b * kCols + j], a2 = s2[b * kCols + j];
            m = shift[b * kCols + j] + a1 / n;
            const double m2 = std::max(a2 - a1 * a1 / n, 0.0);
            const int64_t dof = unbiased ? n - 1 : n;
            v = dof > 0 ? m2 / dof : 0.0;
          }
          mean[b * C + c0 + j] = static_cast<out_t>(m);
          var[b * C + c0 + j] = static_cast<out_t>(v);
        }
      }
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> bin_feature_stats_cpu(const at::Tensor& features,
                                                                     const at::Tensor& bin_index,
                                                                     int64_t num_bins,
                                                                     bool unbiased) {
  check_stats_args(features, bin_index, num_bins);
  const int64_t N = features.size(0), C = features.size(1), B = num_bins;
  at::Tensor f = features.contiguous();
  at::Tensor idx = bin_index.contiguous();
  const auto acc = stats_dtype(features);
  at::Tensor count = at::zeros({B}, idx.options());
  at::Tensor mean = at::zeros({B, C}, features.options().dtype(acc));
  at::Tensor var = at::zeros({B, C}, features.options().dtype(acc));
  if (N == 0 || C == 0) {
    if (N > 0) {  // counts still meaningful with C = 0
      const int64_t* ip = idx.const_data_ptr<int64_t>();
      int64_t* cp = count.mutable_data_ptr<int64_t>();
      for (int64_t n = 0; n < N; ++n)
        if (ip[n] >= 0 && ip[n] < B) ++cp[ip[n]];
    }
    return {count, mean, var};
  }
  // Serial O(N) scan: counts and each bin's first sample (the shift of its sums).
  const int64_t* ip = idx.const_data_ptr<int64_t>();
  int64_t* cp = count.mutable_data_ptr<int64_t>();
  std::vector<int64_t> first(B, -1);
  for (int64_t n = 0; n < N; ++n) {
    const int64_t b = ip[n];
    if (b < 0 || b >= B) continue;
    if (cp[b]++ == 0) first[b] = n;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, f.scalar_type(),
                                  "bin_feature_stats_cpu", [&] {
    if (acc == at::kDouble) {
      stats_kernel<scalar_t, double>(f, ip, B, cp, first.data(), unbiased,
                                     mean.mutable_data_ptr<double>(), var.mutable_data_ptr<double>());
    } else {
      stats_kernel<scalar_t, float>(f, ip, B, cp, first.data(), unbiased,
                                    mean.mutable_data_ptr<float>(), var.mutable_data_ptr<float>());
    }
  });
  return {count, mean, var};
}

}  // namespace ssir_fast

TORCH_LIBRARY_IMPL(ssir_fast, CPU, m) {
  m.impl("bin_feature_stats", &ssir_fast::bin_feature_stats_cpu);
}
