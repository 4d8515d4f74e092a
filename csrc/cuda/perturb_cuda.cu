// CUDA kernels of ssir_fast::perturb:  out = clip(x + eps_i * g / ||g||_2, lo, hi), per row i,
// eps_i = epsilon or epsilon * eps_rows[i] (perturb_common.h).
//
// Two launches, deterministic (no atomics), both on a 1-D grid of N * chunks_per_row blocks:
// block b handles chunk b % cpr (kChunk elements) of row b / cpr; an image row of 150,528 floats
// is split over 19 blocks.
//  1. row_sumsq: each block reduces the squares of its chunk with 16-byte loads on the aligned
//     body and scalar head/tail, warp shuffles + one shared-memory stage, and writes the chunk's
//     norm (float64) to partial[row, chunk].
//  2. scale_add_clip: each block first combines its row's chunk norms (a few values), forms
//     scale = eps_i / ||g|| (0 for a zero row), then makes one fused pass over its chunk:
//     read x and g, write out, with the same vector/head/tail split.
// Traffic: g twice, x once, out once (4 passes). Rows of at most kShortRow elements take one
// launch instead (short_rows_kernel: a warp per row, g re-read from cache, 3 DRAM passes).
// All math in fp32 (fp64 for double inputs). The norm never under- or overflows (chunk_norm
// rescales a chunk whose squares would), and a row whose factor eps / ||g|| is outside the fp32
// range is updated in fp64 as x + eps * (g / ||g||) (RowFactor).
// Clip flags are template parameters so the unclipped path carries no per-element branches;
// per-channel bounds are looked up once per 16-byte vector (one integer division), not per
// element, unless the vector straddles two channels.
// Clipping keeps NaN: a NaN in x or g stays NaN as on the CPU (cuda::max_keep_nan).
#include <limits>
#include <type_traits>

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

template <typename A>
__device__ __forceinline__ A warp_max(A v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v = fmax(v, __shfl_xor_sync(0xffffffffu, v, off));
  return v;
}

