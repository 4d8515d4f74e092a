"""Supervised regression losses with optional per-sample (or per-element) weights.

All losses take `pred` and `y` of the same shape ([N], [N, 1] or dense [N, 1, H, W]) and an
optional `weight` of shape [N] (per sample) or the shape of `pred` (per element, e.g. depth maps):

    L = mean_i [ w_i * mean_j D(pred_ij, y_ij) ]

with D = |e| (L1), e^2 (MSE) or Huber(e; beta) = 0.5 e^2 / beta if |e| < beta else |e| - 0.5 beta.

Also here (SPEC 4):
- Focal-R: D(e) * a(|e|)^gamma with a = 2 sigmoid(beta |e|) - 1 or tanh(beta |e|) (beta 0.2, gamma 1).
- Balanced MSE (Ren et al. 2022): `BalancedMSELoss` with BMC / GAI (GMM prior, `fit_gmm`) / BNI.
- RankSim (Gong et al. 2022): `ranksim`, a regulariser on features, added to the loss.
Every `base_loss`-style loss here has the signature loss(pred, y, weight=None) of SSIRLoss.
"""
import math

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["weighted_l1", "weighted_mse", "weighted_huber", "distance_per_sample", "DISTANCES",
           "focal_l1", "focal_mse", "BalancedMSELoss", "bmc_loss", "gai_loss", "bni_loss",
           "fit_gmm", "ranksim"]


def _elementwise(kind, pred, y, beta=1.0):
    e = pred - y
    if kind == "l1":
        return e.abs()
    if kind == "mse":
        return e * e
    if kind == "huber":
        a = e.abs()
        return torch.where(a < beta, 0.5 * e * e / beta, a - 0.5 * beta)
    raise ValueError(f"distance must be one of {DISTANCES}, got {kind!r}")


DISTANCES = ("l1", "mse", "huber")


def distance_per_sample(kind, a, b, beta=1.0):
    """D(a_i, b_i) averaged over every non-batch element: returns shape [N]."""
    d = _elementwise(kind, a, b, beta)
    return d.reshape(d.shape[0], -1).mean(dim=1) if d.dim() > 1 else d


def _weighted(kind, pred, y, weight, beta=1.0):
    if pred.shape != y.shape:
        raise ValueError(f"pred and y must have the same shape, got {tuple(pred.shape)} and "
                         f"{tuple(y.shape)}")
    return _reduce(_elementwise(kind, pred, y, beta), weight, pred)


def _reduce(d, weight, pred):
    """mean_i w_i mean_j d_ij for weight [N], mean_ij w_ij d_ij for weight of d's shape."""
    if weight is None:
        return d.mean()
    if weight.shape == d.shape:
        return (d * weight).mean()
    if weight.dim() == 1 and weight.shape[0] == d.shape[0]:
        per_sample = d.reshape(d.shape[0], -1).mean(dim=1) if d.dim() > 1 else d
        return (per_sample * weight).mean()
    raise ValueError(f"weight must have shape [N] = [{d.shape[0]}] or the shape of pred "
                     f"{tuple(pred.shape)}, got {tuple(weight.shape)}")


def weighted_l1(pred, y, weight=None):
    """mean_i w_i * mean_j |pred_ij - y_ij|."""
    return _weighted("l1", pred, y, weight)


def weighted_mse(pred, y, weight=None):
    """mean_i w_i * mean_j (pred_ij - y_ij)^2."""
    return _weighted("mse", pred, y, weight)


def weighted_huber(pred, y, weight=None, beta=1.0):
    """mean_i w_i * mean_j Huber(pred_ij - y_ij; beta), beta = 1 by default."""
    return _weighted("huber", pred, y, weight, beta)


def _focal(kind, pred, y, weight, activate, beta, gamma):
    if pred.shape != y.shape:
        raise ValueError(f"pred and y must have the same shape, got {tuple(pred.shape)} and "
                         f"{tuple(y.shape)}")
    if activate not in ("sigmoid", "tanh"):
        raise ValueError(f"activate must be 'sigmoid' or 'tanh', got {activate!r}")
    d = _elementwise(kind, pred, y)
    a = (pred - y).abs() * beta
    factor = torch.tanh(a) if activate == "tanh" else 2 * torch.sigmoid(a) - 1
    return _reduce(d * factor ** gamma, weight, pred)


