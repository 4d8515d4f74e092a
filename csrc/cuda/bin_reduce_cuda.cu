// CUDA kernel of ssir_fast::bin_reduce: one pass over (pred, target[, mask]) filling the
// [num_bins, 12] float64 table of per-bin sums and counts (columns in bin_reduce_common.h).
//
// Accumulation and (non-)determinism: per-pair math is fp32 (fp64 for fp64 inputs), except the
// bin index and the log of SUM_LOG_ABS, which are fp64 and the same code as on the CPU
// (bin_reduce_common.h), so CPU and GPU tables agree to float64 rounding in the summation order.
// A thread sums a run of at most kPer = 8 pairs of one bin in registers (float64 sums, uint32
// counts), then adds it to the block's partial table in shared memory: float64 sums
// (shared-memory double atomicAdd) and uint32 counts. At the end every block adds its non-empty bins to the global table with one
// float64 atomicAdd per bin and column. The order of those atomics changes from run to run, so the
// last bits of the sums may differ between runs (counts are exact); the CPU kernel is
// deterministic. When the shared table does not fit (num_bins > ~3000 on an H100) the runs go
// straight to global float64 atomics instead.
#include <algorithm>

#include "cuda_utils.cuh"
#include "launchers.h"

namespace ssir_fast {
namespace {

using namespace bin_reduce;
using cuda::Vec;
using cuda::vec_width;

constexpr int kThreads = 256;
constexpr int kPer = 8;  // contiguous pairs per thread and tile: 32 B of fp32, 16 B of fp16/bf16

struct DevParams {
  BinIndexer bin_of;
  double floor, log_floor;  // log_floor = log(double(acc_t(floor))), as the CPU kernel
  int num_bins;
};

// Register accumulator of one run of pairs in the same bin.
struct Run {
  double s[kNumSums];      // in kSumCols order: |e|, e^2, log|e|, absrel, log10
  unsigned c[kNumCounts];  // in kCountCols order: n, floored, d1, d2, d3, out of range, (unused)
  __device__ __forceinline__ void clear() {
#pragma unroll
    for (int j = 0; j < kNumSums; ++j) s[j] = 0.0;
#pragma unroll
    for (int j = 0; j < kNumCounts; ++j) c[j] = 0u;
  }
};

// Table column of sum j / count j (compile-time after unrolling).
__device__ __forceinline__ int sum_col(int j) {
  return j == 0 ? SUM_ABS : j == 1 ? SUM_SQ : j == 2 ? SUM_LOG_ABS : j == 3 ? SUM_ABSREL : SUM_LOG10;
}
__device__ __forceinline__ int count_col(int j) {
  return j == 0 ? COUNT : j == 1 ? N_FLOORED : j == 2 ? N_DELTA1 : j == 3 ? N_DELTA2
       : j == 4 ? N_DELTA3 : j == 5 ? N_OUT_OF_RANGE : N_NONFINITE;
}

__device__ __forceinline__ bool finite(float v) {
  return (__float_as_uint(v) & 0x7f800000u) != 0x7f800000u;  // immune to fast-math folding
}
__device__ __forceinline__ bool finite(double v) {
  return (__double_as_longlong(v) & 0x7ff0000000000000ll) != 0x7ff0000000000000ll;
}
// Without --use_fast_math (setup.py) logf is the accurate libdevice function (<= 1 ulp).
__device__ __forceinline__ float log_(float v) { return ::logf(v); }
__device__ __forceinline__ double log_(double v) { return ::log(v); }

// Where a block's partial table lives: shared memory (float64 sums + uint32 counts) or, when it
// does not fit, the global float64 output itself.
template <bool kShared>
struct Sink {
  double* sums;       // kShared: [B, kNumSums] shared; else the global [B, kCols] table
  unsigned* counts;   // kShared: [B, kNumCounts] shared; unused otherwise

