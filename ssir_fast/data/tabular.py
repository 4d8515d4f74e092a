"""Tabular data (feature columns + one or more target columns) and the in-memory loader that serves
it and the synthetic data sets.

Features are standardised with the training split's per-column mean and std (``normalize=True``);
the statistics are kept in ``dataset.mean`` / ``dataset.std``. Bins: ``num_bins`` equal bins over
the training target range unless ``bin_width`` is given (`ssir_fast.imbalance.LabelBins`). The
default number, `auto_num_bins`, is one bin per 50 training rows, between 10 and 100: 100 bins
over the 700 training rows of a 1,000-row table hold 7 rows on average, so every bin would be
"few-shot" (< 20 rows) and the many/medium groups empty.

Several target columns (``target="a,b"``) make a vector target [n, D] binned on a D-dim grid
(`LabelBins` with one width per dimension): ``num_bins`` and ``bin_width`` are then a number (for
every dimension) or one per dimension; the default gives each dimension round(auto ** (1 / D))
bins (at least 3), so the joint grid holds about `auto_num_bins` cells.
"""
import math
import os
import warnings

import numpy as np
import torch

from ..imbalance import LabelBins
from .datasets import SPLITS
from .rows import DataError, check_header, check_on_error, open_csv, parse_number
from .transforms import epoch_order, shard_batches

__all__ = ["TabularDataset", "load_tabular", "TensorLoader", "auto_num_bins"]