def focal_l1(pred, y, weight=None, activate="sigmoid", beta=0.2, gamma=1.0):
    """Focal-R L1: mean w * |e| * (2 sigmoid(beta |e|) - 1)^gamma (or tanh(beta |e|)^gamma)."""
    return _focal("l1", pred, y, weight, activate, beta, gamma)


def focal_mse(pred, y, weight=None, activate="sigmoid", beta=0.2, gamma=1.0):
    """Focal-R MSE: mean w * e^2 * (2 sigmoid(beta |e|) - 1)^gamma (or tanh(beta |e|)^gamma)."""
    return _focal("mse", pred, y, weight, activate, beta, gamma)


# ---- Balanced MSE ------------------------------------------------------------------------------

def fit_gmm(labels, n_components=8, iters=200, tol=1e-8, seed=0):
    """1-D Gaussian mixture fitted by EM on the training labels (the GAI prior).

    Initialised at evenly spaced label quantiles with the overall variance; variances are floored
    at 1e-6 * var(labels). Returns {"means", "variances", "weights"} as float64 tensors [K]."""
    y = np.asarray(labels.detach().cpu() if isinstance(labels, torch.Tensor) else labels,
                   dtype=np.float64).reshape(-1)
    if y.size == 0 or not np.isfinite(y).all():
        raise ValueError("labels must be a non-empty array of finite values")
    k = int(n_components)
    if k < 1:
        raise ValueError(f"n_components must be >= 1, got {n_components}")
    rng = np.random.default_rng(seed)
    floor = max(1e-6 * y.var(), 1e-12)
    mu = np.quantile(y, (np.arange(k) + 0.5) / k) + rng.normal(0, 1e-6 * (y.std() + 1), k)
    var = np.full(k, max(y.var(), floor))
    pi = np.full(k, 1.0 / k)
    prev = -np.inf
    for _ in range(iters):
        logp = (-0.5 * (y[:, None] - mu) ** 2 / var - 0.5 * np.log(2 * np.pi * var) + np.log(pi))
        top = logp.max(axis=1, keepdims=True)
        ll = top[:, 0] + np.log(np.exp(logp - top).sum(axis=1))
        r = np.exp(logp - ll[:, None])
        nk = r.sum(axis=0) + 1e-12
        pi = nk / y.size
        mu = (r * y[:, None]).sum(axis=0) / nk
        var = np.maximum((r * (y[:, None] - mu) ** 2).sum(axis=0) / nk, floor)
        if ll.mean() - prev < tol:
            break
        prev = ll.mean()
    t = lambda a: torch.as_tensor(a, dtype=torch.float64)  # noqa: E731
    return {"means": t(mu), "variances": t(var), "weights": t(pi)}


def _flat(pred, y, weight):
    if pred.shape != y.shape:
        raise ValueError(f"pred and y must have the same shape, got {tuple(pred.shape)} and "
                         f"{tuple(y.shape)}")
    if weight is not None and weight.shape != pred.shape:
        if weight.dim() != 1 or weight.shape[0] != pred.shape[0]:
            raise ValueError(f"weight must have shape [N] = [{pred.shape[0]}] or the shape of pred "
                             f"{tuple(pred.shape)}, got {tuple(weight.shape)}")
        weight = weight.reshape((-1,) + (1,) * (pred.dim() - 1)).expand_as(pred)
    w = None if weight is None else weight.reshape(-1)
    return pred.reshape(-1), y.reshape(-1), w


def _mean(loss, w):
    return loss.mean() if w is None else (loss * w).mean()


def bmc_loss(pred, y, noise_var, weight=None):
    """Batch-based Monte-Carlo: CE over logits -(pred_i - y_j)^2 / (2 s^2) with the diagonal as
    the class, times 2 s^2 (detached). Every output element is one sample (M x M logits)."""
    p, t, w = _flat(pred, y, weight)
    if p.numel() > 16384:
        raise ValueError(f"bmc_loss builds an M x M logit matrix; got M = {p.numel()} output "
                         f"elements: sub-sample pixels or use mode='bni'")
    logits = -(p[:, None] - t[None, :]) ** 2 / (2 * noise_var)
    ce = F.cross_entropy(logits, torch.arange(p.numel(), device=p.device), reduction="none")
    return _mean(ce, w) * (2 * noise_var).detach()


