// C++ entry points of the ssir_fast CPU kernels (the CUDA ones are registered by
// csrc/cuda/cuda_ops.cpp). Python users call the ops through torch.ops.ssir_fast.* (wrappers in
// ssir_fast/ops/<op>.py). Everything here is on the LibTorch stable ABI (stable_common.h).
#pragma once
#include <tuple>
#include <vector>

#include "stable_common.h"

namespace ssir_fast {

// ---- perturb: clip(x + eps_i * g / ||g||_2, clip_min, clip_max), eps_i = epsilon [* epsilon_rows[i]]
Tensor perturb_cpu(const Tensor& x, const Tensor& g, double epsilon, OptTensor clip_min,
                   OptTensor clip_max, OptTensor epsilon_rows);
void perturb_inplace_cpu(Tensor x, const Tensor& g, double epsilon, OptTensor clip_min,
                         OptTensor clip_max, OptTensor epsilon_rows);
void perturb_out_cpu(const Tensor& x, const Tensor& g, double epsilon, OptTensor clip_min,
                     OptTensor clip_max, Tensor out, OptTensor epsilon_rows);

// ---- FDS: per-bin feature statistics and calibration (csrc/fds_common.h) -------------------
std::tuple<Tensor, Tensor, Tensor> bin_feature_stats_cpu(const Tensor& features,
                                                         const Tensor& bin_index,
                                                         int64_t num_bins, bool unbiased);
Tensor fds_calibrate_cpu(const Tensor& features, const Tensor& bin_index, const Tensor& mean,
                         const Tensor& var, const Tensor& smoothed_mean,
                         const Tensor& smoothed_var, double lo, double hi);

// ---- bin_reduce: per-bin DIR metric sums, [num_bins, 12] float64 ----------------------------
Tensor bin_reduce_cpu(const Tensor& pred, const Tensor& target, double y_min, double bin_width,
                      int64_t num_bins, OptTensor mask, double floor, bool allow_nonfinite);

// ---- bin_reduce_nd: the same for [..., D] targets over a D-dim grid, [prod(num_bins), 8 + D]
Tensor bin_reduce_nd_cpu(const Tensor& pred, const Tensor& target, std::vector<double> y_min,
                         std::vector<double> bin_width, std::vector<int64_t> num_bins,
                         OptTensor mask, double floor, bool allow_nonfinite);

}  // namespace ssir_fast
