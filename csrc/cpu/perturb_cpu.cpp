// CPU kernel of ssir_fast::perturb:  out = clip(x + eps_i * g / ||g||_2, lo, hi), per row i, with
// eps_i = epsilon, or epsilon * epsilon_rows[i] when per-sample radii are given.
//
// Work is cut into chunks of at most kChunk elements that never cross a row, so both many short
// rows ([4096, 128]) and a few long ones ([256, 3*224*224]) spread over all threads.
// Long rows: pass 1 reads g once per chunk and writes the chunk's norm; the per-row
// norm is formed serially from the chunk norms (N * chunks_per_row values); pass 2 reads x and g
// and writes out once: 4 tensor passes in all. Short rows (<= kChunk) do both passes row by row,
// the second reading g from cache. Inner loops are plain and branch-free so the compiler
// vectorises them; accumulation is float (double for float64). The norm never under- or
// overflows (chunk_norm), and a factor eps / ||g|| outside the float range takes an exact path.
#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#include "ops.h"
#include "perturb_common.h"
#include "stable_common.h"

namespace ssir_fast {
namespace {

constexpr int64_t kChunk = 1 << 14;
constexpr int64_t kGrainSize = 32768;  // ATen's internal::GRAIN_SIZE
constexpr int kLanes = 16;  // independent accumulators: lets the compiler vectorise the sum

// ||g[0, n)||_2, safe for every finite input: the fast pass squares in acc_t (16 lanes, which
// the compiler vectorises) and is kept when its total lies where nothing can have under- or
// overflowed: each underflowed square loses less than the smallest normal acc_t, n of them stay
// below 2^-24 of a total >= kSafeMin; no lane reached inf. Otherwise (a gradient of 1e-25 or
// 1e20 in float) the chunk is redone scaled, as BLAS nrm2 does: m = max |g|, ||g|| = m *
// sqrt(sum (g / m)^2), in double, with every (g / m)^2 <= 1.
template <typename scalar_t, typename acc_t>
double chunk_norm(const scalar_t* g, int64_t n) {
  acc_t acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      const acc_t v = static_cast<acc_t>(g[i + l]);
      acc[l] += v * v;
    }
  }
  for (; i < n; ++i) {
    const acc_t v = static_cast<acc_t>(g[i]);
    acc[0] += v * v;
  }
  double total = 0;
  for (int l = 0; l < kLanes; ++l) total += static_cast<double>(acc[l]);
  constexpr double kSafeMin = std::numeric_limits<acc_t>::min() * double(kChunk) * 0x1p24;
  if (total >= kSafeMin && total <= std::numeric_limits<acc_t>::max()) return std::sqrt(total);
  if (std::isnan(total)) return total;
  double m = 0;
  for (int64_t k = 0; k < n; ++k) m = std::max(m, std::abs(static_cast<double>(g[k])));
  if (m == 0 || std::isinf(m)) return m;
  double s = 0;
  for (int64_t k = 0; k < n; ++k) {
    const double r = static_cast<double>(g[k]) / m;
    s += r * r;
  }
  return m * std::sqrt(s);
}

// The norm of a row from the norms of its chunks, scaled the same way (no chunk norm squared).
inline double combine_norms(const double* norms, int64_t n) {
  double m = 0;
  for (int64_t c = 0; c < n; ++c) {
    if (std::isnan(norms[c])) return norms[c];
    m = std::max(m, norms[c]);
  }
  if (m == 0 || std::isinf(m)) return m;
  double s = 0;
  for (int64_t c = 0; c < n; ++c) s += (norms[c] / m) * (norms[c] / m);
  return m * std::sqrt(s);
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

// The update of a row whose factor eps / ||g|| is no normal acc_t (a gradient so small or so
// large that the factor over- or underflows): x + eps * (g / ||g||) in double, g / ||g|| <= 1.
// `norm` is the norm of g * gscale (a power of two, exact; see exact_norm).
template <typename scalar_t, bool kClip>
void unit_add_clip(const scalar_t* x, const scalar_t* g, scalar_t* out, int64_t n, double eps,
                   double norm, double gscale, double lo, double hi) {
  for (int64_t i = 0; i < n; ++i) {
    double v = static_cast<double>(x[i]) + eps * ((static_cast<double>(g[i]) * gscale) / norm);
    if (kClip) v = std::min(std::max(v, lo), hi);
    out[i] = static_cast<scalar_t>(v);
  }
}

// A float64 row norm below the smallest normal double has lost digits to rounding: the norm of
// g * 2^1022 instead (every |g| < 2^-1022 there, so no square under- or overflows), and that
// factor, for unit_add_clip.
template <typename scalar_t>
std::pair<double, double> exact_norm(const scalar_t* g, int64_t n, double norm) {
  if (!(norm > 0 && norm < std::numeric_limits<double>::min())) return {norm, 1.0};
  const double gscale = std::ldexp(1.0, 1022);
  double s = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double v = static_cast<double>(g[i]) * gscale;
    s += v * v;
  }
  return {std::sqrt(s), gscale};
}