def gai_loss(pred, y, noise_var, gmm, weight=None):
    """GMM-based analytic integration:
    (e^2 / (2 s^2) + log(s^2)/2 + logsumexp_k[log pi_k - log(v_k + s^2)/2 - (pred - mu_k)^2 /
    (2 (v_k + s^2))]) * 2 s^2 (detached)."""
    p, t, w = _flat(pred, y, weight)
    mu, v, pi = (gmm[k].to(device=p.device, dtype=p.dtype) for k in ("means", "variances", "weights"))
    mse = (p - t) ** 2 / (2 * noise_var) + 0.5 * torch.log(noise_var)
    s = v + noise_var
    bal = torch.logsumexp(torch.log(pi) - 0.5 * torch.log(s) - (p[:, None] - mu) ** 2 / (2 * s), dim=1)
    return _mean(mse + bal, w) * (2 * noise_var).detach()


def bni_loss(pred, y, noise_var, bucket_centers, bucket_weights, weight=None):
    """Bin-based numerical integration:
    (e^2 / (2 s^2) + logsumexp_b[log p_b - (pred - c_b)^2 / (2 s^2)]) * 2 s^2 (detached), with
    p_b the training label distribution over bins (empty bins contribute nothing) and c_b the
    label value of bin b (BalancedMSELoss: the bin's lower edge, k for integer ages, as in the
    official code)."""
    p, t, w = _flat(pred, y, weight)
    c = bucket_centers.to(device=p.device, dtype=p.dtype)
    logp = torch.log(bucket_weights.to(device=p.device, dtype=p.dtype))
    mse = (p - t) ** 2 / (2 * noise_var)
    bal = torch.logsumexp(logp - (p[:, None] - c) ** 2 / (2 * noise_var), dim=1)
    return _mean(mse + bal, w) * (2 * noise_var).detach()


class BalancedMSELoss(torch.nn.Module):
    """Balanced MSE (Ren et al. 2022) as a `base_loss(pred, y, weight=None)`.

    Args:
        mode: "bmc" (no prior needed), "gai" (GMM prior: `gmm` or `train_labels`) or "bni"
            (label histogram: `bins` and `train_labels`).
        init_noise_sigma: initial noise std s (noise_var = s^2).
        learn_sigma: s is a parameter (give it to the optimiser, as in the paper) or a constant.
        gmm: dict of means / variances / weights (see fit_gmm); fitted from train_labels if None.
        bins, train_labels: the LabelBins and training labels for GAI fitting / BNI histogram
            (BNI prior: weight count_b / total at the label value y_min + b * bin_width).
        n_components: GMM components fitted for GAI.
    """

    def __init__(self, mode="bmc", init_noise_sigma=1.0, learn_sigma=True, gmm=None, bins=None,
                 train_labels=None, n_components=8):
        super().__init__()
        if mode not in ("bmc", "gai", "bni"):
            raise ValueError(f"mode must be 'bmc', 'gai' or 'bni', got {mode!r}")
        sigma = float(init_noise_sigma)
        if not (math.isfinite(sigma) and sigma > 0):
            raise ValueError(f"init_noise_sigma must be finite and > 0, got {init_noise_sigma}")
        self.mode = mode
        s = torch.tensor(sigma, dtype=torch.float32)
        if learn_sigma:
            self.noise_sigma = torch.nn.Parameter(s)
        else:
            self.register_buffer("noise_sigma", s)
        if mode == "gai":
            if gmm is None:
                if train_labels is None:
                    raise ValueError("mode='gai' needs gmm or train_labels to fit the GMM prior")
                gmm = fit_gmm(train_labels, n_components)
            for k in ("means", "variances", "weights"):
                self.register_buffer(f"gmm_{k}", torch.as_tensor(gmm[k], dtype=torch.float32))
        if mode == "bni":
            if bins is None or train_labels is None:
                raise ValueError("mode='bni' needs bins and train_labels (the label histogram)")
            # The prior sits on the label values k (each bin's lower edge y_min + k * width, the
            # integer ages of the official code), not on the bin centres k + 0.5.
            counts = bins.counts(train_labels).astype(np.float64)
            self.register_buffer("bucket_centers", torch.as_tensor(bins.edges()[:-1],
                                                                   dtype=torch.float32))
            self.register_buffer("bucket_weights", torch.as_tensor(counts / counts.sum(),
                                                                   dtype=torch.float32))

    @property
    def noise_var(self):
        return self.noise_sigma ** 2

    def forward(self, pred, y, weight=None):
        nv = self.noise_var.to(pred.dtype)
        if self.mode == "bmc":
            return bmc_loss(pred, y, nv, weight)
        if self.mode == "gai":
            gmm = {"means": self.gmm_means, "variances": self.gmm_variances,
                   "weights": self.gmm_weights}
            return gai_loss(pred, y, nv, gmm, weight)
        return bni_loss(pred, y, nv, self.bucket_centers, self.bucket_weights, weight)