// The threads that reduce one chunk, a block or a warp: sum and max over them, the result valid
// in every thread.
struct BlockGroup {
  template <typename A>
  __device__ __forceinline__ A sum(A v) const {
    __shared__ A smem[32];
    return cuda::block_sum(v, smem);
  }
  template <typename A>
  __device__ __forceinline__ A max(A v) const {
    __shared__ A smem[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_max(v);
    __syncthreads();  // smem may still be read by a previous call
    if (lane == 0) smem[warp] = v;
    __syncthreads();
    return warp_max(lane < ((blockDim.x + 31) >> 5) ? smem[lane] : A(0));
  }
};

struct WarpGroup {
  template <typename A>
  __device__ __forceinline__ A sum(A v) const {
    return __shfl_sync(0xffffffffu, cuda::warp_sum(v), 0);
  }
  template <typename A>
  __device__ __forceinline__ A max(A v) const { return warp_max(v); }
};

// ||g[begin, end)||_2 over the group, safe for every finite input. The fast pass sums squares in
// acc_t and is kept when its total lies where nothing can have under- or overflowed (each
// underflowed square loses less than the smallest normal acc_t; kChunk of them stay below 2^-24
// of a total >= safe_min). Otherwise (a gradient of 1e-25 or 1e20 in float) the chunk is redone
// scaled, as BLAS nrm2 does: m = max |g|, ||g|| = m * sqrt(sum (g / m)^2), every term <= 1.
// The branch is uniform: every thread of the group sees the same total.
template <typename T, typename Group>
__device__ __forceinline__ double chunk_norm(const T* gr, int64_t begin, int64_t end, int tid,
                                             int nthreads, Group group) {
  using acc_t = typename AccType<T>::type;
  const double total = group.sum(sumsq_part<T>(gr, begin, end, tid, nthreads));
  const double safe_min = static_cast<double>(std::numeric_limits<acc_t>::min()) *
                          static_cast<double>(kChunk) * 16777216.0;
  if (total >= safe_min && total <= static_cast<double>(std::numeric_limits<acc_t>::max())) {
    return sqrt(total);
  }
  if (isnan(total)) return total;
  acc_t m = 0;
  for (int64_t i = begin + tid; i < end; i += nthreads) {
    m = fmax(m, fabs(static_cast<acc_t>(gr[i])));
  }
  m = group.max(m);
  if (m == 0 || isinf(m)) return m;
  acc_t s = 0;
  for (int64_t i = begin + tid; i < end; i += nthreads) {
    const acc_t r = static_cast<acc_t>(gr[i]) / m;
    s += r * r;
  }
  s = group.sum(s);
  return static_cast<double>(m) * sqrt(static_cast<double>(s));
}

// Pass 1 of long rows: the norm of one chunk per block, to partial[row, chunk] (float64).
template <typename T>
__global__ void row_sumsq_kernel(const T* __restrict__ g, int64_t L, int64_t cpr,
                                 double* __restrict__ partial) {
  const int64_t row = blockIdx.x / cpr, c = blockIdx.x % cpr;
  const int64_t begin = c * kChunk, end = min(begin + kChunk, L);
  const double norm = chunk_norm<T>(g + row * L, begin, end, threadIdx.x, blockDim.x,
                                    BlockGroup());
  if (threadIdx.x == 0) partial[row * cpr + c] = norm;
}

// The update factor of a row: its radius eps_i and norm ||g_i||, and scale = eps_i / ||g_i|| (0
// for a zero row: no direction, never 0/0). When scale is no normal acc_t (a gradient so small
// or so large that it over- or underflows), `exact` sends the row down the exact path.
template <typename acc_t>
struct RowFactor {
  double eps, norm;
  acc_t scale;
  bool exact;
  double gscale = 1.0;  // the exact path divides g * gscale by norm (see refine_tiny)
};

template <typename acc_t>
__device__ __forceinline__ RowFactor<acc_t> row_factor(double norm, double epsilon,
                                                       const double* eps_rows, int64_t row) {
  const double eps = eps_rows != nullptr ? epsilon * eps_rows[row] : epsilon;
  const double factor = norm > 0 ? eps / norm : 0.0;
  const acc_t scale = static_cast<acc_t>(factor);
  return {eps, norm, scale, factor != 0 && !isnormal(scale)};
}

// A float64 row norm below the smallest normal double has lost digits to rounding: the exact
// path then uses the norm of g * 2^1022 (every |g| < 2^-1022 there: no square under- or
// overflows), reduced over the row g[0, L) by the group. Uniform over the group.
template <typename T, typename acc_t, typename Group>
__device__ __forceinline__ void refine_tiny(RowFactor<acc_t>& f, const T* gr, int64_t L, int tid,
                                            int nthreads, Group group) {
  if (!(f.exact && f.norm > 0 && f.norm < std::numeric_limits<double>::min())) return;
  const double gscale = 4.49423283715578976932e+307;  // 2^1022
  double s = 0;
  for (int64_t i = tid; i < L; i += nthreads) {
    const double v = static_cast<double>(gr[i]) * gscale;
    s += v * v;
  }
  f.norm = sqrt(group.sum(s));
  f.gscale = gscale;
}

// out = clip(x + scale * g) on elements [begin, end) of one row, by the calling threads; with
// kExact, out = clip(x + eps * (g / ||g||)) in double (g / ||g|| <= 1 never overflows).
template <typename T, bool kClip, bool kPerChannel, bool kExact>
__device__ __forceinline__ void apply_part(const T* __restrict__ xr, const T* gr, T* orow,
                                           int64_t begin, int64_t end, bool vec,
                                           RowFactor<typename AccType<T>::type> f,
                                           const float* __restrict__ lo,
                                           const float* __restrict__ hi, int64_t nc,
                                           int64_t inner, int64_t lo_step, int64_t hi_step,
                                           int tid, int nthreads) {
  using acc_t = std::conditional_t<kExact, double, typename AccType<T>::type>;
  constexpr int kVec = vec_width<T>();
  const acc_t lo0 = kClip ? static_cast<acc_t>(lo[0]) : acc_t(0);
  const acc_t hi0 = kClip ? static_cast<acc_t>(hi[0]) : acc_t(0);
  auto clip = [&](acc_t v, acc_t l, acc_t h) -> T {
    return static_cast<T>(kClip ? cuda::min_keep_nan(cuda::max_keep_nan(v, l), h) : v);
  };
  auto update = [&](T xv, T gv) -> acc_t {
    if constexpr (kExact) {
      return static_cast<double>(xv) + f.eps * ((static_cast<double>(gv) * f.gscale) / f.norm);
    } else {
      return static_cast<acc_t>(xv) + f.scale * static_cast<acc_t>(gv);
    }
  };
  auto channel = [&](int64_t i) { return (i / inner) % nc; };
  auto scalar_one = [&](int64_t i) {
    const acc_t v = update(xr[i], gr[i]);
    if (kPerChannel) {
      const int64_t ch = channel(i);
      orow[i] = clip(v, static_cast<acc_t>(lo[ch * lo_step]), static_cast<acc_t>(hi[ch * hi_step]));
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
          l = static_cast<acc_t>(lo[ch * lo_step]);
          h = static_cast<acc_t>(hi[ch * hi_step]);
        }
        Vec<T, kVec> ov;
#pragma unroll
        for (int k = 0; k < kVec; ++k) {
          const acc_t v = update(xv.v[k], gv.v[k]);
          if (kPerChannel && !one_channel) {
            const int64_t ch = channel(i + k);
            ov.v[k] = clip(v, static_cast<acc_t>(lo[ch * lo_step]),
                           static_cast<acc_t>(hi[ch * hi_step]));
          } else {
            ov.v[k] = clip(v, l, h);
          }
        }
        *reinterpret_cast<Vec<T, kVec>*>(orow + i) = ov;
      },
      tid, nthreads);
}

