"""Feature Distribution Smoothing (FDS, Yang et al. 2021; docs/algorithm.md, sections 4 and 5).

Place `FDS` between the encoder and the regressor. Per label bin b it keeps running statistics
(mu_b, var_b) of the encoder features, smooths them across bins with the LDS window normalised
to sum 1 (reflect padding), and in training calibrates each feature

    z' = (z - mu_b) * sqrt(clamp(var~_b / var_b, lo, hi)) + mu~_b          (ssir_fast.ops.fds_calibrate)

Epoch protocol (statistics from the whole training set, once per epoch):

    for epoch in range(E):
        for x, y in loader:  feats = encoder(x); out = head(fds(feats, y, epoch))   # train
        fds.collect(encoder, loader, epoch)   # or: fds.update(feats.detach(), y) per batch, then
                                              #     fds.end_epoch(epoch)

Semantics, fixing the official code's defects (docs/algorithm.md, section 7):
- `collect` runs the encoder with no_grad on scratch copies of its buffers, so BatchNorm running
  statistics and num_batches_tracked are unchanged (train-mode batch statistics are still used).
- At `end_epoch` the epoch's statistics are merged into the running ones (momentum 0.9 on the old
  value; factor 0 at `start_update` and for bins seen for the first time), then CLONED into the
  "last epoch" statistics and smoothed, so calibration uses raw and smoothed statistics from the
  same epoch (the official code aliases them and mixes two epochs).
- Calibration is out of place (no in-place edits of tensors autograd saved); gradients flow to
  the features through the fused op's backward.
- Empty bins are filled from their nearest non-empty neighbours (linear interpolation between
  them, the nearest one at the edges) before smoothing, instead of smoothing zeros in.
- Active only when `self.training` and epoch >= start_smooth (and after one end_epoch).
- All state is in buffers (state_dict / checkpoints); at `end_epoch` the epoch statistics are
  merged over DDP ranks (count-weighted, `_all_reduce`) when torch.distributed is initialised,
  so every rank ends with the statistics of the whole data set.

Vector targets (bins a D-dim grid of `LabelBins`, labels [N, D]): the statistics are kept per
flat grid bin; empty bins are filled one dimension after the other (along each line of the grid
as in 1-D, from the bins filled so far: `fill_empty_grid`), and the smoothing is separable, the
same window along every dimension with that dimension's reflect / replicate padding
(`smooth_grid_statistics`). Calibration is unchanged (it takes a flat bin index). Memory: the
buffers take 40 * B * C bytes (B bins, C features): a 10^6-bin grid with 512 features would need
20 GB, so FDS wants much coarser grids than re-weighting.
"""
import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from ._state import scratch_buffers
from .imbalance import LabelBins, lds_kernel
from .ops import bin_feature_stats, fds_calibrate

__all__ = ["FDS", "smooth_statistics", "fill_empty_bins", "smooth_grid_statistics",
           "fill_empty_grid", "feature_balance", "plot_feature_balance"]


def fill_empty_bins(mean, var, count):
    """mean, var [B, C] with rows of bins whose count is 0 replaced by linear interpolation
    between the nearest non-empty bins (the nearest one beyond the first / last)."""
    filled = count > 0
    if bool(filled.all()) or not bool(filled.any()):
        return mean.clone(), var.clone()
    b = count.shape[0]
    pos = torch.arange(b, device=count.device)
    have = pos[filled]
    # nearest non-empty bin at or left / right of each bin
    right_i = torch.searchsorted(have, pos).clamp(max=have.numel() - 1)
    left_i = (torch.searchsorted(have, pos, right=True) - 1).clamp(min=0)
    left, right = have[left_i], have[right_i]
    span = (right - left).clamp(min=1).to(mean.dtype)
    t = ((pos - left).to(mean.dtype) / span).clamp(0, 1)
    t = torch.where(left == right, torch.zeros_like(t), t)[:, None]
    m = mean[left] * (1 - t) + mean[right] * t
    v = var[left] * (1 - t) + var[right] * t
    keep = filled[:, None]
    return torch.where(keep, mean, m), torch.where(keep, var, v)


