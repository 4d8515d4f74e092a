// CUDA kernels of ssir_fast::bin_feature_stats: per-bin count, mean and unbiased variance of
// features [N, C]; deterministic (no atomics) and balanced on skewed bins.
//
//  0. (cuda_ops.cpp) Samples are ordered by bin with a stable sort (ignored indices get key B and
//     sort last); counts and bin offsets come from a histogram and a cumulative sum. Each bin's
//     run of rows is cut into segments of at most kSegRows rows; segment s belongs to the bin
//     found by a binary search in the cumulative segment counts, so no host synchronisation is
//     needed (the grid is sized for the upper bound ceil(N / kSegRows) + min(B, N) segments:
//     only a bin that holds a sample has a partial segment, so the scratch is bounded by the
//     bins present, not by num_bins; spare blocks exit).
//  1. segment_partials: grid (segments, column blocks). Thread t of a block owns column
//     c = blockIdx.y * blockDim.x + t and walks the segment's rows: the warp reads consecutive
//     columns of one row (coalesced). It accumulates float64 sums of d = x - shift and d^2 with
//     shift = the segment's first row, and writes the partial (mean, M2) of its column.
//  2. merge_segments: grid (B, column blocks). Thread per column merges its bin's segment
//     partials in order with Chan's formula and writes mean and var (M2 / (n - 1)).
// Features are read exactly once.
#include "cuda_utils.cuh"
#include "launchers.h"

namespace ssir_fast {
namespace {

constexpr int kThreads = 128;
constexpr int64_t kSegRows = cuda::kStatsSegRows;

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
  // max_keep_nan: inf - inf stays NaN as on the CPU (fmax would turn it into 0).
  pm2[s * C + c] = cuda::max_keep_nan(a2 - a1 * a1 / n, 0.0);
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

// key[n] = bin_index[n], or B when outside [0, B) (sorts last); count[b] += 1 (integer atomics:
// exact and deterministic).
__global__ void keys_counts_kernel(const int64_t* __restrict__ idx, int64_t N, int64_t B,
                                   int64_t* __restrict__ key, unsigned long long* __restrict__ count) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= N) return;
  const int64_t b = idx[n];
  const bool ok = b >= 0 && b < B;
  key[n] = ok ? b : B;
  if (ok) atomicAdd(count + b, 1ull);
}

// The inputs of the two inclusive scans (cuda_ops.cpp): rows[b + 1] = count[b] and
// segs[b + 1] = ceil(count[b] / kSegRows), with rows[0] = segs[0] = 0.
__global__ void scan_inputs_kernel(const int64_t* __restrict__ count, int64_t B,
                                   int64_t* __restrict__ rows, int64_t* __restrict__ segs) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b > B) return;
  const int64_t c = b == 0 ? 0 : count[b - 1];
  rows[b] = c;
  segs[b] = (c + kSegRows - 1) / kSegRows;
}

}  // namespace

namespace cuda {

void bin_feature_stats_prep_launch(const int64_t* idx, int64_t N, int64_t B, int64_t* key,
                                   int64_t* count, int64_t* rows, int64_t* segs, void* stream_ptr) {
  const auto stream = static_cast<cudaStream_t>(stream_ptr);
  check_limit((N + kThreads - 1) / kThreads < (int64_t(1) << 31) &&
              (B + kThreads) / kThreads < (int64_t(1) << 31), "bin_feature_stats (CUDA): too large");
  if (N > 0) {
    keys_counts_kernel<<<static_cast<unsigned>((N + kThreads - 1) / kThreads), kThreads, 0, stream>>>(
        idx, N, B, key, reinterpret_cast<unsigned long long*>(count));
    check_launch("bin_feature_stats");
  }
  scan_inputs_kernel<<<static_cast<unsigned>((B + kThreads) / kThreads), kThreads, 0, stream>>>(
      count, B, rows, segs);
  check_launch("bin_feature_stats");
}

void bin_feature_stats_launch(const void* features, DType dtype, int64_t N, int64_t C, int64_t B,
                              const int64_t* order, const int64_t* bin_start, const int64_t* count,
                              const int64_t* seg_start, int64_t max_segs, double* pmean,
                              double* pm2, bool unbiased, bool stats_double, void* mean, void* var,
                              void* stream_ptr) {
  if (N == 0 || C == 0) return;
  const auto stream = static_cast<cudaStream_t>(stream_ptr);
  const int64_t col_blocks = (C + kThreads - 1) / kThreads;
  check_limit(max_segs < (int64_t(1) << 31), "bin_feature_stats (CUDA): too many rows");
  check_limit(col_blocks < 65536 && B < (int64_t(1) << 31),
              "bin_feature_stats (CUDA): features has too many columns");
  SSIR_CUDA_DISPATCH(dtype, [&] {
    segment_partials_kernel<scalar_t>
        <<<dim3(static_cast<unsigned>(max_segs), static_cast<unsigned>(col_blocks)), kThreads, 0,
           stream>>>(static_cast<const scalar_t*>(features), order, bin_start, count, seg_start,
                     B, C, pmean, pm2);
  });
  check_launch("bin_feature_stats");
  const dim3 grid(static_cast<unsigned>(B), static_cast<unsigned>(col_blocks));
  if (stats_double) {
    merge_segments_kernel<double><<<grid, kThreads, 0, stream>>>(
        pmean, pm2, count, seg_start, C, unbiased, static_cast<double*>(mean),
        static_cast<double*>(var));
  } else {
    merge_segments_kernel<float><<<grid, kThreads, 0, stream>>>(
        pmean, pm2, count, seg_start, C, unbiased, static_cast<float*>(mean),
        static_cast<float*>(var));
  }
  check_launch("bin_feature_stats");
}

}  // namespace cuda
}  // namespace ssir_fast
