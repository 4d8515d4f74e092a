"""A two-target default data set: digits rotated AND shrunk, both long-tailed, built on first use.

Built like the default data set (`default_data`): scikit-learn's 8x8 digits upscaled to
``image_size`` pixels, white on black, RGB JPEG, digits of train / val / test disjoint (70 / 10 /
20 %). Each image has two independent, visible factors, the targets [angle, shrink]:

- angle: counter-clockwise rotation in degrees, theta = min(E, max_angle - 1e-3), E ~
  Exponential(tau) (tau 20, max_angle 90), bins of ``angle_bin`` degrees (10: 9 bins);
- shrink: how much smaller the digit is drawn, in percent of the full size, s = min(E',
  max_shrink - 1e-3), E' ~ Exponential(tau_shrink) (tau_shrink 10, max_shrink 50: the digit is
  drawn at 100 - s percent, centred), bins of ``shrink_bin`` percent (5: 10 bins).

So the training set is long-tailed in both dimensions and most of all in their combination: with
the defaults (4,000 training images) the joint bin (0-10 degrees, 0-5 %) holds about 600 images and
the far corner about one. Val and test are balanced over the joint bins: ``val_per_bin`` /
``test_per_bin`` images in every (angle, shrink) bin, uniform inside it.

Written as ``<root>/default2d.csv`` with the columns ``angle,shrink,path,split,digit_index`` plus
``images/<split>/<n>.jpg``, deterministically and atomically (as the default data set), in
``$SSIR_FAST_DATA/default2d-<options>`` or ``~/.cache/ssir_fast/default2d-<options>``.
"""
import math
import os

import numpy as np

from ..imbalance import LabelBins
from .default_data import build_digit_set, cache_root

__all__ = ["DEFAULTS_2D", "default2d_root", "build_default2d", "load_default2d", "TARGETS"]

DEFAULTS_2D = dict(image_size=32, n_train=4000, val_per_bin=3, test_per_bin=6, max_angle=90,
                   angle_bin=10, tau=20.0, max_shrink=50, shrink_bin=5, tau_shrink=10.0, seed=0,
                   quality=95)
TARGETS = ("angle", "shrink")
CSV_NAME = "default2d.csv"


def _options(**overrides):
    unknown = set(overrides) - set(DEFAULTS_2D)
    if unknown:
        raise TypeError(f"unknown default2d option(s) {sorted(unknown)}; known: "
                        f"{sorted(DEFAULTS_2D)}")
    opts = {**DEFAULTS_2D, **{k: v for k, v in overrides.items() if v is not None}}
    if int(opts["image_size"]) < 8:
        raise ValueError(f"image_size must be >= 8, got {opts['image_size']}")
    if not 1 <= int(opts["max_angle"]) <= 179:
        raise ValueError(f"max_angle must be in [1, 179] (digits turned by 180 degrees are "
                         f"ambiguous), got {opts['max_angle']}")
    if not 1 <= int(opts["max_shrink"]) <= 80:
        raise ValueError(f"max_shrink must be in [1, 80] percent (the digit stays visible), got "
                         f"{opts['max_shrink']}")
    for k, top in (("angle_bin", "max_angle"), ("shrink_bin", "max_shrink")):
        w = int(opts[k])
        if w < 1 or int(opts[top]) % w:
            raise ValueError(f"{k} must be an integer >= 1 dividing {top} ({opts[top]}), got "
                             f"{opts[k]}")
    for k in ("n_train", "val_per_bin", "test_per_bin"):
        if int(opts[k]) < 1:
            raise ValueError(f"{k} must be >= 1, got {opts[k]}")
    for k in ("tau", "tau_shrink"):
        if not (math.isfinite(float(opts[k])) and float(opts[k]) > 0):
            raise ValueError(f"{k} (the mean of an exponential distribution) must be > 0, got "
                             f"{opts[k]}")
    if not 1 <= int(opts["quality"]) <= 100:
        raise ValueError(f"quality (JPEG) must be in [1, 100], got {opts['quality']}")
    return opts


def option_errors(options):
    """The messages `_options` would raise for `options` (empty when they are fine)."""
    try:
        _options(**options)
    except (TypeError, ValueError) as e:
        return [str(e)]
    return []


def bins_2d(**options):
    """The joint (angle, shrink) LabelBins of the options."""
    o = _options(**options)
    aw, sw = int(o["angle_bin"]), int(o["shrink_bin"])
    return LabelBins((0.0, 0.0), (float(aw), float(sw)),
                     (int(o["max_angle"]) // aw, int(o["max_shrink"]) // sw))


def default2d_root(cache_dir=None, **options):
    """Folder of the data set built with ``options`` (one per distinct option set)."""
    return cache_root("default2d", _options(**options), cache_dir)


def _targets(opts, rng):
    """[n, 2] targets of every split: long-tailed train, balanced (per joint bin) val/test."""
    n = int(opts["n_train"])
    a_top, s_top = float(opts["max_angle"]), float(opts["max_shrink"])
    train = np.stack([np.minimum(rng.exponential(opts["tau"], n), a_top - 1e-3),
                      np.minimum(rng.exponential(opts["tau_shrink"], n), s_top - 1e-3)], axis=1)
    out = {"train": train}
    grid = bins_2d(**opts)
    lows = grid.centers() - np.asarray(grid.bin_width) / 2       # [cells, 2] lower corners
    for split in ("val", "test"):
        k = int(opts[f"{split}_per_bin"])
        base = np.repeat(lows, k, axis=0)
        # inside each bin by a margin, so rounding to 3 decimals never changes the bin
        frac = rng.uniform(0.001, 0.999, base.shape)
        out[split] = base + frac * np.asarray(grid.bin_width)
    return {s: np.round(t, 3) for s, t in out.items()}


def render(digit, size, angle, shrink):
    """8x8 digit (0..16) -> RGB PIL image size x size: drawn at (100 - shrink) % of the full size,
    centred, then rotated counter-clockwise by ``angle`` degrees."""
    from PIL import Image
    img = Image.fromarray(np.uint8(np.clip(digit * (255.0 / 16.0), 0, 255)), mode="L")
    inner = max(2, int(round(size * (100.0 - shrink) / 100.0)))
    small = img.resize((inner, inner), Image.BICUBIC)
    canvas = Image.new("L", (size, size), 0)
    canvas.paste(small, ((size - inner) // 2, (size - inner) // 2))
    canvas = canvas.rotate(float(angle), resample=Image.BILINEAR, fillcolor=0)
    return canvas.convert("RGB")


def build_default2d(root=None, progress=True, **options):
    """Build the data set into ``root`` (or `default2d_root`) unless it exists; return root."""
    opts = _options(**options)
    root = root or default2d_root(**options)
    return build_digit_set(root, "default2d", opts, _targets, render, TARGETS, progress)


def load_default2d(root=None, progress=True, on_error="raise", **options):
    """The data set (built first if needed) as an `ImageRegressionDataset` with targets [n, 2]
    (angle, shrink) and the joint bins of `bins_2d`. Normalisation mean = std = 0.5."""
    from .datasets import load_dir_csv

    opts = _options(**options)
    root = build_default2d(root, progress=progress, **options)
    ds = load_dir_csv(os.path.join(root, CSV_NAME), root, name="default2d", bins=bins_2d(**opts),
                      image_size=int(opts["image_size"]), on_error=on_error,
                      label_column=list(TARGETS))
    ds.options = opts
    ds.target_names = TARGETS
    return ds
