// CPU kernel of ssir_fast::perturb:  out = clip(x + eps_i * g / ||g||_2, lo, hi), per row i, with
// eps_i = epsilon, or epsilon * epsilon_rows[i] when per-sample radii are given.
//
// Work is cut into chunks of at most kChunk elements that never cross a row, so both many short
// rows ([4096, 128]) and a few long ones ([256, 3*224*224]) spread over all threads.
// Long rows: pass 1 reads g once per chunk and writes one partial sum of squares; the per-row
// scale epsilon / ||g|| is formed serially (N * chunks_per_row values); pass 2 reads x and g and
// writes out once: 4 tensor passes in all. Short rows (<= kChunk) do both passes row by row, the
// second reading g from cache. Inner loops are plain and branch-free so the compiler
// vectorises them; accumulation is float (double for float64), chunk totals are summed in double.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "ops.h"
#include "perturb_common.h"

namespace ssir_fast {
namespace {

constexpr int64_t kChunk = 1 << 14;
constexpr int kLanes = 16;  // independent accumulators: lets the compiler vectorise the sum

template <typename scalar_t, typename acc_t>
double sum_squares(const scalar_t* g, int64_t n) {
  acc_t acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      const acc_t v = static_cast<acc_t>(g[i + l]);
      acc[l] += v * v;
    }
  }
  double total = 0;
  for (; i < n; ++i) {
    const double v = static_cast<double>(g[i]);
    total += v * v;
  }
  for (int l = 0; l < kLanes; ++l) total += static_cast<double>(acc[l]);
  return total;
}

template <typename scalar_t, typename acc_t, bool kClip>
void scale_add_clip(const scalar_t* x, const scalar_t* g, scalar_t* out, int64_t n, acc_t scale,
                    acc_t lo, acc_t hi) {
  for (int64_t i = 0; i < n; ++i) {
    acc_t v = static_cast<acc_t>(x[i]) + scale * static_cast<acc_t>(g[i]);
    if (kClip) v = std::min(std::max(v, lo), hi);
    out[i] = static_cast<scalar_t>(v);
  }
}

template <typename scalar_t>
void perturb_rows(const at::Tensor& x, const at::Tensor& g, double epsilon,
                  const at::Tensor& eps_rows, const ClipBounds& cb, at::Tensor& out) {
  using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  const int64_t N = x.size(0), L = x.size(1);
  if (N == 0 || L == 0) return;
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  const scalar_t* gp = g.const_data_ptr<scalar_t>();
  scalar_t* op = out.mutable_data_ptr<scalar_t>();
  const int64_t cpr = (L + kChunk - 1) / kChunk;  // chunks per row
  const int64_t tasks = N * cpr;
  // Enough elements per thread that small inputs stay on one thread (a fork/join costs more
  // than the work), while large ones use every core.
  const int64_t grain = std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::min(L, kChunk));
  const float* lo = cb.has_clip ? cb.lo.const_data_ptr<float>() : nullptr;
  const float* hi = cb.has_clip ? cb.hi.const_data_ptr<float>() : nullptr;
  const double* er = eps_rows.defined() ? eps_rows.const_data_ptr<double>() : nullptr;

  // Applies the update to elements [j, stop) of `row`, in runs of one channel so the clip
  // bounds are loop constants.
  auto apply = [&](int64_t row, int64_t j, int64_t stop, acc_t scale) {
    const int64_t base = row * L;
    if (!cb.has_clip) {
      scale_add_clip<scalar_t, acc_t, false>(xp + base + j, gp + base + j, op + base + j,
                                             stop - j, scale, 0, 0);
      return;
    }
    while (j < stop) {
      const int64_t c = cb.nc == 1 ? 0 : (j / cb.inner) % cb.nc;
      const int64_t run_end = cb.nc == 1 ? stop : std::min(stop, (j / cb.inner + 1) * cb.inner);
      scale_add_clip<scalar_t, acc_t, true>(xp + base + j, gp + base + j, op + base + j,
                                            run_end - j, scale, static_cast<acc_t>(lo[c]),
                                            static_cast<acc_t>(hi[c]));
      j = run_end;
    }
  };
  // A zero gradient gives no direction: r = 0, never 0/0.
  auto scale_of = [&](int64_t row, double sumsq) {
    const double eps = er != nullptr ? epsilon * er[row] : epsilon;
    return sumsq > 0 ? static_cast<acc_t>(eps / std::sqrt(sumsq)) : acc_t(0);
  };

  if (cpr == 1) {
    // Short rows: norm then update, row by row, while the row of g is still in cache.
    at::parallel_for(0, N, grain, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        apply(row, 0, L, scale_of(row, sum_squares<scalar_t, acc_t>(gp + row * L, L)));
      }
    });
    return;
  }

  // Long rows: partial sums per chunk in parallel, then the update per chunk in parallel.
  std::vector<double> partial(tasks);
  at::parallel_for(0, tasks, grain, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t row = t / cpr, start = (t % cpr) * kChunk;
      partial[t] = sum_squares<scalar_t, acc_t>(gp + row * L + start, std::min(kChunk, L - start));
    }
  });
  std::vector<acc_t> scale(N);
  for (int64_t row = 0; row < N; ++row) {
    double s = 0;
    for (int64_t c = 0; c < cpr; ++c) s += partial[row * cpr + c];
    scale[row] = scale_of(row, s);
  }
  at::parallel_for(0, tasks, grain, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t row = t / cpr, j = (t % cpr) * kChunk;
      apply(row, j, std::min(j + kChunk, L), scale[row]);
    }
  });
}

void perturb_kernel_cpu(const at::Tensor& x, const at::Tensor& g, double epsilon,
                        const at::Tensor& eps_rows, const ClipBounds& cb, at::Tensor& out) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "perturb_cpu", [&] {
    perturb_rows<scalar_t>(x, g, epsilon, eps_rows, cb, out);
  });
}

}  // namespace

at::Tensor perturb_cpu(const at::Tensor& x, const at::Tensor& g, double epsilon,
                       const std::optional<at::Tensor>& clip_min,
                       const std::optional<at::Tensor>& clip_max,
                       const std::optional<at::Tensor>& epsilon_rows) {
  return perturb_functional<perturb_kernel_cpu>(x, g, epsilon, clip_min, clip_max, epsilon_rows);
}

void perturb_inplace_cpu(at::Tensor& x, const at::Tensor& g, double epsilon,
                         const std::optional<at::Tensor>& clip_min,
                         const std::optional<at::Tensor>& clip_max,
                         const std::optional<at::Tensor>& epsilon_rows) {
  perturb_inplace_impl<perturb_kernel_cpu>(x, g, epsilon, clip_min, clip_max, epsilon_rows);
}

void perturb_out_cpu(const at::Tensor& x, const at::Tensor& g, double epsilon,
                     const std::optional<at::Tensor>& clip_min,
                     const std::optional<at::Tensor>& clip_max, at::Tensor& out,
                     const std::optional<at::Tensor>& epsilon_rows) {
  perturb_out_impl<perturb_kernel_cpu>(x, g, epsilon, clip_min, clip_max, epsilon_rows, out);
}

}  // namespace ssir_fast

TORCH_LIBRARY_IMPL(ssir_fast, CPU, m) {
  m.impl("perturb", &ssir_fast::perturb_cpu);
  m.impl("perturb_", &ssir_fast::perturb_inplace_cpu);
  m.impl("perturb_out", &ssir_fast::perturb_out_cpu);
}
