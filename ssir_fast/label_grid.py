"""Label bins over D dimensions: the grid part of `ssir_fast.imbalance.LabelBins` and of the
re-weighting, for vector targets ([N, D] labels).

A grid is D one-dimensional bins (per-dimension y_min, bin_width, num_bins); each dimension bins
its column by the 1-D rule of `LabelBins.index`, and the flat bin is the row-major product index

    flat = ((i_0 * n_1) + i_1) * n_2 + ...        (last dimension fastest)

so the per-bin tables (counts, weights, FDS statistics, metrics) are flat vectors of
prod(num_bins) entries, at most MAX_BINS. Re-weighting follows the 1-D recipe on the D-dim
histogram, LDS being the separable D-dim correlation (`ssir_fast.separable`).
"""
import math
import numbers

import numpy as np
import torch

from .ops.binning import MAX_BINS

__all__ = ["GridBins", "is_sequence", "vector_fields", "grid_lookup",
           "per_dim"]


def is_sequence(v):
    """A per-dimension sequence (list, tuple, 1-D array or tensor), as opposed to a number."""
    if isinstance(v, (np.ndarray, torch.Tensor)):
        return v.ndim >= 1
    return isinstance(v, (list, tuple))


def vector_fields(*values):
    return any(is_sequence(v) for v in values)


