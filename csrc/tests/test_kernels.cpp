// C++ test of the ssir_fast kernels (run by ctest): the ops against a plain ATen computation,
// called through the dispatcher, as a C++ user of the kernel library (which is built on the
// stable ABI and registers itself when loaded) calls them.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <exception>

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
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("ssir_fast::perturb", "")
                         .typed<at::Tensor(const at::Tensor&, const at::Tensor&, double,
                                           const std::optional<at::Tensor>&,
                                           const std::optional<at::Tensor>&,
                                           const std::optional<at::Tensor>&)>();
    auto out = op.call(x, g, 0.7, lo, hi, std::nullopt);
    auto err = (out.to(at::kDouble) - perturb_expected(x, g, 0.7, -1.0, 1.5)).abs().max().item<double>();
    EXPECT(err < 1e-5, "perturb_cpu matches the ATen formula");
    EXPECT(at::equal(out[1], at::clamp(x[1], -1.0, 1.5)), "zero-gradient row is only clipped");

    static auto op_ = c10::Dispatcher::singleton()
                          .findSchemaOrThrow("ssir_fast::perturb_", "")
                          .typed<void(at::Tensor&, const at::Tensor&, double,
                                      const std::optional<at::Tensor>&,
                                      const std::optional<at::Tensor>&,
                                      const std::optional<at::Tensor>&)>();
    auto inplace = x.clone();
    op_.call(inplace, g, 0.7, lo, hi, std::nullopt);
    EXPECT(at::equal(inplace, out), "in-place variant equals the functional one");
  }
  bool threw = false;
  try {
    c10::Dispatcher::singleton()
        .findSchemaOrThrow("ssir_fast::perturb", "")
        .typed<at::Tensor(const at::Tensor&, const at::Tensor&, double,
                          const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
                          const std::optional<at::Tensor>&)>()
        .call(at::randn({2, 3}), at::randn({2, 4}), 0.1, std::nullopt, std::nullopt, std::nullopt);
  } catch (const std::exception& e) {
    threw = std::string(e.what()).find("same shape") != std::string::npos;
  }
  EXPECT(threw, "shape mismatch raises, naming the problem");
}

// bin_reduce_nd: one hand-computed row, and the flat row-major bins of random rows against ATen.
static void test_bin_reduce_nd() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("ssir_fast::bin_reduce_nd", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&,
                                         c10::ArrayRef<double>, c10::ArrayRef<double>,
                                         c10::ArrayRef<int64_t>, const std::optional<at::Tensor>&,
                                         double, bool)>();
  auto p = at::tensor({3.0, 1.0}, at::kDouble).reshape({1, 2});
  auto y = at::tensor({0.5, 5.0}, at::kDouble).reshape({1, 2});
  auto t = op.call(p, y, {0.0, 0.0}, {1.0, 2.0}, {2, 2}, std::nullopt, 1e-8, false);
  // y = (0.5, 5.0): bins (0, 2 clamped to 1) -> flat 1, out of range; e = (2.5, -4)
  EXPECT(t.size(0) == 4 && t.size(1) == 10, "bin_reduce_nd table is [prod(num_bins), 8 + D]");
  EXPECT(t[1][0].item<double>() == 1 && t[1][1].item<double>() == 3.25 &&
             std::abs(t[1][5].item<double>() - std::sqrt(22.25)) < 1e-15 &&
             t[1][6].item<double>() == 1 && t[1][8].item<double>() == 2.5 &&
             t[1][9].item<double>() == 4.0,
         "bin_reduce_nd row: count, mean |e|, ||e||_2, out of range, per-dimension |e|");
  EXPECT(t.sum().item<double>() == t[1].sum().item<double>(), "bin_reduce_nd: other bins empty");

  at::manual_seed(1);
  auto yr = at::rand({5000, 3}, at::kFloat) * at::tensor({6.0f, 5.0f, 4.0f});
  auto pr = yr + at::randn({5000, 3});
  auto tab = op.call(pr, yr, {0.0, 0.0, 0.0}, {1.0, 1.0, 1.0}, {6, 5, 4}, std::nullopt, 1e-8,
                     false);
  auto i = yr.floor().to(at::kLong);
  auto flat = (i.select(1, 0) * 5 + i.select(1, 1)) * 4 + i.select(1, 2);
  auto want = at::bincount(flat, {}, 120).to(at::kDouble);
  EXPECT(at::equal(tab.select(1, 0), want), "bin_reduce_nd counts per flat row-major bin");
}

int main() {
  test_perturb();
  test_bin_reduce_nd();
  if (failures) {
    std::fprintf(stderr, "%d check(s) failed\n", failures);
    return EXIT_FAILURE;
  }
  std::printf("all C++ kernel checks passed\n");
  return EXIT_SUCCESS;
}
