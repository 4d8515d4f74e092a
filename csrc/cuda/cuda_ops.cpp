// Host entry points of the CUDA ops and their registration for the CUDA dispatch key, on the
// LibTorch stable ABI (this file is compiled by the C++ compiler, not by nvcc).
//
// Each entry point first checks its arguments with the same functions as the CPU kernels (the
// *_common.h headers; a user error is thrown before anything touches a device), then holds a
// device guard for the input's device, makes inputs contiguous, allocates outputs and scratch
// through torch (its caching allocator) and calls a launcher from the .cu files (launchers.h) on
// torch's current CUDA stream, read through the stable shim.
#include <torch/csrc/inductor/aoti_torch/c/shim.h>
#include <torch/csrc/stable/accelerator.h>

#include <array>
#include <vector>

#include "bin_reduce_common.h"
#include "bin_reduce_nd_common.h"
#include "fds_common.h"
#include "launchers.h"
#include "perturb_common.h"
#include "stable_common.h"

namespace ssir_fast {
namespace {

using torch::stable::accelerator::DeviceGuard;

void* current_stream(const Tensor& t) {
  void* stream = nullptr;
  TORCH_ERROR_CODE_CHECK(aoti_torch_get_current_cuda_stream(t.get_device_index(), &stream));
  return stream;
}

cuda::DType dtype_of(ScalarType t) {
  switch (t) {
    case ScalarType::Float: return cuda::DType::kFloat;
    case ScalarType::Half: return cuda::DType::kHalf;
    case ScalarType::BFloat16: return cuda::DType::kBFloat16;
    default: return cuda::DType::kDouble;  // the checks admitted only these four
  }
}

// A tensor on a CUDA device: CPU inputs with a CUDA partner fail the same-device checks first.
void check_cuda(const Tensor& t, const char* op, const char* name) {
  SSIR_CHECK(t.is_cuda(), op, ": ", name, " must be a CUDA tensor here, got one on ", Where{t});
}

void perturb_kernel_cuda(const PerturbArgs& a) {
  const int64_t n = cuda::perturb_scratch(a.N, a.L);
  Tensor scratch;
  if (n > 0) {
    scratch = torch::stable::empty({n}, ScalarType::Double, std::nullopt,
                                   torch::stable::Device(torch::headeronly::DeviceType::CUDA,
                                                         a.device_index));
  }
  void* stream = nullptr;
  TORCH_ERROR_CODE_CHECK(aoti_torch_get_current_cuda_stream(a.device_index, &stream));
  cuda::perturb_launch(a.x, a.g, a.out, a.N, a.L, dtype_of(a.dtype), a.epsilon, a.eps_rows,
                       a.bounds, n > 0 ? scratch.mutable_data_ptr() : nullptr, stream);
}

// perturb: the shared checks (perturb_common.h) run before the guard, so x on the CPU with g on
// CUDA is the "same device" error, not a guard error.
Tensor perturb_cuda(const Tensor& x, const Tensor& g, double epsilon, OptTensor clip_min,
                    OptTensor clip_max, OptTensor epsilon_rows) {
  check_perturb_args(x, g, epsilon);
  check_cuda(x, "perturb", "x");
  const DeviceGuard guard(x.get_device_index());
  return perturb_functional<perturb_kernel_cuda>(x, g, epsilon, clip_min, clip_max, epsilon_rows);
}

void perturb_inplace_cuda(Tensor x, const Tensor& g, double epsilon, OptTensor clip_min,
                          OptTensor clip_max, OptTensor epsilon_rows) {
  check_perturb_args(x, g, epsilon);
  check_cuda(x, "perturb", "x");
  const DeviceGuard guard(x.get_device_index());
  perturb_inplace_impl<perturb_kernel_cuda>(x, g, epsilon, clip_min, clip_max, epsilon_rows);
}

void perturb_out_cuda(const Tensor& x, const Tensor& g, double epsilon, OptTensor clip_min,
                      OptTensor clip_max, Tensor out, OptTensor epsilon_rows) {
  check_perturb_args(x, g, epsilon);
  check_cuda(x, "perturb", "x");
  const DeviceGuard guard(x.get_device_index());
  perturb_out_impl<perturb_kernel_cuda>(x, g, epsilon, clip_min, clip_max, epsilon_rows, out);
}

Tensor bin_reduce_cuda(const Tensor& pred, const Tensor& target, double y_min, double bin_width,
                       int64_t num_bins, OptTensor mask, double floor, bool allow_nonfinite) {
  bin_reduce::check_args(pred, target, y_min, bin_width, num_bins, mask, floor);
  check_cuda(pred, "bin_reduce", "pred");
  const DeviceGuard guard(pred.get_device_index());
  Tensor pc = contig(pred), tc = contig(target);
  Tensor mc = (mask.has_value() && mask->defined()) ? contig(*mask) : Tensor();
  Tensor table = zeros(pred, {num_bins, bin_reduce::kCols}, ScalarType::Double);
  if (pc.numel() > 0) {
    cuda::bin_reduce_launch(pc.const_data_ptr(), tc.const_data_ptr(),
                            mc.defined() ? mc.const_data_ptr<bool>() : nullptr, pc.numel(),
                            dtype_of(pc.scalar_type()),
                            bin_reduce::Params{y_min, bin_width, num_bins, floor},
                            table.mutable_data_ptr<double>(), pred.get_device_index(),
                            current_stream(pred));
  }
  bin_reduce::check_nonfinite(table, allow_nonfinite);
  return table;
}

Tensor bin_reduce_nd_cuda(const Tensor& pred, const Tensor& target, std::vector<double> y_min,
                          std::vector<double> bin_width, std::vector<int64_t> num_bins,
                          OptTensor mask, double floor, bool allow_nonfinite) {
  const int64_t rows = bin_reduce_nd::check_args(pred, target, y_min, bin_width, num_bins, mask,
                                                 floor);
  check_cuda(pred, "bin_reduce_nd", "pred");
  const DeviceGuard guard(pred.get_device_index());
  const bin_reduce_nd::Params P = bin_reduce_nd::make_params(y_min, bin_width, num_bins, floor);
  Tensor pc = contig(pred), tc = contig(target);
  Tensor mc = (mask.has_value() && mask->defined()) ? contig(*mask) : Tensor();
  Tensor table = zeros(pred, {P.num_flat, static_cast<int64_t>(P.cols())}, ScalarType::Double);
  if (rows > 0) {
    cuda::bin_reduce_nd_launch(pc.const_data_ptr(), tc.const_data_ptr(),
                               mc.defined() ? mc.const_data_ptr<bool>() : nullptr, rows,
                               dtype_of(pc.scalar_type()), P, table.mutable_data_ptr<double>(),
                               pred.get_device_index(), current_stream(pred));
  }
  bin_reduce_nd::check_nonfinite(table, allow_nonfinite);
  return table;
}

// Inclusive cumulative sum of an int64 vector through the dispatcher (aten::cumsum).
Tensor cumsum(const Tensor& t) {
  std::array<StableIValue, 3> stack{torch::stable::detail::from(t),
                                    torch::stable::detail::from(int64_t(0)),
                                    torch::stable::detail::from(std::optional<ScalarType>())};
  TORCH_ERROR_CODE_CHECK(torch_call_dispatcher("aten::cumsum", "", stack.data(), TORCH_ABI_VERSION));
  return torch::stable::detail::to<Tensor>(stack[0]);
}

// Indices that sort `key` stably (aten::sort.stable).
Tensor stable_argsort(const Tensor& key) {
  std::array<StableIValue, 4> stack{torch::stable::detail::from(key),
                                    torch::stable::detail::from(std::optional<bool>(true)),
                                    torch::stable::detail::from(int64_t(0)),
                                    torch::stable::detail::from(false)};
  TORCH_ERROR_CODE_CHECK(torch_call_dispatcher("aten::sort", "stable", stack.data(), TORCH_ABI_VERSION));
  (void)torch::stable::detail::to<Tensor>(stack[0]);  // the sorted keys: released here
  return torch::stable::detail::to<Tensor>(stack[1]);
}

std::tuple<Tensor, Tensor, Tensor> bin_feature_stats_cuda(const Tensor& features,
                                                          const Tensor& bin_index,
                                                          int64_t num_bins, bool unbiased) {
  check_stats_args(features, bin_index, num_bins);
  check_cuda(features, "bin_feature_stats", "features");
  const DeviceGuard guard(features.get_device_index());
  const ScalarType acc = stats_dtype(features);
  Tensor f = contig(features), idx = contig(bin_index);
  const int64_t N = f.size(0), C = f.size(1), B = num_bins;
  Tensor count = zeros(idx, {B}, ScalarType::Long);
  Tensor mean = zeros(f, {B, C}, acc);
  Tensor var = zeros(f, {B, C}, acc);
  void* stream = current_stream(f);
  Tensor key = empty(idx, {N}, ScalarType::Long);
  Tensor rows = empty(idx, {B + 1}, ScalarType::Long), segs = empty(idx, {B + 1}, ScalarType::Long);
  cuda::bin_feature_stats_prep_launch(idx.const_data_ptr<int64_t>(), N, B,
                                      key.mutable_data_ptr<int64_t>(),
                                      count.mutable_data_ptr<int64_t>(),
                                      rows.mutable_data_ptr<int64_t>(),
                                      segs.mutable_data_ptr<int64_t>(), stream);
  if (N == 0 || C == 0) return {count, mean, var};
  Tensor order = contig(stable_argsort(key));
  Tensor bin_start = contig(cumsum(rows));  // [b]: rows before bin b
  Tensor seg_start = contig(cumsum(segs));  // [b]: segments before bin b
  // Only a bin holding a sample has a partial segment: scratch grows with min(B, N), not B.
  const int64_t max_segs = (N + cuda::kStatsSegRows - 1) / cuda::kStatsSegRows + std::min(B, N);
  Tensor pmean = empty(f, {max_segs, C}, ScalarType::Double);
  Tensor pm2 = empty(f, {max_segs, C}, ScalarType::Double);
  cuda::bin_feature_stats_launch(f.const_data_ptr(), dtype_of(f.scalar_type()), N, C, B,
                                 order.const_data_ptr<int64_t>(), bin_start.const_data_ptr<int64_t>(),
                                 count.const_data_ptr<int64_t>(), seg_start.const_data_ptr<int64_t>(),
                                 max_segs, pmean.mutable_data_ptr<double>(),
                                 pm2.mutable_data_ptr<double>(), unbiased,
                                 acc == ScalarType::Double, mean.mutable_data_ptr(),
                                 var.mutable_data_ptr(), stream);
  return {count, mean, var};
}

Tensor fds_calibrate_cuda(const Tensor& features, const Tensor& bin_index, const Tensor& mean,
                          const Tensor& var, const Tensor& smoothed_mean,
                          const Tensor& smoothed_var, double lo, double hi) {
  check_calibrate_args(features, bin_index, mean, var, smoothed_mean, smoothed_var, lo, hi);
  check_cuda(features, "fds_calibrate", "features");
  const DeviceGuard guard(features.get_device_index());
  Tensor f = contig(features), idx = contig(bin_index);
  Tensor out = torch::stable::empty_like(f);
  if (f.numel() == 0) return out;
  const int64_t B = mean.size(0), C = mean.size(1);
  const ScalarType acc = stats_dtype(f);
  const Stats st = common_stats(mean, var, smoothed_mean, smoothed_var);
  Tensor scale = empty(f, {B, C}, acc), shift = empty(f, {B, C}, acc);
  void* stream = current_stream(f);
  cuda::fds_coefficients_launch(st.mean.const_data_ptr(), st.var.const_data_ptr(),
                                st.smean.const_data_ptr(), st.svar.const_data_ptr(),
                                st.dtype == ScalarType::Double, B, C, lo, hi,
                                acc == ScalarType::Double, scale.mutable_data_ptr(),
                                shift.mutable_data_ptr(), stream);
  cuda::fds_calibrate_launch(f.const_data_ptr(), dtype_of(f.scalar_type()), f.size(0), C,
                             idx.const_data_ptr<int64_t>(), scale.const_data_ptr(),
                             shift.const_data_ptr(), B, out.mutable_data_ptr(), stream);
  return out;
}

// CUDA version the kernels were compiled with (e.g. 13000); ssir_fast/_extension.py reports it.
int64_t cuda_version() { return static_cast<int64_t>(ssir_fast_cuda_runtime_version_compiled()); }

}  // namespace
}  // namespace ssir_fast

STABLE_TORCH_LIBRARY_FRAGMENT(ssir_fast, m) {
  m.def("cuda_version() -> int");
}

STABLE_TORCH_LIBRARY_IMPL(ssir_fast, CompositeImplicitAutograd, m) {
  m.impl("cuda_version", TORCH_BOX(&ssir_fast::cuda_version));
}

STABLE_TORCH_LIBRARY_IMPL(ssir_fast, CUDA, m) {
  m.impl("perturb", TORCH_BOX(&ssir_fast::perturb_cuda));
  m.impl("perturb_", TORCH_BOX(&ssir_fast::perturb_inplace_cuda));
  m.impl("perturb_out", TORCH_BOX(&ssir_fast::perturb_out_cuda));
  m.impl("bin_reduce", TORCH_BOX(&ssir_fast::bin_reduce_cuda));
  m.impl("bin_reduce_nd", TORCH_BOX(&ssir_fast::bin_reduce_nd_cuda));
  m.impl("bin_feature_stats", TORCH_BOX(&ssir_fast::bin_feature_stats_cuda));
  m.impl("fds_calibrate", TORCH_BOX(&ssir_fast::fds_calibrate_cuda));
}
