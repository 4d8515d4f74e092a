// What every ssir_fast kernel file shares on the LibTorch stable ABI: the stable headers, the
// user-error checks, readable shapes/devices/dtypes in messages, and a dtype switch.
//
// User errors throw std::invalid_argument, which reaches Python as ValueError (pybind11's
// translation; a stable kernel cannot raise c10::ValueError or TypeError). The Python wrappers in
// ssir_fast/ops/ re-run their torch._check version of the same rules when a kernel refuses, so
// wrapper callers get TypeError for a wrong dtype as before. STD_TORCH_CHECK (RuntimeError) is
// kept for internal invariants such as launch limits.
#pragma once
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>
#include <torch/headeronly/macros/Macros.h>
#include <torch/headeronly/util/BFloat16.h>
#include <torch/headeronly/util/Exception.h>
#include <torch/headeronly/util/Half.h>

#include <cstdint>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>

namespace ssir_fast {

using Tensor = torch::stable::Tensor;
using ScalarType = torch::headeronly::ScalarType;
using OptTensor = std::optional<Tensor>;

namespace detail {
template <typename... Args>
[[noreturn]] void throw_value_error(const Args&... args) {
  std::ostringstream oss;
  ((oss << args), ...);
  throw std::invalid_argument(oss.str());
}
}  // namespace detail

// A user error naming the argument: ValueError in Python.
#define SSIR_CHECK(cond, ...)                                  \
  do {                                                         \
    if (C10_UNLIKELY(!(cond))) {                               \
      ::ssir_fast::detail::throw_value_error(__VA_ARGS__);     \
    }                                                          \
  } while (0)

struct Shape {
  const Tensor& t;
};
inline std::ostream& operator<<(std::ostream& os, Shape s) {
  os << "[";
  for (int64_t d = 0; d < s.t.dim(); ++d) os << (d ? ", " : "") << s.t.size(d);
  return os << "]";
}

struct Where {
  const Tensor& t;
};
inline std::ostream& operator<<(std::ostream& os, Where w) {
  if (w.t.is_cpu()) return os << "cpu";
  if (w.t.is_cuda()) return os << "cuda:" << static_cast<int>(w.t.get_device_index());
  return os << "device type " << static_cast<int>(w.t.device().type());
}

inline bool same_device(const Tensor& a, const Tensor& b) {
  return a.device().type() == b.device().type() && a.get_device_index() == b.get_device_index();
}

inline bool same_shape(const Tensor& a, const Tensor& b) {
  if (a.dim() != b.dim()) return false;
  for (int64_t d = 0; d < a.dim(); ++d)
    if (a.size(d) != b.size(d)) return false;
  return true;
}

inline bool is_kernel_float(ScalarType t) {
  return t == ScalarType::Float || t == ScalarType::Half || t == ScalarType::BFloat16 ||
         t == ScalarType::Double;
}

inline bool is_floating(ScalarType t) { return is_kernel_float(t); }

// The undefined tensor for an absent optional.
inline Tensor value_or_undefined(const OptTensor& t) {
  return t.has_value() ? *t : Tensor();
}

// Calls body with `scalar_t` bound to the C++ type of `st` (float32/16, bfloat16, float64).
#define SSIR_DISPATCH_FLOATS(st, name, ...)                                              \
  [&] {                                                                                  \
    switch (st) {                                                                        \
      case ::ssir_fast::ScalarType::Float: { using scalar_t = float; return __VA_ARGS__(); } \
      case ::ssir_fast::ScalarType::Double: { using scalar_t = double; return __VA_ARGS__(); } \
      case ::ssir_fast::ScalarType::Half: { using scalar_t = c10::Half; return __VA_ARGS__(); } \
      case ::ssir_fast::ScalarType::BFloat16: {                                          \
        using scalar_t = c10::BFloat16;                                                  \
        return __VA_ARGS__();                                                            \
      }                                                                                  \
      default:                                                                           \
        ::ssir_fast::detail::throw_value_error(name, ": unsupported dtype ", st);        \
    }                                                                                    \
  }()

// A contiguous tensor of dtype `st` holding t's values (t itself when it already is one).
inline Tensor to_contiguous(const Tensor& t, ScalarType st) {
  Tensor r = t.scalar_type() == st ? t : torch::stable::to(t, st);
  return r.is_contiguous() ? r : torch::stable::contiguous(r);
}

inline Tensor contig(const Tensor& t) {
  return t.is_contiguous() ? t : torch::stable::contiguous(t);
}

// Zero-filled tensor like `like`'s device with dtype `st`.
inline Tensor zeros(const Tensor& like, std::initializer_list<int64_t> size, ScalarType st) {
  return torch::stable::new_zeros(like, torch::headeronly::IntHeaderOnlyArrayRef(size), st);
}
inline Tensor empty(const Tensor& like, std::initializer_list<int64_t> size, ScalarType st) {
  return torch::stable::new_empty(like, torch::headeronly::IntHeaderOnlyArrayRef(size), st);
}

}  // namespace ssir_fast