class GridBins:
    """The grid methods of LabelBins (a mixin: LabelBins holds the fields)."""

    def _init_grid(self):
        """Validates and stores a D-dim grid: per-dimension tuples, each axis a valid 1-D bins,
        at most MAX_BINS flat bins."""
        fields = {}
        for name in ("y_min", "bin_width", "num_bins"):
            v = getattr(self, name)
            if not is_sequence(v):
                raise ValueError(f"y_min, bin_width and num_bins must be all numbers (1-D bins) or "
                                 f"all sequences with one entry per dimension; {name} is {v!r}")
            fields[name] = tuple(v.tolist() if isinstance(v, (np.ndarray, torch.Tensor)) else v)
        lengths = {len(v) for v in fields.values()}
        if len(lengths) != 1:
            raise ValueError("y_min, bin_width and num_bins must have one entry per dimension "
                             "(sequences of the same length), got lengths "
                             + ", ".join(f"{k} {len(v)}" for k, v in fields.items()))
        if lengths == {0}:
            raise ValueError("y_min, bin_width and num_bins are empty: a grid needs at least one "
                             "dimension")
        for k, (lo, w, n) in enumerate(zip(*fields.values())):
            for name, v in (("y_min", lo), ("bin_width", w), ("num_bins", n)):
                if isinstance(v, bool) or not isinstance(v, numbers.Real):
                    raise TypeError(f"{name}[{k}] must be a number, got {v!r}")
            try:
                type(self)(float(lo), float(w), n)
            except ValueError as e:
                raise ValueError(f"dimension {k}: {e}") from None
        object.__setattr__(self, "y_min", tuple(float(v) for v in fields["y_min"]))
        object.__setattr__(self, "bin_width", tuple(float(v) for v in fields["bin_width"]))
        object.__setattr__(self, "num_bins", tuple(int(v) for v in fields["num_bins"]))
        size = math.prod(self.num_bins)
        if size > MAX_BINS:
            raise ValueError(f"num_bins = {self.num_bins} makes a grid of {size} label bins, too "
                             f"many (at most {MAX_BINS} flat bins; the per-bin tables would take "
                             f"{size * 96 / 2**30:.3g} GiB): use larger bin widths or fewer bins "
                             f"per dimension")

    @property
    def vector(self):
        """True for a grid (built from sequences, labels [..., D]), also when D = 1."""
        return isinstance(self.num_bins, tuple)

    @property
    def dim(self):
        """Number of label dimensions D (1 for scalar bins)."""
        return len(self.num_bins) if self.vector else 1

    @property
    def grid(self):
        """Per-dimension bin counts, a tuple of length D."""
        return self.num_bins if self.vector else (self.num_bins,)

    @property
    def size(self):
        """Flat number of bins, prod(grid) (num_bins for scalar bins)."""
        return math.prod(self.num_bins) if self.vector else self.num_bins

    def axis(self, k):
        """The 1-D LabelBins of dimension k (self for scalar bins and k = 0)."""
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 0 <= k < self.dim:
            raise ValueError(f"axis k must be an integer in [0, {self.dim}), got {k!r}")
        if not self.vector:
            return self
        return type(self)(self.y_min[k], self.bin_width[k], self.num_bins[k], self.clamp)

    def axes(self):
        """The D 1-D LabelBins of the grid."""
        return [self.axis(k) for k in range(self.dim)]

    def _grid_labels(self, labels, name="labels"):
        """labels [..., D] (tensor kept, anything else float64 numpy), checked for the last dim."""
        y = labels if isinstance(labels, torch.Tensor) else np.asarray(labels, dtype=np.float64)
        if y.ndim < 1 or y.shape[-1] != self.dim:
            raise ValueError(f"{name} must have shape [N, {self.dim}] (one column per dimension of "
                             f"the bins' grid {self.grid}), got {tuple(y.shape)}")
        return y

    def _grid_index(self, labels):
        """Flat row-major index ((i0 * n1) + i1) * n2 + ... of labels [..., D] -> [...]; with
        clamp=False -1 where any dimension is outside its bins."""
        y = self._grid_labels(labels)
        flat = None
        for k, ax in enumerate(self.axes()):
            i = ax.index(y[..., k])
            if flat is None:
                flat, bad = i, i < 0
            else:
                flat = flat * ax.num_bins + i
                bad = bad | (i < 0)
        if self.clamp:
            return flat
        if isinstance(flat, torch.Tensor):
            return torch.where(bad, torch.full_like(flat, -1), flat)
        return np.where(bad, -1, flat).astype(np.int64)

    def unravel(self, flat):
        """Per-dimension indices [..., D] (int64 numpy) of flat bin indices (inverse of index's
        row-major rule)."""
        return np.stack(np.unravel_index(np.asarray(flat, dtype=np.int64), self.grid), axis=-1)

    def _grid_counts(self, labels, what):
        """LabelBins.counts of a grid: labels [..., D], far-outside warnings per dimension."""
        y = self._grid_labels(labels.detach().cpu().double() if isinstance(
            labels, torch.Tensor) else labels).reshape(-1, self.dim)
        y = np.asarray(y, dtype=np.float64)
        for k, ax in enumerate(self.axes()):
            lo, hi = ax.far_limits()
            yk = y[:, k]
            far = (yk < lo) | (yk > hi)
            if far.any():
                ax.warn_far_outside(float(yk[far].min()), float(yk[far].max()),
                                    int(far.sum()), f"{what} (dimension {k})")
        idx = self._grid_index(y)
        return np.bincount(idx[idx >= 0], minlength=self.size).astype(np.int64)

    @classmethod
    def _grid_from_labels(cls, labels, bin_width, y_min):
        y = labels.detach().cpu().double().numpy() if isinstance(labels, torch.Tensor) else \
            np.asarray(labels, dtype=np.float64)
        if y.ndim != 2:
            raise ValueError(f"labels must have shape [N, D] for a grid of bins (bin_width or "
                             f"y_min given per dimension), got {tuple(y.shape)}")
        d = y.shape[1]
        given = []
        for name, v in (("bin_width", bin_width), ("y_min", y_min)):
            if is_sequence(v):
                v = list(v.tolist() if isinstance(v, (np.ndarray, torch.Tensor)) else v)
                if len(v) != d:
                    raise ValueError(f"{name} must have one entry per label dimension ({d}), got "
                                     f"{len(v)}")
            else:
                v = [v] * d
            given.append(v)
        axes = []
        for k in range(d):
            try:
                axes.append(cls.from_labels(y[:, k], given[0][k], given[1][k]))
            except ValueError as e:
                raise ValueError(f"dimension {k}: {e}") from None
        return cls(tuple(a.y_min for a in axes), tuple(a.bin_width for a in axes),
                   tuple(a.num_bins for a in axes))


def per_dim(value, d, name):
    """value repeated D times, or a sequence of D entries checked for its length."""
    if isinstance(value, (list, tuple, np.ndarray)):
        if len(value) != d:
            raise ValueError(f"{name} must be one value or one per dimension ({d}), got "
                             f"{len(value)}")
        return list(value)
    return [value] * d


def grid_lookup(labels, weights_per_bin, bins):
    """lookup_weights of a grid: weights_per_bin [size] at the flat bins of labels [..., D]."""
    w = np.asarray(weights_per_bin, dtype=np.float64)
    if w.shape != (bins.size,):
        raise ValueError(f"weights_per_bin must have shape [{bins.size}] (the grid's flat bins), "
                         f"got {w.shape}")
    table = np.append(w, 0.0)
    if isinstance(labels, torch.Tensor):
        idx = bins.index(labels)
        t = torch.as_tensor(table, dtype=torch.float32, device=labels.device)
        return t[torch.where(idx >= 0, idx, torch.full_like(idx, bins.size))]
    idx = bins.index(np.asarray(labels, dtype=np.float64))
    return table[np.where(idx >= 0, idx, bins.size)].astype(np.float32)