# ---- RankSim -----------------------------------------------------------------------------------

def _rank_normalised(seq):
    """(rank + 1) / n along dim 1, rank 0 for the largest value. Ties as in the RankSim code
    (argsort(argsort(seq).flip(1)) with PyTorch's stable CPU sort): the later index ranks first,
    made deterministic on every device with a stable sort."""
    order = torch.argsort(seq, dim=1, stable=True).flip(1)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(seq.shape[1], device=seq.device).expand_as(order))
    return (ranks + 1).to(seq.dtype) / seq.shape[1]


class _BlackboxRank(torch.autograd.Function):
    """Row-wise normalised ranks; backward by blackbox differentiation (Vlastelica et al. 2020):
    grad = -(rank(s) - rank(s + lam * grad_out)) / lam. The sign is the paper's: rank decreases
    as s grows, so a positive grad_out on an element yields a negative gradient (descent raises
    that element's similarity and lowers its rank); tests/test_losses.py checks it by hand."""

    @staticmethod
    def forward(ctx, seq, lam):
        rank = _rank_normalised(seq)
        ctx.lam = lam
        ctx.save_for_backward(seq, rank)
        return rank

    @staticmethod
    def backward(ctx, grad):
        seq, rank = ctx.saved_tensors
        perturbed = _rank_normalised(seq + ctx.lam * grad)
        return -(rank - perturbed) / (ctx.lam + 1e-8), None


def ranksim(features, y, gamma=100.0, lam=2.0, generator=None):
    """RankSim regulariser (Gong et al. 2022): gamma * sum_i mean_j (rank(S_i)_j - rank(-|y_i -
    y_j|)_j)^2 with S the cosine-similarity matrix of the features, over a sub-batch holding
    each distinct label once (a random representative per label; `generator` makes it
    reproducible). Add it to the supervised loss; gradients flow into `features` only."""
    if features.dim() < 2 or features.shape[0] != y.reshape(-1).shape[0]:
        raise ValueError(f"features must be [N, ...] with one label per row, got features "
                         f"{tuple(features.shape)} and y {tuple(y.shape)}")
    t = y.reshape(-1)
    n = t.shape[0]
    uniq, inv = torch.unique(t, return_inverse=True)
    if uniq.numel() < n:
        perm = torch.randperm(n, generator=generator).to(t.device)
        pos = torch.full((uniq.numel(),), n, dtype=torch.long, device=t.device)
        pos.scatter_reduce_(0, inv[perm], torch.arange(n, device=t.device), "amin")
        pick = perm[pos]
        x, t = features[pick], t[pick]
    else:
        x = features
    z = F.normalize(x.reshape(x.shape[0], -1), dim=1)
    sim = z @ z.t()
    label_ranks = _rank_normalised(-(t[:, None] - t[None, :]).abs().to(sim.dtype))
    feat_ranks = _BlackboxRank.apply(sim, float(lam))
    return gamma * ((feat_ranks - label_ranks) ** 2).mean(dim=1).sum()
