// CUDA kernel of ssir_fast::bin_reduce_nd: one pass over the rows of (pred, target[, mask])
// [R, D] filling the [prod(num_bins), 8 + D] float64 table (columns in bin_reduce_nd_common.h).
// Each thread computes the flat D-dimensional bin of its row on the device (the same code as the
// CPU kernel, bin_reduce_nd_common.h), so no index tensor is formed and nothing goes through the
// host.
//
// A grid-stride loop gives each thread one row at a time. When the block's partial table fits in
// shared memory (prod(num_bins) * (8 + D) doubles, ~2800 bins of a 2-dim grid on an H100) rows
// are added there with shared-memory float64 atomics and every block adds its non-empty bins to
// the global table at the end; larger grids add straight to the global table. Float64 atomics
// make the order of additions, and so the last bits of the sums, vary from run to run (counts are
// exact); the CPU kernel is deterministic.
#include <algorithm>

#include "cuda_utils.cuh"
#include "launchers.h"

namespace ssir_fast {
namespace {

using namespace bin_reduce_nd;

constexpr int kThreads = 256;

template <typename T, bool kMask, bool kShared>
__global__ void __launch_bounds__(kThreads)
bin_reduce_nd_kernel(const T* __restrict__ pred, const T* __restrict__ target,
                     const bool* __restrict__ mask, int64_t rows, Params P,
                     double* __restrict__ out) {
  using acc_t = typename cuda::AccType<T>::type;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int D = P.dims, cols = P.cols();
  double* table = out;
  if (kShared) {
    table = reinterpret_cast<double*>(smem_raw);
    for (int64_t i = threadIdx.x; i < P.num_flat * cols; i += blockDim.x) table[i] = 0.0;
    __syncthreads();
  }
  const double log_floor = ::log(P.floor);
  double abs_d[kMaxDims];
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; r < rows;
       r += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    if (kMask && !mask[r]) continue;
    const T* p = pred + r * D;
    const T* y = target + r * D;
    double m, s, l2;
    const bool ok = row_errors<acc_t>(P, p, y, abs_d, m, s, l2);
    bool oor = false;
    double* row = table + flat_bin<acc_t>(P, y, oor) * cols;
    if (!ok) {
      atomicAdd(row + N_NONFINITE, 1.0);
      continue;
    }
    const bool floored = m < P.floor;
    atomicAdd(row + COUNT, 1.0);
    atomicAdd(row + SUM_ABS, m);
    atomicAdd(row + SUM_SQ, s);
    atomicAdd(row + SUM_LOG_ABS, floored ? log_floor : ::log(m));
    if (floored) atomicAdd(row + N_FLOORED, 1.0);
    atomicAdd(row + SUM_L2, l2);
    if (oor) atomicAdd(row + N_OUT_OF_RANGE, 1.0);
    for (int d = 0; d < D; ++d) atomicAdd(row + kFixedCols + d, abs_d[d]);
  }
  if (kShared) {
    __syncthreads();
    for (int64_t b = threadIdx.x; b < P.num_flat; b += blockDim.x) {
      const double* src = table + b * cols;
      if (src[COUNT] == 0.0 && src[N_NONFINITE] == 0.0) continue;
      for (int j = 0; j < cols; ++j) {
        if (src[j] != 0.0) atomicAdd(out + b * cols + j, src[j]);
      }
    }
  }
}

template <typename T>
void launch(const void* pred, const void* target, const bool* mp, int64_t rows, const Params& P,
            double* op, int device, cudaStream_t stream) {
  int sm_count = 0, smem_optin = 0;
  cuda::check(cudaDeviceGetAttribute(&sm_count, cudaDevAttrMultiProcessorCount, device),
              "bin_reduce_nd");
  cuda::check(cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin,
                                     device), "bin_reduce_nd");
  const size_t smem = static_cast<size_t>(P.num_flat) * P.cols() * sizeof(double);
  const bool shared = smem <= static_cast<size_t>(smem_optin);
  const T* pp = static_cast<const T*>(pred);
  const T* tp = static_cast<const T*>(target);
  const int64_t needed = (rows + kThreads - 1) / kThreads;
#define SSIR_BRND_LAUNCH(MASK, SHARED)                                                          \
  do {                                                                                         \
    auto kernel = bin_reduce_nd_kernel<T, MASK, SHARED>;                                       \
    const size_t bytes = SHARED ? smem : 0;                                                    \
    if (bytes > 48 * 1024) {                                                                   \
      cuda::check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,    \
                                       static_cast<int>(bytes)), "bin_reduce_nd");             \
    }                                                                                          \
    int per_sm = 0;                                                                            \
    cuda::check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads,       \
                                                              bytes), "bin_reduce_nd");        \
    const int64_t resident = int64_t(sm_count) * std::max(per_sm, 1);                         \
    const int64_t blocks = std::max<int64_t>(1, std::min(needed, resident));                  \
    kernel<<<static_cast<unsigned>(blocks), kThreads, bytes, stream>>>(pp, tp, mp, rows, P, op); \
  } while (0)
  if (mp != nullptr) {
    if (shared) SSIR_BRND_LAUNCH(true, true); else SSIR_BRND_LAUNCH(true, false);
  } else {
    if (shared) SSIR_BRND_LAUNCH(false, true); else SSIR_BRND_LAUNCH(false, false);
  }
#undef SSIR_BRND_LAUNCH
  cuda::check_launch("bin_reduce_nd");
}

}  // namespace

namespace cuda {

void bin_reduce_nd_launch(const void* pred, const void* target, const bool* mask, int64_t rows,
                          DType dtype, const bin_reduce_nd::Params& params, double* table,
                          int device, void* stream) {
  SSIR_CUDA_DISPATCH(dtype, [&] {
    launch<scalar_t>(pred, target, mask, rows, params, table, device,
                     static_cast<cudaStream_t>(stream));
  });
}

}  // namespace cuda
}  // namespace ssir_fast
