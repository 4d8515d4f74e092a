// CUDA kernels of ssir_fast::perturb:  out = clip(x + eps_i * g / ||g||_2, lo, hi), per row i,
// eps_i = epsilon or epsilon * eps_rows[i] (perturb_common.h).
//
// Two launches, deterministic (no atomics), both on a 1-D grid of N * chunks_per_row blocks:
// block b handles chunk b % cpr (kChunk elements) of row b / cpr; an image row of 150,528 floats
// is split over 19 blocks.
//  1. row_sumsq: each block reduces the squares of its chunk with 16-byte loads on the aligned
//     body and scalar head/tail, warp shuffles + one shared-memory stage, and writes one partial
//     to partial[row, chunk].
//  2. scale_add_clip: each block first sums its row's partials (a few values), forms
//     scale = eps_i / ||g|| (0 for a zero row), then makes one fused pass over its chunk:
//     read x and g, write out, with the same vector/head/tail split.
// Traffic: g twice, x once, out once (4 passes). Rows of at most kShortRow elements take one
// launch instead (short_rows_kernel: a warp per row, g re-read from cache, 3 DRAM passes).
// All math in fp32 (fp64 for double inputs).
// Clip flags are template parameters so the unclipped path carries no per-element branches;
// per-channel bounds are looked up once per 16-byte vector (one integer division), not per
// element, unless the vector straddles two channels.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include "cuda_utils.cuh"
#include "launchers.h"