template <typename scalar_t>
void perturb_rows(const PerturbArgs& a) {
  using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  const int64_t N = a.N, L = a.L;
  if (N == 0 || L == 0) return;
  const double epsilon = a.epsilon;
  const ClipBounds& cb = a.bounds;
  const scalar_t* xp = static_cast<const scalar_t*>(a.x);
  const scalar_t* gp = static_cast<const scalar_t*>(a.g);
  scalar_t* op = static_cast<scalar_t*>(a.out);
  const int64_t cpr = (L + kChunk - 1) / kChunk;  // chunks per row
  const int64_t tasks = N * cpr;
  // Enough elements per thread that small inputs stay on one thread (a fork/join costs more
  // than the work), while large ones use every core.
  const int64_t grain = std::max<int64_t>(1, kGrainSize / std::min(L, kChunk));
  const float* lo = cb.lo;
  const float* hi = cb.hi;
  const double* er = a.eps_rows;

  // Applies the update with radius `eps` and gradient norm `norm` to elements [j, stop) of
  // `row`, in runs of one channel so the clip bounds are loop constants. A zero gradient gives
  // no direction: r = 0, never 0/0.
  auto apply = [&](int64_t row, int64_t j, int64_t stop, double eps, double norm) {
    const int64_t base = row * L;
    const double factor = norm > 0 ? eps / norm : 0.0;
    const acc_t scale = static_cast<acc_t>(factor);
    const bool exact = factor != 0 && !std::isnormal(scale);
    const auto en = exact ? exact_norm(gp + base, L, norm) : std::pair<double, double>{norm, 1.0};
    while (j < stop) {
      const int64_t c = !cb.has_clip || cb.nc == 1 ? 0 : (j / cb.inner) % cb.nc;
      const int64_t run_end = !cb.has_clip || cb.nc == 1
                                  ? stop : std::min(stop, (j / cb.inner + 1) * cb.inner);
      const scalar_t* xr = xp + base + j;
      const scalar_t* gr = gp + base + j;
      scalar_t* orow = op + base + j;
      if (exact && cb.has_clip) {
        unit_add_clip<scalar_t, true>(xr, gr, orow, run_end - j, eps, en.first, en.second,
                                      lo[c * cb.lo_step], hi[c * cb.hi_step]);
      } else if (exact) {
        unit_add_clip<scalar_t, false>(xr, gr, orow, run_end - j, eps, en.first, en.second, 0, 0);
      } else if (cb.has_clip) {
        scale_add_clip<scalar_t, acc_t, true>(xr, gr, orow, run_end - j, scale,
                                              static_cast<acc_t>(lo[c * cb.lo_step]),
                                              static_cast<acc_t>(hi[c * cb.hi_step]));
      } else {
        scale_add_clip<scalar_t, acc_t, false>(xr, gr, orow, run_end - j, scale, 0, 0);
      }
      j = run_end;
    }
  };
  auto radius = [&](int64_t row) { return er != nullptr ? epsilon * er[row] : epsilon; };

  if (cpr == 1) {
    // Short rows: norm then update, row by row, while the row of g is still in cache.
    torch::stable::parallel_for(0, N, grain, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        apply(row, 0, L, radius(row), chunk_norm<scalar_t, acc_t>(gp + row * L, L));
      }
    });
    return;
  }

  // Long rows: the norm of each chunk in parallel, then the update per chunk in parallel.
  std::vector<double> partial(tasks);
  torch::stable::parallel_for(0, tasks, grain, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t row = t / cpr, start = (t % cpr) * kChunk;
      partial[t] = chunk_norm<scalar_t, acc_t>(gp + row * L + start, std::min(kChunk, L - start));
    }
  });
  std::vector<double> norm(N);
  for (int64_t row = 0; row < N; ++row) norm[row] = combine_norms(&partial[row * cpr], cpr);
  torch::stable::parallel_for(0, tasks, grain, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t row = t / cpr, j = (t % cpr) * kChunk;
      apply(row, j, std::min(j + kChunk, L), radius(row), norm[row]);
    }
  });
}

void perturb_kernel_cpu(const PerturbArgs& a) {
  SSIR_DISPATCH_FLOATS(a.dtype, "perturb", [&] { perturb_rows<scalar_t>(a); });
}

}  // namespace

Tensor perturb_cpu(const Tensor& x, const Tensor& g, double epsilon, OptTensor clip_min,
                   OptTensor clip_max, OptTensor epsilon_rows) {
  return perturb_functional<perturb_kernel_cpu>(x, g, epsilon, clip_min, clip_max, epsilon_rows);
}

void perturb_inplace_cpu(Tensor x, const Tensor& g, double epsilon, OptTensor clip_min,
                         OptTensor clip_max, OptTensor epsilon_rows) {
  perturb_inplace_impl<perturb_kernel_cpu>(x, g, epsilon, clip_min, clip_max, epsilon_rows);
}

void perturb_out_cpu(const Tensor& x, const Tensor& g, double epsilon, OptTensor clip_min,
                     OptTensor clip_max, Tensor out, OptTensor epsilon_rows) {
  perturb_out_impl<perturb_kernel_cpu>(x, g, epsilon, clip_min, clip_max, epsilon_rows, out);
}

}  // namespace ssir_fast

STABLE_TORCH_LIBRARY_IMPL(ssir_fast, CPU, m) {
  m.impl("perturb", TORCH_BOX(&ssir_fast::perturb_cpu));
  m.impl("perturb_", TORCH_BOX(&ssir_fast::perturb_inplace_cpu));
  m.impl("perturb_out", TORCH_BOX(&ssir_fast::perturb_out_cpu));
}
