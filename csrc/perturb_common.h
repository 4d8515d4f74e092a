// Device-independent part of the perturb op: argument checks, clip-bound preparation, and the
// functional / in-place / out= wrappers around a backend kernel that works on contiguous data.
#pragma once
#include <cmath>
#include <cstdint>

namespace ssir_fast {

// Clip bounds for a kernel: lo/hi are float32 arrays on x's device; element j of a row belongs
// to channel c = (j / inner) % nc and is clipped to [lo[c * lo_step], hi[c * hi_step]] (step 0:
// one bound for all channels, step 1: one per channel).
struct ClipBounds {
  const float* lo = nullptr;
  const float* hi = nullptr;
  bool has_clip = false;
  int64_t nc = 1;
  int64_t inner = 1;
  int64_t lo_step = 0;
  int64_t hi_step = 0;
};

}  // namespace ssir_fast

#ifndef __CUDACC__  // host side: stable tensors
#include <vector>

#include "stable_common.h"

namespace ssir_fast {

// What a backend kernel gets: x, g, out as contiguous [N, L] arrays of `dtype` (out may be x,
// never g; N * L may be zero) and the radius of row i: epsilon * eps_rows[i] when eps_rows
// (float64 [N], on x's device) is given, else epsilon. `device_index` is x's device.
struct PerturbArgs {
  const void* x;
  const void* g;
  void* out;
  int64_t N, L;
  ScalarType dtype;
  double epsilon;
  const double* eps_rows;
  ClipBounds bounds;
  int32_t device_index;
};

using PerturbKernel = void (*)(const PerturbArgs& args);

inline void check_perturb_args(const Tensor& x, const Tensor& g, double epsilon) {
  SSIR_CHECK(x.dim() >= 1, "perturb: x must have a batch dimension, got a 0-dim tensor");
  SSIR_CHECK(same_shape(x, g), "perturb: x and g must have the same shape, got x ", Shape{x},
             " and g ", Shape{g});
  SSIR_CHECK(x.scalar_type() == g.scalar_type(), "perturb: x and g must have the same dtype, got x ",
             x.scalar_type(), " and g ", g.scalar_type());
  SSIR_CHECK(same_device(x, g), "perturb: x and g must be on the same device, got x on ", Where{x},
             " and g on ", Where{g});
  SSIR_CHECK(is_kernel_float(x.scalar_type()),
             "perturb: x must be float32, float16, bfloat16 or float64, got ", x.scalar_type());
  SSIR_CHECK(std::isfinite(epsilon) && epsilon >= 0, "perturb: epsilon must be finite and >= 0, got ",
             epsilon);
}

// Values of a small float64 tensor, read on the host (a device sync for a CUDA tensor).
inline std::vector<double> host_doubles(const Tensor& t) {
  Tensor h = t.is_cpu() ? t : torch::stable::to(t, torch::stable::Device(torch::headeronly::DeviceType::CPU));
  h = to_contiguous(h, ScalarType::Double);
  const double* p = h.const_data_ptr<double>();
  return std::vector<double>(p, p + h.numel());
}

// Per-sample radii as float64 [N] for a kernel (undefined when absent). The values are checked
// here: on CUDA that reads them back (a device sync), which the scalar-epsilon path avoids.
inline Tensor prepare_eps_rows(const OptTensor& e, const Tensor& x) {
  if (!e.has_value() || !e->defined()) return Tensor();
  const Tensor& t = *e;
  SSIR_CHECK(t.dim() == 1 && t.size(0) == x.size(0), "perturb: per-sample epsilon must have shape [N] = [",
             x.size(0), "] for x of shape ", Shape{x}, ", got shape ", Shape{t});
  SSIR_CHECK(same_device(t, x), "perturb: per-sample epsilon must be on x's device ", Where{x},
             ", got ", Where{t});
  SSIR_CHECK(is_floating(t.scalar_type()),
             "perturb: per-sample epsilon must be a floating-point tensor, got ", t.scalar_type());
  Tensor d = to_contiguous(t, ScalarType::Double);
  if (d.numel() > 0) {
    bool ok = true;
    for (double v : host_doubles(d)) ok = ok && std::isfinite(v) && v >= 0;
    SSIR_CHECK(ok, "perturb: per-sample epsilon must be finite and >= 0 everywhere, got a "
               "negative, NaN or inf value");
  }
  return d;
}

inline Tensor prepare_bound(const OptTensor& b, const char* name, const Tensor& x) {
  if (!b.has_value() || !b->defined()) return Tensor();
  const Tensor& t = *b;
  SSIR_CHECK(same_device(t, x), "perturb: ", name, " must be on x's device ", Where{x}, ", got ",
             Where{t});
  SSIR_CHECK(t.dim() <= 1, "perturb: ", name,
             " must be a scalar or a per-channel [C] tensor, got shape ", Shape{t});
  if (t.numel() != 1) {
    SSIR_CHECK(x.dim() >= 2 && t.numel() == x.size(1), "perturb: per-channel ", name, " has ",
               t.numel(), " values but x has ", (x.dim() >= 2 ? x.size(1) : 0),
               " channels (dim 1 of shape ", Shape{x}, ")");
  }
  return to_contiguous(t, ScalarType::Float);
}

// Bounds prepared for a kernel; `keep` owns the float32 arrays the pointers refer to.
struct PreparedBounds {
  ClipBounds cb;
  Tensor keep_lo, keep_hi;
};

inline PreparedBounds make_bounds(const Tensor& x, const OptTensor& clip_min,
                                  const OptTensor& clip_max) {
  PreparedBounds pb;
  Tensor lo = prepare_bound(clip_min, "clip_min", x);
  Tensor hi = prepare_bound(clip_max, "clip_max", x);
  if (!lo.defined() && !hi.defined()) return pb;
  // A missing side is an infinite one-element bound.
  if (!lo.defined()) lo = torch::stable::fill_(empty(x, {1}, ScalarType::Float), -INFINITY);
  if (!hi.defined()) hi = torch::stable::fill_(empty(x, {1}, ScalarType::Float), INFINITY);
  ClipBounds& cb = pb.cb;
  cb.lo_step = lo.numel() == 1 ? 0 : 1;
  cb.hi_step = hi.numel() == 1 ? 0 : 1;
  cb.nc = (cb.lo_step || cb.hi_step) ? x.size(1) : 1;
  // Order checked for host bounds only: a device-side check would synchronise every call.
  if (x.is_cpu()) {
    const float* l = lo.const_data_ptr<float>();
    const float* h = hi.const_data_ptr<float>();
    bool ok = true;
    for (int64_t c = 0; c < cb.nc; ++c) ok = ok && l[c * cb.lo_step] <= h[c * cb.hi_step];
    SSIR_CHECK(ok, "perturb: clip_min must be <= clip_max, got clip_min=",
               l[0], (lo.numel() > 1 ? ", ..." : ""), " and clip_max=", h[0],
               (hi.numel() > 1 ? ", ..." : ""));
  }
  cb.lo = lo.const_data_ptr<float>();
  cb.hi = hi.const_data_ptr<float>();
  cb.has_clip = true;
  cb.inner = 1;
  for (int64_t d = 2; d < x.dim(); ++d) cb.inner *= x.size(d);
  pb.keep_lo = lo;
  pb.keep_hi = hi;
  return pb;
}

inline void run_kernel(PerturbKernel kernel, const Tensor& xc, const Tensor& gc, double epsilon,
                       const Tensor& er, const ClipBounds& cb, void* out) {
  const int64_t n = xc.size(0);
  PerturbArgs a{xc.const_data_ptr(), gc.const_data_ptr(), out, n,
                n == 0 ? 0 : xc.numel() / n, xc.scalar_type(), epsilon,
                er.defined() ? er.const_data_ptr<double>() : nullptr, cb,
                static_cast<int32_t>(xc.get_device_index())};
  kernel(a);
}

template <PerturbKernel kernel>
Tensor perturb_functional(const Tensor& x, const Tensor& g, double epsilon,
                          const OptTensor& clip_min, const OptTensor& clip_max,
                          const OptTensor& epsilon_rows) {
  check_perturb_args(x, g, epsilon);
  const Tensor er = prepare_eps_rows(epsilon_rows, x);
  PreparedBounds pb = make_bounds(x, clip_min, clip_max);
  Tensor xc = contig(x), gc = contig(g);
  Tensor out = torch::stable::empty_like(xc);
  run_kernel(kernel, xc, gc, epsilon, er, pb.cb, out.mutable_data_ptr());
  return out;
}

inline bool overlaps(const Tensor& a, const Tensor& b) {
  if (a.numel() == 0 || b.numel() == 0) return false;
  const char* a0 = static_cast<const char*>(a.const_data_ptr());
  const char* b0 = static_cast<const char*>(b.const_data_ptr());
  const char* a1 = a0 + a.numel() * a.element_size();
  const char* b1 = b0 + b.numel() * b.element_size();
  return a0 < b1 && b0 < a1;
}

template <PerturbKernel kernel>
void perturb_out_impl(const Tensor& x, const Tensor& g, double epsilon, const OptTensor& clip_min,
                      const OptTensor& clip_max, const OptTensor& epsilon_rows, Tensor& out) {
  check_perturb_args(x, g, epsilon);
  const Tensor er = prepare_eps_rows(epsilon_rows, x);
  SSIR_CHECK(same_shape(out, x) && out.scalar_type() == x.scalar_type() && same_device(out, x),
             "perturb: out must match x in shape, dtype and device, got out ", Shape{out}, " ",
             out.scalar_type(), " on ", Where{out}, " for x ", Shape{x}, " ", x.scalar_type(),
             " on ", Where{x});
  PreparedBounds pb = make_bounds(x, clip_min, clip_max);
  Tensor xc = contig(x), gc = contig(g);
  // Elementwise writes may alias x (same index read then written) but never g, whose norm is
  // needed by every element of the row: write to a temporary in that case.
  const bool direct = out.is_contiguous() && !overlaps(out, gc) &&
                      (!overlaps(out, xc) || out.const_data_ptr() == xc.const_data_ptr());
  if (direct) {
    run_kernel(kernel, xc, gc, epsilon, er, pb.cb, out.mutable_data_ptr());
  } else {
    Tensor tmp = torch::stable::empty_like(xc);
    run_kernel(kernel, xc, gc, epsilon, er, pb.cb, tmp.mutable_data_ptr());
    torch::stable::copy_(out, tmp);
  }
}

template <PerturbKernel kernel>
void perturb_inplace_impl(Tensor& x, const Tensor& g, double epsilon, const OptTensor& clip_min,
                          const OptTensor& clip_max, const OptTensor& epsilon_rows) {
  perturb_out_impl<kernel>(x, g, epsilon, clip_min, clip_max, epsilon_rows, x);
}

}  // namespace ssir_fast
#endif  // __CUDACC__
