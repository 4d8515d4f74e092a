// Every ssir_fast operator schema lives here; backend files only hold STABLE_TORCH_LIBRARY_IMPL
// blocks. The CUDA library (csrc/cuda/) adds `cuda_version` and the CUDA kernels when it loads.
#include "stable_common.h"

STABLE_TORCH_LIBRARY(ssir_fast, m) {
  // x + eps_i * g / ||g||_2 (norm per sample over all non-batch dims), clipped to
  // [clip_min, clip_max]; bounds are float32 tensors of shape [] or [C] for x of shape [N, C, ...].
  // eps_i = epsilon, or epsilon * epsilon_rows[i] when per-sample radii epsilon_rows [N] (float,
  // finite, >= 0, on x's device) are given.
  m.def("perturb(Tensor x, Tensor g, float epsilon, Tensor? clip_min, Tensor? clip_max, "
        "Tensor? epsilon_rows=None) -> Tensor");
  m.def("perturb_(Tensor(a!) x, Tensor g, float epsilon, Tensor? clip_min, Tensor? clip_max, "
        "Tensor? epsilon_rows=None) -> ()");
  m.def("perturb_out(Tensor x, Tensor g, float epsilon, Tensor? clip_min, Tensor? clip_max, "
        "Tensor(a!) out, Tensor? epsilon_rows=None) -> ()");

  // Per-bin DIR metric sums: a [num_bins, 12] float64 table, columns in
  // csrc/bin_reduce_common.h. Targets outside the bin range go to the edge bins (and are counted);
  // mask (bool, pred's shape) selects pairs; NaN/inf pairs raise unless allow_nonfinite.
  m.def("bin_reduce(Tensor pred, Tensor target, float y_min, float bin_width, int num_bins, "
        "Tensor? mask=None, float floor=1e-8, bool allow_nonfinite=False) -> Tensor");
  // The same for vector targets: pred/target [..., D], one bin rule per dimension, the flat
  // row-major bin computed in the kernel; a [prod(num_bins), 8 + D] float64 table, columns in
  // csrc/bin_reduce_nd_common.h; mask (bool) has pred's leading shape (one flag per row).
  m.def("bin_reduce_nd(Tensor pred, Tensor target, float[] y_min, float[] bin_width, "
        "int[] num_bins, Tensor? mask=None, float floor=1e-8, bool allow_nonfinite=False) "
        "-> Tensor");

  // FDS, see csrc/fds_common.h: per-bin count [B] (int64), mean and variance [B, C]
  // (float32, float64 for float64 features) of features [N, C]; indices outside [0, B) ignored.
  m.def("bin_feature_stats(Tensor features, Tensor bin_index, int num_bins, bool unbiased=True) "
        "-> (Tensor, Tensor, Tensor)");
  // z' = (z - mean[b]) * sqrt(clamp(smoothed_var[b] / var[b], lo, hi)) + smoothed_mean[b].
  m.def("fds_calibrate(Tensor features, Tensor bin_index, Tensor mean, Tensor var, "
        "Tensor smoothed_mean, Tensor smoothed_var, float lo, float hi) -> Tensor");
}
