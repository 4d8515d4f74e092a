// Shared CUDA helpers: fp32 math on any storage type, aligned vectors, block reductions, error
// checks, the dtype switch of the launchers, NaN-keeping min/max.
#pragma once
#include <cuda_runtime.h>
#include <torch/headeronly/util/BFloat16.h>
#include <torch/headeronly/util/Half.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "launchers.h"

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

// max(v, lo) and min(v, hi) that keep a NaN v (fmaxf/fminf return the non-NaN operand, which
// would turn a NaN input or gradient into a clip bound): NaN fails every comparison.
template <typename T>
__device__ __forceinline__ T max_keep_nan(T v, T lo) { return v < lo ? lo : v; }
template <typename T>
__device__ __forceinline__ T min_keep_nan(T v, T hi) { return v > hi ? hi : v; }

inline void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("ssir_fast CUDA error in ") + what + ": " +
                             cudaGetErrorString(err));
  }
}

inline void check_launch(const char* what) { check(cudaGetLastError(), what); }

inline void check_limit(bool ok, const char* what) {
  if (!ok) throw std::runtime_error(what);
}

}  // namespace cuda
}  // namespace ssir_fast

// Calls the body with `scalar_t` bound to the C++ type of a cuda::DType.
#define SSIR_CUDA_DISPATCH(dtype, ...)                                               \
  [&] {                                                                              \
    switch (dtype) {                                                                 \
      case ::ssir_fast::cuda::DType::kFloat: { using scalar_t = float; return __VA_ARGS__(); }  \
      case ::ssir_fast::cuda::DType::kDouble: { using scalar_t = double; return __VA_ARGS__(); } \
      case ::ssir_fast::cuda::DType::kHalf: { using scalar_t = c10::Half; return __VA_ARGS__(); } \
      default: { using scalar_t = c10::BFloat16; return __VA_ARGS__(); }             \
    }                                                                                \
  }()