// apply_part on the fast or the exact path, as the row's factor says (uniform over the threads).
template <typename T, bool kClip, bool kPerChannel>
__device__ __forceinline__ void apply_row_part(const T* __restrict__ xr, const T* gr, T* orow,
                                               int64_t begin, int64_t end, bool vec,
                                               RowFactor<typename AccType<T>::type> f,
                                               const float* __restrict__ lo,
                                               const float* __restrict__ hi, int64_t nc,
                                               int64_t inner, int64_t lo_step, int64_t hi_step,
                                               int tid, int nthreads) {
  if (f.exact) {
    apply_part<T, kClip, kPerChannel, true>(xr, gr, orow, begin, end, vec, f, lo, hi, nc, inner,
                                            lo_step, hi_step, tid, nthreads);
  } else {
    apply_part<T, kClip, kPerChannel, false>(xr, gr, orow, begin, end, vec, f, lo, hi, nc, inner,
                                             lo_step, hi_step, tid, nthreads);
  }
}

// Pass 2 of long rows: the row's norm from its chunk norms (scaled by their max, so no chunk
// norm is squared into over- or underflow), then the fused update of one chunk.
template <typename T, bool kClip, bool kPerChannel>
__global__ void scale_add_clip_kernel(const T* __restrict__ x, const T* g, T* out, int64_t L,
                                      int64_t cpr, const double* partial,
                                      double epsilon, const double* __restrict__ eps_rows,
                                      const float* __restrict__ lo,
                                      const float* __restrict__ hi, int64_t nc, int64_t inner,
                                      int64_t lo_step, int64_t hi_step, bool vec) {
  using acc_t = typename AccType<T>::type;
  const int64_t row = blockIdx.x / cpr, c = blockIdx.x % cpr;
  const double* pr = partial + row * cpr;
  const BlockGroup block;
  double m = 0;
  for (int64_t k = threadIdx.x; k < cpr; k += blockDim.x) m = fmax(m, pr[k]);
  m = block.max(m);
  double s = 0;  // a NaN chunk norm makes s, and so the row's norm, NaN (fmax drops it from m)
  if (m > 0 && !isinf(m)) {
    for (int64_t k = threadIdx.x; k < cpr; k += blockDim.x) s += (pr[k] / m) * (pr[k] / m);
  }
  s = block.sum(s);
  const double norm = m > 0 && !isinf(m) ? m * sqrt(s) : m;
  RowFactor<acc_t> f = row_factor<acc_t>(norm, epsilon, eps_rows, row);
  refine_tiny(f, g + row * L, L, threadIdx.x, blockDim.x, block);
  const int64_t begin = c * kChunk, end = min(begin + kChunk, L);
  apply_row_part<T, kClip, kPerChannel>(x + row * L, g + row * L, out + row * L, begin, end,
                                        vec, f, lo, hi, nc, inner, lo_step, hi_step, threadIdx.x,
                                        blockDim.x);
}

// Short rows (L <= kShortRow, e.g. [4096, 128] features): one warp per row, one launch. The warp
// reduces ||g|| with shuffles, then applies the update; its second read of g hits the cache,
// so DRAM traffic is 3 passes instead of 4, and no block waits on a barrier.
constexpr int64_t kShortRow = 2048;

