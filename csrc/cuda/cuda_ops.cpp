// Host entry points of the CUDA ops and their registration for the CUDA dispatch key.
//
// Each entry point checks its arguments with the same functions as the CPU kernels (the
// *_common.h headers), makes inputs contiguous, allocates outputs under a CUDAGuard and calls a
// launcher from the .cu files (launchers.h). This file is compiled by the C++ compiler, not by
// nvcc: every user error (bad argument, NaN input to bin_reduce) is thrown from here, so the
// .cu files hold kernels and launch code only.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "bin_reduce_common.h"
#include "fds_common.h"
#include "launchers.h"
#include "perturb_common.h"

namespace ssir_fast {
namespace {

at::Tensor perturb_cuda(const at::Tensor& x, const at::Tensor& g, double epsilon,
                        const std::optional<at::Tensor>& clip_min,
                        const std::optional<at::Tensor>& clip_max,
                        const std::optional<at::Tensor>& epsilon_rows) {
  const c10::cuda::CUDAGuard guard(x.device());
  return perturb_functional<cuda::perturb_launch>(x, g, epsilon, clip_min, clip_max, epsilon_rows);
}

void perturb_inplace_cuda(at::Tensor& x, const at::Tensor& g, double epsilon,
                          const std::optional<at::Tensor>& clip_min,
                          const std::optional<at::Tensor>& clip_max,
                          const std::optional<at::Tensor>& epsilon_rows) {
  const c10::cuda::CUDAGuard guard(x.device());
  perturb_inplace_impl<cuda::perturb_launch>(x, g, epsilon, clip_min, clip_max, epsilon_rows);
}

void perturb_out_cuda(const at::Tensor& x, const at::Tensor& g, double epsilon,
                      const std::optional<at::Tensor>& clip_min,
                      const std::optional<at::Tensor>& clip_max, at::Tensor& out,
                      const std::optional<at::Tensor>& epsilon_rows) {
  const c10::cuda::CUDAGuard guard(x.device());
  perturb_out_impl<cuda::perturb_launch>(x, g, epsilon, clip_min, clip_max, epsilon_rows, out);
}

at::Tensor bin_reduce_cuda(const at::Tensor& pred, const at::Tensor& target, double y_min,
                           double bin_width, int64_t num_bins, const std::optional<at::Tensor>& mask,
                           double floor, bool allow_nonfinite) {
  bin_reduce::check_args(pred, target, y_min, bin_width, num_bins, mask, floor);
  const c10::cuda::CUDAGuard guard(pred.device());
  at::Tensor pc = pred.contiguous(), tc = target.contiguous();
  at::Tensor mc = (mask.has_value() && mask->defined()) ? mask->contiguous() : at::Tensor();
  at::Tensor table = at::zeros({num_bins, bin_reduce::kCols}, pred.options().dtype(at::kDouble));
  if (pc.numel() > 0) {
    cuda::bin_reduce_launch(pc, tc, mc, bin_reduce::Params{y_min, bin_width, num_bins, floor},
                            table);
  }
  bin_reduce::check_nonfinite(table, allow_nonfinite);
  return table;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bin_feature_stats_cuda(const at::Tensor& features,
                                                                      const at::Tensor& bin_index,
                                                                      int64_t num_bins,
                                                                      bool unbiased) {
  check_stats_args(features, bin_index, num_bins);
  const c10::cuda::CUDAGuard guard(features.device());
  const auto acc = stats_dtype(features);
  at::Tensor f = features.contiguous(), idx = bin_index.contiguous();
  at::Tensor count = at::zeros({num_bins}, idx.options());
  at::Tensor mean = at::zeros({num_bins, f.size(1)}, f.options().dtype(acc));
  at::Tensor var = at::zeros({num_bins, f.size(1)}, f.options().dtype(acc));
  cuda::bin_feature_stats_launch(f, idx, num_bins, unbiased, count, mean, var);
  return {count, mean, var};
}

at::Tensor fds_calibrate_cuda(const at::Tensor& features, const at::Tensor& bin_index,
                              const at::Tensor& mean, const at::Tensor& var,
                              const at::Tensor& smoothed_mean, const at::Tensor& smoothed_var,
                              double lo, double hi) {
  check_calibrate_args(features, bin_index, mean, var, smoothed_mean, smoothed_var, lo, hi);
  const c10::cuda::CUDAGuard guard(features.device());
  at::Tensor f = features.contiguous(), idx = bin_index.contiguous();
  at::Tensor out = at::empty_like(f, at::MemoryFormat::Contiguous);
  if (f.numel() == 0) return out;
  auto [scale, shift] = calibration_coefficients(f, mean, var, smoothed_mean, smoothed_var, lo, hi);
  cuda::fds_calibrate_launch(f, idx, scale, shift, out);
  return out;
}

}  // namespace
}  // namespace ssir_fast

TORCH_LIBRARY_IMPL(ssir_fast, CUDA, m) {
  m.impl("perturb", &ssir_fast::perturb_cuda);
  m.impl("perturb_", &ssir_fast::perturb_inplace_cuda);
  m.impl("perturb_out", &ssir_fast::perturb_out_cuda);
  m.impl("bin_reduce", &ssir_fast::bin_reduce_cuda);
  m.impl("bin_feature_stats", &ssir_fast::bin_feature_stats_cuda);
  m.impl("fds_calibrate", &ssir_fast::fds_calibrate_cuda);
}
