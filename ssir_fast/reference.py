"""Readable reference implementations, independent of the fused kernels.

- `perturb_reference`: the perturbation update in float64, one sample at a time.
- `naive_ssir_loss`: a literal transcription of Algorithm 1 as a research script would write it
  (a separate no-grad forward for the target, a fresh forward for step 1, parameter gradients
  computed by `.backward()` and thrown away). It is the correctness reference for SSIRLoss and the
  "naive" baseline of the benchmarks. It does not protect BatchNorm statistics or RNG streams.
"""
import math

import torch

from .losses import distance_per_sample, weighted_l1

__all__ = ["perturb_reference", "naive_ssir_loss"]


def perturb_reference(x, g, epsilon, clip_min=None, clip_max=None):
    """float64: out_i = clip(x_i + eps_i * g_i / ||g_i||_2), r_i = 0 where ||g_i|| = 0; eps_i is
    `epsilon` (a float) or `epsilon[i]` (a tensor of per-sample radii)."""
    xd, gd = x.detach().double(), g.detach().double()
    out = torch.empty_like(xd)
    for i in range(xd.shape[0]):
        eps = float(epsilon[i]) if isinstance(epsilon, torch.Tensor) else float(epsilon)
        norm = torch.sqrt((gd[i] * gd[i]).sum())
        r = gd[i] * (eps / norm) if norm > 0 else torch.zeros_like(gd[i])
        v = xd[i] + r
        for bound, op in ((clip_min, torch.maximum), (clip_max, torch.minimum)):
            if bound is None:
                continue
            b = torch.as_tensor(bound, dtype=torch.float64, device=xd.device)
            if b.numel() > 1:  # per channel: v has shape [C, ...]
                b = b.reshape((-1,) + (1,) * (v.dim() - 1))
            v = op(v, b)
        out[i] = v
    return out


def naive_ssir_loss(model, x, y, bin_width=1.0, epsilon=1e-3, lam=0.1, distance="l1", n_steps=2,
                    target="noisy", clip_min=None, clip_max=None, base_loss=None, weight=None,
                    noise=None, huber_beta=1.0, rho=0.5, eps_max=None, delta=None, index=None):
    """Algorithm 1, literally. Returns (loss, pred, x_adv); call loss.backward() to train.

    epsilon="auto": eps_i = rho * delta / ||grad_x D(f(x_i), y~_i)||, each sample's gradient from
    its own forward (0 where the gradient is 0, capped at eps_max). index: the rows that get the
    perturbation and the consistency term (the subset mode); default all."""
    base_loss = base_loss or weighted_l1
    delta = bin_width if delta is None else delta
    D = lambda a, b: distance_per_sample(distance, a, b, huber_beta).mean()  # noqa: E731

    with torch.no_grad():
        y_hat = model(x)
    if target == "noisy":
        z = noise if noise is not None else (torch.rand_like(y_hat) * 2 - 1) * bin_width
        y_tilde = y_hat + z
    else:
        y_tilde = y_hat
    x_all = x
    if index is not None:
        x, y_tilde = x[index], y_tilde[index]

    def clip(v):
        if clip_min is None and clip_max is None:
            return v
        shape = (1, -1) + (1,) * (v.dim() - 2)
        lo = None if clip_min is None else torch.as_tensor(clip_min, dtype=v.dtype, device=v.device)
        hi = None if clip_max is None else torch.as_tensor(clip_max, dtype=v.dtype, device=v.device)
        lo = lo.reshape(shape) if lo is not None and lo.numel() > 1 else lo
        hi = hi.reshape(shape) if hi is not None and hi.numel() > 1 else hi
        return torch.clamp(v, lo, hi)

    def radius():
        if epsilon != "auto":
            return [epsilon] * x.shape[0]
        eps = []
        for i in range(x.shape[0]):
            xi = x[i:i + 1].detach().clone().requires_grad_(True)
            (gi,) = torch.autograd.grad(D(model(xi), y_tilde[i:i + 1]), xi)
            norm = float(gi.double().norm())
            e = rho * delta / norm if norm > 0 else 0.0
            eps.append(e if eps_max is None else min(e, eps_max))
        return eps

    eps = radius()

    def step(point):
        saved = [p.grad for p in model.parameters()]
        r = torch.zeros_like(point, requires_grad=True)
        D(model(point + r), y_tilde).backward()  # parameter gradients are computed, then dropped
        for p, s in zip(model.parameters(), saved):
            p.grad = s
        g = r.grad
        out = []
        for i in range(g.shape[0]):
            norm = g[i].norm()
            direction = g[i] / norm if norm > 0 else torch.zeros_like(g[i])
            out.append(x[i] + eps[i] * direction)
        return clip(torch.stack(out)).detach()

    x_adv = x
    for _ in range(n_steps):
        x_adv = step(x_adv)
    pred = model(x_all)
    supervised = base_loss(pred, y.reshape(pred.shape), weight)
    consistency = D(model(x_adv), y_tilde)
    return supervised + lam * consistency, pred, x_adv


