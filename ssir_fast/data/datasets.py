"""Image regression data sets in the formats DIR users already have.

* AgeDB-DIR / IMDB-WIKI-DIR (and the embedded default data set): one CSV with the columns
  ``age,path,split`` (split in train/val/test), ``path`` relative to an image root. Extra columns are
  kept (``SplitView.extra``) and otherwise ignored. Bins: width 1 from 0, labels >= 120 merged into
  the last of 121 bins (the DIR convention, `ssir_fast.imbalance.LabelBins.dir_age()`).
* NYUD2-DIR: RGB/depth pairs from list files (``rgb_path,depth_path`` per line, one file per split,
  or one file with a third ``split`` column), depth in metres 0.7-10, bins of 0.1 m, and a balanced
  set of test pixels (``test_balanced_mask.npy`` when present, else `balanced_pixel_mask`); the
  NYUD2 constants are in `ssir_fast.nyud2`.

Every bad row raises a `DataError` naming the file and line; with ``on_error="skip"`` the row is
skipped, counted in ``dataset.skipped`` and reported with a warning, never dropped silently.
"""
import os
from dataclasses import dataclass, field

import numpy as np

from .. import nyud2
from ..imbalance import LabelBins, raw_bin_index
from .rows import (DataError, bad_row, check_header, check_on_error, not_a_file, open_csv,
                   parse_label, report_skipped)

__all__ = ["DataError", "SplitView", "ImageRegressionDataset", "DepthDataset", "load_dir_csv",
           "load_nyud2", "balanced_pixel_mask", "read_depth", "SPLITS"]

SPLITS = ("train", "val", "test")
DIR_COLUMNS = ("age", "path", "split")


@dataclass
class SplitView:
    """One split: absolute file paths, float targets, and where each sample came from.

    ``rows[i]`` is the 1-based line of sample i in ``source`` (the header is line 1), used in
    every error message. For depth data ``targets`` holds NaN and ``depth_paths`` the depth files.
    """
    name: str
    source: str
    paths: list
    targets: np.ndarray
    rows: list
    depth_paths: list = None
    extra: dict = field(default_factory=dict)

    def __len__(self):
        return len(self.paths)

    def where(self, i):
        """'file.csv line N (image path)' for error messages."""
        return f"{self.source} line {self.rows[i]} ({self.paths[i]})"


class _Base:
    kind = "image"

    def __init__(self, name, root, splits, bins, mean, std, image_size, skipped=None):
        self.name = name
        self.root = root
        self.splits = splits
        self.bins = bins
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.image_size = tuple(image_size)
        self.skipped = skipped or []

    def split(self, name):
        """The `SplitView` of a split; an absent or empty split is an error."""
        if name not in self.splits:
            raise DataError(f"{self.name}: no split {name!r} (have {sorted(self.splits)})")
        view = self.splits[name]
        if len(view) == 0:
            raise DataError(f"{self.name}: split {name!r} of {view.source} is empty")
        return view

    def __len__(self):
        return sum(len(v) for v in self.splits.values())

    def clip_bounds(self):
        """Per-channel valid input range after normalisation, ((0-m)/s, (1-m)/s), for SSIR clipping."""
        lo = tuple((0.0 - m) / s for m, s in zip(self.mean, self.std))
        hi = tuple((1.0 - m) / s for m, s in zip(self.mean, self.std))
        return lo, hi

    def __repr__(self):
        sizes = ", ".join(f"{k}={len(v)}" for k, v in self.splits.items())
        return f"{type(self).__name__}({self.name!r}, {sizes}, bins={self.bins})"


class ImageRegressionDataset(_Base):
    """A DIR-layout image data set: one scalar target per image."""

    @property
    def train_labels(self):
        """Training targets (float32), for bins, re-weighting and shot metrics."""
        return self.split("train").targets


