"""Synthetic over-sampling for imbalanced regression: SMOTER (Torgo et al. 2013) and SMOGN
(Branco et al. 2017), vectorised and seedable, for tabular arrays and feature vectors.

1. Relevance phi(y) in [0, 1] (`relevance`): a piecewise cubic Hermite interpolant through
   control points (y, phi, phi'), slopes made monotone (Fritsch-Carlson). The automatic points
   come from the box plot of y (quartiles with the midpoint rule, whiskers at coef * IQR, coef 1.5):
   (lower whisker, 1, 0) if there are low extremes else (min y, 0, 0); (median, 0, 0); (upper
   whisker, 1, 0) if there are high extremes else (max y, 0, 0). Outside the points phi is
   constant.
2. Sorted by y, the samples form "bumps": maximal runs with phi >= thres (rare) or < thres
   (common). With b = round(n / n_bumps), "balance" resamples bump i by s_i = b / |bump_i|
   ("extreme" as in the reference package).
3. Bumps with s_i > 1 keep their originals and get floor(s_i - 1) synthetic cases per seed plus
   one for int(|bump| * frac(s_i - 1)) seeds drawn without replacement. A synthetic case takes a
   random one of the seed's k nearest neighbours in the bump (distance on range-normalised
   features). SMOTER interpolates x = x_s + r (x_nn - x_s), r ~ U(0, 1), and y with the same r
   (= the distance-weighted target of Torgo et al.). SMOGN interpolates only when the neighbour
   is closer than maxD = median(k-NN distances of the seed) / 2, and otherwise adds Gaussian
   noise: x = x_s + N(0, std_bump(x)) * min(maxD, pert), same for y.
4. Bumps with s_i < 1 are under-sampled: int(s_i |bump_i|) distinct cases drawn at random.

k-NN is computed per bump in chunks of rows (memory O(chunk * |bump|), no n x n matrix), and
every step is array code: there is no Python loop over samples.

Defects of the PyPI `smogn` package (v0.1.2) NOT reproduced here (tests in tests/test_resample.py):
- under-sampling draws the cases to KEEP and then drops them from the whole data set, so the
  output holds the complement (and every other bump's originals again);
- the synthetic target's distance weights use only the last column's distance (a loop variable
  overwritten), and that column is the target itself, read from the uninitialised (np.ndarray)
  output slot before it is written: the target depends on garbage memory and is sometimes NaN;
  the tie case computes y_s + y_nn / 2;
- maxD is the median distance to all cases of the bump (its docstring says the k neighbours);
- it uses the unseeded global NumPy / `random` generators (not reproducible), an O(n^2) Python
  distance loop, validation checks written as `x in y is False` (never true), and it fails on
  NumPy 2 (`np.quantile(interpolation=...)`, int() of 1-element arrays).
"""
import math

import numpy as np
import torch

__all__ = ["relevance", "relevance_ctrl_pts", "box_plot_stats", "smogn", "smoter", "knn"]


def _as_float64(a, name):
    if isinstance(a, torch.Tensor):
        return a.detach().to(torch.float64)
    return torch.from_numpy(np.array(a, dtype=np.float64))


def box_plot_stats(y, coef=1.5):
    """(lower whisker, Q1, median, Q3, upper whisker) with midpoint quantiles; whiskers are the
    most extreme values within [Q1 - coef IQR, Q3 + coef IQR]."""
    y = np.asarray(y, dtype=np.float64)
    q1, med, q3 = (np.quantile(y, q, method="midpoint") for q in (0.25, 0.5, 0.75))
    iqr = q3 - q1
    lo = y[y >= q1 - coef * iqr].min()
    hi = y[y <= q3 + coef * iqr].max()
    return np.array([lo, q1, med, q3, hi])


