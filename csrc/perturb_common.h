// Device-independent part of the perturb op: argument checks, clip-bound preparation, and the
// functional / in-place / out= wrappers around a backend kernel that works on contiguous tensors.
#pragma once
#include <ATen/ATen.h>

#include <cmath>

namespace ssir_fast {

// Clip bounds flattened for a kernel: lo/hi are float32 arrays of length `nc` (1 = one bound for
// all elements, C = one per channel); element j of a row belongs to channel (j / inner) % nc.
struct ClipBounds {
  at::Tensor lo, hi;  // float32, contiguous, on x's device; undefined when has_clip is false
  bool has_clip = false;
  int64_t nc = 1;
  int64_t inner = 1;
};

// Backend kernel: x, g contiguous [N, L] views (same dtype/device), out contiguous and possibly
// the same storage as x (never as g). N*L may be zero. The radius of row i is
// epsilon * eps_rows[i] when eps_rows (float64 [N], contiguous, on x's device) is defined, else
// epsilon.
using PerturbKernel = void (*)(const at::Tensor& x, const at::Tensor& g, double epsilon,
                               const at::Tensor& eps_rows, const ClipBounds& bounds,
                               at::Tensor& out);

inline void check_perturb_args(const at::Tensor& x, const at::Tensor& g, double epsilon) {
  TORCH_CHECK_VALUE(x.dim() >= 1, "perturb: x must have a batch dimension, got a 0-dim tensor");
  TORCH_CHECK_VALUE(x.sizes() == g.sizes(), "perturb: x and g must have the same shape, got x ",
              x.sizes(), " and g ", g.sizes());
  TORCH_CHECK_TYPE(x.scalar_type() == g.scalar_type(), "perturb: x and g must have the same dtype, got x ",
              x.scalar_type(), " and g ", g.scalar_type());
  TORCH_CHECK_VALUE(x.device() == g.device(), "perturb: x and g must be on the same device, got x on ",
              x.device(), " and g on ", g.device());
  const auto t = x.scalar_type();
  TORCH_CHECK_TYPE(t == at::kFloat || t == at::kHalf || t == at::kBFloat16 || t == at::kDouble,
              "perturb: x must be float32, float16, bfloat16 or float64, got ", t);
  TORCH_CHECK_VALUE(std::isfinite(epsilon) && epsilon >= 0,
              "perturb: epsilon must be finite and >= 0, got ", epsilon);
}

// Per-sample radii as float64 [N] for a kernel (undefined when absent). The values are checked
// here: on CUDA that reads one flag back (a device sync), which the scalar-epsilon path avoids.
// TORCH_CHECK_VALUE / _TYPE raise Python ValueError / TypeError.
inline at::Tensor prepare_eps_rows(const std::optional<at::Tensor>& e, const at::Tensor& x) {
  if (!e.has_value() || !e->defined()) return at::Tensor();
  const auto& t = *e;
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == x.size(0), "perturb: per-sample epsilon must have shape [N] = [",
              x.size(0), "] for x of shape ", x.sizes(), ", got shape ", t.sizes());
  TORCH_CHECK_VALUE(t.device() == x.device(), "perturb: per-sample epsilon must be on x's device ",
              x.device(), ", got ", t.device());
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()),
              "perturb: per-sample epsilon must be a floating-point tensor, got ", t.scalar_type());
  at::Tensor d = t.to(at::kDouble).contiguous();
  if (d.numel() > 0) {
    const bool ok = at::logical_and(at::isfinite(d), d >= 0).all().item<bool>();
    TORCH_CHECK_VALUE(ok, "perturb: per-sample epsilon must be finite and >= 0 everywhere, got ",
                "a negative, NaN or inf value");
  }
  return d;
}

inline at::Tensor prepare_bound(const std::optional<at::Tensor>& b, const char* name,
                                const at::Tensor& x) {
  if (!b.has_value() || !b->defined()) return at::Tensor();
  const auto& t = *b;
  TORCH_CHECK_VALUE(t.device() == x.device(), "perturb: ", name, " must be on x's device ", x.device(),
              ", got ", t.device());
  TORCH_CHECK_VALUE(t.dim() <= 1, "perturb: ", name, " must be a scalar or a per-channel [C] tensor, got shape ",
              t.sizes());
  if (t.numel() != 1) {
    TORCH_CHECK_VALUE(x.dim() >= 2 && t.numel() == x.size(1), "perturb: per-channel ", name,
                " has ", t.numel(), " values but x has ", (x.dim() >= 2 ? x.size(1) : 0),
                " channels (dim 1 of shape ", x.sizes(), ")");
  }
  return t.to(at::kFloat).reshape({-1}).contiguous();
}