class DepthDataset(_Base):
    """NYUD2-DIR: RGB inputs, dense depth targets in metres."""
    kind = "depth"

    def __init__(self, *args, test_mask=None, depth_scale=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.depth_scale = depth_scale
        self._test_mask = test_mask
        self._train_labels = None

    @property
    def train_labels(self):
        """Valid (> 0) training depth pixels in metres, read from every training depth map once."""
        if self._train_labels is None:
            view = self.split("train")
            parts = []
            for i, p in enumerate(view.depth_paths):
                d = read_depth(p, self.depth_scale, where=view.where(i))
                parts.append(d[d > 0])
            self._train_labels = np.concatenate(parts).astype(np.float32)
        return self._train_labels

    def test_mask(self):
        """Balanced test-pixel mask, bool [N_test, H, W] at the stored depth resolution."""
        if self._test_mask is None:
            view = self.split("test")
            maps = np.stack([read_depth(p, self.depth_scale, where=view.where(i))
                             for i, p in enumerate(view.depth_paths)])
            m = balanced_pixel_mask(maps, y_min=self.bins.y_min, bin_width=self.bins.bin_width,
                                    y_max=self.bins.y_max, seed=0)
            self._test_mask = np.asarray(m.cpu() if hasattr(m, "cpu") else m, dtype=bool)
        return self._test_mask


def load_dir_csv(csv_path, image_root=None, *, name=None, bins=None, image_size=224,
                 mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), label_column="age",
                 check_files=True, on_error="raise", required_splits=SPLITS):
    """Read a DIR-layout CSV (``age,path,split``) into an `ImageRegressionDataset`.

    Rows are kept in file order within each split. ``image_root`` defaults to the CSV's folder.
    Errors (missing column, unknown split, non-numeric/NaN label, missing file) name the file and
    line; with ``on_error="skip"`` bad rows are skipped, counted and reported in a warning.
    An empty split among ``required_splits`` is always an error. ``label_column`` may be a
    list of columns: the targets are then [n, D] (a vector target; give D-dim ``bins``).
    """
    check_on_error(on_error)
    csv_path = os.path.abspath(csv_path)
    if not os.path.isfile(csv_path):
        raise DataError(f"CSV file not found: {csv_path}")
    image_root = os.path.dirname(csv_path) if image_root is None else os.path.abspath(image_root)
    name = name or os.path.splitext(os.path.basename(csv_path))[0]
    labels = [label_column] if isinstance(label_column, str) else list(label_column)
    required = tuple(labels) + ("path", "split")
    data = {s: {"paths": [], "targets": [], "rows": [], "extra": {}} for s in SPLITS}
    skipped = []
    with open_csv(csv_path) as reader:
        header = next(reader, None)
        if header is None:
            raise DataError(f"{csv_path}: the CSV is empty (expected a header {','.join(required)})")
        header = [h.strip() for h in header]
        check_header(csv_path, header)
        missing = [c for c in required if c not in header]
        if missing:
            raise DataError(f"{csv_path} line 1: missing required column(s) {missing} "
                            f"(header is {header}; required {list(required)})")
        col = {c: header.index(c) for c in header}
        extra_cols = [c for c in header if c not in required]
        for line, row in enumerate(reader, start=2):
            if not row or all(not c.strip() for c in row):
                continue  # blank line
            where = f"{csv_path} line {line}"
            if len(row) != len(header):
                bad_row(f"{where}: {len(row)} fields, header has {len(header)}", on_error, skipped)
                continue
            split = row[col["split"]].strip()
            if split not in SPLITS:
                bad_row(f"{where}: unknown split {split!r} (expected one of {list(SPLITS)})",
                     on_error, skipped)
                continue
            try:
                y = [parse_label(row[col[c]].strip(), where, c) for c in labels]
                y = y[0] if isinstance(label_column, str) else y
            except DataError as e:
                bad_row(str(e), on_error, skipped)
                continue
            rel = row[col["path"]].strip()
            path = rel if os.path.isabs(rel) else os.path.join(image_root, rel)
            if check_files and not os.path.isfile(path):
                bad_row(f"{where}: {not_a_file(path, 'image')}", on_error, skipped)
                continue
            d = data[split]
            d["paths"].append(path)
            d["targets"].append(y)
            d["rows"].append(line)
            for c in extra_cols:
                d["extra"].setdefault(c, []).append(row[col[c]])
    report_skipped(name, skipped)
    shape = (-1,) if isinstance(label_column, str) else (-1, len(labels))
    splits = {s: SplitView(s, csv_path, d["paths"],
                           np.asarray(d["targets"], np.float32).reshape(shape), d["rows"],
                           extra=d["extra"]) for s, d in data.items()}
    empty = [s for s in required_splits if len(splits[s]) == 0]
    if empty:
        sizes = {s: len(v) for s, v in splits.items()}
        raise DataError(f"{csv_path}: split(s) {empty} are empty (sizes {sizes})")
    if bins is None:
        bins = LabelBins.dir_age()
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    return ImageRegressionDataset(name, image_root, splits, bins, mean, std, image_size,
                                  skipped=skipped)


