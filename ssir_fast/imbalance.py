"""Label bins and re-weighting for imbalanced regression.

`LabelBins` is the one description of the label bins shared by re-weighting, LDS, FDS, the
metrics and the SSIR bin width, so nobody re-derives bins:

    bin(y) = clamp(floor((y - y_min) / bin_width), 0, num_bins - 1)

Decimal bin widths (0.1 m for NYUD2) follow the official DIR arithmetic instead: when bin_width is
not a power of two, 1 / bin_width is an integer s in [2, 2^24] and y_min * s an integer k0 (and
|k0| + num_bins <= 2^22),

    bin(y) = clamp(floor(float32(float32(y) * float32(s))) - k0, 0, num_bins - 1)

which is nyud2-dir's `int(depth * np.float32(10))` on float32 depths minus bucket_start = 7. The
float64 quotient would put a depth on a decimal edge one bin low (float32 0.9 m = 0.89999998;
(0.89999998 - 0.7) / 0.1 = 1.9999998: bucket 8, where the official code says 9), about 0.5 % of
the millimetre depths; with the float32 product every millimetre depth 0.001..10 m lands in its
exact decimal bucket, as in the official code. The rule is applied to float32(y) whatever the
labels' dtype, so a float32 depth map and its float64 copy get the same bins. Power-of-two widths
(ages: width 1) keep the exact float64 rule. The `bin_reduce` kernels (csrc/bin_reduce_common.h,
`BinIndexer`) use the same rule.

Labels outside [y_min, y_min + num_bins * bin_width) fall into the edge bins (the DIR age
convention merges labels >= 120 into bin 120 with num_bins = 121: `LabelBins.dir_age()`; NYUD2
merges depths below 0.7 m into the 0.7 m bin); with `clamp=False` they get index -1 instead,
which the FDS ops and samplers treat as "ignore". Labels *far* outside the bins (more than the
bins' span beyond them, or negative when every bin is non-negative: an age of -5, a depth in
millimetres) are almost always a data error, and `LabelBins.counts` warns about them.

Re-weighting (docs/algorithm.md, section 5, as in the DIR code): per-bin effective counts

    c_b = count_b                          reweight="none"     (weights all 1)
    c_b = clip(count_b, lo, hi)            reweight="inverse"  (INV; age recipe [5, 1000],
                                                                NYUD2 recipe: no clip)
    c_b = sqrt(count_b)                    reweight="sqrt_inv" (SQINV)
    c_b <- sum_k K[k] c_{b+k}              lds=True (LDS, K the window of lds_kernel; padding
                                                     'constant' (zeros, age) or 'reflect' (NYUD2))
    w_i = s / c_{bin(y_i)},   s such that mean_i w_i = 1 over the training labels (pixels).

`DIR_RECIPES` holds the two official settings: "age" (agedb-dir / imdb-wiki-dir) and "depth"
(nyud2-dir). Dense labels (depth maps) are binned per pixel; the weights have the labels' shape.

Vector targets ([N, D] labels): per-dimension sequences make `LabelBins` a D-dim grid with a
flat row-major index; weights and the separable LDS work on its `size` bins (`label_grid`).

INV + LDS and the official code: the official scripts keep INV counts as int64 and scipy's
`convolve1d` then writes the smoothed counts into an int64 array, truncating them (SQINV counts
are floats, untouched). The weights differ from the exact ones by 2-8 % on AgeDB. The exact
float smoothing is the default here; `lds_int_counts=True` reproduces the truncation.
"""
import math
import numbers
import warnings
from dataclasses import dataclass

import numpy as np
import torch

# the rule lives with the kernels that share it
from .label_grid import GridBins, grid_lookup, is_sequence, per_dim, vector_fields
from .separable import smooth_grid
from .ops.binning import check_num_bins, raw_bin_index

__all__ = ["LabelBins", "raw_bin_index", "lds_kernel", "bin_weights", "sample_weights",
           "lookup_weights", "weighted_sampler", "REWEIGHTS", "KERNELS", "PADDINGS", "DIR_RECIPES"]

REWEIGHTS = ("none", "inverse", "sqrt_inv")
KERNELS = ("gaussian", "triang", "laplace")
PADDINGS = ("constant", "reflect")