namespace ssir_fast {
namespace {

using cuda::AccType;
using cuda::Vec;
using cuda::vec_width;

constexpr int kThreads = 256;
constexpr int64_t kChunk = 8192;  // elements per block; a multiple of every vector width

// Calls fn(i) for every index i of [begin, end) of a row, with 16-byte vectors on the aligned
// body: there `fn_vec(i)` handles elements i .. i + kVec - 1 at once. Thread `tid` of `nthreads`
// (a block, or a warp for short rows) takes every nthreads-th element/vector.
// With vec = false every element takes the scalar path.
template <typename T, typename Scalar, typename Vector>
__device__ __forceinline__ void for_chunk(const T* row_ptr, int64_t begin, int64_t end, bool vec,
                                          Scalar fn, Vector fn_vec, int tid, int nthreads) {
  constexpr int kVec = vec_width<T>();
  int64_t head = vec ? cuda::head_to_alignment(row_ptr + begin) : end - begin;
  if (head > end - begin) head = end - begin;
  const int64_t body_begin = begin + head;
  const int64_t nvec = (end - body_begin) / kVec;
  const int64_t tail_begin = body_begin + nvec * kVec;
  for (int64_t i = begin + tid; i < body_begin; i += nthreads) fn(i);
  for (int64_t v = tid; v < nvec; v += nthreads) fn_vec(body_begin + v * kVec);
  for (int64_t i = tail_begin + tid; i < end; i += nthreads) fn(i);
}

// Sum of squares of g[begin, end) over the calling threads (partial per thread).
template <typename T>
__device__ __forceinline__ typename AccType<T>::type sumsq_part(const T* gr, int64_t begin,
                                                                int64_t end, int tid, int nthreads) {
  using acc_t = typename AccType<T>::type;
  constexpr int kVec = vec_width<T>();
  acc_t acc = 0;
  for_chunk<T>(
      gr, begin, end, true,
      [&](int64_t i) {
        const acc_t v = static_cast<acc_t>(gr[i]);
        acc += v * v;
      },
      [&](int64_t i) {
        const Vec<T, kVec> gv = *reinterpret_cast<const Vec<T, kVec>*>(gr + i);
#pragma unroll
        for (int k = 0; k < kVec; ++k) {
          const acc_t v = static_cast<acc_t>(gv.v[k]);
          acc += v * v;
        }
      },
      tid, nthreads);
  return acc;
}

template <typename T>
__global__ void row_sumsq_kernel(const T* __restrict__ g, int64_t L, int64_t cpr,
                                 typename AccType<T>::type* __restrict__ partial) {
  using acc_t = typename AccType<T>::type;
  __shared__ acc_t smem[32];
  const int64_t row = blockIdx.x / cpr, c = blockIdx.x % cpr;
  const int64_t begin = c * kChunk, end = min(begin + kChunk, L);
  acc_t acc = sumsq_part<T>(g + row * L, begin, end, threadIdx.x, blockDim.x);
  acc = cuda::block_sum(acc, smem);
  if (threadIdx.x == 0) partial[row * cpr + c] = acc;
}

// out = clip(x + scale * g) on elements [begin, end) of one row, by the calling threads.
template <typename T, bool kClip, bool kPerChannel>
__device__ __forceinline__ void apply_part(const T* __restrict__ xr, const T* gr, T* orow,
                                           int64_t begin, int64_t end, bool vec,
                                           typename AccType<T>::type scale,
                                           const float* __restrict__ lo,
                                           const float* __restrict__ hi, int64_t nc,
                                           int64_t inner, int tid, int nthreads) {
  using acc_t = typename AccType<T>::type;
  constexpr int kVec = vec_width<T>();
  const acc_t lo0 = kClip ? static_cast<acc_t>(lo[0]) : acc_t(0);
  const acc_t hi0 = kClip ? static_cast<acc_t>(hi[0]) : acc_t(0);
  auto clip = [&](acc_t v, acc_t l, acc_t h) -> T {
    return static_cast<T>(kClip ? fmin(fmax(v, l), h) : v);
  };
  auto channel = [&](int64_t i) { return (i / inner) % nc; };
  auto scalar_one = [&](int64_t i) {
    const acc_t v = static_cast<acc_t>(xr[i]) + scale * static_cast<acc_t>(gr[i]);
    if (kPerChannel) {
      const int64_t ch = channel(i);
      orow[i] = clip(v, static_cast<acc_t>(lo[ch]), static_cast<acc_t>(hi[ch]));
    } else {
      orow[i] = clip(v, lo0, hi0);
    }
  };
  for_chunk<T>(
      xr, begin, end, vec, scalar_one,
      [&](int64_t i) {
        const Vec<T, kVec> xv = *reinterpret_cast<const Vec<T, kVec>*>(xr + i);
        const Vec<T, kVec> gv = *reinterpret_cast<const Vec<T, kVec>*>(gr + i);
        acc_t l = lo0, h = hi0;
        bool one_channel = true;
        if (kPerChannel) {  // one division per vector; a vector rarely straddles two channels
          const int64_t q = i / inner;
          one_channel = (i + kVec - 1) / inner == q;
          const int64_t ch = q % nc;
          l = static_cast<acc_t>(lo[ch]);
          h = static_cast<acc_t>(hi[ch]);
        }
        Vec<T, kVec> ov;
#pragma unroll
        for (int k = 0; k < kVec; ++k) {
          const acc_t v = static_cast<acc_t>(xv.v[k]) + scale * static_cast<acc_t>(gv.v[k]);
          if (kPerChannel && !one_channel) {
            const int64_t ch = channel(i + k);
            ov.v[k] = clip(v, static_cast<acc_t>(lo[ch]), static_cast<acc_t>(hi[ch]));
          } else {
            ov.v[k] = clip(v, l, h);
          }
        }
        *reinterpret_cast<Vec<T, kVec>*>(orow + i) = ov;
      },
      tid, nthreads);
}

// The radius of row `row` over ||g_row|| (0 for a zero row: no direction, never 0/0).
template <typename acc_t>
__device__ __forceinline__ acc_t row_scale(acc_t sumsq, double epsilon, const double* eps_rows,
                                           int64_t row) {
  const double eps = eps_rows != nullptr ? epsilon * eps_rows[row] : epsilon;
  return sumsq > 0 ? static_cast<acc_t>(eps) / sqrt(sumsq) : acc_t(0);
}

template <typename T, bool kClip, bool kPerChannel>
__global__ void scale_add_clip_kernel(const T* __restrict__ x, const T* g, T* out, int64_t L,
                                      int64_t cpr, const typename AccType<T>::type* partial,
                                      double epsilon, const double* __restrict__ eps_rows,
                                      const float* __restrict__ lo,
                                      const float* __restrict__ hi, int64_t nc, int64_t inner,
                                      bool vec) {
  using acc_t = typename AccType<T>::type;
  __shared__ acc_t smem[32];
  const int64_t row = blockIdx.x / cpr, c = blockIdx.x % cpr;
  acc_t s = 0;
  for (int64_t k = threadIdx.x; k < cpr; k += blockDim.x) s += partial[row * cpr + k];
  s = cuda::block_sum(s, smem);
  const acc_t scale = row_scale(s, epsilon, eps_rows, row);
  const int64_t begin = c * kChunk, end = min(begin + kChunk, L);
  apply_part<T, kClip, kPerChannel>(x + row * L, g + row * L, out + row * L, begin, end, vec,
                                    scale, lo, hi, nc, inner, threadIdx.x, blockDim.x);
}

// Short rows (L <= kShortRow, e.g. [4096, 128] features): one warp per row, one launch. The warp
// reduces ||g||^2 with shuffles, then applies the update; its second read of g hits the cache,
// so DRAM traffic is 3 passes instead of 4, and no block waits on a barrier.
constexpr int64_t kShortRow = 2048;

template <typename T, bool kClip, bool kPerChannel>
__global__ void short_rows_kernel(const T* __restrict__ x, const T* g, T* out, int64_t N, int64_t L,
                                  double epsilon, const double* __restrict__ eps_rows,
                                  const float* __restrict__ lo, const float* __restrict__ hi,
                                  int64_t nc, int64_t inner, bool vec) {
  using acc_t = typename AccType<T>::type;
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + (threadIdx.x >> 5);
  if (row >= N) return;  // the whole warp leaves: no barrier below
  const T* gr = g + row * L;
  acc_t s = cuda::warp_sum(sumsq_part<T>(gr, 0, L, lane, 32));
  s = __shfl_sync(0xffffffffu, s, 0);
  apply_part<T, kClip, kPerChannel>(x + row * L, gr, out + row * L, 0, L, vec,
                                    row_scale(s, epsilon, eps_rows, row), lo, hi, nc, inner, lane,
                                    32);
}

template <typename T>
void launch(const at::Tensor& x, const at::Tensor& g, double epsilon, const at::Tensor& eps_rows,
            const ClipBounds& cb, at::Tensor& out) {
  using acc_t = typename AccType<T>::type;
  const int64_t N = x.size(0), L = x.size(1);
  if (N == 0 || L == 0) return;
  const int64_t cpr = (L + kChunk - 1) / kChunk;
  auto stream = at::cuda::getCurrentCUDAStream();
  const float* lo = cb.has_clip ? cb.lo.const_data_ptr<float>() : nullptr;
  const float* hi = cb.has_clip ? cb.hi.const_data_ptr<float>() : nullptr;
  const double* er = eps_rows.defined() ? eps_rows.const_data_ptr<double>() : nullptr;
  // The vector path needs x, g and out to share their misalignment; fresh allocations are
  // 512-byte aligned, so this only fails for offset views, which then take the scalar path.
  const T* xp = x.const_data_ptr<T>();
  const T* gp = g.const_data_ptr<T>();
  T* op = out.mutable_data_ptr<T>();
  const auto mis = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16; };
  const bool vec = mis(xp) == mis(gp) && mis(xp) == mis(op);