  __device__ __forceinline__ void add(int b, const Run& r) const {
#pragma unroll
    for (int j = 0; j < kNumSums; ++j) {
      const double v = r.s[j];
      if (kShared) atomicAdd(sums + b * kNumSums + j, v);
      else atomicAdd(sums + b * kCols + sum_col(j), v);
    }
#pragma unroll
    for (int j = 0; j < kNumCounts - 1; ++j) {
      if (r.c[j] == 0u) continue;
      if (kShared) atomicAdd(counts + b * kNumCounts + j, r.c[j]);
      else atomicAdd(sums + b * kCols + count_col(j), static_cast<double>(r.c[j]));
    }
  }
  __device__ __forceinline__ void add_nonfinite(int b) const {
    if (kShared) atomicAdd(counts + b * kNumCounts + (kNumCounts - 1), 1u);
    else atomicAdd(sums + b * kCols + N_NONFINITE, 1.0);
  }
};

__device__ __forceinline__ int bin_of(double y, const DevParams& P, bool& oor) {
  return static_cast<int>(P.bin_of(y, oor));  // the CPU kernel's code: the same bins
}

// Thread mapping: a grid-stride loop over tiles of kThreads * kPer pairs; in a tile, thread t
// owns the kPer contiguous pairs [t * kPer, (t + 1) * kPer), read with 16-byte vector loads when
// the pointers are aligned (a scalar, bounds-checked path otherwise and for the last tile).
// A thread adds its pairs to a register run while they stay in one bin (depth maps: neighbouring
// pixels). At the end of the tile the warp checks with __match_any_sync whether all its lanes
// hold the same bin (typical for depth maps, where each atomic would otherwise be a 32-way
// conflict): then the runs are summed with shuffles and lane 0 adds once; otherwise every lane
// adds its own run. Masked-out lanes join the warp's bin with an empty run.
template <typename T, bool kMask, bool kShared>
__global__ void __launch_bounds__(kThreads)
bin_reduce_kernel(const T* __restrict__ pred, const T* __restrict__ target,
                  const bool* __restrict__ mask, int64_t n, DevParams P, double* __restrict__ out,
                  bool vec) {
  using acc_t = typename cuda::AccType<T>::type;
  constexpr int kVec = vec_width<T>();
  static_assert(kPer % kVec == 0 || kVec > kPer, "kPer must be a multiple of the vector width");
  extern __shared__ __align__(16) unsigned char smem_raw[];
  Sink<kShared> sink;
  if (kShared) {
    sink.sums = reinterpret_cast<double*>(smem_raw);
    sink.counts = reinterpret_cast<unsigned*>(sink.sums + P.num_bins * kNumSums);
    for (int i = threadIdx.x; i < P.num_bins * kNumSums; i += blockDim.x) sink.sums[i] = 0.0;
    for (int i = threadIdx.x; i < P.num_bins * kNumCounts; i += blockDim.x) sink.counts[i] = 0u;
    __syncthreads();
  } else {
    sink.sums = out;
    sink.counts = nullptr;
  }
  const acc_t fl = static_cast<acc_t>(P.floor);
  const acc_t inv_ln10 = static_cast<acc_t>(0.43429448190325182765);
  const unsigned lane = threadIdx.x & 31u;
  const int64_t tile = static_cast<int64_t>(blockDim.x) * kPer;

  for (int64_t base = static_cast<int64_t>(blockIdx.x) * tile; base < n;
       base += static_cast<int64_t>(gridDim.x) * tile) {
    const int64_t start = base + static_cast<int64_t>(threadIdx.x) * kPer;
    T pv[kPer], yv[kPer];
    bool mv[kPer];
    int valid = 0;  // pairs of this thread inside [0, n)
    if (vec && start + kPer <= n) {
      constexpr int kLoads = kPer / kVec;
#pragma unroll
      for (int l = 0; l < kLoads; ++l) {
        const Vec<T, kVec> a = *reinterpret_cast<const Vec<T, kVec>*>(pred + start + l * kVec);
        const Vec<T, kVec> b = *reinterpret_cast<const Vec<T, kVec>*>(target + start + l * kVec);
#pragma unroll
        for (int k = 0; k < kVec; ++k) {
          pv[l * kVec + k] = a.v[k];
          yv[l * kVec + k] = b.v[k];
        }
      }
      if (kMask) {
        const Vec<bool, kPer> m = *reinterpret_cast<const Vec<bool, kPer>*>(mask + start);
#pragma unroll
        for (int k = 0; k < kPer; ++k) mv[k] = m.v[k];
      }
      valid = kPer;
    } else {
      valid = start < n ? static_cast<int>(min(static_cast<int64_t>(kPer), n - start)) : 0;
#pragma unroll
      for (int k = 0; k < kPer; ++k) {
        const bool in = k < valid;
        pv[k] = in ? pred[start + k] : T(0);
        yv[k] = in ? target[start + k] : T(0);
        mv[k] = in && (!kMask || mask[start + k]);
      }
    }

    Run run;
    run.clear();
    int cur = -1;
#pragma unroll
    for (int k = 0; k < kPer; ++k) {
      if (k >= valid || (kMask && !mv[k])) continue;
      const acc_t p = static_cast<acc_t>(pv[k]);
      const acc_t y = static_cast<acc_t>(yv[k]);
      bool oor = false;
      if (!finite(p) || !finite(y)) {
        sink.add_nonfinite(finite(y) ? bin_of(static_cast<double>(y), P, oor) : 0);
        continue;
      }
      const int b = bin_of(static_cast<double>(y), P, oor);
      if (b != cur) {
        if (cur >= 0) sink.add(cur, run);
        run.clear();
        cur = b;
      }
      const acc_t e = p - y;
      const acc_t a = fabs(e);
      const bool floored = a < fl;
      const acc_t pc = fmax(p, fl), yc = fmax(y, fl);
      // max(p/y, y/p) < t  <=>  p < t * y and y < t * p: the same products as the CPU kernel, so
      // both count ratios that sit exactly on 1.25^k (common in fp16/bf16) the same way.
      const acc_t iy = acc_t(1) / yc;
      const acc_t q = pc * iy;
      run.s[0] += static_cast<double>(a);
      run.s[1] += static_cast<double>(e) * static_cast<double>(e);
      run.s[2] += floored ? P.log_floor : ::log(static_cast<double>(a));  // fp64: see common.h
      run.s[3] += static_cast<double>(a * iy);
      run.s[4] += static_cast<double>(fabs(log_(q)) * inv_ln10);
      run.c[0] += 1u;
      run.c[1] += floored;
      run.c[2] += (pc < acc_t(1.25) * yc) & (yc < acc_t(1.25) * pc);
      run.c[3] += (pc < acc_t(1.5625) * yc) & (yc < acc_t(1.5625) * pc);
      run.c[4] += (pc < acc_t(1.953125) * yc) & (yc < acc_t(1.953125) * pc);
      run.c[5] += oor;
    }

    // Warp-aggregated flush of the runs (all 32 lanes reach this point: the loop bound is
    // uniform over the block).
    const unsigned has = __ballot_sync(0xffffffffu, cur >= 0);
    if (has == 0u) continue;
    const int leader_bin = __shfl_sync(0xffffffffu, cur, __ffs(has) - 1);
    const int key = cur >= 0 ? cur : leader_bin;
    if (__match_any_sync(0xffffffffu, key) == 0xffffffffu) {
      Run w = run;
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) {
#pragma unroll
        for (int j = 0; j < kNumSums; ++j) w.s[j] += __shfl_down_sync(0xffffffffu, w.s[j], off);
#pragma unroll
        for (int j = 0; j < kNumCounts - 1; ++j) w.c[j] += __shfl_down_sync(0xffffffffu, w.c[j], off);
      }
      if (lane == 0) sink.add(key, w);
    } else if (cur >= 0) {
      sink.add(cur, run);
    }
  }

