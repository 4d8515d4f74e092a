"""The DIR evaluation protocol (SPEC 5): errors per many-, medium- and few-shot label bin.

A test pair (pred, y) falls in bin b = LabelBins.index(y); its *shot group* is decided by the
number of TRAINING labels in b:  many if n_train(b) > many_thr (100), few if n_train(b) < few_thr
(20), medium otherwise (the age data sets). Or the groups are fixed lists of bins, `shot_bins`:
NYUD2-DIR uses the official lists of 0.1 m depth buckets (`NYUD2_SHOT_BUCKETS`, converted to a
data set's bins by `nyud2_shot_bins`), since per-pixel counts make every bucket "many".
Over the test pairs P of a group (never averaged over bins first):

    mae  = sum|e| / |P|          mse = sum e^2 / |P|          rmse = sqrt(mse)
    gm   = exp(sum log max(|e|, floor) / |P|)     (geometric mean; floor 1e-8 keeps a zero error
                                                   from turning the whole GM into 0)
    bmae = mean over the group's non-empty test bins of that bin's MAE   (balanced MAE)
    depth: delta_k = #{max(p/y, y/p) < 1.25^k} / |P|,  absrel = sum |e|/y / |P|,
           log10 = sum |log10 p - log10 y| / |P|

All of it comes from one float64 table of per-bin sums filled by the fused op
`ssir_fast.ops.bin_reduce` in a single pass per batch, so `BinnedMetrics` streams over a loader,
merges across DDP ranks with one all_reduce of that table, and handles depth maps of 10^8 pixels.
An empty group reports NaN (and a RuntimeWarning), never an error.
"""
import csv
import json
import math
import warnings

import numpy as np
import torch

from .imbalance import LabelBins, raw_bin_index
from .ops.bin_reduce import (COUNT, DEFAULT_FLOOR, N_DELTA1, N_DELTA2, N_DELTA3, N_FLOORED,
                             N_NONFINITE, N_OUT_OF_RANGE, NUM_COLUMNS, SUM_ABS, SUM_ABSREL,
                             SUM_LOG10, SUM_LOG_ABS, SUM_SQ, bin_reduce)

__all__ = ["BinnedMetrics", "shot_metrics", "balanced_pixel_mask", "plot_per_bin", "GROUPS",
           "NYUD2_SHOT_BUCKETS", "nyud2_shot_bins", "check_shot_bins"]

GROUPS = ("all", "many", "medium", "few")
_GROUP_CODE = {"many": 0, "medium": 1, "few": 2}

# nyud2-dir util.py `Evaluator.shot_idx`: depth bucket k = [0.1 k, 0.1 (k + 1)) m, int(depth * 10)
# capped at 99.
NYUD2_SHOT_BUCKETS = {
    "many": [9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30,
             31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 47, 49],
    "medium": [7, 8, 46, 48, 50, 51, 52, 53, 54, 55, 56, 58, 60, 61, 63],
    "few": [0, 1, 2, 3, 4, 5, 6, 57, 59, 62, 64, 65, 66, 67, 68, 69, 70, 71, 72, 73, 74, 75, 76, 77,
            78, 79, 80, 81, 82, 83, 84, 85, 86, 87, 88, 89, 90, 91, 92, 93, 94, 95, 96, 97, 98, 99],
}


def nyud2_shot_bins(bins):
    """The official NYUD2 shot groups as bin indices of `bins` (0.1 m wide): bucket k is the bin
    whose lower edge is 0.1 k m. Buckets outside the bins are dropped (ssir_fast's NYUD2 bins
    start at bucket 7, 0.7 m; the balanced test pixels lie inside them)."""
    if abs(bins.bin_width - 0.1) > 1e-9:
        raise ValueError(f"the NYUD2 shot buckets are 0.1 m wide; these bins are {bins.bin_width}")
    out = {}
    for name, buckets in NYUD2_SHOT_BUCKETS.items():
        idx = [int(round(k - bins.y_min / 0.1)) for k in buckets]
        out[name] = [b for b in idx if 0 <= b < bins.num_bins]
    return out


