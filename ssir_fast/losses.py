"""Supervised regression losses with optional per-sample (or per-element) weights.

All losses take `pred` and `y` of the same shape ([N], [N, 1], vector targets [N, D] or dense
[N, 1, H, W]) and an optional `weight` of shape [N] (per sample) or the shape of `pred` (per
element, e.g. depth maps):

    L = mean_i [ w_i * mean_j D(pred_ij, y_ij) ]

with D = |e| (L1), e^2 (MSE) or Huber(e; beta) = 0.5 e^2 / beta if |e| < beta else |e| - 0.5 beta.

Also here (docs/algorithm.md, section 5):
- Focal-R: D(e) * a(|e|)^gamma with a = 2 sigmoid(beta |e|) - 1 or tanh(beta |e|) (beta 0.2, gamma 1).
- Balanced MSE (Ren et al. 2022): `BalancedMSELoss` with BMC / GAI (GMM prior, `fit_gmm`) / BNI;
  for vector targets [N, D] the multi-dimensional BMC (`bmc_loss_md`); GAI and BNI are 1-D only.
- RankSim (Gong et al. 2022): `ranksim` (module `ssir_fast.ranksim`, also importable from here),
  a regulariser on features, added to the loss (label distances Euclidean for vector targets).
Every `base_loss`-style loss here has the signature loss(pred, y, weight=None) of SSIRLoss.
"""
import math

import numpy as np
import torch
import torch.nn.functional as F

from .ops._common import require_finite_nonneg
from .ranksim import _BlackboxRank, _rank_normalised, ranksim  # noqa: F401 (here since 0.1)

__all__ = ["weighted_l1", "weighted_mse", "weighted_huber", "distance_per_sample", "DISTANCES",
           "LOSSES", "focal_l1", "focal_mse", "BalancedMSELoss", "bmc_loss", "bmc_loss_md",
           "gai_loss", "bni_loss", "fit_gmm", "ranksim"]


def _at_least_fp32(pred, y):
    """pred and y in their common dtype, at least float32: a bf16/fp16 prediction under autocast
    is widened, the labels keep their precision (never rounded to the prediction's dtype)."""
    if pred.dtype == y.dtype and pred.dtype in _WIDE:   # the common case: nothing to convert
        return pred, y
    acc = torch.promote_types(torch.promote_types(pred.dtype, y.dtype), torch.float32)
    return pred.to(acc), y.to(acc)


_WIDE = (torch.float32, torch.float64)


def _elementwise(kind, pred, y, beta=1.0):
    pred, y = _at_least_fp32(pred, y)
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
# the supervised losses by name (the training CLI's --loss)
LOSSES = ("l1", "mse", "huber", "focal-l1", "focal-mse", "bmc", "gai", "bni")


def distance_per_sample(kind, a, b, beta=1.0):
    """D(a_i, b_i) averaged over every non-batch element: returns shape [N]."""
    d = _elementwise(kind, a, b, beta)
    if d.dim() > 1 and d.numel() == d.shape[0]:   # [N, 1]: the mean of one element is itself
        return d.reshape(d.shape[0])
    return d.reshape(d.shape[0], -1).mean(dim=1) if d.dim() > 1 else d


def _weighted(kind, pred, y, weight, beta=1.0):
    if pred.shape != y.shape:
        raise ValueError(f"pred and y must have the same shape, got {tuple(pred.shape)} and "
                         f"{tuple(y.shape)}")
    return _reduce(_elementwise(kind, pred, y, beta), weight, pred)


def check_weight(weight, pred, values=False):
    """Refuse a weight that is no tensor of shape [N] or pred's shape, and with `values` one with
    NaN, inf or negative entries, which would make the loss NaN or negative without a word (a
    host read: SSIRLoss(validate=True) does it; the losses themselves, called every step by the
    training loop, do not)."""
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be None or a tensor of shape [N] or the shape of pred, got "
                        f"{type(weight).__name__}")
    n = pred.shape[0] if pred.dim() else 1
    if weight.shape != pred.shape and not (weight.dim() == 1 and weight.shape[0] == n) and \
            not _per_row(weight, pred):
        raise ValueError(f"weight must have {n} rows (one per sample): shape [N] = [{n}] or the "
                         f"shape of pred {tuple(pred.shape)}, got {tuple(weight.shape)}")
    if values and weight.numel() and not bool((torch.isfinite(weight) & (weight >= 0)).all()):
        bad = "NaN or inf" if not bool(torch.isfinite(weight).all()) else "negative"
        raise ValueError(f"weight has {bad} entries; per-sample weights must be finite and >= 0")


