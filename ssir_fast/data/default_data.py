"""The embedded default data set: rotated handwritten digits, built on first use.

Source images: scikit-learn's 1,797 handwritten digits (8x8, shipped inside the package), upscaled
to ``image_size`` pixels (bicubic), white ink on black, saved as RGB JPEG. Each image is rotated
counter-clockwise by an angle theta in degrees, the regression target.

Long-tailed training angles: theta = min(E, max_angle - 1e-3) with E ~ Exponential(scale=tau)
(density proportional to exp(-theta / tau) on [0, max_angle)), so with the defaults (tau = 20,
max_angle = 90, 4,000 training images, 1-degree bins) the first ~14 degrees are many-shot
(> 100 images per bin), the next ~32 medium-shot and the rest few-shot (< 20). Val and test are
balanced: ``val_per_bin`` / ``test_per_bin`` images in every 1-degree bin, angle uniform inside the
bin. The digit images behind train, val and test are disjoint (70 / 10 / 20 % of the digits).

Written as ``<root>/default.csv`` with the DIR columns ``age,path,split`` (``age`` holds the angle)
plus ``images/<split>/<n>.jpg``. The build is deterministic in its options (byte-identical files)
and atomic: it goes to a temporary folder renamed into place, so concurrent processes (DDP ranks)
can build at the same time. The folder defaults to ``$SSIR_FAST_DATA/default-<options>`` or
``~/.cache/ssir_fast/default-<options>``.
"""
import csv
import hashlib
import json
import os
import shutil
import math
import tempfile

import numpy as np

from ..imbalance import LabelBins

__all__ = ["DEFAULTS", "default_root", "build_default", "load_default"]

DEFAULTS = dict(image_size=32, n_train=4000, val_per_bin=5, test_per_bin=10, max_angle=90,
                tau=20.0, seed=0, quality=95)
CSV_NAME = "default.csv"


def _options(**overrides):
    unknown = set(overrides) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"unknown default-data option(s) {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    opts = {**DEFAULTS, **{k: v for k, v in overrides.items() if v is not None}}
    if int(opts["image_size"]) < 8:
        raise ValueError(f"image_size must be >= 8, got {opts['image_size']}")
    if int(opts["max_angle"]) < 1 or int(opts["max_angle"]) > 179:
        raise ValueError(f"max_angle must be in [1, 179] (digits turned by 180 degrees are "
                         f"ambiguous), got {opts['max_angle']}")
    for k in ("n_train", "val_per_bin", "test_per_bin"):
        if int(opts[k]) < 1:
            raise ValueError(f"{k} must be >= 1, got {opts[k]}")
    if not (math.isfinite(float(opts["tau"])) and float(opts["tau"]) > 0):
        raise ValueError(f"tau (the mean of the exponential angle distribution) must be > 0, got "
                         f"{opts['tau']}")
    if not 1 <= int(opts["quality"]) <= 100:
        raise ValueError(f"quality (JPEG) must be in [1, 100], got {opts['quality']}")
    return opts


def option_errors(options):
    """The messages `_options` would raise for `options`, for the configuration check (an empty
    list when they are fine)."""
    try:
        _options(**options)
    except (TypeError, ValueError) as e:
        return [str(e)]
    return []


def default_root(cache_dir=None, **options):
    """Folder of the data set built with ``options``: one folder per distinct option set."""
    return cache_root("default", _options(**options), cache_dir)


def cache_root(name, opts, cache_dir=None):
    """``<cache>/<name>-<image_size>px-<hash of opts>``; the cache is `cache_dir`,
    $SSIR_FAST_DATA or ~/.cache/ssir_fast."""
    base = cache_dir or os.environ.get("SSIR_FAST_DATA") or os.path.join(
        os.path.expanduser("~"), ".cache", "ssir_fast")
    tag = hashlib.sha1(json.dumps(opts, sort_keys=True).encode()).hexdigest()[:10]
    return os.path.join(base, f"{name}-{opts['image_size']}px-{tag}")


def _angles(opts, rng):
    """Angles (degrees) of every split: long-tailed train, balanced val/test."""
    top = float(opts["max_angle"])
    train = np.minimum(rng.exponential(opts["tau"], int(opts["n_train"])), top - 1e-3)
    bins = np.arange(int(opts["max_angle"]), dtype=np.float64)
    # inside [b + 0.001, b + 0.999] so that rounding to 3 decimals never changes the bin
    val = np.repeat(bins, opts["val_per_bin"]) + rng.uniform(
        0.001, 0.999, len(bins) * opts["val_per_bin"])
    test = np.repeat(bins, opts["test_per_bin"]) + rng.uniform(
        0.001, 0.999, len(bins) * opts["test_per_bin"])
    # round so the CSV text equals the angle the image was rotated by
    return {s: np.round(a, 3) for s, a in (("train", train), ("val", val), ("test", test))}