# ---- DIR evaluation (docs/algorithm.md, sections 4 and 6) ---------------------------------------
def _np64(x):
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    import numpy as np
    return np.asarray(x, dtype=np.float64).reshape(-1)


def bin_floor_reference(y, y_min, bin_width, num_bins):
    """Unclamped bin position of float64 labels `y` (numpy), written out on its own: the exact
    float64 quotient floor((y - y_min) / bin_width), except for decimal widths (1 / bin_width an
    integer s in [2, 2^24], bin_width not a power of two, y_min * s an integer k0,
    |k0| + num_bins <= 2^22), where it is the official DIR float32 arithmetic
    floor(float32(float32(y) * s)) - k0 (nyud2-dir: int(depth * np.float32(10)) - 7); see
    ssir_fast.imbalance for the reason."""
    import numpy as np
    y = np.asarray(y, dtype=np.float64)
    inv = 1.0 / bin_width
    if not inv <= 2 ** 25:                      # also inf for a subnormal width
        return np.floor((y - y_min) / bin_width)
    s = round(inv)
    k0 = round(y_min * s)
    mantissa, _ = math.frexp(bin_width)
    decimal = (mantissa != 0.5 and 2 <= s <= 2 ** 24 and abs(inv - s) <= 1e-9 * s
               and abs(y_min * s - k0) <= 1e-9 * max(1.0, abs(y_min * s))
               and abs(k0) + num_bins <= 2 ** 22)
    if not decimal:
        return np.floor((y - y_min) / bin_width)
    f32 = np.finfo(np.float32).max
    y32 = np.clip(y, -f32, f32).astype(np.float32)
    with np.errstate(over="ignore"):
        return np.floor(y32 * np.float32(s)).astype(np.float64) - k0


def bin_reduce_reference(pred, target, y_min, bin_width, num_bins, mask=None, floor=1e-8):
    """float64 numpy `bin_reduce`, one bin at a time (columns as ssir_fast.ops.bin_reduce.COLUMNS;
    NaN/inf pairs are counted in the last column and excluded)."""
    import numpy as np
    p, y = _np64(pred), _np64(target)
    if mask is not None:
        m = _np64(mask) != 0
        p, y = p[m], y[m]
    table = np.zeros((num_bins, 12))
    ok = np.isfinite(p) & np.isfinite(y)
    for yi in y[~ok]:
        k = (int(np.clip(bin_floor_reference(yi, y_min, bin_width, num_bins), 0, num_bins - 1))
             if np.isfinite(yi) else 0)
        table[k, 11] += 1
    p, y = p[ok], y[ok]
    t = bin_floor_reference(y, y_min, bin_width, num_bins)
    b = np.clip(t, 0, num_bins - 1).astype(np.int64)
    for k in range(num_bins):
        sel = b == k
        pk, yk, tk = p[sel], y[sel], t[sel]
        e = pk - yk
        a = np.abs(e)
        pc, yc = np.maximum(pk, floor), np.maximum(yk, floor)
        r = np.maximum(pc / yc, yc / pc)
        table[k] = [sel.sum(), a.sum(), (e * e).sum(), np.log(np.maximum(a, floor)).sum(),
                    (a < floor).sum(), (r < 1.25).sum(), (r < 1.25 ** 2).sum(), (r < 1.25 ** 3).sum(),
                    (a / yc).sum(), np.abs(np.log10(pc) - np.log10(yc)).sum(),
                    ((tk < 0) | (tk >= num_bins)).sum(), table[k, 11]]
    return table


