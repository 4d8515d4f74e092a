// C++ test of the ssir_fast kernels (run by ctest): each op against a plain ATen computation,
// both through the C++ entry points of ops.h and through the dispatcher (registration check).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "ops.h"

static int failures = 0;

#define EXPECT(cond, msg)                                   \
  do {                                                      \
    if (!(cond)) {                                          \
      std::fprintf(stderr, "FAILED: %s (%s)\n", msg, #cond); \
      ++failures;                                           \
    } else {                                                \
      std::printf("ok: %s\n", msg);                         \
    }                                                       \
  } while (0)

static at::Tensor perturb_expected(const at::Tensor& x, const at::Tensor& g, double eps,
                                   double lo, double hi) {
  auto xd = x.to(at::kDouble), gd = g.to(at::kDouble);
  auto norm = gd.reshape({gd.size(0), -1}).norm(2, {1}, /*keepdim=*/false);
  auto scale = at::where(norm > 0, eps / norm, at::zeros_like(norm));
  std::vector<int64_t> shape(x.dim(), 1);
  shape[0] = -1;
  return at::clamp(xd + scale.reshape(shape) * gd, lo, hi);
}

static void test_perturb() {
  at::manual_seed(0);
  for (auto sizes : {std::vector<int64_t>{4, 3, 5, 7}, std::vector<int64_t>{3, 40000},
                     std::vector<int64_t>{8, 1}}) {
    auto x = at::randn(sizes), g = at::randn(sizes);
    g[1].zero_();
    auto lo = at::full({}, -1.0), hi = at::full({}, 1.5);
    auto out = ssir_fast::perturb_cpu(x, g, 0.7, lo, hi);
    auto err = (out.to(at::kDouble) - perturb_expected(x, g, 0.7, -1.0, 1.5)).abs().max().item<double>();
    EXPECT(err < 1e-5, "perturb_cpu matches the ATen formula");
    EXPECT(at::equal(out[1], at::clamp(x[1], -1.0, 1.5)), "zero-gradient row is only clipped");

    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("ssir_fast::perturb", "")
                         .typed<at::Tensor(const at::Tensor&, const at::Tensor&, double,
                                           const std::optional<at::Tensor>&,
                                           const std::optional<at::Tensor>&,
                                           const std::optional<at::Tensor>&)>();
    auto via_dispatcher = op.call(x, g, 0.7, lo, hi, std::nullopt);
    EXPECT(at::equal(via_dispatcher, out), "ssir_fast::perturb is registered for CPU");

    auto inplace = x.clone();
    ssir_fast::perturb_inplace_cpu(inplace, g, 0.7, lo, hi);
    EXPECT(at::equal(inplace, out), "in-place variant equals the functional one");
  }
  bool threw = false;
  try {
    ssir_fast::perturb_cpu(at::randn({2, 3}), at::randn({2, 4}), 0.1, std::nullopt, std::nullopt);
  } catch (const c10::Error&) {
    threw = true;
  }
  EXPECT(threw, "shape mismatch raises");
}

int main() {
  test_perturb();
  std::printf("cuda_version() = %lld\n", static_cast<long long>(ssir_fast::cuda_version()));
  if (failures) {
    std::fprintf(stderr, "%d check(s) failed\n", failures);
    return EXIT_FAILURE;
  }
  std::printf("all C++ kernel checks passed\n");
  return EXIT_SUCCESS;
}