def _render(digit, size, angle):
    """8x8 digit (0..16) -> RGB PIL image of size x size, rotated counter-clockwise by ``angle``."""
    from PIL import Image
    img = Image.fromarray(np.uint8(np.clip(digit * (255.0 / 16.0), 0, 255)), mode="L")
    img = img.resize((size, size), Image.BICUBIC)
    img = img.rotate(float(angle), resample=Image.BILINEAR, fillcolor=0)
    return img.convert("RGB")


def build_default(root=None, progress=True, **options):
    """Build the default data set into ``root`` (or `default_root`) unless it exists; return root."""
    opts = _options(**options)
    root = root or default_root(**options)
    return build_digit_set(root, "default", opts, _angles, _render, ("age",), progress)


def build_digit_set(root, name, opts, draw_targets, render, target_columns, progress=True):
    """Write a data set of scikit-learn's digits in the DIR layout into ``root`` unless it holds
    one (``<name>.csv`` with the target columns, ``path``, ``split``, ``digit_index``, plus
    ``images/<split>/<n>.jpg``); return root. The digits are split 70 / 10 / 20 % (disjoint);
    `draw_targets(opts, rng)` gives each split's targets ([n] or [n, D]); each image is a digit of
    its split drawn with replacement, rendered by `render(digit, size, *targets)`. Deterministic
    in `opts` (one generator, seeded by opts["seed"]) and atomic: built in a temporary folder
    renamed into place, so a concurrent builder or an interrupted build leaves no half set."""
    csv_name = f"{name}.csv"
    if os.path.isfile(os.path.join(root, csv_name)):
        return root
    from sklearn.datasets import load_digits

    images = load_digits().images
    rng = np.random.default_rng(opts["seed"])
    perm = rng.permutation(len(images))
    n = len(images)
    pools = {"train": perm[:int(0.7 * n)], "val": perm[int(0.7 * n):int(0.8 * n)],
             "test": perm[int(0.8 * n):]}
    targets = draw_targets(opts, rng)
    jobs = []
    for split in ("train", "val", "test"):
        src = rng.choice(pools[split], size=len(targets[split]), replace=True)
        jobs += [(split, k, int(src[k]), [float(t) for t in np.atleast_1d(targets[split][k])])
                 for k in range(len(src))]
    parent = os.path.dirname(os.path.abspath(root)) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".building-", dir=parent)
    try:
        for split in ("train", "val", "test"):
            os.makedirs(os.path.join(tmp, "images", split))
        it = jobs
        if progress:
            try:
                from tqdm import tqdm
                it = tqdm(jobs, desc=f"building {name} data set in {root}", unit="img")
            except ImportError:
                pass
        rows = []
        for split, k, src, values in it:
            rel = f"images/{split}/{k:05d}.jpg"
            render(images[src], int(opts["image_size"]), *values).save(
                os.path.join(tmp, rel), format="JPEG", quality=int(opts["quality"]))
            rows.append((*(f"{v:.3f}" for v in values), rel, split, src))
        with open(os.path.join(tmp, csv_name), "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(list(target_columns) + ["path", "split", "digit_index"])
            w.writerows(rows)
        with open(os.path.join(tmp, "options.json"), "w") as f:
            json.dump(opts, f, sort_keys=True, indent=1)
        try:
            os.rename(tmp, root)
        except OSError:
            if not os.path.isfile(os.path.join(root, csv_name)):
                raise  # not a lost race with another builder
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def load_default(root=None, progress=True, on_error="raise", **options):
    """The default data set (built first if needed) as an `ImageRegressionDataset`.

    Bins: width 1 degree from 0, ``max_angle`` bins. Normalisation mean = std = 0.5 (DIR)."""
    from .datasets import load_dir_csv

    opts = _options(**options)
    root = build_default(root, progress=progress, **options)
    ds = load_dir_csv(os.path.join(root, CSV_NAME), root, name="default",
                      bins=LabelBins(0.0, 1.0, int(opts["max_angle"])),
                      image_size=int(opts["image_size"]), on_error=on_error)
    ds.options = opts
    return ds
