"""Label bins and re-weighting for imbalanced regression.

`LabelBins` is the one description of the label bins shared by re-weighting, LDS, FDS, the
metrics and the SSIR bin width, so nobody re-derives bins:

    bin(y) = clamp(floor((y - y_min) / bin_width), 0, num_bins - 1)

Labels outside [y_min, y_min + num_bins * bin_width) fall into the edge bins (the DIR age
convention merges labels >= 120 into bin 120 with num_bins = 121).
"""
import math
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["LabelBins"]


@dataclass(frozen=True)
class LabelBins:
    y_min: float
    bin_width: float
    num_bins: int

    def __post_init__(self):
        if not (math.isfinite(self.y_min)):
            raise ValueError(f"y_min must be finite, got {self.y_min}")
        if not (math.isfinite(self.bin_width) and self.bin_width > 0):
            raise ValueError(f"bin_width must be finite and > 0, got {self.bin_width}")
        if int(self.num_bins) != self.num_bins or self.num_bins < 1:
            raise ValueError(f"num_bins must be an integer >= 1, got {self.num_bins}")

    @property
    def y_max(self):
        """Upper edge of the last bin."""
        return self.y_min + self.num_bins * self.bin_width

    @classmethod
    def from_labels(cls, labels, bin_width, y_min=None):
        """Bins of width `bin_width` covering all `labels` (from floor(min / width) * width)."""
        y = np.asarray(labels.detach().cpu() if isinstance(labels, torch.Tensor) else labels,
                       dtype=np.float64).reshape(-1)
        if y.size == 0:
            raise ValueError("labels is empty")
        if not np.isfinite(y).all():
            raise ValueError("labels contains NaN or inf")
        lo = math.floor(y.min() / bin_width) * bin_width if y_min is None else float(y_min)
        num = max(1, int(math.floor((y.max() - lo) / bin_width)) + 1)
        return cls(lo, float(bin_width), num)

    def index(self, labels):
        """Bin index of each label (int64, same type family as the input: tensor or ndarray)."""
        if isinstance(labels, torch.Tensor):
            idx = torch.floor((labels.double() - self.y_min) / self.bin_width).long()
            return idx.clamp_(0, self.num_bins - 1)
        y = np.asarray(labels, dtype=np.float64)
        return np.clip(np.floor((y - self.y_min) / self.bin_width), 0, self.num_bins - 1).astype(np.int64)

    def edges(self):
        """num_bins + 1 bin edges (float64 numpy)."""
        return self.y_min + self.bin_width * np.arange(self.num_bins + 1, dtype=np.float64)

    def centers(self):
        return self.y_min + self.bin_width * (np.arange(self.num_bins, dtype=np.float64) + 0.5)

    def counts(self, labels):
        """Number of labels per bin (int64 numpy, length num_bins)."""
        idx = self.index(np.asarray(labels.detach().cpu() if isinstance(labels, torch.Tensor)
                                    else labels, dtype=np.float64).reshape(-1))
        return np.bincount(idx, minlength=self.num_bins).astype(np.int64)
