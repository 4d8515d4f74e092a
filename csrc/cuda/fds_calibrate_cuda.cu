// CUDA kernel of ssir_fast::fds_calibrate:  z'_n = z_n * scale[b] + shift[b],  b = bin_index[n],
// with scale = sqrt(clamp(var~ / var, lo, hi)) and shift = mu~ - mu * scale formed once per
// bin ([B, C], a few small ATen ops in fds_common.h; the identity for zero-variance dimensions
// and bins whose variances sum to ~0, as the official DIR code).
//
// Thread mapping: grid (N, row chunks). Block (n, c) handles columns [c * kChunk, (c+1) * kChunk)
// of row n: it reads bin_index[n] once, then each thread processes 16-byte vectors of z (scalar
// head/tail when the row is not aligned), reading the matching coefficients (L2-resident, B * C
// values) and writing out once. Rows whose bin is outside [0, B) are copied unchanged.
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
constexpr int64_t kChunk = 4096;  // columns per block; a multiple of every vector width

template <typename T>
__global__ void calibrate_kernel(const T* __restrict__ z, const int64_t* __restrict__ idx,
                                 const typename AccType<T>::type* __restrict__ scale,
                                 const typename AccType<T>::type* __restrict__ shift, int64_t B,
                                 int64_t C, bool vec, T* __restrict__ out) {
  using acc_t = typename AccType<T>::type;
  constexpr int kVec = vec_width<T>();
  const int64_t n = blockIdx.x;
  const int64_t begin = static_cast<int64_t>(blockIdx.y) * kChunk;
  const int64_t end = min(begin + kChunk, C);
  const int64_t b = idx[n];
  const bool pass = b < 0 || b >= B;
  const T* zr = z + n * C;
  T* orow = out + n * C;
  const acc_t* s = pass ? nullptr : scale + b * C;
  const acc_t* t = pass ? nullptr : shift + b * C;
  auto apply = [&](int64_t c, T v) -> T {
    return pass ? v : static_cast<T>(static_cast<acc_t>(v) * s[c] + t[c]);
  };
  int64_t head = vec ? cuda::head_to_alignment(zr + begin) : end - begin;
  if (head > end - begin) head = end - begin;
  const int64_t body = begin + head;
  const int64_t nvec = (end - body) / kVec;
  const int64_t tail = body + nvec * kVec;
  for (int64_t c = begin + threadIdx.x; c < body; c += blockDim.x) orow[c] = apply(c, zr[c]);
  for (int64_t v = threadIdx.x; v < nvec; v += blockDim.x) {
    const int64_t c = body + v * kVec;
    const Vec<T, kVec> zv = *reinterpret_cast<const Vec<T, kVec>*>(zr + c);
    Vec<T, kVec> ov;
#pragma unroll
    for (int k = 0; k < kVec; ++k) ov.v[k] = apply(c + k, zv.v[k]);
    *reinterpret_cast<Vec<T, kVec>*>(orow + c) = ov;
  }
  for (int64_t c = tail + threadIdx.x; c < end; c += blockDim.x) orow[c] = apply(c, zr[c]);
}

}  // namespace

namespace cuda {

void fds_calibrate_launch(const at::Tensor& f, const at::Tensor& idx, const at::Tensor& scale,
                          const at::Tensor& shift, at::Tensor& out) {
  const int64_t N = f.size(0), C = f.size(1), B = scale.size(0);
  TORCH_CHECK(N < (int64_t(1) << 31) && (C + kChunk - 1) / kChunk < 65536,
              "fds_calibrate (CUDA): features too large for one launch, got ", f.sizes());
  const dim3 grid(static_cast<unsigned>(N), static_cast<unsigned>((C + kChunk - 1) / kChunk));
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, f.scalar_type(), "fds_calibrate_cuda", [&] {
    using acc_t = typename AccType<scalar_t>::type;
    const scalar_t* zp = f.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    // Vectors need every row start aligned: true when C * sizeof(T) is a multiple of 16 and the
    // base pointers are aligned (always for fresh allocations).
    const bool vec = (C * sizeof(scalar_t)) % 16 == 0 && reinterpret_cast<uintptr_t>(zp) % 16 == 0 &&
                     reinterpret_cast<uintptr_t>(op) % 16 == 0;
    calibrate_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(
        zp, idx.const_data_ptr<int64_t>(), scale.const_data_ptr<acc_t>(),
        shift.const_data_ptr<acc_t>(), B, C, vec, op);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace cuda
}  // namespace ssir_fast