def check_shot_bins(shot_bins, num_bins, name="shot_bins"):
    """{"many"|"medium"|"few": [bin index, ...]} validated: known group names, integer indices in
    [0, num_bins), no bin in two groups. Returns a dict of int lists (missing groups empty)."""
    if not isinstance(shot_bins, dict):
        raise ValueError(f"{name} must be a dict of group -> bin indices, got "
                         f"{type(shot_bins).__name__}")
    unknown = sorted(set(shot_bins) - set(_GROUP_CODE))
    if unknown:
        raise ValueError(f"{name}: unknown group(s) {unknown}; use many, medium, few")
    out, owner = {}, {}
    for group in _GROUP_CODE:
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
BASE_KEYS = ("mae", "mse", "rmse", "gm", "bmae", "count")
DEPTH_KEYS = ("delta1", "delta2", "delta3", "absrel", "log10")


def _as_bins(bins, y_min, bin_width, num_bins, train_labels):
    if bins is not None:
        return bins
    if y_min is not None and bin_width is not None and num_bins is not None:
        return LabelBins(float(y_min), float(bin_width), int(num_bins))
    if train_labels is None or bin_width is None:
        raise ValueError("give bins=LabelBins(...), or y_min, bin_width and num_bins, or "
                         "train_labels and bin_width to derive the bins from")
    return LabelBins.from_labels(train_labels, bin_width, y_min)