inline ClipBounds make_bounds(const at::Tensor& x, const std::optional<at::Tensor>& clip_min,
                              const std::optional<at::Tensor>& clip_max) {
  ClipBounds cb;
  at::Tensor lo = prepare_bound(clip_min, "clip_min", x);
  at::Tensor hi = prepare_bound(clip_max, "clip_max", x);
  if (!lo.defined() && !hi.defined()) return cb;
  const int64_t nc = std::max(lo.defined() ? lo.numel() : 1, hi.defined() ? hi.numel() : 1);
  auto opts = x.options().dtype(at::kFloat);
  cb.lo = lo.defined() ? lo.expand({nc}).contiguous() : at::full({nc}, -INFINITY, opts);
  cb.hi = hi.defined() ? hi.expand({nc}).contiguous() : at::full({nc}, INFINITY, opts);
  // Order checked for host bounds only: a device-side check would synchronise every call.
  TORCH_CHECK_VALUE(!x.device().is_cpu() || at::le(cb.lo, cb.hi).all().item<bool>(),
                    "perturb: clip_min must be <= clip_max, got clip_min=", cb.lo,
                    " and clip_max=", cb.hi);
  cb.has_clip = true;
  cb.nc = nc;
  cb.inner = 1;
  for (int64_t d = 2; d < x.dim(); ++d) cb.inner *= x.size(d);
  return cb;
}

inline at::Tensor as_rows(const at::Tensor& t) {
  const int64_t n = t.size(0);
  return t.reshape({n, n == 0 ? 0 : t.numel() / n});
}

template <PerturbKernel kernel>
at::Tensor perturb_functional(const at::Tensor& x, const at::Tensor& g, double epsilon,
                              const std::optional<at::Tensor>& clip_min,
                              const std::optional<at::Tensor>& clip_max,
                              const std::optional<at::Tensor>& epsilon_rows) {
  check_perturb_args(x, g, epsilon);
  const at::Tensor er = prepare_eps_rows(epsilon_rows, x);
  ClipBounds cb = make_bounds(x, clip_min, clip_max);
  at::Tensor xc = x.contiguous(), gc = g.contiguous();
  at::Tensor out = at::empty_like(xc, at::MemoryFormat::Contiguous);
  at::Tensor out_rows = as_rows(out);
  kernel(as_rows(xc), as_rows(gc), epsilon, er, cb, out_rows);
  return out;
}

template <PerturbKernel kernel>
void perturb_out_impl(const at::Tensor& x, const at::Tensor& g, double epsilon,
                      const std::optional<at::Tensor>& clip_min,
                      const std::optional<at::Tensor>& clip_max,
                      const std::optional<at::Tensor>& epsilon_rows, at::Tensor& out) {
  check_perturb_args(x, g, epsilon);
  const at::Tensor er = prepare_eps_rows(epsilon_rows, x);
  TORCH_CHECK_VALUE(out.sizes() == x.sizes() && out.scalar_type() == x.scalar_type() &&
                  out.device() == x.device(),
              "perturb: out must match x in shape, dtype and device, got out ", out.sizes(), " ",
              out.scalar_type(), " on ", out.device(), " for x ", x.sizes(), " ", x.scalar_type(),
              " on ", x.device());
  ClipBounds cb = make_bounds(x, clip_min, clip_max);
  at::Tensor xc = x.contiguous(), gc = g.contiguous();
  // Elementwise writes may alias x (same index read then written) but never g, whose norm is
  // needed by every element of the row: write to a temporary in that case.
  const bool direct = out.is_contiguous() && !out.is_alias_of(gc) &&
                      (!out.is_alias_of(xc) || out.data_ptr() == xc.data_ptr());
  if (direct) {
    at::Tensor out_rows = as_rows(out);
    kernel(as_rows(xc), as_rows(gc), epsilon, er, cb, out_rows);
  } else {
    at::Tensor tmp = at::empty_like(xc, at::MemoryFormat::Contiguous);
    at::Tensor tmp_rows = as_rows(tmp);
    kernel(as_rows(xc), as_rows(gc), epsilon, er, cb, tmp_rows);
    out.copy_(tmp);
  }
}

template <PerturbKernel kernel>
void perturb_inplace_impl(at::Tensor& x, const at::Tensor& g, double epsilon,
                          const std::optional<at::Tensor>& clip_min,
                          const std::optional<at::Tensor>& clip_max,
                          const std::optional<at::Tensor>& epsilon_rows) {
  perturb_out_impl<kernel>(x, g, epsilon, clip_min, clip_max, epsilon_rows, x);
}

}  // namespace ssir_fast
