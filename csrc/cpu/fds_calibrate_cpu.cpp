// CPU kernel of ssir_fast::fds_calibrate:  z'_n = (z_n - mu_b) * s_b + mu~_b,  b = bin_index[n],
// s_b = sqrt(clamp(var~_b / var_b, lo, hi)); zero-variance dimensions and bins whose variances
// sum to ~0 are left unchanged, as the official DIR code (see fds_common.h).
//
// The per-bin affine coefficients (scale, shift) are formed once ([B, C], one loop); the main pass
// reads each feature row once and writes it once: out = z * scale[b] + shift[b]. Rows are
// distributed over threads; the inner loop over C is branch-free and vectorises. Samples whose
// bin is outside [0, B) are copied unchanged.
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
  torch::stable::parallel_for(0, B, grain, [&](int64_t begin, int64_t end) {
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
void calibrate_rows(const Tensor& f, const int64_t* idx, int64_t B, const acc_t* scale,
                    const acc_t* shift, Tensor& out) {
  const int64_t N = f.size(0), C = f.size(1);
  const scalar_t* fp = static_cast<const scalar_t*>(f.const_data_ptr());
  scalar_t* op = static_cast<scalar_t*>(out.mutable_data_ptr());
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(C, 1));
  torch::stable::parallel_for(0, N, grain, [&](int64_t begin, int64_t end) {
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

Tensor fds_calibrate_cpu(const Tensor& features, const Tensor& bin_index, const Tensor& mean,
                         const Tensor& var, const Tensor& smoothed_mean,
                         const Tensor& smoothed_var, double lo, double hi) {
  check_calibrate_args(features, bin_index, mean, var, smoothed_mean, smoothed_var, lo, hi);
  Tensor f = contig(features);
  Tensor idx = contig(bin_index);
  Tensor out = torch::stable::empty_like(f);
  if (f.numel() == 0) return out;
  const int64_t B = mean.size(0), C = mean.size(1);
  const ScalarType acc = stats_dtype(f);
  Tensor scale = empty(f, {B, C}, acc);
  Tensor shift = empty(f, {B, C}, acc);
  // The four statistics share one dtype (float32 or float64); promote if they do not.
  const Stats st = common_stats(mean, var, smoothed_mean, smoothed_var);
  auto coeffs = [&](auto stat_zero) {
    using stat_t = decltype(stat_zero);
    const stat_t* m = static_cast<const stat_t*>(st.mean.const_data_ptr());
    const stat_t* v = static_cast<const stat_t*>(st.var.const_data_ptr());
    const stat_t* sm = static_cast<const stat_t*>(st.smean.const_data_ptr());
    const stat_t* sv = static_cast<const stat_t*>(st.svar.const_data_ptr());
    if (acc == ScalarType::Double) {
      coefficients<double, stat_t>(m, v, sm, sv, B, C, lo, hi, scale.mutable_data_ptr<double>(),
                                   shift.mutable_data_ptr<double>());
    } else {
      coefficients<float, stat_t>(m, v, sm, sv, B, C, lo, hi, scale.mutable_data_ptr<float>(),
                                  shift.mutable_data_ptr<float>());
    }
  };
  if (st.dtype == ScalarType::Double) coeffs(0.0); else coeffs(0.0f);
  SSIR_DISPATCH_FLOATS(f.scalar_type(), "fds_calibrate", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    calibrate_rows<scalar_t, acc_t>(f, idx.const_data_ptr<int64_t>(), B,
                                    static_cast<const acc_t*>(scale.const_data_ptr()),
                                    static_cast<const acc_t*>(shift.const_data_ptr()), out);
  });
  return out;
}

}  // namespace ssir_fast

STABLE_TORCH_LIBRARY_IMPL(ssir_fast, CPU, m) {
  m.impl("fds_calibrate", TORCH_BOX(&ssir_fast::fds_calibrate_cpu));
}
