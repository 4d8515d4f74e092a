"""The shot groups of the DIR protocol (docs/algorithm.md, section 6): which label bins count as
many-, medium- and few-shot when the groups are fixed lists of bins rather than thresholds on the
training counts (`BinnedMetrics(shot_bins=...)`), and the official NYUD2-DIR lists."""
import numpy as np

from . import nyud2

__all__ = ["GROUPS", "GROUP_CODE", "NYUD2_SHOT_BUCKETS", "nyud2_shot_bins", "check_shot_bins"]

GROUPS = ("all", "many", "medium", "few")
GROUP_CODE = {"many": 0, "medium": 1, "few": 2}

# the official NYUD2 buckets (ssir_fast/nyud2.py, with the other NYUD2 constants)
NYUD2_SHOT_BUCKETS = nyud2.SHOT_BUCKETS


def nyud2_shot_bins(bins):
    """The official NYUD2 shot groups as bin indices of `bins` (0.1 m wide): bucket k is the bin
    whose lower edge is 0.1 k m. Buckets outside the bins are dropped (ssir_fast's NYUD2 bins
    start at bucket 7, 0.7 m; the balanced test pixels lie inside them)."""
    width = nyud2.BIN_WIDTH
    if abs(bins.bin_width - width) > 1e-9:
        raise ValueError(f"the NYUD2 shot buckets are {width} m wide; these bins are "
                         f"{bins.bin_width}")
    out = {}
    for name, buckets in NYUD2_SHOT_BUCKETS.items():
        idx = [int(round(k - bins.y_min / width)) for k in buckets]
        out[name] = [b for b in idx if 0 <= b < bins.num_bins]
    return out


def check_shot_bins(shot_bins, num_bins, name="shot_bins"):
    """{"many"|"medium"|"few": [bin index, ...]} validated: known group names, integer indices in
    [0, num_bins), no bin in two groups. Returns a dict of int lists (missing groups empty)."""
    if not isinstance(shot_bins, dict):
        raise ValueError(f"{name} must be a dict of group -> bin indices, got "
                         f"{type(shot_bins).__name__}")
    unknown = sorted(set(shot_bins) - set(GROUP_CODE))
    if unknown:
        raise ValueError(f"{name}: unknown group(s) {unknown}; use many, medium, few")
    out, owner = {}, {}
    for group in GROUP_CODE:
        idx = list(shot_bins.get(group) or [])
        for b in idx:
            if isinstance(b, bool) or not isinstance(b, (int, np.integer)):
                raise ValueError(f"{name}[{group!r}]: bin indices must be integers, got {b!r}")
            if not 0 <= b < num_bins:
                raise ValueError(f"{name}[{group!r}]: bin {b} is outside [0, {num_bins})")
            if b in owner and owner[b] != group:
                raise ValueError(f"{name}: bin {b} is in both {owner[b]!r} and {group!r}")
            owner[int(b)] = group
        out[group] = sorted({int(b) for b in idx})
    return out