  if (kShared) {
    __syncthreads();
    // One global atomic per non-empty bin and column of this block's partial table.
    for (int b = threadIdx.x; b < P.num_bins; b += blockDim.x) {
      const unsigned* c = sink.counts + b * kNumCounts;
      if (c[0] == 0u && c[kNumCounts - 1] == 0u) continue;
#pragma unroll
      for (int j = 0; j < kNumSums; ++j) {
        atomicAdd(out + b * kCols + sum_col(j), sink.sums[b * kNumSums + j]);
      }
#pragma unroll
      for (int j = 0; j < kNumCounts; ++j) {
        if (c[j] != 0u) atomicAdd(out + b * kCols + count_col(j), static_cast<double>(c[j]));
      }
    }
  }
}

template <typename T>
void launch(const void* pred, const void* target, const bool* mp, int64_t n, const Params& P,
            double* op, int device, cudaStream_t stream) {
  using acc_t = typename cuda::AccType<T>::type;
  // Table offsets b * kCols are int in the kernel.
  cuda::check_limit(P.num_bins < (int64_t(1) << 27), "bin_reduce (CUDA): num_bins must be < 2^27");
  const DevParams dp{BinIndexer::make(P), P.floor,
                     ::log(static_cast<double>(static_cast<acc_t>(P.floor))),
                     static_cast<int>(P.num_bins)};
  const T* pp = static_cast<const T*>(pred);
  const T* tp = static_cast<const T*>(target);
  const auto addr = [](const void* p) { return reinterpret_cast<uintptr_t>(p); };
  // Vector loads need 16-byte aligned pred/target and an 8-byte aligned mask (each thread's
  // kPer pairs start at a multiple of kPer elements).
  const bool vec = addr(pp) % 16 == 0 && addr(tp) % 16 == 0 && (mp == nullptr || addr(mp) % 8 == 0) &&
                   (kPer * sizeof(T)) % 16 == 0;

  int sm_count = 0, smem_optin = 0;
  cuda::check(cudaDeviceGetAttribute(&sm_count, cudaDevAttrMultiProcessorCount, device), "bin_reduce");
  cuda::check(cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device),
              "bin_reduce");
  const int64_t tiles = (n + int64_t(kThreads) * kPer - 1) / (int64_t(kThreads) * kPer);
  const size_t smem = static_cast<size_t>(P.num_bins) * (kNumSums * sizeof(double) +
                                                         kNumCounts * sizeof(unsigned));
  const bool shared = smem <= static_cast<size_t>(smem_optin);

