// Kernel launchers of the CUDA ops, defined in the .cu files and called by the host entry points
// in cuda_ops.cpp. A launcher only launches: its arguments are already checked, contiguous and
// on the current device (the entry point holds a device guard), and its outputs are allocated.
// The interface is plain pointers and sizes, so the .cu files need neither ATen nor the stable
// tensor headers; user errors are raised by the entry points. A launcher throws
// std::runtime_error for a CUDA error or a size beyond its launch limits.
#pragma once
#include <cstdint>

#include "bin_reduce_common.h"
#include "bin_reduce_nd_common.h"
#include "perturb_common.h"

namespace ssir_fast {
namespace cuda {

// The floating dtypes of the kernels (the entry points map torch's ScalarType to these).
enum class DType { kFloat, kHalf, kBFloat16, kDouble };

// perturb: x, g, out [N, L] of `dtype`; eps_rows float64 [N] or nullptr (perturb_common.h);
// scratch holds perturb_scratch(N, L) float64 chunk norms; none for short rows.
int64_t perturb_scratch(int64_t N, int64_t L);
void perturb_launch(const void* x, const void* g, void* out, int64_t N, int64_t L, DType dtype,
                    double epsilon, const double* eps_rows, const ClipBounds& bounds,
                    void* scratch, void* stream);

// bin_reduce: n flat pred/target pairs (and mask, or nullptr) into the zeroed [B, 12] float64
// table.
void bin_reduce_launch(const void* pred, const void* target, const bool* mask, int64_t n,
                       DType dtype, const bin_reduce::Params& params, double* table, int device,
                       void* stream);

// bin_reduce_nd: `rows` rows of D = params.dims pred/target values (and a mask per row, or
// nullptr) into the zeroed [prod(num_bins), 8 + D] float64 table.
void bin_reduce_nd_launch(const void* pred, const void* target, const bool* mask, int64_t rows,
                          DType dtype, const bin_reduce_nd::Params& params, double* table,
                          int device, void* stream);

// bin_feature_stats, step 0: key[n] = bin_index[n] or B when outside [0, B); count[b] (zeroed
// on entry) = samples in bin b; rows/segs [B + 1]: the inputs of the scans giving bin_start and
// seg_start (rows[b + 1] = count[b], segs[b + 1] = ceil(count[b] / kStatsSegRows), [0] = 0).
void bin_feature_stats_prep_launch(const int64_t* bin_index, int64_t N, int64_t B, int64_t* key,
                                   int64_t* count, int64_t* rows, int64_t* segs, void* stream);

// bin_feature_stats after the bins were sorted (cuda_ops.cpp): `order` [N] lists the samples by
// bin, bin b's run starts at bin_start[b] and has count[b] rows; seg_start [B + 1] is the
// exclusive scan of ceil(count / seg_rows). pmean/pm2 are scratch of max_segs * C doubles.
// Fills mean and var [B, C] (float32, or float64 when stats_double).
constexpr int64_t kStatsSegRows = 128;
void bin_feature_stats_launch(const void* features, DType dtype, int64_t N, int64_t C, int64_t B,
                              const int64_t* order, const int64_t* bin_start, const int64_t* count,
                              const int64_t* seg_start, int64_t max_segs, double* pmean,
                              double* pm2, bool unbiased, bool stats_double, void* mean, void* var,
                              void* stream);

// fds_calibrate: scale/shift [B, C] from the statistics (stat_double: float64 statistics, else
// float32; acc_double: float64 scale/shift, else float32), then
// out[n] = features[n] * scale[b] + shift[b] (b = bin_index[n] in [0, B)), else features[n].
void fds_coefficients_launch(const void* mean, const void* var, const void* smean,
                             const void* svar, bool stat_double, int64_t B, int64_t C, double lo,
                             double hi, bool acc_double, void* scale, void* shift, void* stream);
void fds_calibrate_launch(const void* features, DType dtype, int64_t N, int64_t C,
                          const int64_t* bin_index, const void* scale, const void* shift,
                          int64_t B, void* out, void* stream);

}  // namespace cuda
}  // namespace ssir_fast

// CUDA runtime version the kernels were compiled with (cuda_version.cu).
int ssir_fast_cuda_runtime_version_compiled();