# ----------------------------------------------------------------------------- NYUD2-DIR

def read_depth(path, depth_scale=None, where=None):
    """Depth map in metres (float32 [H, W]) from .npy (metres), 16-bit PNG (millimetres, / 1000) or
    8-bit PNG (the DIR NYUD2 training convention: value / 255 * 10). ``depth_scale`` overrides the
    multiplier applied to the stored values."""
    where = where or path
    if not os.path.isfile(path):
        raise DataError(f"{where}: {not_a_file(path, 'depth')}")
    try:
        if path.endswith(".npy"):
            raw = np.load(path)
            scale = 1.0
        else:
            from PIL import Image
            with Image.open(path) as im:
                im.load()
                raw = np.asarray(im)
            scale = nyud2.PNG8_METRES if raw.dtype == np.uint8 else nyud2.PNG16_METRES
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - any decoder failure becomes a DataError with the row
        raise DataError(f"{where}: cannot read depth file {path}: {e}") from None
    if raw.ndim == 3 and raw.shape[-1] == 1:
        raw = raw[..., 0]
    if raw.ndim != 2:
        raise DataError(f"{where}: depth map must be 2-D, got shape {raw.shape} from {path}")
    d = raw.astype(np.float32) * np.float32(depth_scale if depth_scale is not None else scale)
    if not np.isfinite(d).all():
        raise DataError(f"{where}: depth map {path} contains NaN or infinite values")
    return d


def _balanced_pixel_mask_np(depth_maps, y_min=nyud2.Y_MIN, bin_width=nyud2.BIN_WIDTH,
                            y_max=nyud2.Y_MAX, per_bin=None, seed=0):
    """Fallback of `ssir_fast.metrics.balanced_pixel_mask` (same signature and rule) for when the
    metrics module cannot be imported: from every non-empty bin of width ``bin_width`` in
    [y_min, y_max), ``per_bin`` pixels (default: the smallest non-empty bin count) drawn uniformly
    without replacement; a bin with fewer pixels keeps all of them. Returns a bool numpy array."""
    d = np.asarray(depth_maps, dtype=np.float64)
    num_bins = int(round((y_max - y_min) / bin_width))
    idx = raw_bin_index(d.reshape(-1), y_min, bin_width, num_bins)  # LabelBins' rule
    valid = np.isfinite(idx) & (idx >= 0) & (idx < num_bins) & (d.reshape(-1) < y_max)
    flat = np.flatnonzero(valid)
    mask = np.zeros(d.size, dtype=bool)
    if flat.size == 0:
        return mask.reshape(d.shape)
    b = idx[flat].astype(np.int64)
    counts = np.bincount(b, minlength=num_bins)
    k = int(counts[counts > 0].min()) if per_bin is None else int(per_bin)
    rng = np.random.default_rng(seed)
    order = np.argsort(b, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)])
    for j in np.flatnonzero(counts):
        members = flat[order[starts[j]:starts[j + 1]]]
        take = members if members.size <= k else rng.choice(members, size=k, replace=False)
        mask[take] = True
    return mask.reshape(d.shape)


try:  # one definition for the package: the evaluation module's (torch, any device)
    from ..metrics import balanced_pixel_mask
except Exception:  # noqa: BLE001 - metrics unavailable (e.g. a partial install): numpy fallback
    balanced_pixel_mask = _balanced_pixel_mask_np