  // As many blocks as fit on the GPU at once (occupancy for this table size), so that every SM
  // keeps enough loads in flight; each block then strides over the tiles, and its shared table
  // is flushed once at the end. uint32 shared counts cannot overflow: a block sees at most
  // tiles / blocks * kThreads * kPer pairs, checked below.
#define SSIR_BR_LAUNCH(MASK, SHARED)                                                            \
  do {                                                                                         \
    auto kernel = bin_reduce_kernel<T, MASK, SHARED>;                                          \
    const size_t bytes = SHARED ? smem : 0;                                                    \
    if (bytes > 48 * 1024) {                                                                   \
      cuda::check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,    \
                                       static_cast<int>(bytes)), "bin_reduce");                \
    }                                                                                          \
    int per_sm = 0;                                                                            \
    cuda::check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads,       \
                                                              bytes), "bin_reduce");           \
    const int64_t resident = int64_t(sm_count) * std::max(per_sm, 1);                         \
    const int64_t blocks = std::max<int64_t>(1, std::min(tiles, resident));                   \
    cuda::check_limit((tiles + blocks - 1) / blocks * kThreads * kPer < (int64_t(1) << 32),    \
                      "bin_reduce (CUDA): input too large for uint32 block counts");          \
    kernel<<<static_cast<unsigned>(blocks), kThreads, bytes, stream>>>(pp, tp, mp, n, dp, op, vec); \
  } while (0)
  if (mp != nullptr) {
    if (shared) SSIR_BR_LAUNCH(true, true); else SSIR_BR_LAUNCH(true, false);
  } else {
    if (shared) SSIR_BR_LAUNCH(false, true); else SSIR_BR_LAUNCH(false, false);
  }
#undef SSIR_BR_LAUNCH
  cuda::check_launch("bin_reduce");
}

}  // namespace

namespace cuda {

void bin_reduce_launch(const void* pred, const void* target, const bool* mask, int64_t n,
                       DType dtype, const bin_reduce::Params& params, double* table, int device,
                       void* stream) {
  SSIR_CUDA_DISPATCH(dtype, [&] {
    launch<scalar_t>(pred, target, mask, n, params, table, device,
                     static_cast<cudaStream_t>(stream));
  });
}

}  // namespace cuda
}  // namespace ssir_fast