def relevance_ctrl_pts(y, xtrm_type="both", coef=1.5):
    """Automatic control points [[y, phi, slope], ...] from the box plot of y."""
    if xtrm_type not in ("both", "low", "high"):
        raise ValueError(f"xtrm_type must be 'both', 'low' or 'high', got {xtrm_type!r}")
    if not coef > 0:
        raise ValueError(f"coef must be > 0, got {coef}")
    y = np.asarray(y, dtype=np.float64)
    st = box_plot_stats(y, coef)
    pts = []
    if xtrm_type in ("both", "low") and (y < st[0]).any():
        pts.append([st[0], 1.0, 0.0])
    else:
        pts.append([y.min(), 0.0, 0.0])
    if st[2] != y.min():
        pts.append([st[2], 0.0, 0.0])
    if xtrm_type in ("both", "high") and (y > st[4]).any():
        pts.append([st[4], 1.0, 0.0])
    elif st[2] != y.max():
        pts.append([y.max(), 0.0, 0.0])
    pts = np.array(pts)
    if (np.diff(pts[:, 0]) <= 0).any():
        share = float(np.mean(y == st[2]))
        raise ValueError(f"the automatic relevance function (from the box plot of the targets) is "
                         f"undefined: {share:.0%} of the targets equal {st[2]:g}, so the "
                         f"interquartile range is {st[3] - st[1]:g} and no target stands out as "
                         f"rare; give ctrl_pts [[y, relevance, slope], ...] yourself")
    return pts


def _monotone_slopes(m, delta):
    """Fritsch-Carlson adjustment of the given end slopes of each interval."""
    m = m.copy()
    for k in range(len(delta)):  # loop over control points (a handful), not samples
        sk = delta[k]
        if sk == 0:
            m[k] = m[k + 1] = 0.0
            continue
        m[k] = abs(m[k]) * np.sign(sk) if m[k] / sk < 0 else m[k]
        m[k + 1] = abs(m[k + 1]) * np.sign(sk) if m[k + 1] / sk < 0 else m[k + 1]
        a, b = m[k] / sk, m[k + 1] / sk
        p, q = 2 * a + b - 3, a + 2 * b - 3
        if p > 0 and q > 0 and a * (p + q) < p * p:
            tau = 3 * sk / math.sqrt(a * a + b * b)
            m[k], m[k + 1] = tau * a, tau * b
    return m