def _read_list(path, on_error, skipped, root, check_files, default_split=None):
    """Rows (rgb, depth, split, line) of a NYUD2 list file; a header line rgb,depth[,split] is allowed."""
    out = []
    with open_csv(path) as rows:
        for line, row in enumerate(rows, start=1):
            row = [c.strip() for c in row]
            if not row or not any(row):
                continue
            if line == 1 and row[:2] == ["rgb", "depth"]:
                continue
            where = f"{path} line {line}"
            if len(row) not in (2, 3) or (len(row) == 2 and default_split is None):
                bad_row(f"{where}: expected 'rgb,depth{',split' if default_split is None else ''}', "
                     f"got {len(row)} field(s)", on_error, skipped)
                continue
            split = row[2] if len(row) == 3 else default_split
            if split not in SPLITS:
                bad_row(f"{where}: unknown split {split!r} (expected one of {list(SPLITS)})",
                     on_error, skipped)
                continue
            rgb, dep = (p if os.path.isabs(p) else os.path.join(root, p) for p in row[:2])
            if check_files:
                gone = [p for p in (rgb, dep) if not os.path.isfile(p)]
                if gone:
                    bad_row(f"{where}: file not found: {gone[0]}", on_error, skipped)
                    continue
            out.append((rgb, dep, split, line))
    return out


def load_nyud2(root, *, list_file=None, image_size=(240, 320), depth_scale=None, check_files=True,
               on_error="raise", mask_file="test_balanced_mask.npy", required_splits=("train", "test")):
    """NYUD2-DIR from ``root``: ``nyu2_train.csv`` / ``nyu2_test.csv`` (and optional
    ``nyu2_val.csv``) with ``rgb_path,depth_path`` per line, or one ``list_file`` with a third
    ``split`` column. The balanced test mask is read from ``mask_file`` (bool [N_test, H, W]) when it
    exists, else computed with `balanced_pixel_mask` on first use."""
    check_on_error(on_error)
    root = os.path.abspath(root)
    skipped = []
    rows = []
    if list_file is not None:
        lf = list_file if os.path.isabs(list_file) else os.path.join(root, list_file)
        if not os.path.isfile(lf):
            raise DataError(f"NYUD2 list file not found: {lf}")
        rows = [(r, lf) for r in _read_list(lf, on_error, skipped, root, check_files)]
    else:
        for s in SPLITS:
            lf = os.path.join(root, f"nyu2_{s}.csv")
            if os.path.isfile(lf):
                rows += [(r, lf) for r in _read_list(lf, on_error, skipped, root, check_files, s)]
            elif s in required_splits:
                raise DataError(f"NYUD2 list file not found: {lf}")
    report_skipped("nyud2", skipped)
    splits = {}
    for s in SPLITS:
        mine = [(r, lf) for r, lf in rows if r[2] == s]
        if not mine and s not in required_splits:
            continue
        splits[s] = SplitView(s, mine[0][1] if mine else root, [r[0] for r, _ in mine],
                              np.full(len(mine), np.nan, np.float32), [r[3] for r, _ in mine],
                              depth_paths=[r[1] for r, _ in mine])
    empty = [s for s in required_splits if len(splits.get(s, ())) == 0]
    if empty:
        raise DataError(f"NYUD2 at {root}: split(s) {empty} are empty")
    mask = None
    mpath = mask_file if mask_file is None or os.path.isabs(mask_file) else os.path.join(root, mask_file)
    if mpath is not None and os.path.isfile(mpath):
        mask = np.load(mpath).astype(bool)
        if mask.ndim != 3 or mask.shape[0] != len(splits["test"]):
            raise DataError(f"{mpath}: balanced test mask must be [N_test={len(splits['test'])}, H, W],"
                            f" got {mask.shape}")
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    # the NYUD2 constants (bins, normalisation): ssir_fast/nyud2.py
    return DepthDataset("nyud2", root, splits, nyud2.BINS, nyud2.MEAN, nyud2.STD, image_size,
                        skipped=skipped, test_mask=mask, depth_scale=depth_scale)