class BinnedMetrics:
    """Streaming DIR metrics over uniform label bins.

    Args:
        y_min, bin_width, num_bins: the bins (or `bins=LabelBins(...)`); targets outside them are
            merged into the edge bins, the DIR convention (ages >= 120 into bin 120).
        train_labels: the training labels, to count training samples per bin (or give
            `train_counts`, one count per bin). Without either only the "all" group is reported.
        many_thr, few_thr: shot-group thresholds on the training count (many > 100, few < 20).
        shot_bins: fixed groups instead of thresholds: {"many"|"medium"|"few": [bin index, ...]}
            (e.g. `nyud2_shot_bins(bins)`); bins in no list belong to no group.
        depth: also report delta1/2/3, absrel and log10 (positive targets).
        floor: floor of |e| for the GM log, and of p and y in the ratio metrics.
        allow_nonfinite: count and skip NaN/inf pairs instead of raising (reported as
            "n_nonfinite").

    >>> m = BinnedMetrics(y_min=0, bin_width=1.0, num_bins=121, train_labels=train_y)
    >>> for pred, y in loader: m.update(pred, y)
    >>> m.all_reduce()            # under torch.distributed: sum the tables of all ranks
    >>> res = m.compute()         # res["few"]["mae"], res["all"]["gm"], res["per_bin"]["mae"], ...
    """

    def __init__(self, y_min=None, bin_width=None, num_bins=None, train_labels=None, *,
                 train_counts=None, bins=None, many_thr=100, few_thr=20, shot_bins=None,
                 depth=False, floor=DEFAULT_FLOOR, allow_nonfinite=False, device=None):
        self.bins = _as_bins(bins, y_min, bin_width, num_bins, train_labels)
        for name, v in (("many_thr", many_thr), ("few_thr", few_thr)):
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) \
                    or not math.isfinite(v) or v < 0:
                raise ValueError(f"{name} must be a number >= 0, got {v!r}")
        if few_thr > many_thr + 1:
            raise ValueError(f"few_thr must be <= many_thr + 1, got few_thr={few_thr} and "
                             f"many_thr={many_thr}")
        self.many_thr, self.few_thr = many_thr, few_thr
        self.shot_bins = (None if shot_bins is None
                          else check_shot_bins(shot_bins, self.bins.num_bins))
        self.depth, self.floor, self.allow_nonfinite = bool(depth), float(floor), allow_nonfinite
        B = self.bins.num_bins
        if train_counts is not None:
            counts = np.asarray(torch.as_tensor(train_counts).cpu(), dtype=np.int64).reshape(-1)
            if counts.shape[0] != B:
                raise ValueError(f"train_counts must have num_bins = {B} entries, got "
                                 f"{counts.shape[0]}")
            self.train_counts = counts
        elif train_labels is not None:
            self.train_counts = self.bins.counts(train_labels)
        else:
            self.train_counts = None
        self.device = None if device is None else torch.device(device)
        self.reset()

    # ---- state ------------------------------------------------------------------------------
    def reset(self):
        """Forget every update (the bins and training counts stay)."""
        self._table = None     # local [num_bins, 12] float64 sums
        self._reduced = None   # the all-reduced table, valid until the next update
        self._far = None       # [min, max] of the targets seen (on the device)

    def _zeros(self, device):
        return torch.zeros(self.bins.num_bins, NUM_COLUMNS, dtype=torch.float64, device=device)

    @property
    def table(self):
        """The per-bin sums [num_bins, 12] (all ranks after all_reduce(), else this process)."""
        if self._reduced is not None:
            return self._reduced
        return self._table if self._table is not None else self._zeros(self.device or "cpu")

    @torch.no_grad()
    def update(self, pred, target, mask=None):
        """Add a batch: pred and target of the same number of elements (any shape, any device;
        dense maps are flattened), optional bool `mask` selecting pairs (e.g. balanced pixels)."""
        if not isinstance(pred, torch.Tensor):
            pred = torch.as_tensor(pred)
        target = torch.as_tensor(target, device=pred.device)
        if not pred.is_floating_point():
            pred = pred.double()
        if pred.numel() != target.numel():
            raise ValueError(f"pred and target must have the same number of elements, got pred "
                             f"{tuple(pred.shape)} and target {tuple(target.shape)}")
        if target.shape != pred.shape:  # [N, 1] vs [N] and the like
            target = target.reshape(pred.shape)
        if target.dtype != pred.dtype:
            dtype = torch.promote_types(pred.dtype, target.dtype)
            dtype = dtype if dtype.is_floating_point else torch.float64
            pred, target = pred.to(dtype), target.to(dtype)
        if mask is not None:
            mask = torch.as_tensor(mask, device=pred.device)
            mask = mask.reshape(pred.shape) if mask.numel() == pred.numel() else mask
        b = self.bins
        part = bin_reduce(pred.detach(), target.detach(), b.y_min, b.bin_width, b.num_bins,
                          mask=mask, floor=self.floor, allow_nonfinite=self.allow_nonfinite)
        if self._table is None:
            self._table = self._zeros(self.device or part.device)
        self._table += part.to(self._table.device)
        self._reduced = None
        self._track_far(target.detach(), mask)
        return self

    def _track_far(self, target, mask):
        """Running min / max of the (selected) targets, on the device and without a host sync:
        one aminmax per batch. compute() warns when they reach far outside the bins."""
        t = target if mask is None else torch.where(mask.to(torch.bool), target,
                                                    torch.full_like(target, self.bins.y_min))
        if t.numel() == 0:
            return
        lo, hi = torch.aminmax(t.reshape(-1))
        stats = torch.stack([lo, hi]).double()
        self._far = stats if self._far is None else torch.stack(
            [torch.fmin(self._far[0], stats[0]), torch.fmax(self._far[1], stats[1])])

    def all_reduce(self, group=None):
        """Sum the per-bin tables of all ranks (torch.distributed, when initialised; otherwise a
        no-op). The local table is kept, so calling it again never double counts; updates after
        it are local until the next all_reduce."""
        import torch.distributed as dist
        if not (dist.is_available() and dist.is_initialized()):
            return self
        local = self._table
        if local is None:
            device = self.device
            if device is None:
                device = (torch.device("cuda", torch.cuda.current_device())
                          if dist.get_backend(group) == "nccl" else torch.device("cpu"))
            local = self._table = self._zeros(device)
        reduced = local.clone()
        dist.all_reduce(reduced, op=dist.ReduceOp.SUM, group=group)
        self._reduced = reduced
        return self

    def state_dict(self):
        return {"table": self._table.cpu() if self._table is not None else None,
                "y_min": self.bins.y_min, "bin_width": self.bins.bin_width,
                "num_bins": self.bins.num_bins,
                "train_counts": None if self.train_counts is None else self.train_counts.tolist(),
                "many_thr": self.many_thr, "few_thr": self.few_thr, "shot_bins": self.shot_bins}

    def load_state_dict(self, state):
        for key in ("y_min", "bin_width", "num_bins"):
            if state[key] != getattr(self.bins, key):
                raise ValueError(f"state_dict has {key}={state[key]} but these metrics use "
                                 f"{key}={getattr(self.bins, key)}")
        if state.get("train_counts") is not None:
            self.train_counts = np.asarray(state["train_counts"], dtype=np.int64)
        self.many_thr, self.few_thr = state.get("many_thr", self.many_thr), state.get("few_thr",
                                                                                      self.few_thr)
        if state.get("shot_bins") is not None:
            self.shot_bins = check_shot_bins(state["shot_bins"], self.bins.num_bins)
        table = state["table"]
        self._table = None if table is None else table.to(torch.float64).to(self.device or "cpu")
        self._reduced = None
        return self

    # ---- results ----------------------------------------------------------------------------
    def groups(self):
        """Shot group of each bin: an int array (0 many, 1 medium, 2 few, -1 none), or None
        (no training counts and no shot_bins)."""
        if self.shot_bins is not None:
            g = np.full(self.bins.num_bins, -1)
            for name, code in _GROUP_CODE.items():
                g[self.shot_bins[name]] = code
            return g
        if self.train_counts is None:
            return None
        c = self.train_counts
        return np.where(c > self.many_thr, 0, np.where(c < self.few_thr, 2, 1))

    def _summary(self, t, name):
        n = t[:, COUNT].sum()
        keys = BASE_KEYS + (DEPTH_KEYS if self.depth else ())
        if n == 0:
            warnings.warn(f"BinnedMetrics: no test samples in the {name!r} group; its metrics "
                          f"are NaN", RuntimeWarning, stacklevel=3)
            out = {k: math.nan for k in keys}
            out["count"] = 0
            return out
        nonempty = t[:, COUNT] > 0
        out = {"mae": t[:, SUM_ABS].sum() / n, "mse": t[:, SUM_SQ].sum() / n,
               "gm": math.exp(t[:, SUM_LOG_ABS].sum() / n),
               "bmae": float(np.mean(t[nonempty, SUM_ABS] / t[nonempty, COUNT])),
               "count": int(n)}
        out["rmse"] = math.sqrt(out["mse"])
        if self.depth:
            out.update(delta1=t[:, N_DELTA1].sum() / n, delta2=t[:, N_DELTA2].sum() / n,
                       delta3=t[:, N_DELTA3].sum() / n, absrel=t[:, SUM_ABSREL].sum() / n,
                       log10=t[:, SUM_LOG10].sum() / n)
        return {k: (v if k == "count" else float(v)) for k, v in ((k, out[k]) for k in keys)}

    def compute(self):
        """{"all"|"many"|"medium"|"few": {metric: float}, "per_bin": {column: np.ndarray},
        "n_floored", "n_out_of_range", "n_nonfinite"}. Can be called any number of times."""
        t = self.table.detach().cpu().numpy()
        if self._far is not None:
            seen_lo, seen_hi = self._far.tolist()
            lo, hi = self.bins.far_limits()
            if seen_lo < lo or seen_hi > hi:
                self.bins.warn_far_outside(seen_lo, seen_hi, None, "test targets", stacklevel=2)
        res = {"all": self._summary(t, "all")}
        groups = self.groups()
        if groups is not None:
            for name, code in _GROUP_CODE.items():
                res[name] = self._summary(t[groups == code], name)
        res["per_bin"] = self._per_bin(t, groups)
        res["n_floored"] = int(t[:, N_FLOORED].sum())
        res["n_out_of_range"] = int(t[:, N_OUT_OF_RANGE].sum())
        res["n_nonfinite"] = int(t[:, N_NONFINITE].sum())
        return res

    def _per_bin(self, t, groups):
        n = t[:, COUNT]
        with np.errstate(divide="ignore", invalid="ignore"):
            safe = np.where(n > 0, n, np.nan)
            cols = {"bin_lo": self.bins.edges()[:-1], "bin_hi": self.bins.edges()[1:],
                    "train_count": (self.train_counts if self.train_counts is not None
                                    else np.full(len(n), -1)),
                    "group": (np.array(["many", "medium", "few", ""])[groups]
                              if groups is not None else np.array([""] * len(n))),
                    "count": n.astype(np.int64), "mae": t[:, SUM_ABS] / safe,
                    "mse": t[:, SUM_SQ] / safe, "rmse": np.sqrt(t[:, SUM_SQ] / safe),
                    "gm": np.exp(t[:, SUM_LOG_ABS] / safe)}
            if self.depth:
                cols.update(delta1=t[:, N_DELTA1] / safe, delta2=t[:, N_DELTA2] / safe,
                            delta3=t[:, N_DELTA3] / safe, absrel=t[:, SUM_ABSREL] / safe,
                            log10=t[:, SUM_LOG10] / safe)
        return cols

    def to_csv(self, path, result=None):
        """Write the per-bin table (one row per bin) as CSV; empty bins have empty metric cells."""
        per_bin = (result or self.compute())["per_bin"]
        names = list(per_bin)
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(names)
            for i in range(len(per_bin["count"])):
                w.writerow([_cell(per_bin[k][i]) for k in names])
        return path

    def to_json(self, path, result=None):
        """Write the group metrics and the per-bin table as JSON (NaN written as null)."""
        res = result or self.compute()
        doc = {k: ({kk: _cell(vv) for kk, vv in v.items()} if isinstance(v, dict) and k != "per_bin"
                   else v) for k, v in res.items() if k != "per_bin"}
        doc["per_bin"] = {k: [_cell(x) for x in v] for k, v in res["per_bin"].items()}
        doc["bins"] = {"y_min": self.bins.y_min, "bin_width": self.bins.bin_width,
                       "num_bins": self.bins.num_bins, "many_thr": self.many_thr,
                       "few_thr": self.few_thr, "shot_bins": self.shot_bins}
        with open(path, "w") as f:
            json.dump(doc, f, indent=1)
        return path

    def plot(self, path, result=None, title=None):
        """PNG of the per-bin MAE over the training label histogram; see `plot_per_bin`."""
        return plot_per_bin(result or self.compute(), path, title=title)


