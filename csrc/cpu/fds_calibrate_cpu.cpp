// CPU kernel of ssir_fast::fds_calibrate:  z'_n = (z_n - mu_b) * s_b + mu~_b,  b = bin_index[n],
// s_b = sqrt(clamp(var~_b / var_b, lo, hi)); zero-variance dimensions and bins whose variances
// sum to ~0 are left unchanged, as the official DIR code (see fds_common.h).
//
// The per-bin affine coefficients (scale, shift) are formed once ([B, C], one loop); the main pass
// reads each feature row once and writes it once: out = z * scale[b] + shift[b]. Rows are
// distributed over threads; the inner loop over C is branch-free and vectorises. Samples whose
// bin is outside [0, B) are copied unchanged.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>

#include "fds_common.h"
#include "ops.h"

namespace ssir_fast {
namespace {

// scale = sqrt(clamp(sv / v, lo, hi)), shift = smean - mean * scale, per bin in one plain loop
// over [B, C] (cheaper than the composed ATen ops when N is small); the identity (1, 0) where
// v == 0 or the bin's variances sum to < kFdsMinVarSum.
template <typename acc_t, typename stat_t>
void coefficients(const stat_t* mean, const stat_t* var, const stat_t* smean, const stat_t* svar,
                  int64_t B, int64_t C, double lo, double hi, acc_t* scale, acc_t* shift) {
  const int64_t grain = std::max<int64_t>(1, (1 << 14) / std::max<int64_t>(C, 1));
  at::parallel_for(0, B, grain, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t row = b * C;
      double var_sum = 0;
      for (int64_t c = 0; c < C; ++c) var_sum += static_cast<double>(var[row + c]);
      const bool skip_bin = var_sum < kFdsMinVarSum;
      for (int64_t i = row; i < row + C; ++i) {
        const acc_t v = static_cast<acc_t>(var[i]), sv = static_cast<acc_t>(svar[i]);
        if (skip_bin || v == acc_t(0)) {
          scale[i] = acc_t(1);
          shift[i] = acc_t(0);
          continue;
        }
        const acc_t ratio = std::min(std::max(sv / v, static_cast<acc_t>(lo)), static_cast<acc_t>(hi));
        const acc_t s = std::sqrt(ratio);
        scale[i] = s;
        shift[i] = static_cast<acc_t>(smean[i]) - static_cast<acc_t>(mean[i]) * s;
      }
    }
  });
}

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
  const int64_t B = mean.size(0);
  const auto acc = stats_dtype(f);
  at::Tensor scale = at::empty(mean.sizes(), mean.options().dtype(acc));
  at::Tensor shift = at::empty(mean.sizes(), mean.options().dtype(acc));
  // The four statistics share one dtype (float32 or float64); promote if they do not.
  const bool same = var.scalar_type() == mean.scalar_type() &&
                    smoothed_mean.scalar_type() == mean.scalar_type() &&
                    smoothed_var.scalar_type() == mean.scalar_type();
  const auto st = same ? mean.scalar_type() : at::kDouble;
  at::Tensor m = mean.to(st).contiguous(), v = var.to(st).contiguous();
  at::Tensor sm = smoothed_mean.to(st).contiguous(), sv = smoothed_var.to(st).contiguous();
  AT_DISPATCH_FLOATING_TYPES(st, "fds_calibrate_coefficients", [&] {
    using stat_t = scalar_t;
    if (acc == at::kDouble) {
      coefficients<double, stat_t>(m.const_data_ptr<stat_t>(), v.const_data_ptr<stat_t>(),
                                   sm.const_data_ptr<stat_t>(), sv.const_data_ptr<stat_t>(),
                                   B, m.size(1), lo, hi, scale.mutable_data_ptr<double>(),
                                   shift.mutable_data_ptr<double>());
    } else {
      coefficients<float, stat_t>(m.const_data_ptr<stat_t>(), v.const_data_ptr<stat_t>(),
                                  sm.const_data_ptr<stat_t>(), sv.const_data_ptr<stat_t>(),
                                  B, m.size(1), lo, hi, scale.mutable_data_ptr<float>(),
                                  shift.mutable_data_ptr<float>());
    }
  });
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