def smooth_statistics(stat, window):
    """Smooth [B, C] statistics across bins: conv1d with `window` (sums to 1), reflect padding
    (replicate when B is too small to reflect)."""
    half = (window.numel() - 1) // 2
    x = stat.t().unsqueeze(1)  # [C, 1, B]
    if half:
        x = F.pad(x, (half, half), mode="reflect" if stat.shape[0] > half else "replicate")
    return F.conv1d(x, window.to(stat.dtype).view(1, 1, -1)).squeeze(1).t().contiguous()


def _along(stat, grid, axis, fn):
    """fn applied to [n_axis, rest] views of [B, C] statistics laid out on `grid` (row-major)."""
    c = stat.shape[1]
    x = stat.reshape(*grid, c).movedim(axis, 0)
    shape = x.shape
    y = fn(x.reshape(shape[0], -1))
    return y.reshape(shape).movedim(0, axis).reshape(-1, c)


def smooth_grid_statistics(stat, window, grid):
    """Separable `smooth_statistics` of [B, C] statistics on a D-dim grid (B = prod(grid)): the
    same window along each dimension in turn, with that dimension's padding."""
    for k in range(len(grid)):
        stat = _along(stat, grid, k, lambda x: smooth_statistics(x, window))
    return stat.contiguous()


def _fill_lines(x, filled):
    """fill_empty_bins along dim 0 of x [n, L, C] for each of the L lines whose mask `filled`
    [n, L] has a bin; lines without one are returned unchanged. Returns (x, filled)."""
    n = x.shape[0]
    pos = torch.arange(n, device=x.device)[:, None].expand_as(filled)
    left = torch.cummax(torch.where(filled, pos, torch.full_like(pos, -1)), dim=0).values
    right = torch.cummin(torch.where(filled, pos, torch.full_like(pos, n)).flip(0),
                         dim=0).values.flip(0)
    line = filled.any(dim=0, keepdim=True).expand_as(filled)
    left_c = torch.where(left >= 0, left, right).clamp(0, n - 1)
    right_c = torch.where(right < n, right, left).clamp(0, n - 1)
    span = (right_c - left_c).clamp(min=1).to(x.dtype)
    t = ((pos - left_c).to(x.dtype) / span).clamp(0, 1)
    t = torch.where(left_c == right_c, torch.zeros_like(t), t)[..., None]
    xl = x.gather(0, left_c[..., None].expand_as(x))
    xr = x.gather(0, right_c[..., None].expand_as(x))
    m = xl * (1 - t) + xr * t
    keep = (filled | ~line)[..., None]
    return torch.where(keep, x, m), filled | line


def fill_empty_grid(mean, var, count, grid):
    """fill_empty_bins on a D-dim grid: along dimension 0, then 1, ..., each line of the grid
    filled as in 1-D from the bins filled so far (a line without one waits for a later
    dimension); every bin is filled when any is."""
    filled = (count > 0).reshape(grid)
    if bool(filled.all()) or not bool(filled.any()):
        return mean.clone(), var.clone()
    c = mean.shape[1]
    both = torch.cat([mean, var.to(mean.dtype)], dim=1).reshape(*grid, 2 * c)
    for k in range(len(grid)):
        x = both.movedim(k, 0)
        f = filled.movedim(k, 0)
        shape, fshape = x.shape, f.shape
        x, f = _fill_lines(x.reshape(shape[0], -1, 2 * c), f.reshape(fshape[0], -1))
        both = x.reshape(shape).movedim(0, k)
        filled = f.reshape(fshape).movedim(0, k)
    both = both.reshape(-1, 2 * c)
    return both[:, :c].contiguous(), both[:, c:].to(var.dtype).contiguous()