# The official weighting of each DIR code base (keyword arguments of `bin_weights`).
DIR_RECIPES = {
    "age": dict(inv_clip=(5, 1000), lds_padding="constant"),   # agedb-dir, imdb-wiki-dir
    "depth": dict(inv_clip=None, lds_padding="reflect"),       # nyud2-dir (per-pixel counts)
}


@dataclass(frozen=True)
class LabelBins(GridBins):
    y_min: float
    bin_width: float
    num_bins: int
    clamp: bool = True  # out-of-range labels go to the edge bins (True) or get index -1 (False)

    def __post_init__(self):
        if vector_fields(self.y_min, self.bin_width, self.num_bins):
            self._init_grid()
            return
        if not (math.isfinite(self.y_min)):
            raise ValueError(f"y_min must be finite, got {self.y_min}")
        if not (math.isfinite(self.bin_width) and self.bin_width > 0):
            raise ValueError(f"bin_width must be finite and > 0, got {self.bin_width}")
        if int(self.num_bins) != self.num_bins or self.num_bins < 1:
            raise ValueError(f"num_bins must be an integer >= 1, got {self.num_bins}")
        check_num_bins(self.num_bins)

    @classmethod
    def dir_age(cls, max_target=121):
        """The DIR age bins: integer ages 0..max_target-1, ages >= max_target - 1 merged into the
        last bin."""
        return cls(0.0, 1.0, int(max_target))

    @property
    def y_max(self):
        """Upper edge of the last bin (a tuple, one per dimension, for a grid)."""
        if self.vector:
            return tuple(ax.y_max for ax in self.axes())
        return self.y_min + self.num_bins * self.bin_width

    @classmethod
    def from_labels(cls, labels, bin_width, y_min=None):
        """Bins of width `bin_width` covering all `labels` (from floor(min / width) * width).

        A grid comes from labels [N, D] with `bin_width` (or `y_min`) a sequence of D entries
        (a number is repeated for every dimension); each dimension is covered as in 1-D. With a
        number for both, labels of any shape are flattened into one dimension, as before."""
        if is_sequence(bin_width) or is_sequence(y_min):
            return cls._grid_from_labels(labels, bin_width, y_min)
        if isinstance(bin_width, bool) or not isinstance(bin_width, numbers.Real) or not (
                math.isfinite(bin_width) and bin_width > 0):
            raise ValueError(f"bin_width must be finite and > 0, got {bin_width!r}")
        y = np.asarray(labels.detach().cpu() if isinstance(labels, torch.Tensor) else labels,
                       dtype=np.float64).reshape(-1)
        if y.size == 0:
            raise ValueError("labels is empty")
        if not np.isfinite(y).all():
            raise ValueError("labels contains NaN or inf")
        lo = math.floor(y.min() / bin_width) * bin_width if y_min is None else float(y_min)
        span = math.floor((y.max() - lo) / bin_width) + 1
        check_num_bins(span, f"labels from {y.min():g} to {y.max():g} in bins of {bin_width:g}: "
                             f"num_bins")
        num = max(1, int(span))
        return cls(lo, float(bin_width), num)

    def index(self, labels):
        """Bin index of each label (int64, same type family as the input: tensor or ndarray).

        floor((y - y_min) / bin_width), or for decimal widths (0.1 m) the official DIR float32
        rule floor(float32(y) * 10) - 7 (module docstring: why, and when each applies).
        For a grid: labels [..., D] -> flat indices [...], row-major (last dimension fastest),
        each dimension by the 1-D rule; with clamp=False -1 when any dimension is outside."""
        if self.vector:
            return self._grid_index(labels)
        if isinstance(labels, torch.Tensor):
            f = raw_bin_index(labels, self.y_min, self.bin_width, self.num_bins)
            if self.clamp:
                return f.clamp_(0, self.num_bins - 1).long()
            return torch.where((f >= 0) & (f < self.num_bins), f, torch.full_like(f, -1)).long()
        f = raw_bin_index(labels, self.y_min, self.bin_width, self.num_bins)
        if self.clamp:
            return np.clip(f, 0, self.num_bins - 1).astype(np.int64)
        return np.where((f >= 0) & (f < self.num_bins), f, -1).astype(np.int64)

    def edges(self):
        """num_bins + 1 bin edges (float64 numpy); for a grid a tuple of each dimension's."""
        if self.vector:
            return tuple(ax.edges() for ax in self.axes())
        return self.y_min + self.bin_width * np.arange(self.num_bins + 1, dtype=np.float64)

    def centers(self):
        """Bin centres: [num_bins] float64, or [size, D] for a grid (flat row-major order)."""
        if self.vector:
            mesh = np.meshgrid(*(ax.centers() for ax in self.axes()), indexing="ij")
            return np.stack([m.reshape(-1) for m in mesh], axis=1)
        return self.y_min + self.bin_width * (np.arange(self.num_bins, dtype=np.float64) + 0.5)

    def far_limits(self):
        """(lo, hi): labels below lo or above hi are *far* outside the bins: more than the bins'
        span (num_bins * bin_width) beyond them, or below 0 when y_min >= 0 (a negative age or
        depth); with y_max <= 0, symmetrically above 0. For a grid: (lo, hi) tuples, one entry
        per dimension."""
        if self.vector:
            lims = [ax.far_limits() for ax in self.axes()]
            return tuple(v[0] for v in lims), tuple(v[1] for v in lims)
        span = self.num_bins * self.bin_width
        lo, hi = self.y_min - span, self.y_max + span
        if self.y_min >= 0:
            lo = max(lo, 0.0)
        if self.y_max <= 0:
            hi = min(hi, 0.0)
        return lo, hi

    def warn_far_outside(self, lo_seen, hi_seen, n_far=None, what="labels", stacklevel=2):
        """Warn (UserWarning) that `n_far` of `what` (None: some), ranging over [lo_seen,
        hi_seen], lie far outside the bins; a no-op when n_far is 0."""
        if n_far is None or n_far:
            lo, hi = self.far_limits()
            count = "some" if n_far is None else n_far
            warnings.warn(f"{count} {what} lie far outside the bins [{self.y_min:g}, "
                          f"{self.y_max:g}) (outside [{lo:g}, {hi:g}]; seen range "
                          f"[{lo_seen:g}, {hi_seen:g}]) and are "
                          f"{'merged into the edge bins' if self.clamp else 'ignored'}; "
                          f"check the labels' units and for corrupt rows", UserWarning,
                          stacklevel=stacklevel + 1)

    def counts(self, labels, what="training labels"):
        """Number of labels per bin (int64 numpy, length num_bins). Warns when labels lie far
        outside the bins (see `far_limits`). For a grid: labels [..., D], length `size`, flat
        row-major; the far-outside check runs per dimension."""
        if self.vector:
            return self._grid_counts(labels, what)
        y = np.asarray(labels.detach().cpu() if isinstance(labels, torch.Tensor) else labels,
                       dtype=np.float64).reshape(-1)
        lo, hi = self.far_limits()
        far = (y < lo) | (y > hi)
        if far.any():
            self.warn_far_outside(float(y[far].min()), float(y[far].max()), int(far.sum()), what)
        idx = self.index(y)
        return np.bincount(idx[idx >= 0], minlength=self.num_bins).astype(np.int64)


