"""NYUD2-DIR in one place: the constants of the depth benchmark that the data set, its
registration, the metrics and the weighting read (docs/algorithm.md, sections 5 and 6).

- Bins: depths 0.7 m to 10 m in bins of 0.1 m, `BINS = LabelBins(0.7, 0.1, 93)`; depths below
  0.7 m fall into the first bin, depths >= 10 m into the last.
- The index rule: 0.1 is not a power of two, so a depth's bin is the official float32 rule
  ``floor(float32(depth) * float32(10)) - 7`` (nyud2-dir's ``int(depth * np.float32(10))`` minus
  the bucket start 7), not the float64 quotient, which puts about 0.5 % of millimetre depths one
  bin low. `LabelBins.index` (through `ops.binning.raw_bin_index`) applies it to every decimal
  width; `BUCKET_START` is the 7.
- Shot groups: fixed lists of 0.1 m buckets (`SHOT_BUCKETS`, bucket k = [0.1 k, 0.1 (k + 1)) m),
  not thresholds on the training counts, since per-pixel counts make every bucket "many";
  `ssir_fast.shot_groups.nyud2_shot_bins` turns them into bin indices of `BINS`.
- Weighting: the "depth" recipe of `ssir_fast.imbalance.DIR_RECIPES` (no clip of the INV counts,
  LDS padded by reflection).
- Model selection on the validation RMSE (`SELECT_METRIC`), as the official code selects.
- Normalisation: the ImageNet statistics (`MEAN`, `STD`) on RGB in [0, 1].
- The balanced test pixels: `balanced_pixel_mask` (the same number of pixels from every bin).
- Depth files: metres per stored unit of an 8-bit PNG (the official training convention,
  value / 255 * 10: `PNG8_METRES`) and of a 16-bit PNG (millimetres: `PNG16_METRES`).
"""
import torch

from .imbalance import LabelBins
from .ops.binning import raw_bin_index

__all__ = ["Y_MIN", "BIN_WIDTH", "Y_MAX", "NUM_BINS", "BUCKET_START", "BINS", "SHOT_BUCKETS",
           "RECIPE", "SELECT_METRIC", "MEAN", "STD", "PNG8_METRES", "PNG16_METRES",
           "balanced_pixel_mask"]

Y_MIN, BIN_WIDTH, Y_MAX = 0.7, 0.1, 10.0
NUM_BINS = 93                      # round((Y_MAX - Y_MIN) / BIN_WIDTH)
BUCKET_START = 7                   # the first bin is the official bucket 7 (0.7 m)
BINS = LabelBins(Y_MIN, BIN_WIDTH, NUM_BINS)

# nyud2-dir util.py `Evaluator.shot_idx`: depth bucket k = [0.1 k, 0.1 (k + 1)) m, int(depth * 10)
# capped at 99.
SHOT_BUCKETS = {
    "many": [9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30,
             31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 47, 49],
    "medium": [7, 8, 46, 48, 50, 51, 52, 53, 54, 55, 56, 58, 60, 61, 63],
    "few": [0, 1, 2, 3, 4, 5, 6, 57, 59, 62, 64, 65, 66, 67, 68, 69, 70, 71, 72, 73, 74, 75, 76, 77,
            78, 79, 80, 81, 82, 83, 84, 85, 86, 87, 88, 89, 90, 91, 92, 93, 94, 95, 96, 97, 98, 99],
}

RECIPE = "depth"                   # the key of ssir_fast.imbalance.DIR_RECIPES
SELECT_METRIC = "rmse"

MEAN = (0.485, 0.456, 0.406)       # ImageNet statistics, as in the official NYUD2 code
STD = (0.229, 0.224, 0.225)

PNG8_METRES = 10.0 / 255.0
PNG16_METRES = 1e-3


@torch.no_grad()
def balanced_pixel_mask(depth_maps, y_min=Y_MIN, bin_width=BIN_WIDTH, y_max=Y_MAX,
                        per_bin=None, seed=0):
    """Bool mask (depth_maps' shape) selecting the same number of pixels in every depth bin of
    width `bin_width` in [y_min, y_max): the NYUD2-DIR balanced test set. Pixels are binned as
    `LabelBins.index` does (for 0.1 m the official int(depth * 10) bucket).

    `per_bin` pixels are drawn uniformly without replacement from each non-empty bin (default:
    the size of the smallest non-empty bin, so every bin gets the same count); bins with fewer
    pixels keep all of theirs. Pixels outside [y_min, y_max) or not finite are never selected.
    Deterministic for a given `seed` (torch.Generator on the CPU)."""
    d = torch.as_tensor(depth_maps)
    flat = d.reshape(-1)
    num_bins = int(round((y_max - y_min) / bin_width))
    t = raw_bin_index(flat, y_min, bin_width, num_bins)  # LabelBins' rule (official for 0.1 m)
    valid = torch.isfinite(flat) & (t >= 0) & (t < num_bins) & (flat.double() < y_max)
    idx = valid.nonzero().reshape(-1)
    mask = torch.zeros(flat.shape[0], dtype=torch.bool, device=flat.device)
    if idx.numel() == 0:
        return mask.reshape(d.shape)
    g = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(idx.numel(), generator=g).to(idx.device)
    idx = idx[perm]                                   # valid pixels in random order
    b = t[idx].long()
    b_sorted, order = torch.sort(b, stable=True)      # random order kept inside each bin
    counts = torch.bincount(b_sorted, minlength=num_bins)
    k = int(counts[counts > 0].min()) if per_bin is None else int(per_bin)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(b_sorted.numel(), device=b.device) - starts[b_sorted]
    mask[idx[order[rank < k]]] = True
    return mask.reshape(d.shape)