def dir_shot_metrics_numpy(preds, labels, train_labels, y_min=0.0, bin_width=1.0, num_bins=None,
                           many_thr=100, few_thr=20, floor=1e-8):
    """The DIR shot metrics as the official DIR code computes them: a Python loop over the test
    bins with numpy masks, all in float64 (the correctness reference of ssir_fast.metrics and the
    "numpy loop" baseline of the benchmarks).

    A test pair belongs to the group of its bin's TRAINING count: many > many_thr, few < few_thr,
    medium otherwise. Group metrics are averages over the group's test pairs; bmae is the mean of
    the per-bin MAE over the group's non-empty test bins; gm = exp(mean log max(|e|, floor)).
    Unlike the official code, an empty group gives NaN instead of crashing.
    Returns {"all"|"many"|"medium"|"few": {"mae", "mse", "rmse", "gm", "bmae", "count", "delta1",
    "delta2", "delta3", "absrel", "log10"}}.
    """
    import numpy as np
    p, y, ytr = _np64(preds), _np64(labels), _np64(train_labels)
    if num_bins is None:
        num_bins = int(np.floor((max(y.max(), ytr.max()) - y_min) / bin_width)) + 1
    bin_of = lambda v: np.clip(bin_floor_reference(v, y_min, bin_width, num_bins), 0,  # noqa: E731
                               num_bins - 1).astype(np.int64)
    b, btr = bin_of(y), bin_of(ytr)
    acc = {g: {"n": 0, "abs": 0.0, "sq": 0.0, "log": 0.0, "d1": 0, "d2": 0, "d3": 0, "rel": 0.0,
               "l10": 0.0, "bin_mae": []} for g in ("all", "many", "medium", "few")}
    for k in np.unique(b):
        sel = b == k
        n_train = int((btr == k).sum())
        group = "many" if n_train > many_thr else ("few" if n_train < few_thr else "medium")
        e = p[sel] - y[sel]
        a = np.abs(e)
        pc, yc = np.maximum(p[sel], floor), np.maximum(y[sel], floor)
        r = np.maximum(pc / yc, yc / pc)
        for g in ("all", group):
            s = acc[g]
            s["n"] += int(sel.sum())
            s["abs"] += a.sum()
            s["sq"] += (e ** 2).sum()
            s["log"] += np.log(np.maximum(a, floor)).sum()
            s["d1"] += int((r < 1.25).sum())
            s["d2"] += int((r < 1.25 ** 2).sum())
            s["d3"] += int((r < 1.25 ** 3).sum())
            s["rel"] += (a / yc).sum()
            s["l10"] += np.abs(np.log10(pc) - np.log10(yc)).sum()
            s["bin_mae"].append(a.mean())
    out = {}
    for g, s in acc.items():
        n = s["n"]
        if n == 0:
            out[g] = {key: float("nan") for key in ("mae", "mse", "rmse", "gm", "bmae", "delta1",
                                                    "delta2", "delta3", "absrel", "log10")}
            out[g]["count"] = 0
            continue
        out[g] = {"mae": s["abs"] / n, "mse": s["sq"] / n, "rmse": float(np.sqrt(s["sq"] / n)),
                  "gm": float(np.exp(s["log"] / n)), "bmae": float(np.mean(s["bin_mae"])),
                  "count": n, "delta1": s["d1"] / n, "delta2": s["d2"] / n, "delta3": s["d3"] / n,
                  "absrel": s["rel"] / n, "log10": s["l10"] / n}
    return out


__all__ += ["bin_floor_reference", "bin_reduce_reference", "dir_shot_metrics_numpy"]


def bin_feature_stats_reference(features, bin_index, num_bins, unbiased=True):
    """Float64 per-bin loop: (count [B], mean [B, C], var [B, C]); indices outside [0, B) ignored,
    var 0 for bins with <= 1 sample (unbiased) or empty bins."""
    f = features.detach().double().cpu()
    idx = bin_index.cpu()
    count = torch.zeros(num_bins, dtype=torch.long)
    mean = torch.zeros(num_bins, f.shape[1], dtype=torch.float64)
    var = torch.zeros(num_bins, f.shape[1], dtype=torch.float64)
    for b in range(num_bins):
        rows = f[idx == b]
        count[b] = rows.shape[0]
        if rows.shape[0]:
            mean[b] = rows.mean(0)
        if rows.shape[0] > (1 if unbiased else 0):
            var[b] = rows.var(0, unbiased=unbiased)
    return count, mean, var


def fds_calibrate_reference(features, bin_index, mean, var, smoothed_mean, smoothed_var, lo, hi):
    """Float64, one sample at a time, with the official DIR code's rules (`calibrate_mean_var`):
    z' = (z - mu_b) sqrt(clamp(var~_b / var_b, lo, hi)) + mu~_b on the dimensions with
    var_b != 0, the others unchanged; the whole sample unchanged when sum(var_b) < 1e-10 or b is
    outside [0, B)."""
    f = features.detach().double().cpu()
    out = f.clone()
    m, v, sm, sv = (t.detach().double().cpu() for t in (mean, var, smoothed_mean, smoothed_var))
    for n in range(f.shape[0]):
        b = int(bin_index[n])
        if not 0 <= b < m.shape[0] or float(v[b].sum()) < 1e-10:
            continue
        for c in range(f.shape[1]):
            if float(v[b, c]) != 0.0:
                ratio = min(max(float(sv[b, c]) / float(v[b, c]), lo), hi)
                out[n, c] = (f[n, c] - m[b, c]) * ratio ** 0.5 + sm[b, c]
    return out


__all__ += ["bin_feature_stats_reference", "fds_calibrate_reference"]