template <typename T, bool kClip, bool kPerChannel>
__global__ void short_rows_kernel(const T* __restrict__ x, const T* g, T* out, int64_t N, int64_t L,
                                  double epsilon, const double* __restrict__ eps_rows,
                                  const float* __restrict__ lo, const float* __restrict__ hi,
                                  int64_t nc, int64_t inner, int64_t lo_step, int64_t hi_step,
                                  bool vec) {
  using acc_t = typename AccType<T>::type;
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + (threadIdx.x >> 5);
  if (row >= N) return;  // the whole warp leaves: no barrier below
  const T* gr = g + row * L;
  const double norm = chunk_norm<T>(gr, 0, L, lane, 32, WarpGroup());
  RowFactor<acc_t> f = row_factor<acc_t>(norm, epsilon, eps_rows, row);
  refine_tiny(f, gr, L, lane, 32, WarpGroup());
  apply_row_part<T, kClip, kPerChannel>(x + row * L, gr, out + row * L, 0, L, vec, f, lo, hi, nc,
                                        inner, lo_step, hi_step, lane, 32);
}

template <typename T>
void launch(const void* xv, const void* gv, void* outv, int64_t N, int64_t L, double epsilon,
            const double* er, const ClipBounds& cb, void* scratch, cudaStream_t stream) {
  if (N == 0 || L == 0) return;
  const int64_t cpr = (L + kChunk - 1) / kChunk;
  const float* lo = cb.has_clip ? cb.lo : nullptr;
  const float* hi = cb.has_clip ? cb.hi : nullptr;
  // The vector path needs x, g and out to share their misalignment; fresh allocations are
  // 512-byte aligned, so this only fails for offset views, which then take the scalar path.
  const T* xp = static_cast<const T*>(xv);
  const T* gp = static_cast<const T*>(gv);
  T* op = static_cast<T*>(outv);
  const auto mis = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16; };
  const bool vec = mis(xp) == mis(gp) && mis(xp) == mis(op);

  if (L <= kShortRow) {
    constexpr int kWarps = kThreads / 32;
    const int64_t blocks = (N + kWarps - 1) / kWarps;
    cuda::check_limit(blocks < (int64_t(1) << 31), "perturb (CUDA): tensor too large for one launch");
#define SSIR_SHORT(CLIP, PC)                                                                   \
  short_rows_kernel<T, CLIP, PC><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(      \
      xp, gp, op, N, L, epsilon, er, lo, hi, cb.nc, cb.inner, cb.lo_step, cb.hi_step, vec)
    if (!cb.has_clip) {
      SSIR_SHORT(false, false);
    } else if (cb.nc == 1) {
      SSIR_SHORT(true, false);
    } else {
      SSIR_SHORT(true, true);
    }
#undef SSIR_SHORT
    cuda::check_launch("perturb");
    return;
  }
  cuda::check_limit(N * cpr < (int64_t(1) << 31), "perturb (CUDA): tensor too large for one launch");
  double* partial = static_cast<double*>(scratch);  // N * cpr chunk norms (perturb_scratch)
  const dim3 grid(static_cast<unsigned>(N * cpr));  // block b: row b / cpr, chunk b % cpr

  row_sumsq_kernel<T><<<grid, kThreads, 0, stream>>>(gp, L, cpr, partial);
  cuda::check_launch("perturb");

  const double* pp = partial;
#define SSIR_LAUNCH(CLIP, PC)                                                                  \
  scale_add_clip_kernel<T, CLIP, PC><<<grid, kThreads, 0, stream>>>(xp, gp, op, L, cpr, pp,   \
                                                                    epsilon, er, lo, hi, cb.nc,\
                                                                    cb.inner, cb.lo_step,      \
                                                                    cb.hi_step, vec)
  if (!cb.has_clip) {
    SSIR_LAUNCH(false, false);
  } else if (cb.nc == 1) {
    SSIR_LAUNCH(true, false);
  } else {
    SSIR_LAUNCH(true, true);
  }
#undef SSIR_LAUNCH
  cuda::check_launch("perturb");
}

}  // namespace

namespace cuda {

int64_t perturb_scratch(int64_t N, int64_t L) {
  return L <= kShortRow ? 0 : N * ((L + kChunk - 1) / kChunk);
}

void perturb_launch(const void* x, const void* g, void* out, int64_t N, int64_t L, DType dtype,
                    double epsilon, const double* eps_rows, const ClipBounds& bounds,
                    void* scratch, void* stream) {
  SSIR_CUDA_DISPATCH(dtype, [&] {
    launch<scalar_t>(x, g, out, N, L, epsilon, eps_rows, bounds, scratch,
                     static_cast<cudaStream_t>(stream));
  });
}

}  // namespace cuda
}  // namespace ssir_fast