def _per_row(weight, pred):
    """A weight [N, 1] for a vector output [N, D]: one weight per sample (the loaders' shape)."""
    return is_vector(pred) and weight.shape == (pred.shape[0], 1)


def _reduce(d, weight, pred):
    """mean_i w_i mean_j d_ij for weight [N], mean_ij w_ij d_ij for weight of d's shape."""
    if weight is None:
        return d.mean()
    check_weight(weight, pred)
    if _per_row(weight, pred):
        weight = weight.reshape(-1)
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
    beta, gamma = require_finite_nonneg(beta, "beta"), require_finite_nonneg(gamma, "gamma")
    pred, y = _at_least_fp32(pred, y)
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
    if weight is not None:
        check_weight(weight, pred)
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


def is_vector(t):
    """True for a vector target / output [N, D] with D > 1 (a 2-D tensor of several columns);
    [N], [N, 1] and dense [N, 1, H, W] are scalar targets."""
    return t.dim() == 2 and t.shape[1] > 1


def bmc_loss_md(pred, y, noise_var, weight=None):
    """Multi-dimensional BMC (identity noise covariance s^2 I), for vector targets [N, D]:

        logits_ij = log N(y_j; pred_i, s^2 I) = -||pred_i - y_j||^2 / (2 s^2) + const
        L = mean_i w_i CE(logits_i, i) * 2 s^2 (detached)

    The constant -D/2 log(2 pi s^2) is the same in every logit of a row and cancels in the
    cross-entropy. For D = 1 this is `bmc_loss`."""
    if pred.shape != y.shape or pred.dim() != 2:
        raise ValueError(f"bmc_loss_md takes pred and y of the same shape [N, D], got "
                         f"{tuple(pred.shape)} and {tuple(y.shape)}")
    if weight is not None:
        check_weight(weight, pred)
        weight = weight.reshape(-1) if _per_row(weight, pred) else weight
        if weight.shape == pred.shape:
            raise ValueError(f"bmc_loss_md takes per-sample weights [N] = [{pred.shape[0]}] (one "
                             f"cross-entropy term per sample), got {tuple(weight.shape)}")
    n = pred.shape[0]
    if n > 16384:
        raise ValueError(f"bmc_loss_md builds an N x N logit matrix; got N = {n} samples")
    # the exact squared distance (cdist's matrix-product form loses digits near the diagonal)
    logits = -((pred[:, None, :] - y[None, :, :]) ** 2).sum(dim=2) / (2 * noise_var)
    ce = F.cross_entropy(logits, torch.arange(n, device=pred.device), reduction="none")
    return _mean(ce, weight) * (2 * noise_var).detach()


def _refuse_vector(mode, t):
    if is_vector(t):
        raise ValueError(f"Balanced MSE mode={mode!r} is defined for a scalar target; got a vector "
                         f"target of shape {tuple(t.shape)} (D = {t.shape[1]}): use mode='bmc' "
                         f"(its multi-dimensional form) for vector targets")


def gai_loss(pred, y, noise_var, gmm, weight=None):
    """GMM-based analytic integration:
    (e^2 / (2 s^2) + log(s^2)/2 + logsumexp_k[log pi_k - log(v_k + s^2)/2 - (pred - mu_k)^2 /
    (2 (v_k + s^2))]) * 2 s^2 (detached). Scalar targets only."""
    _refuse_vector("gai", pred)
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
    official code). Scalar targets only."""
    _refuse_vector("bni", pred)
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
            (label histogram: `bins` and `train_labels`). For vector targets (pred [N, D],
            D > 1) "bmc" is the multi-dimensional form `bmc_loss_md`; "gai" and "bni" refuse
            them.
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
        if mode != "bmc":
            # GAI's GMM and BNI's histogram prior are 1-D integrals over the label axis
            if bins is not None and getattr(bins, "dim", 1) > 1:
                raise ValueError(f"mode={mode!r} needs scalar label bins; got bins over "
                                 f"{bins.dim} dimensions: use mode='bmc' for vector targets")
            if train_labels is not None and is_vector(torch.as_tensor(train_labels)):
                _refuse_vector(mode, torch.as_tensor(train_labels))
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
        pred, y = _at_least_fp32(pred, y)
        nv = self.noise_var.to(pred.dtype)
        if self.mode == "bmc":
            if is_vector(pred):
                return bmc_loss_md(pred, y, nv, weight)
            return bmc_loss(pred, y, nv, weight)
        if self.mode == "gai":
            gmm = {"means": self.gmm_means, "variances": self.gmm_variances,
                   "weights": self.gmm_weights}
            return gai_loss(pred, y, nv, gmm, weight)
        return bni_loss(pred, y, nv, self.bucket_centers, self.bucket_weights, weight)