def _cell(v):
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return None if not math.isfinite(float(v)) else float(v)
    if isinstance(v, np.str_):
        return str(v)
    return v


def plot_per_bin(result, path, title=None, metric="mae"):
    """Bars: training samples per bin (left axis, the label histogram); line: test `metric` per
    bin (right axis), shot groups shaded. Written as PNG with matplotlib's Agg backend."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    pb = result["per_bin"]
    centers = (np.asarray(pb["bin_lo"]) + np.asarray(pb["bin_hi"])) / 2
    width = float(pb["bin_hi"][0] - pb["bin_lo"][0])
    fig, ax = plt.subplots(figsize=(9, 4), dpi=120)
    train = np.asarray(pb["train_count"], dtype=float)
    colours = {"many": "#9ecae1", "medium": "#fdd0a2", "few": "#fcbba1", "": "#cccccc"}
    ax.bar(centers, np.where(train >= 0, train, 0), width=width,
           color=[colours[str(g)] for g in pb["group"]], label="training samples")
    ax.set_xlabel("target")
    ax.set_ylabel("# training samples")
    ax2 = ax.twinx()
    ax2.plot(centers, pb[metric], "o-", color="#d62728", ms=2.5, lw=1.2, label=f"test {metric}")
    ax2.set_ylabel(f"test {metric.upper()} per bin")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[g]) for g in ("many", "medium", "few")]
    ax.legend(handles + ax2.get_lines(), ["many-shot", "medium-shot", "few-shot", f"test {metric}"],
              loc="upper right", fontsize=8)
    ax.set_title(title or f"per-bin {metric.upper()} over the training label distribution")
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return path


def shot_metrics(pred, target, train_labels, y_min=None, bin_width=1.0, num_bins=None, *,
                 mask=None, many_thr=100, few_thr=20, shot_bins=None, depth=False,
                 floor=DEFAULT_FLOOR, allow_nonfinite=False):
    """One-shot `BinnedMetrics`: the DIR group metrics of (pred, target) in one call.

    Without y_min/num_bins the bins are derived from train_labels (LabelBins.from_labels)."""
    bins = (LabelBins(float(y_min), float(bin_width), int(num_bins))
            if y_min is not None and num_bins is not None
            else LabelBins.from_labels(train_labels, bin_width, y_min))
    m = BinnedMetrics(bins=bins, train_labels=train_labels, many_thr=many_thr, few_thr=few_thr,
                      shot_bins=shot_bins, depth=depth, floor=floor,
                      allow_nonfinite=allow_nonfinite)
    return m.update(pred, target, mask=mask).compute()


@torch.no_grad()
def balanced_pixel_mask(depth_maps, y_min=0.7, bin_width=0.1, y_max=10.0, per_bin=None, seed=0):
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
