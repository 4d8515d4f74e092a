"""The DIR evaluation protocol (docs/algorithm.md, section 6): errors per many-, medium- and
few-shot label bin.

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

The fixed group lists live in `ssir_fast.shot_groups` and the per-bin figure in
`ssir_fast.metrics_plot`; both are re-exported here. Vector targets ([N, D], bins a D-dim grid
of `LabelBins`): the same protocol over the grid's flat bins, MAE averaged over the dimensions,
plus the Euclidean error and per-dimension MAE (`ssir_fast.metrics_nd`).
"""
import math
import warnings

import numpy as np
import torch

from .nyud2 import balanced_pixel_mask  # noqa: F401  (NYUD2's protocol; public here too)
from .imbalance import LabelBins
from .metrics_nd import (vector_columns, vector_counts, vector_keys, vector_per_bin,
                         vector_summary, vector_table)
from .metrics_io import write_metrics_json, write_per_bin_csv
from .metrics_plot import plot_per_bin, plot_per_bin_grid
from .ops.bin_reduce import (COUNT, DEFAULT_FLOOR, N_DELTA1, N_DELTA2, N_DELTA3, N_FLOORED,
                             N_NONFINITE, N_OUT_OF_RANGE, NUM_COLUMNS, SUM_ABS, SUM_ABSREL,
                             SUM_LOG10, SUM_LOG_ABS, SUM_SQ, bin_reduce)
from .shot_groups import GROUP_CODE, GROUPS, NYUD2_SHOT_BUCKETS, check_shot_bins, nyud2_shot_bins

__all__ = ["BinnedMetrics", "shot_metrics", "balanced_pixel_mask", "plot_per_bin", "GROUPS",
           "NYUD2_SHOT_BUCKETS", "nyud2_shot_bins", "check_shot_bins"]

BASE_KEYS = ("mae", "mse", "rmse", "gm", "bmae", "count")
DEPTH_KEYS = ("delta1", "delta2", "delta3", "absrel", "log10")


def _is_seq(v):
    return isinstance(v, (list, tuple, np.ndarray))


