// CUDA kernel of ssir_fast::fds_calibrate:  z'_n = z_n * scale[b] + shift[b],  b = bin_index[n],
// with scale = sqrt(clamp(var~ / var, lo, hi)) and shift = mu~ - mu * scale formed once per
// bin ([B, C], coefficients_kernel: one block per bin; the identity for zero-variance dimensions
// and bins whose variances sum to ~0, as the official DIR code and the CPU kernel).
//
// Thread mapping: grid (N, row chunks). Block (n, c) handles columns [c * kChunk, (c+1) * kChunk)
// of row n: it reads bin_index[n] once, then each thread processes 16-byte vectors of z (scalar
// head/tail when the row is not aligned), reading the matching coefficients (L2-resident, B * C
// values) and writing out once. Rows whose bin is outside [0, B) are copied unchanged.
#include "cuda_utils.cuh"
#include "fds_common.h"
#include "launchers.h"

namespace ssir_fast {
namespace {

using cuda::AccType;
using cuda::Vec;
using cuda::vec_width;

constexpr int kThreads = 256;
constexpr int64_t kChunk = 4096;  // columns per block; a multiple of every vector width

// Block b: the float64 sum of var[b, :] (block_sum), then scale/shift of each column, as the CPU
// kernel's coefficients(): identity where the bin's variances sum to < kFdsMinVarSum or v == 0.
template <typename acc_t, typename stat_t>
__global__ void coefficients_kernel(const stat_t* __restrict__ mean, const stat_t* __restrict__ var,
                                    const stat_t* __restrict__ smean,
                                    const stat_t* __restrict__ svar, int64_t C, double lo,
                                    double hi, acc_t* __restrict__ scale,
                                    acc_t* __restrict__ shift) {
  __shared__ double smem[32];
  const int64_t row = static_cast<int64_t>(blockIdx.x) * C;
  double part = 0;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) part += static_cast<double>(var[row + c]);
  const bool skip_bin = cuda::block_sum(part, smem) < kFdsMinVarSum;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    const int64_t i = row + c;
    const acc_t v = static_cast<acc_t>(var[i]), sv = static_cast<acc_t>(svar[i]);
    if (skip_bin || v == acc_t(0)) {
      scale[i] = acc_t(1);
      shift[i] = acc_t(0);
      continue;
    }
    // clamp keeps a NaN ratio NaN, as std::min(std::max(...)) on the CPU
    const acc_t ratio = cuda::min_keep_nan(cuda::max_keep_nan(sv / v, static_cast<acc_t>(lo)),
                                           static_cast<acc_t>(hi));
    const acc_t s = sqrt(ratio);
    scale[i] = s;
    shift[i] = static_cast<acc_t>(smean[i]) - static_cast<acc_t>(mean[i]) * s;
  }
}

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

void fds_coefficients_launch(const void* mean, const void* var, const void* smean,
                             const void* svar, bool stat_double, int64_t B, int64_t C, double lo,
                             double hi, bool acc_double, void* scale, void* shift, void* stream_ptr) {
  if (B == 0 || C == 0) return;
  check_limit(B < (int64_t(1) << 31), "fds_calibrate (CUDA): too many bins");
  const auto stream = static_cast<cudaStream_t>(stream_ptr);
  auto run = [&](auto stat_zero, auto acc_zero) {
    using stat_t = decltype(stat_zero);
    using acc_t = decltype(acc_zero);
    coefficients_kernel<acc_t, stat_t><<<static_cast<unsigned>(B), kThreads, 0, stream>>>(
        static_cast<const stat_t*>(mean), static_cast<const stat_t*>(var),
        static_cast<const stat_t*>(smean), static_cast<const stat_t*>(svar), C, lo, hi,
        static_cast<acc_t*>(scale), static_cast<acc_t*>(shift));
  };
  if (stat_double) {
    if (acc_double) run(0.0, 0.0); else run(0.0, 0.0f);
  } else {
    if (acc_double) run(0.0f, 0.0); else run(0.0f, 0.0f);
  }
  check_launch("fds_calibrate");
}

void fds_calibrate_launch(const void* features, DType dtype, int64_t N, int64_t C,
                          const int64_t* bin_index, const void* scale, const void* shift,
                          int64_t B, void* out, void* stream_ptr) {
  if (N == 0 || C == 0) return;
  check_limit(N < (int64_t(1) << 31) && (C + kChunk - 1) / kChunk < 65536,
              "fds_calibrate (CUDA): features too large for one launch");
  const dim3 grid(static_cast<unsigned>(N), static_cast<unsigned>((C + kChunk - 1) / kChunk));
  const auto stream = static_cast<cudaStream_t>(stream_ptr);
  SSIR_CUDA_DISPATCH(dtype, [&] {
    using acc_t = typename AccType<scalar_t>::type;
    const scalar_t* zp = static_cast<const scalar_t*>(features);
    scalar_t* op = static_cast<scalar_t*>(out);
    // Vectors need every row start aligned: true when C * sizeof(T) is a multiple of 16 and the
    // base pointers are aligned (always for fresh allocations).
    const bool vec = (C * sizeof(scalar_t)) % 16 == 0 && reinterpret_cast<uintptr_t>(zp) % 16 == 0 &&
                     reinterpret_cast<uintptr_t>(op) % 16 == 0;
    calibrate_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(
        zp, bin_index, static_cast<const acc_t*>(scale), static_cast<const acc_t*>(shift), B, C,
        vec, op);
  });
  check_launch("fds_calibrate");
}

}  // namespace cuda
}  // namespace ssir_fast