def auto_num_bins(n_train):
    """The default number of equal label bins for `n_train` training rows: n_train // 50 in
    [10, 100] (about 50 rows a bin, so the shot groups at 100 / 20 rows are not all empty)."""
    return int(min(100, max(10, int(n_train) // 50)))


class TabularSplit:
    def __init__(self, name, X, y, source="memory", rows=None):
        self.name, self.X, self.targets, self.source = name, X, y, source
        self.rows = list(range(len(y))) if rows is None else rows

    def __len__(self):
        return len(self.targets)


class TabularDataset:
    """Feature matrix / target vector per split, with bins and feature normalisation."""
    kind = "tabular"

    def __init__(self, name, splits, bins=None, bin_width=None, num_bins=None, normalize=True,
                 feature_names=None):
        """`bins`: a LabelBins, or an int (that many equal bins, as `num_bins`); `num_bins`: the
        number of equal bins over the training target range (None: `auto_num_bins`);
        `bin_width`: the bin length instead (overrides num_bins)."""
        self.name = name
        self.splits = splits
        self.feature_names = feature_names
        if "train" not in splits or len(splits["train"]) == 0:
            raise DataError(f"{name}: the train split is empty")
        for s, v in splits.items():
            if len(v) == 0:
                raise DataError(f"{name}: split {s!r} is empty")
        ytr = splits["train"].targets
        if isinstance(bins, (int, np.integer)) and not isinstance(bins, bool):
            bins, num_bins = None, int(bins)
        if ytr.ndim == 2:
            self.bins = bins if bins is not None else _grid_bins(name, ytr, num_bins, bin_width)
            self._normalize(normalize)
            return
        if bins is not None and not isinstance(bins, LabelBins):
            raise TypeError(f"{name}: bins must be a LabelBins or a number of bins, got "
                            f"{type(bins).__name__} (--data-options num_bins=N or bin_width=W)")
        if num_bins is None:
            num_bins = auto_num_bins(len(ytr))
        if isinstance(num_bins, bool) or not isinstance(num_bins, (int, np.integer)) \
                or num_bins < 1:
            raise ValueError(f"{name}: num_bins must be an integer >= 1, got {num_bins!r}")
        if bin_width is not None and (isinstance(bin_width, bool) or not isinstance(
                bin_width, (int, float)) or not math.isfinite(bin_width) or bin_width <= 0):
            raise ValueError(f"{name}: bin_width must be a number > 0, got {bin_width!r}")
        if bins is None:
            if bin_width is None:
                span = float(ytr.max() - ytr.min())
                bin_width = span / num_bins if span > 0 else 1.0
            bins = LabelBins.from_labels(ytr, bin_width)
        self.bins = bins
        self._normalize(normalize)

    def _normalize(self, normalize):
        xtr = self.splits["train"].X
        if normalize:
            self.mean = xtr.mean(0).astype(np.float32)
            self.std = np.where(xtr.std(0) > 0, xtr.std(0), 1.0).astype(np.float32)
        else:
            self.mean = np.zeros(xtr.shape[1], np.float32)
            self.std = np.ones(xtr.shape[1], np.float32)
        self.image_size = None

    @property
    def num_features(self):
        return self.splits["train"].X.shape[1]

    @property
    def train_labels(self):
        return self.splits["train"].targets

    def split(self, name):
        if name not in self.splits:
            raise DataError(f"{self.name}: no split {name!r} (have {sorted(self.splits)})")
        return self.splits[name]

    def clip_bounds(self):
        return None

    def __repr__(self):
        sizes = ", ".join(f"{k}={len(v)}" for k, v in self.splits.items())
        return f"TabularDataset({self.name!r}, {sizes}, features={self.num_features})"


def _per_dim(value, d, name, dataset, integer):
    """A number repeated for each of the d dimensions, or a sequence of d (also "a;b" text)."""
    if isinstance(value, str):
        try:
            value = [float(v) for v in value.replace(";", ",").split(",")]
        except ValueError:
            raise ValueError(f"{dataset}: {name} must be numbers, got {value!r}") from None
    vals = list(value) if isinstance(value, (list, tuple, np.ndarray)) else [value] * d
    if len(vals) != d:
        raise ValueError(f"{dataset}: {name} must be one number or one per target column ({d}), "
                         f"got {len(vals)}")
    for v in vals:
        bad = isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or \
            not math.isfinite(v) or v <= 0 or (integer and int(v) != v)
        if bad:
            kind = "integers >= 1" if integer else "numbers > 0"
            raise ValueError(f"{dataset}: {name} must be {kind} (one, or one per target column), "
                             f"got {value!r}")
    return [int(v) if integer else float(v) for v in vals]


def _grid_bins(name, ytr, num_bins, bin_width):
    """D-dim bins over the training targets [n, D]: bin_width per dimension, else num_bins per
    dimension equal bins over each training range (default: about auto_num_bins joint cells)."""
    d = ytr.shape[1]
    if bin_width is None:
        if num_bins is None:
            num_bins = max(3, int(round(auto_num_bins(len(ytr)) ** (1.0 / d))))
        counts = _per_dim(num_bins, d, "num_bins", name, integer=True)
        span = ytr.max(0).astype(np.float64) - ytr.min(0)
        bin_width = [float(s) / c if s > 0 else 1.0 for s, c in zip(span, counts)]
    widths = _per_dim(bin_width, d, "bin_width", name, integer=False)
    return LabelBins.from_labels(ytr, widths)


def _targets(target):
    """Target column(s): a name, a list of names, or one string "a,b" / "a;b" (vector target)."""
    if isinstance(target, str):
        target = target.replace(";", ",").split(",")
    names = [str(c).strip() for c in target if str(c).strip()] if isinstance(
        target, (list, tuple)) else None
    if not names:
        raise DataError(f"target must name the target column(s) (a name, 'a,b' or a list), got "
                        f"{target!r}")
    if len(set(names)) != len(names):
        raise DataError(f"target names a column twice: {names}")
    return names


def _columns(features):
    """Feature columns: None (all), a list of names, or one string of names separated by ',' or
    ';' ("age;bmi": the form a --data-options value takes)."""
    if features is None:
        return None
    if isinstance(features, str):
        features = features.replace(";", ",").split(",")
    elif not isinstance(features, (list, tuple)):
        raise DataError(f"features must be column names (a list, or 'a,b' / 'a;b'), got "
                        f"{features!r}")
    names = [str(c).strip() for c in features if str(c).strip()]
    if not names:
        raise DataError(f"features names no column: {features!r}")
    return names


def load_tabular(path, target, features=None, split_column=None, on_error="raise",
                 val_fraction=0.1, test_fraction=0.2, seed=0, **kwargs):
    """Tabular CSV: numeric ``features`` (default: every column but the target(s) and split
    column; a list of names or one string "age;bmi") and a numeric ``target`` column, or several
    (``target="a,b"`` or a list: targets [n, D] on D-dim bins). The split comes
    from ``split_column`` (values train/val/test; default: a column named ``split`` when there is
    one; a named column that is missing is an error), otherwise from a seeded random split with
    ``val_fraction`` / ``test_fraction``. A missing column, a non-numeric or NaN value and an
    unknown split raise a `DataError` naming file and line (or are skipped with
    ``on_error="skip"`` and reported in a warning). Other keywords go to `TabularDataset`
    (``num_bins``, ``bin_width``, ``bins``, ``normalize``)."""
    check_on_error(on_error)
    features = _columns(features)
    targets = _targets(target)
    if not os.path.isfile(path):
        raise DataError(f"tabular CSV not found: {path}")
    with open_csv(path) as reader:
        header = [h.strip() for h in next(reader, [])]
        if not header:
            raise DataError(f"{path}: the CSV is empty")
        check_header(path, header)
        absent = [t for t in targets if t not in header]
        if absent:
            what = f" {absent[0]!r}" if len(targets) == 1 else f"(s) {absent}"
            raise DataError(f"{path} line 1: missing target column{what} (header {header})")
        if split_column is not None and split_column not in header:
            raise DataError(f"{path} line 1: missing split column {split_column!r} (header "
                            f"{header}; leave split_column unset for a random split)")
        split_column = "split" if split_column is None else split_column
        has_split = split_column in header
        if features is None:
            features = [c for c in header if c not in targets and c != split_column]
        both = [c for c in features if c in targets]
        if both:
            raise DataError(f"column(s) {both} are both features and targets")
        missing = [c for c in features if c not in header]
        if missing:
            raise DataError(f"{path} line 1: missing feature column(s) {missing} (header {header})")
        fi = [header.index(c) for c in features]
        ti = [header.index(t) for t in targets]
        si = header.index(split_column) if has_split else None
        X, y, sp, rows, skipped = [], [], [], [], []
        for line, row in enumerate(reader, start=2):
            if not row or not any(c.strip() for c in row):
                continue
            where = f"{path} line {line}"
            try:
                if len(row) != len(header):
                    raise DataError(f"{where}: {len(row)} fields, header has {len(header)}")
                vals = []
                for c, j in zip(features + targets, fi + ti):
                    try:
                        v = parse_number(row[j])
                    except ValueError:
                        raise DataError(f"{where}: value {row[j]!r} in column {c!r} is not a "
                                        f"number") from None
                    if not math.isfinite(v):
                        raise DataError(f"{where}: value {row[j]!r} in column {c!r} is NaN or "
                                        f"infinite")
                    vals.append(v)
                s = row[si].strip() if has_split else None
                if has_split and s not in SPLITS:
                    raise DataError(f"{where}: unknown split {s!r} (expected one of {list(SPLITS)})")
            except DataError as e:
                if on_error == "raise":
                    raise
                skipped.append(str(e))
                continue
            X.append(vals[:len(features)])
            y.append(vals[len(features):])
            sp.append(s)
            rows.append(line)
    if skipped:
        warnings.warn(f"{path}: skipped {len(skipped)} bad row(s): {'; '.join(skipped[:5])}")
    X = np.asarray(X, np.float32).reshape(len(y), len(features))
    y = np.asarray(y, np.float32).reshape(len(y), len(targets))
    if len(targets) == 1:
        y = y[:, 0]
    if has_split:
        assign = np.asarray(sp)
    else:
        r = np.random.default_rng(seed).random(len(y))
        assign = np.where(r < test_fraction, "test",
                          np.where(r < test_fraction + val_fraction, "val", "train"))
    splits = {}
    for s in SPLITS:
        sel = np.flatnonzero(assign == s)
        if len(sel) or s == "train":
            splits[s] = TabularSplit(s, X[sel], y[sel], path, [rows[k] for k in sel])
    ds = TabularDataset(os.path.splitext(os.path.basename(path))[0], splits, feature_names=features,
                        **kwargs)
    ds.skipped = skipped
    ds.target_names = targets
    return ds


class TensorLoader:
    """Batches (x, y [B, 1] or [B, D], w [B, 1]) of an in-memory split with the same order, sharding,
    epoch and last-batch rules as the image loaders (``x`` standardised with the training stats)."""

    backend = "memory"

    def __init__(self, dataset, split, batch_size, *, device="cpu", shard=(0, 1), seed=0,
                 shuffle=None, sample_weights=None, bin_weights=None, even_shards=False, **_):
        self.dataset, self.split = dataset, split
        self.view = dataset.split(split)
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.device = torch.device(device)
        self.rank, self.world = int(shard[0]), int(shard[1])
        self.seed, self.epoch, self.even_shards = int(seed), 0, bool(even_shards)
        self.shuffle = (split == "train") if shuffle is None else bool(shuffle)
        n = len(self.view)
        x = (self.view.X - dataset.mean) / dataset.std
        self.x = torch.from_numpy(np.ascontiguousarray(x, np.float32))
        self.y = torch.from_numpy(self.view.targets.astype(np.float32)).view(n, -1)
        if sample_weights is not None:
            w = np.asarray(sample_weights, np.float32).reshape(-1)
            if len(w) != n:
                raise ValueError(f"sample_weights must have one weight per {split} sample ({n}), "
                                 f"got {len(w)}")
        elif bin_weights is not None:
            bw = np.asarray(bin_weights, np.float32).reshape(-1)
            if len(bw) != dataset.bins.size:
                raise ValueError(f"bin_weights must have one weight per bin "
                                 f"({dataset.bins.size}), got {len(bw)}")
            w = bw[dataset.bins.index(self.view.targets)]
        else:
            w = np.ones(n, np.float32)
        self.w = torch.from_numpy(w).view(-1, 1)
        epoch_order(n, 0, 0, False, self.rank, self.world)
        self.stats = {"epoch": None, "skipped": 0, "skipped_items": [], "padded": 0}

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def __len__(self):
        return shard_batches(len(self.view), self.batch_size, self.rank, self.world,
                             self.even_shards)

    def __iter__(self):
        order, padded = epoch_order(len(self.view), self.seed, self.epoch, self.shuffle, self.rank,
                                    self.world, self.even_shards)
        self.stats = {"epoch": self.epoch, "skipped": 0, "skipped_items": [], "padded": padded}
        real = torch.ones(len(order), 1)
        if padded:
            real[len(order) - padded:] = 0
        idx = torch.from_numpy(order)
        for s in range(0, len(order), self.batch_size):
            b = idx[s:s + self.batch_size]
            yield (self.x[b].to(self.device), self.y[b].to(self.device),
                   (self.w[b] * real[s:s + self.batch_size]).to(self.device))
        self.epoch += 1