def _as_bins(bins, y_min, bin_width, num_bins, train_labels):
    if bins is not None:
        return bins
    if y_min is not None and bin_width is not None and num_bins is not None:
        if _is_seq(y_min) or _is_seq(bin_width) or _is_seq(num_bins):
            return LabelBins(y_min, bin_width, num_bins)    # a D-dim grid
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
        Vector targets: y_min, bin_width, num_bins as per-dimension sequences (or a grid
            `bins`), pred / target [N, D], train_labels [N, D] (metrics_nd: the extra keys "l2"
            and "mae_<d>"; depth=False).
        allow_nonfinite: count and skip NaN/inf pairs instead of raising (reported as
            "n_nonfinite").

    >>> m = BinnedMetrics(y_min=0, bin_width=1.0, num_bins=121, train_labels=train_y)
    >>> for pred, y in loader: m.update(pred, y)
    >>> m.all_reduce()            # under torch.distributed: sum the tables of all ranks
    >>> res = m.compute()         # res["few"]["mae"], res["all"]["gm"], res["per_bin"]["mae"], ...

    With HuggingFace accelerate, whose prepared loaders pad the last batch of an uneven split
    with repeated samples, update every process with `accelerator.gather_for_metrics((pred, y))`
    (which drops them) and skip all_reduce. As a torchmetrics Metric (Lightning's self.log_dict):
    `ssir_fast.integrations.torchmetrics.ShotMetrics`.
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
        self.vector = self.bins.vector
        if self.vector and depth:
            raise ValueError("depth=True (the ratio metrics of depth maps) needs scalar bins; "
                             "these bins are a grid over vector targets")
        self.shot_bins = (None if shot_bins is None
                          else check_shot_bins(shot_bins, self.bins.size))
        self.depth, self.floor, self.allow_nonfinite = bool(depth), float(floor), allow_nonfinite
        B = self.bins.size
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
        cols = vector_columns(self.bins) if self.vector else NUM_COLUMNS
        return torch.zeros(self.bins.size, cols, dtype=torch.float64, device=device)

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
        part, target, mask = self.batch_table(pred, target, mask)
        if self._table is None:
            self._table = self._zeros(self.device or part.device)
        self._table += part.to(self._table.device)
        self._reduced = None
        self._track_far(target.detach(), mask)
        return self

    @torch.no_grad()
    def batch_table(self, pred, target, mask=None):
        """(the per-bin table [num_bins, 12] of one batch, target and mask as converted): what
        `update` adds, for adapters that keep the sum themselves (the torchmetrics one)."""
        if not isinstance(pred, torch.Tensor):
            pred = torch.as_tensor(pred)
        target = torch.as_tensor(target, device=pred.device)
        if not pred.is_floating_point():
            pred = pred.double()
        if self.vector:
            if target.dtype != pred.dtype:
                pred, target = _common_float(pred, target)
            if mask is not None:
                mask = torch.as_tensor(mask, device=pred.device)
            if pred.numel() != target.numel():
                raise ValueError(f"pred and target must have the same number of elements, got "
                                 f"pred {tuple(pred.shape)} and target {tuple(target.shape)}")
            return vector_table(pred, target, mask, self.bins, self.floor, self.allow_nonfinite)
        if pred.numel() != target.numel():
            raise ValueError(f"pred and target must have the same number of elements, got pred "
                             f"{tuple(pred.shape)} and target {tuple(target.shape)}")
        if target.shape != pred.shape:  # [N, 1] vs [N] and the like
            target = target.reshape(pred.shape)
        if target.dtype != pred.dtype:
            pred, target = _common_float(pred, target)
        if mask is not None:
            mask = torch.as_tensor(mask, device=pred.device)
            mask = mask.reshape(pred.shape) if mask.numel() == pred.numel() else mask
        b = self.bins
        part = bin_reduce(pred.detach(), target.detach(), b.y_min, b.bin_width, b.num_bins,
                          mask=mask, floor=self.floor, allow_nonfinite=self.allow_nonfinite)
        return part, target, mask

    def _track_far(self, target, mask):
        """Running min / max of the (selected) targets, on the device and without a host sync:
        one aminmax per batch (per dimension for a grid). compute() warns when they reach far
        outside the bins."""
        if self.vector:
            y0 = torch.tensor(self.bins.y_min, dtype=target.dtype, device=target.device)
            t = target if mask is None else torch.where(mask.to(torch.bool)[..., None], target,
                                                        y0)
            if t.numel() == 0:
                return
            lo, hi = torch.aminmax(t.reshape(-1, self.bins.dim), dim=0)
        else:
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
            self.shot_bins = check_shot_bins(state["shot_bins"], self.bins.size)
        table = state["table"]
        self._table = None if table is None else table.to(torch.float64).to(self.device or "cpu")
        self._reduced = None
        return self

    # ---- results ----------------------------------------------------------------------------
    def groups(self):
        """Shot group of each bin: an int array (0 many, 1 medium, 2 few, -1 none), or None
        (no training counts and no shot_bins)."""
        if self.shot_bins is not None:
            g = np.full(self.bins.size, -1)
            for name, code in GROUP_CODE.items():
                g[self.shot_bins[name]] = code
            return g
        if self.train_counts is None:
            return None
        c = self.train_counts
        return np.where(c > self.many_thr, 0, np.where(c < self.few_thr, 2, 1))

    def _summary(self, t, name):
        n = t[:, COUNT].sum()
        keys = BASE_KEYS + (DEPTH_KEYS if self.depth else ()) + (
            vector_keys(self.bins) if self.vector else ())
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
        if self.vector:
            out.update(vector_summary(t, n))
        if self.depth:
            out.update(delta1=t[:, N_DELTA1].sum() / n, delta2=t[:, N_DELTA2].sum() / n,
                       delta3=t[:, N_DELTA3].sum() / n, absrel=t[:, SUM_ABSREL].sum() / n,
                       log10=t[:, SUM_LOG10].sum() / n)
        return {k: (v if k == "count" else float(v)) for k, v in ((k, out[k]) for k in keys)}

    def compute(self):
        """{"all"|"many"|"medium"|"few": {metric: float}, "per_bin": {column: np.ndarray},
        "n_floored", "n_out_of_range", "n_nonfinite"}. Can be called any number of times."""
        t = self.table.detach().cpu().numpy()
        if self._far is not None and self.vector:
            for k, (seen_lo, seen_hi) in enumerate(zip(*self._far.tolist())):
                ax = self.bins.axis(k)
                lo, hi = ax.far_limits()
                if seen_lo < lo or seen_hi > hi:
                    ax.warn_far_outside(seen_lo, seen_hi, None, f"test targets (dimension {k})",
                                        stacklevel=2)
        elif self._far is not None:
            seen_lo, seen_hi = self._far.tolist()
            lo, hi = self.bins.far_limits()
            if seen_lo < lo or seen_hi > hi:
                self.bins.warn_far_outside(seen_lo, seen_hi, None, "test targets", stacklevel=2)
        res = {"all": self._summary(t, "all")}
        groups = self.groups()
        if groups is not None:
            for name, code in GROUP_CODE.items():
                res[name] = self._summary(t[groups == code], name)
        res["per_bin"] = self._per_bin(t, groups)
        res["n_floored"] = int(t[:, N_FLOORED].sum())
        if self.vector:
            res["n_out_of_range"], res["n_nonfinite"] = vector_counts(t)
            return res
        res["n_out_of_range"] = int(t[:, N_OUT_OF_RANGE].sum())
        res["n_nonfinite"] = int(t[:, N_NONFINITE].sum())
        return res

    def _per_bin(self, t, groups):
        n = t[:, COUNT]
        with np.errstate(divide="ignore", invalid="ignore"):
            safe = np.where(n > 0, n, np.nan)
            edges = ({} if self.vector else
                     {"bin_lo": self.bins.edges()[:-1], "bin_hi": self.bins.edges()[1:]})
            cols = {**edges,
                    "train_count": (self.train_counts if self.train_counts is not None
                                    else np.full(len(n), -1)),
                    "group": (np.array(["many", "medium", "few", ""])[groups]
                              if groups is not None else np.array([""] * len(n))),
                    "count": n.astype(np.int64), "mae": t[:, SUM_ABS] / safe,
                    "mse": t[:, SUM_SQ] / safe, "rmse": np.sqrt(t[:, SUM_SQ] / safe),
                    "gm": np.exp(t[:, SUM_LOG_ABS] / safe)}
            if self.vector:   # each dimension's edges first, l2 and mae_<d> after gm
                extra = vector_per_bin(self.bins, t, safe)
                cols = {**{k: v for k, v in extra.items() if k.startswith("bin_")}, **cols,
                        **{k: v for k, v in extra.items() if not k.startswith("bin_")}}
            if self.depth:
                cols.update(delta1=t[:, N_DELTA1] / safe, delta2=t[:, N_DELTA2] / safe,
                            delta3=t[:, N_DELTA3] / safe, absrel=t[:, SUM_ABSREL] / safe,
                            log10=t[:, SUM_LOG10] / safe)
        return cols

    def to_csv(self, path, result=None):
        """Write the per-bin table (one row per bin) as CSV; empty bins have empty metric cells."""
        return write_per_bin_csv((result or self.compute())["per_bin"], path)

    def to_json(self, path, result=None):
        """Write the group metrics and the per-bin table as JSON (NaN written as null)."""
        bins = {"y_min": self.bins.y_min, "bin_width": self.bins.bin_width,
                "num_bins": self.bins.num_bins, "many_thr": self.many_thr,
                "few_thr": self.few_thr, "shot_bins": self.shot_bins}
        return write_metrics_json(result or self.compute(), bins, path)

    def plot(self, path, result=None, title=None):
        """PNG of the per-bin MAE over the training label histogram (`plot_per_bin`); for a
        two-dimensional grid, heat maps over the joint bins (`plot_per_bin_grid`)."""
        d = self.bins.dim
        if d > 2:
            raise ValueError(f"plot: a per-bin figure has one or two target dimensions, these "
                             f"bins have {d}; the per-bin table (to_csv) holds every bin")
        draw = plot_per_bin_grid if d == 2 else plot_per_bin
        return draw(result or self.compute(), path, title=title)


def _common_float(pred, target):
    """pred and target in their promoted float dtype (float64 when that is not a float)."""
    dtype = torch.promote_types(pred.dtype, target.dtype)
    dtype = dtype if dtype.is_floating_point else torch.float64
    return pred.to(dtype), target.to(dtype)


def shot_metrics(pred, target, train_labels, y_min=None, bin_width=1.0, num_bins=None, *,
                 mask=None, many_thr=100, few_thr=20, shot_bins=None, depth=False,
                 floor=DEFAULT_FLOOR, allow_nonfinite=False):
    """One-shot `BinnedMetrics`: the DIR group metrics of (pred, target) in one call.

    Without y_min/num_bins the bins are derived from train_labels (LabelBins.from_labels).
    Vector targets [N, D]: y_min, bin_width, num_bins as per-dimension sequences (bin_width a
    sequence alone derives the grid from train_labels [N, D])."""
    if y_min is not None and num_bins is not None:
        bins = _as_bins(None, y_min, bin_width, num_bins, None)
    else:
        bins = LabelBins.from_labels(train_labels, bin_width, y_min)
    m = BinnedMetrics(bins=bins, train_labels=train_labels, many_thr=many_thr, few_thr=few_thr,
                      shot_bins=shot_bins, depth=depth, floor=floor,
                      allow_nonfinite=allow_nonfinite)
    return m.update(pred, target, mask=mask).compute()