def relevance(y, ctrl_pts=None, xtrm_type="both", coef=1.5):
    """phi(y) in [0, 1] (float64 numpy, y's shape), from `ctrl_pts` [[y, phi, slope], ...] or the
    automatic box-plot points of y."""
    y = np.asarray(y, dtype=np.float64)
    pts = relevance_ctrl_pts(y, xtrm_type, coef) if ctrl_pts is None else np.asarray(ctrl_pts, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3 or len(pts) < 1 or (np.diff(pts[:, 0]) <= 0).any():
        raise ValueError("ctrl_pts must be rows (y, phi, slope) with strictly increasing y")
    x, a = pts[:, 0], pts[:, 1]
    if len(pts) == 1:
        return np.full(y.shape, a[0])
    h = np.diff(x)
    delta = np.diff(a) / h
    m = _monotone_slopes(pts[:, 2], delta)
    c = (3 * delta - 2 * m[:-1] - m[1:]) / h
    d = (m[:-1] - 2 * delta + m[1:]) / h ** 2
    i = np.clip(np.searchsorted(x, y, side="right") - 1, 0, len(x) - 2)
    s = y - x[i]
    val = a[i] + s * (m[i] + s * (c[i] + s * d[i]))
    val = np.where(y < x[0], a[0], np.where(y >= x[-1], a[-1], val))
    return np.clip(val, 0.0, 1.0)


def knn(points, k, chunk_size=4096, queries=None):
    """k nearest neighbours (Euclidean) of each query among `points`, excluding the query itself
    when queries is None. Chunked: memory O(chunk_size * len(points)).
    Returns (index [q, k] int64, distance [q, k]) as torch tensors, nearest first."""
    p = points
    q = p if queries is None else queries
    idx_out, dist_out = [], []
    for start in range(0, q.shape[0], chunk_size):
        block = q[start:start + chunk_size]
        d = torch.cdist(block, p)
        if queries is None:
            rows = torch.arange(block.shape[0], device=p.device)
            d[rows, rows + start] = math.inf
        dist, idx = torch.topk(d, k, dim=1, largest=False, sorted=True)
        idx_out.append(idx)
        dist_out.append(dist)
    return torch.cat(idx_out), torch.cat(dist_out)


def _bumps(phi_sorted, thres):
    rare = phi_sorted >= thres
    change = np.flatnonzero(rare[1:] != rare[:-1]) + 1
    starts = np.concatenate([[0], change])
    ends = np.concatenate([change, [len(rare)]])
    return starts, ends, rare[starts]


def _sampling_rates(sizes, n, method):
    nb = len(sizes)
    b = round(n / nb)
    if method == "balance":
        return b / sizes
    if method == "extreme":
        scale = nb * b / np.sum(b ** 2 / sizes)
        obj = np.round(b ** 2 / sizes * scale, 2)
        return np.round(obj / sizes, 1)
    raise ValueError(f"sampling must be 'balance' or 'extreme', got {method!r}")


def _resample(X, y, k, pert, sampling, under_sample, rel_thres, ctrl_pts, xtrm_type, coef, seed,
              chunk_size, noise, max_dist):
    is_tensor = isinstance(X, torch.Tensor)
    device = X.device if is_tensor else torch.device("cpu")
    Xt, yt = _as_float64(X, "X").to(device), _as_float64(y, "y").to(device)
    if Xt.dim() != 2:
        raise ValueError(f"X must be 2-D [n, d], got shape {tuple(Xt.shape)}")
    yt = yt.reshape(-1) if yt.dim() == 2 and yt.shape[1] == 1 else yt
    if yt.dim() == 2 and yt.shape[0] == Xt.shape[0]:
        # the relevance function and the bumps are runs of the SORTED target: no order in D dims
        raise ValueError(f"SMOTER/SMOGN take a scalar target y [n]; got a vector target of shape "
                         f"{tuple(yt.shape)} (D = {yt.shape[1]}): their relevance function and "
                         f"bumps are defined along one sorted label axis. For vector targets use "
                         f"re-weighting on D-dimensional LabelBins (bin_weights), LDS or SSIR")
    if yt.dim() != 1 or yt.shape[0] != Xt.shape[0]:
        raise ValueError(f"y must be [n] with n = {Xt.shape[0]} (rows of X), got {tuple(yt.shape)}")
    n = Xt.shape[0]
    if n == 0:
        raise ValueError("X and y are empty")
    if not bool(torch.isfinite(Xt).all()) or not bool(torch.isfinite(yt).all()):
        raise ValueError("X and y must be finite (no NaN or inf); drop or impute missing values")
    if isinstance(k, bool) or int(k) != k or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    if not 0 < rel_thres <= 1:
        raise ValueError(f"rel_thres must be in (0, 1], got {rel_thres}")
    if not 0 < pert <= 1:
        raise ValueError(f"pert must be in (0, 1], got {pert}")
    if max_dist not in ("knn", "bump"):
        raise ValueError(f"max_dist must be 'knn' or 'bump', got {max_dist!r}")
    gen = torch.Generator().manual_seed(int(seed))
    y_np = yt.cpu().numpy()
    phi = relevance(y_np, ctrl_pts, xtrm_type, coef)
    order = np.argsort(y_np, kind="stable")
    starts, ends, rare_bump = _bumps(phi[order], rel_thres)
    if rare_bump.all() or not rare_bump.any():
        raise ValueError(f"the relevance function marks {'all' if rare_bump.all() else 'no'} "
                         f"samples as rare (threshold {rel_thres}); give ctrl_pts or change rel_thres")
    rates = _sampling_rates((ends - starts).astype(np.float64), n, sampling)
    # Range-normalised features for the neighbour search (HEOM for numeric attributes).
    rng_x = Xt.max(dim=0).values - Xt.min(dim=0).values
    Xs = Xt / torch.where(rng_x > 0, rng_x, torch.ones_like(rng_x))
    keep, new_x, new_y, src = [], [], [], []
    for s, e, rate in zip(starts, ends, rates):  # loop over bumps (a handful)
        members = torch.as_tensor(order[s:e], device=device)
        m = members.numel()
        if rate < 1:
            if under_sample:
                pick = torch.randperm(m, generator=gen)[:int(rate * m)].to(device)
                keep.append(members[pick])
            else:
                keep.append(members)
            continue
        keep.append(members)
        if rate == 1:
            continue
        whole = int(rate - 1)
        extra = int(m * (rate - 1 - whole))
        seeds = torch.cat([torch.arange(m).repeat_interleave(whole),
                           torch.randperm(m, generator=gen)[:extra]]).to(device)
        t = seeds.numel()
        xb, yb = Xt[members], yt[members]
        kk = min(int(k), m - 1)
        r = torch.rand(t, generator=gen, dtype=torch.float64).to(device)
        z_x = torch.randn(t, Xt.shape[1], generator=gen, dtype=torch.float64).to(device)
        z_y = torch.randn(t, generator=gen, dtype=torch.float64).to(device)
        if kk >= 1:
            nn_idx, nn_dist = knn(Xs[members], kk, chunk_size)
            j = torch.randint(kk, (t,), generator=gen).to(device)
            nb = nn_idx[seeds, j]
            if max_dist == "knn":
                maxd = nn_dist.median(dim=1).values / 2
            else:  # the reference package's choice: median over the whole bump (self included)
                maxd = torch.cat([torch.cdist(Xs[members][c:c + chunk_size], Xs[members])
                                  .median(dim=1).values for c in range(0, m, chunk_size)]) / 2
            safe = nn_dist[seeds, j] < maxd[seeds] if noise else torch.ones(t, dtype=torch.bool,
                                                                              device=device)
        else:  # a single case: only noise is possible
            nb, maxd = seeds, torch.zeros(m, dtype=torch.float64, device=device)
            safe = torch.zeros(t, dtype=torch.bool, device=device)
        xi, yi = xb[seeds], yb[seeds]
        x_int = xi + r[:, None] * (xb[nb] - xi)
        y_int = yi + r * (yb[nb] - yi)
        tp = torch.clamp(maxd[seeds], max=pert)
        if kk < 1:
            tp = torch.full_like(tp, pert)
        sx = xb.std(dim=0) if m > 1 else torch.zeros_like(xb[0])
        sy = yb.std() if m > 1 else torch.zeros((), dtype=torch.float64, device=device)
        x_gn = xi + z_x * sx * tp[:, None]
        y_gn = yi + z_y * sy * tp
        new_x.append(torch.where(safe[:, None], x_int, x_gn))
        new_y.append(torch.where(safe, y_int, y_gn))
        src.append(members[seeds])
    kept = torch.cat(keep)
    syn_x = torch.cat(new_x) if new_x else Xt.new_zeros(0, Xt.shape[1])
    syn_y = torch.cat(new_y) if new_y else yt.new_zeros(0)
    out_x = torch.cat([Xt[kept], syn_x])
    out_y = torch.cat([yt[kept], syn_y])
    info = {"source": torch.cat([kept, torch.full((syn_y.numel(),), -1, device=device)]),
            "seed_of_synthetic": torch.cat(src) if src else kept.new_zeros(0),
            "synthetic": torch.cat([torch.zeros(kept.numel(), dtype=torch.bool, device=device),
                                    torch.ones(syn_y.numel(), dtype=torch.bool, device=device)]),
            "relevance": phi, "rates": rates, "bump_rare": rare_bump}
    if is_tensor:
        dt = X.dtype if X.dtype.is_floating_point else torch.float64
        out_x, out_y = out_x.to(dt), out_y.to(y.dtype if isinstance(y, torch.Tensor)
                                               and y.dtype.is_floating_point else dt)
    else:
        out_x, out_y = out_x.cpu().numpy(), out_y.cpu().numpy()
        info = {key: (v.cpu().numpy() if isinstance(v, torch.Tensor) else v) for key, v in info.items()}
    return out_x, out_y, info


def smogn(X, y, k=5, pert=0.02, sampling="balance", under_sample=True, rel_thres=0.5,
          ctrl_pts=None, xtrm_type="both", coef=1.5, seed=0, chunk_size=4096, max_dist="knn",
          return_info=False):
    """SMOGN: SMOTER interpolation for close neighbours, Gaussian noise otherwise, plus random
    under-sampling of common cases. X [n, d] and y [n] as numpy arrays or torch tensors (the
    output has the same type; tensors stay on their device). Deterministic for a given seed.

    Returns (X_new, y_new), or (X_new, y_new, info) with info["synthetic"] (bool mask),
    info["source"] (original row of kept cases, -1 for synthetic), info["seed_of_synthetic"],
    info["relevance"] (phi of the input labels), info["rates"] and info["bump_rare"]."""
    out = _resample(X, y, k, pert, sampling, under_sample, rel_thres, ctrl_pts, xtrm_type, coef,
                    seed, chunk_size, noise=True, max_dist=max_dist)
    return out if return_info else out[:2]


def smoter(X, y, k=5, sampling="balance", under_sample=True, rel_thres=0.5, ctrl_pts=None,
           xtrm_type="both", coef=1.5, seed=0, chunk_size=4096, return_info=False):
    """SMOTER: like `smogn` but every synthetic case is an interpolation (no noise)."""
    out = _resample(X, y, k, 0.02, sampling, under_sample, rel_thres, ctrl_pts, xtrm_type, coef,
                    seed, chunk_size, noise=False, max_dist="knn")
    return out if return_info else out[:2]