def _to_numpy_labels(labels, name="labels"):
    y = labels.detach().cpu().double().numpy() if isinstance(labels, torch.Tensor) else \
        np.asarray(labels, dtype=np.float64)
    if y.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.isfinite(y).all():
        raise ValueError(f"{name} contains NaN or inf ({int((~np.isfinite(y)).sum())} values); "
                         f"mask invalid labels before computing weights")
    return y


def _check_window(kernel, ks, sigma):
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if isinstance(ks, bool) or int(ks) != ks or ks < 1 or ks % 2 == 0:
        raise ValueError(f"ks must be an odd integer >= 1 (a symmetric window), got {ks!r}")
    if kernel != "triang" and not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be finite and > 0, got {sigma!r}")
    return int(ks)


def _gaussian_filter_delta(ks, sigma, truncate=4.0):
    """scipy.ndimage.gaussian_filter1d of a centred delta of length ks (mode 'reflect'):
    correlation with the sampled Gaussian of radius int(truncate * sigma + 0.5), normalised to sum
    1, on the input extended by half-sample symmetric reflection."""
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    g = np.exp(-0.5 * (x / sigma) ** 2)
    g /= g.sum()
    delta = np.zeros(ks)
    delta[ks // 2] = 1.0
    padded = np.pad(delta, radius, mode="symmetric")  # repeats the reflection when radius > ks
    return np.array([padded[i:i + 2 * radius + 1] @ g for i in range(ks)])


def lds_kernel(kernel="gaussian", ks=5, sigma=2.0):
    """The LDS window (float64 numpy, length ks, maximum 1), as in the DIR code:

    gaussian: gaussian_filter1d(delta, sigma) / max;  triang: scipy.signal.windows.triang(ks)
    (1 - 2|x| / (ks + 1));  laplace: exp(-|x| / sigma) / (2 sigma) / max = exp(-|x| / sigma),
    for x in [-(ks-1)/2, (ks-1)/2]. FDS uses the same window divided by its sum."""
    ks = _check_window(kernel, ks, sigma)
    half = (ks - 1) // 2
    x = np.arange(-half, half + 1, dtype=np.float64)
    if kernel == "gaussian":
        w = _gaussian_filter_delta(ks, float(sigma))
    elif kernel == "triang":
        w = 1.0 - 2.0 * np.abs(x) / (ks + 1)
    else:
        w = np.exp(-np.abs(x) / sigma) / (2.0 * sigma)
    return w / w.max()


def _convolve(values, window, padding):
    """Same-size correlation of `values` with a symmetric `window`, as scipy's convolve1d:
    padding 'constant' extends with zeros, 'reflect' with the half-sample mirror image
    (d c b a | a b c d | d c b a, repeated for windows longer than the data)."""
    half = len(window) // 2
    if padding == "constant":
        padded = np.concatenate([np.zeros(half), values, np.zeros(half)])
    else:
        padded = np.pad(values, half, mode="symmetric")
    return np.array([padded[i:i + len(window)] @ window for i in range(len(values))])


def _check_inv_clip(inv_clip):
    if inv_clip is None:
        return None
    try:
        lo, hi = (float(v) for v in inv_clip)
    except (TypeError, ValueError):
        raise ValueError(f"inv_clip must be None or a pair (lo, hi), got {inv_clip!r}") from None
    if not (0 < lo <= hi):
        raise ValueError(f"inv_clip must satisfy 0 < lo <= hi, got {inv_clip!r}")
    return lo, hi


def bin_weights(labels, bins, reweight="sqrt_inv", lds=False, kernel="gaussian", ks=5, sigma=2.0,
                *, inv_clip=(5, 1000), lds_padding="constant", lds_int_counts=False):
    """Per-bin weights [num_bins] (float64 numpy) such that w[bins.index(labels)] has mean 1.

    Args beyond `sample_weights`'s:
        inv_clip: (lo, hi) clip of the INV counts (the age recipe, default) or None (NYUD2).
        lds_padding: 'constant' (zeros, the age recipe) or 'reflect' (NYUD2).
        lds_int_counts: with INV + LDS, truncate the smoothed counts to integers as the official
            code does (it convolves int64 counts into an int64 array); SQINV is unaffected.

    Bins that no label falls into and whose effective count is 0 get weight 0.

    For a grid (D-dim LabelBins) the labels are [..., D], the weights [bins.size] (flat,
    row-major), the counts those of the D-dim histogram, and LDS the separable D-dim
    correlation (ssir_fast.separable); ks, sigma and lds_padding may then be given per dimension
    (a sequence of D entries) or once for all."""
    if reweight not in REWEIGHTS:
        raise ValueError(f"reweight must be one of {REWEIGHTS}, got {reweight!r}")
    if lds and reweight == "none":
        raise ValueError("LDS smooths the counts of a re-weighting scheme: use reweight='inverse' "
                         "or 'sqrt_inv' with lds=True")
    if not isinstance(bins, LabelBins):
        raise TypeError(f"bins must be a LabelBins, got {type(bins).__name__}")
    clip = _check_inv_clip(inv_clip)
    if bins.vector:   # the D-dim histogram, smoothed by the separable LDS
        pads, d = per_dim(lds_padding, bins.dim, "lds_padding"), bins.dim
        if any(p not in PADDINGS for p in pads):
            raise ValueError(f"lds_padding must be one of {PADDINGS} (or one per dimension), got "
                             f"{lds_padding!r}")
        ks_d, sigma_d = per_dim(ks, d, "ks"), per_dim(sigma, d, "sigma")
        windows = [lds_kernel(kernel, k, s) for k, s in zip(ks_d, sigma_d)] if lds else None
        counts = bins.counts(bins._grid_labels(_to_numpy_labels(labels)).reshape(-1, d))
        smooth = lambda e: smooth_grid(e.reshape(bins.grid), windows, pads).reshape(-1)  # noqa: E731
    else:
        if lds_padding not in PADDINGS:
            raise ValueError(f"lds_padding must be one of {PADDINGS}, got {lds_padding!r}")
        window = lds_kernel(kernel, ks, sigma) if lds else None
        counts = bins.counts(_to_numpy_labels(labels).reshape(-1))
        smooth = lambda e: _convolve(e, window, lds_padding)  # noqa: E731
    counts = counts.astype(np.float64)
    n = counts.sum()
    if n == 0:
        raise ValueError("no label falls inside the bins (clamp=False)")
    if reweight == "none":
        return np.ones(counts.size)
    eff = (np.sqrt(counts) if reweight == "sqrt_inv" else
           counts if clip is None else np.clip(counts, *clip))
    if lds:
        eff = smooth(eff)
        if lds_int_counts and reweight == "inverse":
            eff = np.trunc(eff)
    inv = np.where(eff > 0, 1.0 / np.where(eff > 0, eff, 1.0), 0.0)
    return inv * (n / (counts * inv).sum())


def lookup_weights(labels, weights_per_bin, bins):
    """Dense look-up: weights_per_bin[bins.index(labels)], with the labels' shape and type family
    (float32 tensor on the labels' device, or float32 numpy). Out-of-range labels (clamp=False)
    get weight 0. For a grid: labels [..., D], weights [...]."""
    if bins.vector:
        return grid_lookup(labels, weights_per_bin, bins)
    w = np.asarray(weights_per_bin, dtype=np.float64)
    if w.shape != (bins.num_bins,):
        raise ValueError(f"weights_per_bin must have shape [{bins.num_bins}], got {w.shape}")
    if isinstance(labels, torch.Tensor):
        idx = bins.index(labels)
        table = torch.as_tensor(np.append(w, 0.0), dtype=torch.float32, device=labels.device)
        return table[torch.where(idx >= 0, idx, torch.full_like(idx, bins.num_bins))]
    idx = bins.index(np.asarray(labels, dtype=np.float64))
    return np.append(w, 0.0)[np.where(idx >= 0, idx, bins.num_bins)].astype(np.float32)


def sample_weights(labels, bins, reweight="sqrt_inv", lds=False, kernel="gaussian", ks=5,
                   sigma=2.0, **recipe):
    """Per-sample (or per-pixel) re-weighting factors with mean 1 over `labels`
    (docs/algorithm.md, section 5).

    Args:
        labels: training labels, any shape (dense maps included), tensor or array-like.
        bins: the LabelBins shared with the rest of the pipeline.
        reweight: "none", "inverse" (INV, counts clipped to [5, 1000]) or "sqrt_inv" (SQINV).
        lds: smooth the (clipped / square-rooted) counts with the LDS window first.
        kernel, ks, sigma: LDS window (paper: gaussian, 5, 2); ks odd >= 1.
        recipe: inv_clip, lds_padding, lds_int_counts of `bin_weights` (e.g.
            ``**DIR_RECIPES["depth"]`` for the NYUD2 weighting).

    For a grid (D-dim bins) labels are [..., D] and the weights [...] (bin_weights).

    Returns weights with the labels' shape: float32 tensor for tensor labels, float32 numpy
    otherwise."""
    w = bin_weights(labels, bins, reweight, lds, kernel, ks, sigma, **recipe)
    return lookup_weights(labels, w, bins)


def weighted_sampler(labels, bins, reweight="sqrt_inv", lds=False, kernel="gaussian", ks=5,
                     sigma=2.0, num_samples=None, replacement=True, generator=None, **recipe):
    """Re-sampling instead of re-weighting: a torch WeightedRandomSampler drawing sample i with
    probability proportional to its re-weighting factor (use the loss unweighted then).

    `labels` holds one label per sample (dense labels: pass one summary value per sample);
    [N, D] for a grid of bins."""
    y = _to_numpy_labels(labels, "labels")
    if bins.vector:
        if y.ndim != 2:
            raise ValueError(f"labels must be [N, {bins.dim}] (one label vector per sample), got "
                             f"shape {y.shape}")
    elif y.ndim != 1:
        raise ValueError(f"labels must be 1-D (one label per sample), got shape {y.shape}")
    w = sample_weights(y, bins, reweight, lds, kernel, ks, sigma, **recipe)
    return torch.utils.data.WeightedRandomSampler(
        torch.as_tensor(w, dtype=torch.float64), num_samples or len(w), replacement=replacement,
        generator=generator)
