// Shared CUDA helpers: fp32 math on any storage type, aligned vectors, block reductions.
#pragma once
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace ssir_fast {
namespace cuda {

template <typename T>
struct AccType { using type = float; };
template <>
struct AccType<double> { using type = double; };

// Aligned vector of N elements for 16-byte loads and stores.
template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T v[N];
};

// Number of elements in one 16-byte vector of T.
template <typename T>
constexpr int vec_width() { return 16 / sizeof(T) > 0 ? 16 / sizeof(T) : 1; }

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  return v;
}

// Sum over the block; the result is valid in every thread. `smem` holds >= 32 values.
template <typename T>
__device__ __forceinline__ T block_sum(T v, T* smem) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int nwarps = (blockDim.x + 31) >> 5;
  v = warp_sum(v);
  __syncthreads();  // smem may still be read by a previous call
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  T total = lane < nwarps ? smem[lane] : T(0);
  if (warp == 0) total = warp_sum(total);
  if (threadIdx.x == 0) smem[0] = total;
  __syncthreads();
  return smem[0];
}

// Number of elements from `p` to the first 16-byte aligned element at or after it (0 when `p`
// is aligned); `p` must be aligned to sizeof(T).
template <typename T>
__device__ __forceinline__ int64_t head_to_alignment(const T* p) {
  constexpr int64_t kVec = vec_width<T>();
  const int64_t mis = (reinterpret_cast<uintptr_t>(p) % 16) / sizeof(T);
  return mis == 0 ? 0 : kVec - mis;
}

}  // namespace cuda
}  // namespace ssir_fast
