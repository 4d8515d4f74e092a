"""Tabular data (feature columns + one target column) and the in-memory loader that serves it and
the synthetic data sets.

Features are standardised with the training split's per-column mean and std (``normalize=True``);
the statistics are kept in ``dataset.mean`` / ``dataset.std``. Bins: ``num_bins`` equal bins over
the training target range unless ``bin_width`` is given (`ssir_fast.imbalance.LabelBins`).
"""
import csv
import math
import os
import warnings

import numpy as np
import torch

from ..imbalance import LabelBins
from .datasets import SPLITS, DataError, _check_on_error
from .transforms import epoch_order, shard_batches

__all__ = ["TabularDataset", "load_tabular", "TensorLoader"]


class TabularSplit:
    def __init__(self, name, X, y, source="memory", rows=None):
        self.name, self.X, self.targets, self.source = name, X, y, source
        self.rows = list(range(len(y))) if rows is None else rows

    def __len__(self):
        return len(self.targets)


class TabularDataset:
    """Feature matrix / target vector per split, with bins and feature normalisation."""
    kind = "tabular"

    def __init__(self, name, splits, bins=None, bin_width=None, num_bins=100, normalize=True,
                 feature_names=None):
        self.name = name
        self.splits = splits
        self.feature_names = feature_names
        if "train" not in splits or len(splits["train"]) == 0:
            raise DataError(f"{name}: the train split is empty")
        for s, v in splits.items():
            if len(v) == 0:
                raise DataError(f"{name}: split {s!r} is empty")
        ytr = splits["train"].targets
        if bins is None:
            if bin_width is None:
                span = float(ytr.max() - ytr.min())
                bin_width = span / num_bins if span > 0 else 1.0
            bins = LabelBins.from_labels(ytr, bin_width)
        self.bins = bins
        xtr = splits["train"].X
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


def load_tabular(path, target, features=None, split_column="split", on_error="raise",
                 val_fraction=0.1, test_fraction=0.2, seed=0, **kwargs):
    """Tabular CSV: numeric ``features`` (default: every column but the target and split column)
    and a numeric ``target`` column. With a ``split`` column its values (train/val/test) are used,
    otherwise a seeded random split with ``val_fraction`` / ``test_fraction``. A missing column, a
    non-numeric or NaN value and an unknown split raise a `DataError` naming file and line (or are
    skipped with ``on_error="skip"`` and reported in a warning)."""
    _check_on_error(on_error)
    if not os.path.isfile(path):
        raise DataError(f"tabular CSV not found: {path}")
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        if not header:
            raise DataError(f"{path}: the CSV is empty")
        if target not in header:
            raise DataError(f"{path} line 1: missing target column {target!r} (header {header})")
        has_split = split_column in header
        if features is None:
            features = [c for c in header if c not in (target, split_column)]
        missing = [c for c in features if c not in header]
        if missing:
            raise DataError(f"{path} line 1: missing feature column(s) {missing} (header {header})")
        fi = [header.index(c) for c in features]
        ti = header.index(target)
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
                for c, j in zip(features + [target], fi + [ti]):
                    try:
                        v = float(row[j])
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
            X.append(vals[:-1])
            y.append(vals[-1])
            sp.append(s)
            rows.append(line)
    if skipped:
        warnings.warn(f"{path}: skipped {len(skipped)} bad row(s): {'; '.join(skipped[:5])}")
    X = np.asarray(X, np.float32).reshape(len(y), len(features))
    y = np.asarray(y, np.float32)
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
    return ds


class TensorLoader:
    """Batches (x, y[:, None], w[:, None]) of an in-memory split with the same order, sharding,
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
        self.y = torch.from_numpy(self.view.targets.astype(np.float32)).view(-1, 1)
        if sample_weights is not None:
            w = np.asarray(sample_weights, np.float32).reshape(-1)
            if len(w) != n:
                raise ValueError(f"sample_weights must have one weight per {split} sample ({n}), "
                                 f"got {len(w)}")
        elif bin_weights is not None:
            bw = np.asarray(bin_weights, np.float32).reshape(-1)
            if len(bw) != dataset.bins.num_bins:
                raise ValueError(f"bin_weights must have one weight per bin "
                                 f"({dataset.bins.num_bins}), got {len(bw)}")
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
