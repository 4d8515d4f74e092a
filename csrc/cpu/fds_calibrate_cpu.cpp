// CPU kernel of ssir_fast::fds_calibrate:  z'_n = (z_n - mu_b) * s_b + mu~_b,  b = bin_index[n],
// s_b = sqrt(clamp(var~_b / var_b, lo, hi)) (see fds_common.h).
//
// The per-bin affine coefficients (scale, shift) are formed once ([B, C], small); the main pass
// reads each feature row once and writes it once: out = z * scale[b] + shift[b]. Rows are
// distributed over threads; the inner loop over C is branch-free and vectorises. Samples whose
// bin is outside [0, B) are copied unchanged.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "fds_common.h"
#include "ops.h"

namespace ssir_fast {
namespace {

template <typename scalar_t, typename acc_t>
void calibrate_rows(const at::Tensor& f, const int64_t* idx, int64_t B, const acc_t* scale,
                    const acc_t* shift, at::Tensor& out) {
  const int64_t N = f.size(0), C = f.size(1);
  const scalar_t* fp = f.const_data_ptr<scalar_t>();
  scalar_t* op = out.mutable_data_ptr<scalar_t>();
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(C, 1));
  at::parallel_for(0, N, grain, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const int64_t b = idx[n];
      const scalar_t* z = fp + n * C;
      scalar_t* o = op + n * C;
      if (b < 0 || b >= B) {
        std::copy(z, z + C, o);
        continue;
      }
      const acc_t* s = scale + b * C;
      const acc_t* t = shift + b * C;
      for (int64_t c = 0; c < C; ++c)
        o[c] = static_cast<scalar_t>(static_cast<acc_t>(z[c]) * s[c] + t[c]);
    }
  });
}

}  // namespace

at::Tensor fds_calibrate_cpu(const at::Tensor& features, const at::Tensor& bin_index,
                             const at::Tensor& mean, const at::Tensor& var,
                             const at::Tensor& smoothed_mean, const at::Tensor& smoothed_var,
                             double lo, double hi) {
  check_calibrate_args(features, bin_index, mean, var, smoothed_mean, smoothed_var, lo, hi);
  at::Tensor f = features.contiguous();
  at::Tensor idx = bin_index.contiguous();
  at::Tensor out = at::empty_like(f, at::MemoryFormat::Contiguous);
  if (f.numel() == 0) return out;
  auto [scale, shift] = calibration_coefficients(f, mean, var, smoothed_mean, smoothed_var, lo, hi);
  const int64_t B = mean.size(0);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, f.scalar_type(), "fds_calibrate_cpu", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    calibrate_rows<scalar_t, acc_t>(f, idx.const_data_ptr<int64_t>(), B,
                                    scale.const_data_ptr<acc_t>(), shift.const_data_ptr<acc_t>(),
                                    out);
  });
  return out;
}

}  // namespace ssir_fast

TORCH_LIBRARY_IMPL(ssir_fast, CPU, m) {
  m.impl("fds_calibrate", &ssir_fast::fds_calibrate_cpu);
}