  if (L <= kShortRow) {
    constexpr int kWarps = kThreads / 32;
    const int64_t blocks = (N + kWarps - 1) / kWarps;
    TORCH_CHECK(blocks < (int64_t(1) << 31), "perturb (CUDA): tensor too large for one launch");
#define SSIR_SHORT(CLIP, PC)                                                                   \
  short_rows_kernel<T, CLIP, PC><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(      \
      xp, gp, op, N, L, epsilon, er, lo, hi, cb.nc, cb.inner, vec)
    if (!cb.has_clip) {
      SSIR_SHORT(false, false);
    } else if (cb.nc == 1) {
      SSIR_SHORT(true, false);
    } else {
      SSIR_SHORT(true, true);
    }
#undef SSIR_SHORT
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return;
  }
  at::Tensor partial = at::empty({N, cpr}, x.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
  TORCH_CHECK(N * cpr < (int64_t(1) << 31), "perturb (CUDA): tensor too large for one launch");
  const dim3 grid(static_cast<unsigned>(N * cpr));  // block b: row b / cpr, chunk b % cpr

  row_sumsq_kernel<T><<<grid, kThreads, 0, stream>>>(gp, L, cpr, partial.mutable_data_ptr<acc_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  const acc_t* pp = partial.const_data_ptr<acc_t>();
#define SSIR_LAUNCH(CLIP, PC)                                                                  \
  scale_add_clip_kernel<T, CLIP, PC><<<grid, kThreads, 0, stream>>>(xp, gp, op, L, cpr, pp,   \
                                                                    epsilon, er, lo, hi, cb.nc,\
                                                                    cb.inner, vec)
  if (!cb.has_clip) {
    SSIR_LAUNCH(false, false);
  } else if (cb.nc == 1) {
    SSIR_LAUNCH(true, false);
  } else {
    SSIR_LAUNCH(true, true);
  }
#undef SSIR_LAUNCH
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

namespace cuda {

void perturb_launch(const at::Tensor& x, const at::Tensor& g, double epsilon,
                    const at::Tensor& eps_rows, const ClipBounds& cb, at::Tensor& out) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "perturb_cuda", [&] {
    launch<scalar_t>(x, g, epsilon, eps_rows, cb, out);
  });
}

}  // namespace cuda
}  // namespace ssir_fast
