// CUDA kernels of ssir_fast::bin_feature_stats: per-bin count, mean and unbiased variance of
// features [N, C]; deterministic (no atomics) and balanced on skewed bins.
//
//  0. Samples are ordered by bin with a stable sort (ignored indices get key B and sort last);
//     counts and bin offsets come from a histogram and a cumulative sum. Each bin's run of rows is
//     cut into segments of at most kSegRows rows; segment s belongs to the bin found by a binary
//     search in the cumulative segment counts, so no host synchronisation is needed (the grid is
//     sized for the upper bound ceil(N / kSegRows) + B segments; spare blocks exit).
//  1. segment_partials: grid (segments, column blocks). Thread t of a block owns column
//     c = blockIdx.y * blockDim.x + t and walks the segment's rows: the warp reads consecutive
//     columns of one row (coalesced). It accumulates float64 sums of d = x - shift and d^2 with
//     shift = the segment's first row, and writes the partial (mean, M2) of its column.
//  2. merge_segments: grid (B, column blocks). Thread per column merges its bin's segment
//     partials in order with Chan's formula and writes mean and var (M2 / (n - 1)).
// Features are read exactly once.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include "cuda_utils.cuh"
#include "launchers.h"

namespace ssir_fast {
namespace {

constexpr int kThreads = 128;
constexpr int64_t kSegRows = 128;

// Bin of segment s: the last b with seg_start[b] <= s (seg_start is exclusive-scanned, length B+1).
__device__ __forceinline__ int64_t segment_bin(const int64_t* seg_start, int64_t B, int64_t s) {
  int64_t lo = 0, hi = B;  // invariant: seg_start[lo] <= s < seg_start[hi]
  while (hi - lo > 1) {
    const int64_t mid = (lo + hi) / 2;
    if (seg_start[mid] <= s) lo = mid; else hi = mid;
  }
  return lo;
}

template <typename T>
__global__ void segment_partials_kernel(const T* __restrict__ f, const int64_t* __restrict__ order,
                                        const int64_t* __restrict__ bin_start,
                                        const int64_t* __restrict__ count,
                                        const int64_t* __restrict__ seg_start, int64_t B, int64_t C,
                                        double* __restrict__ pmean, double* __restrict__ pm2) {
  const int64_t s = blockIdx.x;
  if (s >= seg_start[B]) return;
  const int64_t c = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  const int64_t b = segment_bin(seg_start, B, s);
  const int64_t r0 = bin_start[b] + (s - seg_start[b]) * kSegRows;
  const int64_t r1 = min(r0 + kSegRows, bin_start[b] + count[b]);
  const double shift = static_cast<double>(f[order[r0] * C + c]);
  double a1 = 0, a2 = 0;
  for (int64_t r = r0; r < r1; ++r) {
    const double d = static_cast<double>(f[order[r] * C + c]) - shift;
    a1 += d;
    a2 += d * d;
  }
  const double n = static_cast<double>(r1 - r0);
  pmean[s * C + c] = shift + a1 / n;
  pm2[s * C + c] = fmax(a2 - a1 * a1 / n, 0.0);
}

template <typename out_t>
__global__ void merge_segments_kernel(const double* __restrict__ pmean,
                                      const double* __restrict__ pm2,
                                      const int64_t* __restrict__ count,
                                      const int64_t* __restrict__ seg_start, int64_t C,
                                      bool unbiased, out_t* __restrict__ mean,
                                      out_t* __restrict__ var) {
  const int64_t b = blockIdx.x;
  const int64_t c = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  const int64_t total = count[b];
  double n = 0, m = 0, m2 = 0;
  for (int64_t s = seg_start[b]; s < seg_start[b + 1]; ++s) {
    const double nb = static_cast<double>(min(kSegRows, total - (s - seg_start[b]) * kSegRows));
    const double mb = pmean[s * C + c];
    const double delta = mb - m;
    const double nn = n + nb;
    m += delta * nb / nn;
    m2 += pm2[s * C + c] + delta * delta * n * nb / nn;
    n = nn;
  }
  const int64_t dof = unbiased ? total - 1 : total;
  mean[b * C + c] = static_cast<out_t>(total > 0 ? m : 0.0);
  var[b * C + c] = static_cast<out_t>(dof > 0 ? m2 / dof : 0.0);
}

}  // namespace

namespace cuda {

void bin_feature_stats_launch(const at::Tensor& f, const at::Tensor& idx, int64_t num_bins,
                              bool unbiased, at::Tensor& count_out, at::Tensor& mean,
                              at::Tensor& var) {
  const int64_t N = f.size(0), C = f.size(1), B = num_bins;
  const auto acc = mean.scalar_type();
  // Ignored samples get key B: they sort last and fall outside every bin's run.
  at::Tensor key = at::where((idx >= 0) & (idx < B), idx, at::full({}, B, idx.options()));
  at::Tensor count = at::zeros({B + 1}, idx.options()).index_add_(0, key, at::ones_like(key))
                         .narrow(0, 0, B).contiguous();
  count_out.copy_(count);
  if (N == 0 || C == 0) return;
  at::Tensor order = std::get<1>(at::sort(key, /*stable=*/true, /*dim=*/0, /*descending=*/false))
                         .contiguous();
  at::Tensor bin_start = (at::cumsum(count, 0) - count).contiguous();
  at::Tensor nseg = at::floor_divide(count + (kSegRows - 1), kSegRows);
  at::Tensor seg_start = at::cat({at::zeros({1}, idx.options()), at::cumsum(nseg, 0)}).contiguous();
  const int64_t max_segs = (N + kSegRows - 1) / kSegRows + B;
  TORCH_CHECK(max_segs < (int64_t(1) << 31), "bin_feature_stats (CUDA): too many rows");
  at::Tensor pmean = at::empty({max_segs, C}, f.options().dtype(at::kDouble));
  at::Tensor pm2 = at::empty({max_segs, C}, f.options().dtype(at::kDouble));
  const int64_t col_blocks = (C + kThreads - 1) / kThreads;
  TORCH_CHECK(col_blocks < 65536 && B < (int64_t(1) << 31),
              "bin_feature_stats (CUDA): features has too many columns");
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, f.scalar_type(),
                                  "bin_feature_stats_cuda", [&] {
    segment_partials_kernel<scalar_t>
        <<<dim3(static_cast<unsigned>(max_segs), static_cast<unsigned>(col_blocks)), kThreads, 0,
           stream>>>(f.const_data_ptr<scalar_t>(), order.const_data_ptr<int64_t>(),
                     bin_start.const_data_ptr<int64_t>(), count.const_data_ptr<int64_t>(),
                     seg_start.const_data_ptr<int64_t>(), B, C, pmean.mutable_data_ptr<double>(),
                     pm2.mutable_data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  const dim3 grid(static_cast<unsigned>(B), static_cast<unsigned>(col_blocks));
  if (acc == at::kDouble) {
    merge_segments_kernel<double><<<grid, kThreads, 0, stream>>>(
        pmean.const_data_ptr<double>(), pm2.const_data_ptr<double>(), count.const_data_ptr<int64_t>(),
        seg_start.const_data_ptr<int64_t>(), C, unbiased, mean.mutable_data_ptr<double>(),
        var.mutable_data_ptr<double>());
  } else {
    merge_segments_kernel<float><<<grid, kThreads, 0, stream>>>(
        pmean.const_data_ptr<double>(), pm2.const_data_ptr<double>(), count.const_data_ptr<int64_t>(),
        seg_start.const_data_ptr<int64_t>(), C, unbiased, mean.mutable_data_ptr<float>(),
        var.mutable_data_ptr<float>());
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace cuda
}  // namespace ssir_fast
