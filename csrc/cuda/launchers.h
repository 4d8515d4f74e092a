// Kernel launchers of the CUDA ops, defined in the .cu files and called by the host entry points
// in cuda_ops.cpp. A launcher only launches: its arguments are already checked, contiguous and
// on the current device (the entry point holds the CUDAGuard), and its outputs are allocated.
// User errors are raised by the entry points, in host code compiled by the C++ compiler.
#pragma once
#include <ATen/core/Tensor.h>

#include "bin_reduce_common.h"
#include "perturb_common.h"

namespace ssir_fast {
namespace cuda {

// perturb: x, g, out [N, L]; eps_rows float64 [N] or undefined (perturb_common.h).
void perturb_launch(const at::Tensor& x, const at::Tensor& g, double epsilon,
                    const at::Tensor& eps_rows, const ClipBounds& bounds, at::Tensor& out);

// bin_reduce: flat pred/target (and mask, or undefined) into the zeroed [B, 12] float64 table.
void bin_reduce_launch(const at::Tensor& pred, const at::Tensor& target, const at::Tensor& mask,
                       const bin_reduce::Params& params, at::Tensor& table);

// bin_feature_stats: fills count [B] (int64), mean and var [B, C] (zeroed on entry).
void bin_feature_stats_launch(const at::Tensor& features, const at::Tensor& bin_index,
                              int64_t num_bins, bool unbiased, at::Tensor& count, at::Tensor& mean,
                              at::Tensor& var);

// fds_calibrate: out[n] = features[n] * scale[b] + shift[b] (b = bin_index[n] in [0, B)), else
// features[n]; scale/shift [B, C] in the accumulation dtype.
void fds_calibrate_launch(const at::Tensor& features, const at::Tensor& bin_index,
                          const at::Tensor& scale, const at::Tensor& shift, at::Tensor& out);

}  // namespace cuda
}  // namespace ssir_fast