class FDS(torch.nn.Module):
    """Feature distribution smoothing between an encoder and a regressor.

    Args:
        feature_dim: C, the feature size.
        bins: LabelBins of the labels (the same bins as re-weighting and the metrics); a D-dim
            grid for vector labels [N, D] (module docstring).
        kernel, ks, sigma: smoothing window (lds_kernel, normalised to sum 1); paper: gaussian, 5, 2.
        momentum: weight of the old running statistics (0.9).
        start_update: first epoch whose statistics are collected (0).
        start_smooth: first epoch in which features are calibrated (1).
        clip: (lo, hi) clamp of the variance ratio: (0.1, 10) for age, (0.2, 5) for NYU.
    """

    def __init__(self, feature_dim, bins, kernel="gaussian", ks=5, sigma=2.0, momentum=0.9,
                 start_update=0, start_smooth=1, clip=(0.1, 10.0)):
        super().__init__()
        if not isinstance(bins, LabelBins):
            raise TypeError(f"bins must be a LabelBins, got {type(bins).__name__}")
        if int(feature_dim) != feature_dim or feature_dim < 1:
            raise ValueError(f"feature_dim must be an integer >= 1, got {feature_dim}")
        if not 0 <= momentum <= 1:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        if start_smooth < start_update + 1:
            raise ValueError(f"start_smooth ({start_smooth}) must be > start_update ({start_update})")
        lo, hi = map(float, clip)
        if not 0 <= lo <= hi:
            raise ValueError(f"clip must be (lo, hi) with 0 <= lo <= hi, got {clip}")
        self.feature_dim, self.bins = int(feature_dim), bins
        self.momentum, self.start_update, self.start_smooth = float(momentum), start_update, start_smooth
        self.lo, self.hi = lo, hi
        w = lds_kernel(kernel, ks, sigma)
        self.register_buffer("window", torch.as_tensor(w / w.sum(), dtype=torch.float32))
        B, C = bins.size, self.feature_dim
        for name in ("running_mean", "last_mean", "smoothed_mean"):
            self.register_buffer(name, torch.zeros(B, C))
        for name in ("running_var", "last_var", "smoothed_var"):
            self.register_buffer(name, torch.ones(B, C))
        self.register_buffer("num_samples_tracked", torch.zeros(B, dtype=torch.long))
        self.register_buffer("epoch", torch.tensor(-1, dtype=torch.long))  # last finished epoch
        self._epoch_host = None  # host mirror of `epoch` (_last_epoch)
        # The current epoch's accumulators (count, mean, M2 in float64), merged per batch.
        self.register_buffer("_count", torch.zeros(B, dtype=torch.long), persistent=False)
        self.register_buffer("_mean", torch.zeros(B, C, dtype=torch.float64), persistent=False)
        self.register_buffer("_m2", torch.zeros(B, C, dtype=torch.float64), persistent=False)

    # ---- calibration ----------------------------------------------------------------------
    def _last_epoch(self):
        """The `epoch` buffer's value, read from the device once and then mirrored on the host
        (end_epoch and load_state_dict keep the mirror current): forward syncs on nothing."""
        if self._epoch_host is None:
            self._epoch_host = int(self.epoch)
        return self._epoch_host

    def _load_from_state_dict(self, *args, **kwargs):
        self._epoch_host = None  # the buffer may change: read it again when next needed
        super()._load_from_state_dict(*args, **kwargs)

    def active(self, epoch=None):
        last = self._last_epoch()
        epoch = last + 1 if epoch is None else int(epoch)
        return self.training and epoch >= self.start_smooth and last >= self.start_update

    def forward(self, features, labels, epoch=None):
        """Calibrated features in training from `start_smooth` on, else `features` unchanged.
        `labels`: one label per sample ([N] or [N, 1]; [N, D] for grid bins); `epoch` defaults
        to the one after the last finished epoch."""
        if not self.active(epoch):
            return features
        # Label values are checked where that costs no device sync (CPU labels); update() checks
        # them on every device, once per step.
        self._check(features, labels, values=labels.device.type == "cpu")
        idx = self.bins.index(self._rows(labels).to(features.device))
        return fds_calibrate(features, idx, self.last_mean, self.last_var, self.smoothed_mean,
                             self.smoothed_var, self.lo, self.hi)

    # ---- statistics -----------------------------------------------------------------------
    def _rows(self, labels):
        """One label (scalar bins) or one label vector (grid bins) per row."""
        return labels.reshape(-1, self.bins.dim) if self.bins.vector else labels.reshape(-1)

    def _check(self, features, labels, values=True):
        if features.dim() != 2 or features.shape[1] != self.feature_dim:
            raise ValueError(f"features must be [N, {self.feature_dim}], got {tuple(features.shape)}")
        if self.bins.vector:
            if labels.numel() != features.shape[0] * self.bins.dim:
                raise ValueError(f"labels must be [N, {self.bins.dim}] (one label vector per "
                                 f"feature row, N = {features.shape[0]}), got shape "
                                 f"{tuple(labels.shape)}")
        elif labels.numel() != features.shape[0]:
            raise ValueError(f"labels must hold one label per feature row ({features.shape[0]}), "
                             f"got shape {tuple(labels.shape)}")
        if values and not bool(torch.isfinite(labels).all()):
            raise ValueError("labels contains NaN or inf")

    @torch.no_grad()
    def update(self, features, labels):
        """Add a batch of (detached) features to this epoch's statistics (Chan's merge)."""
        self._check(features, labels)
        idx = self.bins.index(self._rows(labels).to(features.device))
        count, mean, var = bin_feature_stats(features.detach(), idx, self.bins.size)
        self._merge(count, mean.double(), var.double() * (count - 1).clamp(min=0)[:, None])

    def _merge(self, nb, mb, m2b):
        na = self._count
        n = na + nb
        safe = n.clamp(min=1).double()[:, None]
        delta = mb - self._mean
        self._mean += delta * nb.double()[:, None] / safe
        self._m2 += m2b + delta * delta * (na.double() * nb.double())[:, None] / safe
        self._count.copy_(n)

    def _all_reduce(self):
        """Merge this epoch's (count, mean, M2) over DDP ranks, weighting by counts:
        N = sum_r n_r, mu = sum_r n_r mu_r / N, M2 = sum_r [M2_r + n_r (mu_r - mu)^2]
        (two all_reduces; the centred second pass avoids the cancellation of sum x^2 - N mu^2)."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        n = self._count.double()[:, None]
        packed = torch.cat([n, self._mean * n], dim=1)
        dist.all_reduce(packed)
        total, s1 = packed[:, :1], packed[:, 1:]
        mu = s1 / total.clamp(min=1)
        m2 = self._m2 + n * (self._mean - mu) ** 2
        dist.all_reduce(m2)
        self._count.copy_(total[:, 0].round().long())
        self._mean.copy_(mu)
        self._m2.copy_(m2)

    @torch.no_grad()
    def end_epoch(self, epoch):
        """Fold this epoch's statistics into the running ones, then refresh the (cloned) last-epoch
        and smoothed statistics used for calibration. Epochs before start_update are skipped."""
        epoch = int(epoch)
        if epoch < self.start_update:
            self._reset_epoch()
            return
        self._all_reduce()
        n = self._count
        seen = n > 0
        var = torch.where((n > 1)[:, None], self._m2 / (n - 1).clamp(min=1)[:, None], 0.0)
        first = (self.num_samples_tracked == 0) | torch.tensor(epoch == self.start_update,
                                                               device=n.device)
        factor = torch.where(first, 0.0, self.momentum)[:, None]
        upd = seen[:, None]
        dt = self.running_mean.dtype
        self.running_mean.copy_(torch.where(upd, (1 - factor) * self._mean.to(dt)
                                            + factor * self.running_mean, self.running_mean))
        self.running_var.copy_(torch.where(upd, (1 - factor) * var.to(dt)
                                           + factor * self.running_var, self.running_var))
        self.num_samples_tracked += n
        if self.bins.vector:
            grid = self.bins.grid
            mean, var = fill_empty_grid(self.running_mean, self.running_var,
                                        self.num_samples_tracked, grid)
            smooth = lambda s: smooth_grid_statistics(s, self.window, grid)  # noqa: E731
        else:
            mean, var = fill_empty_bins(self.running_mean, self.running_var,
                                        self.num_samples_tracked)
            smooth = lambda s: smooth_statistics(s, self.window)  # noqa: E731
        self.last_mean.copy_(mean)   # copies, not aliases of the running statistics
        self.last_var.copy_(var)
        self.smoothed_mean.copy_(smooth(mean))
        self.smoothed_var.copy_(smooth(var))
        # once per epoch (one read on the device): NaN features would poison every later epoch
        if not bool(torch.isfinite(self.smoothed_mean).all() & torch.isfinite(self.smoothed_var)
                    .all()):
            raise ValueError(f"FDS: the feature statistics of epoch {epoch} are NaN or inf (the "
                             f"features were; the training diverged or the data hold NaN)")
        self.epoch.fill_(epoch)
        self._epoch_host = epoch
        self._reset_epoch()

    def _reset_epoch(self):
        self._count.zero_()
        self._mean.zero_()
        self._m2.zero_()

    @torch.no_grad()
    def collect(self, encoder, loader, epoch, device=None, model=None):
        """Run `encoder(x)` over `loader` (batches (x, y, ...)) without gradients and on scratch
        copies of the buffers of `model` (default: the encoder), so BatchNorm state is unchanged;
        then end_epoch(epoch)."""
        owner = model if model is not None else encoder
        with scratch_buffers(owner):
            for batch in loader:
                x, y = batch[0], batch[1]
                if device is not None:
                    x, y = x.to(device), y.to(device)
                self.update(encoder(x).reshape(x.shape[0], -1), y)
        self.end_epoch(epoch)


# ---- feature-balance metric (paper appendix 8.8) ---------------------------------------------

def feature_balance(features, labels, bins):
    """Per-bin feature variance averaged over feature dimensions: v_b = mean_c var_{b,c}
    (unbiased; NaN for bins with fewer than 2 samples). Returns (v [B] float64 numpy, count [B]).
    Grid bins: labels [N, D], B = bins.size (flat)."""
    features = torch.as_tensor(features)
    if features.dim() != 2:
        raise ValueError(f"features must be [N, C], got shape {tuple(features.shape)}")
    labels = torch.as_tensor(labels, device=features.device)
    if bins.vector and labels.numel() != features.shape[0] * bins.dim:
        raise ValueError(f"labels must be [N, {bins.dim}] (one label vector per feature row, N = "
                         f"{features.shape[0]}), got shape {tuple(labels.shape)}")
    labels = labels.reshape(-1, bins.dim) if bins.vector else labels.reshape(-1)
    if labels.shape[0] != features.shape[0]:
        raise ValueError(f"labels must hold one label per feature row ({features.shape[0]}), got "
                         f"{labels.numel()}")
    count, _, var = bin_feature_stats(features.float() if features.dtype != torch.float64
                                      else features, bins.index(labels), bins.size)
    v = var.double().mean(dim=1).cpu().numpy()
    c = count.cpu().numpy()
    return np.where(c >= 2, v, np.nan), c


def plot_feature_balance(values, bins, count=None, ax=None, label=None):
    """Plot per-bin feature variance against bin centres (matplotlib); with `count`, the label
    histogram on a twin axis. Returns the axis."""
    if bins.vector:
        raise ValueError("plot_feature_balance draws scalar bins; for a grid plot the values of "
                         "feature_balance per dimension or as an image of shape bins.grid")
    import matplotlib.pyplot as plt   # optional dependency: only this plot needs it
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3))
    centers = bins.centers()
    ax.plot(centers, values, marker=".", label=label)
    ax.set_xlabel("label")
    ax.set_ylabel("mean feature variance")
    if count is not None:
        ax2 = ax.twinx()
        ax2.bar(centers, count, width=bins.bin_width, alpha=0.2, color="gray")
        ax2.set_ylabel("training samples")
    if label is not None:
        ax.legend()
    return ax
