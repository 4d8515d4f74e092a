// C++ entry points of the ssir_fast CPU kernels, for C++ users and the ctest test (the CUDA entry
// points are registered by csrc/cuda/cuda_ops.cpp). Python users call the ops through
// torch.ops.ssir_fast.* (wrappers in ssir_fast/ops/<op>.py).
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#ifdef SSIR_FAST_WITH_CUDA
int ssir_fast_cuda_runtime_version_compiled();  // csrc/cuda/cuda_version.cu
#endif

namespace ssir_fast {

int64_t cuda_version();

// ---- perturb: clip(x + eps_i * g / ||g||_2, clip_min, clip_max), eps_i = epsilon [* epsilon_rows[i]]
at::Tensor perturb_cpu(const at::Tensor& x, const at::Tensor& g, double epsilon,
                       const std::optional<at::Tensor>& clip_min,
                       const std::optional<at::Tensor>& clip_max,
                       const std::optional<at::Tensor>& epsilon_rows = std::nullopt);
void perturb_inplace_cpu(at::Tensor& x, const at::Tensor& g, double epsilon,
                         const std::optional<at::Tensor>& clip_min,
                         const std::optional<at::Tensor>& clip_max,
                         const std::optional<at::Tensor>& epsilon_rows = std::nullopt);
void perturb_out_cpu(const at::Tensor& x, const at::Tensor& g, double epsilon,
                     const std::optional<at::Tensor>& clip_min,
                     const std::optional<at::Tensor>& clip_max, at::Tensor& out,
                     const std::optional<at::Tensor>& epsilon_rows = std::nullopt);

// ---- FDS: per-bin feature statistics and calibration (csrc/fds_common.h) -------------------
std::tuple<at::Tensor, at::Tensor, at::Tensor> bin_feature_stats_cpu(const at::Tensor& features,
                                                                     const at::Tensor& bin_index,
                                                                     int64_t num_bins,
                                                                     bool unbiased);
at::Tensor fds_calibrate_cpu(const at::Tensor& features, const at::Tensor& bin_index,
                             const at::Tensor& mean, const at::Tensor& var,
                             const at::Tensor& smoothed_mean, const at::Tensor& smoothed_var,
                             double lo, double hi);

// ---- bin_reduce: per-bin DIR metric sums, [num_bins, 12] float64 ----------------------------
at::Tensor bin_reduce_cpu(const at::Tensor& pred, const at::Tensor& target, double y_min,
                          double bin_width, int64_t num_bins, const std::optional<at::Tensor>& mask,
                          double floor, bool allow_nonfinite);

}  // namespace ssir_fast
