"""`ShotMetrics`: the DIR shot metrics (`ssir_fast.metrics.BinnedMetrics`) as a
`torchmetrics.Metric`, so Lightning's `self.log_dict` and torchmetrics' own machinery sync it
across processes and reset it (install with the `torchmetrics` extra).

    metric = ShotMetrics(y_min=0, bin_width=1.0, num_bins=121, train_labels=train_y)
    metric.update(pred, y)                 # per batch, on each process
    metric.compute()                       # {"all_mae": tensor, "few_gm": tensor, ...}, synced
    metric.compute_full()                  # BinnedMetrics.compute()'s dict (per_bin, counts)
    metric.reset()

The only state is the per-bin table [num_bins, 12] (float64, summed over processes): the numbers
are those of `BinnedMetrics` fed the same batches, on one process or all-reduced.
"""
import torch
import torchmetrics

from ..metrics import BASE_KEYS, DEPTH_KEYS, BinnedMetrics

__all__ = ["ShotMetrics"]


class ShotMetrics(torchmetrics.Metric):
    """Streaming DIR metrics (MAE, MSE, RMSE, GM, bMAE and count for all/many/medium/few, plus
    the depth metrics with ``depth=True``) as a torchmetrics Metric.

    Takes BinnedMetrics' arguments (bins, training labels or counts, thresholds or shot_bins,
    depth, floor, allow_nonfinite) and torchmetrics' keyword arguments (``sync_on_compute``,
    ``process_group``, ...). `compute()` returns a flat dict of 0-d float64 tensors named
    ``<group>_<metric>`` (NaN for a group with no samples), ready for ``self.log_dict``."""

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, y_min=None, bin_width=None, num_bins=None, train_labels=None, *,
                 train_counts=None, bins=None, many_thr=100, few_thr=20, shot_bins=None,
                 depth=False, floor=None, allow_nonfinite=False, **kwargs):
        super().__init__(**kwargs)
        extra = {} if floor is None else {"floor": floor}
        # the bins, groups and formulas; its own table stays unused
        self.binned = BinnedMetrics(y_min, bin_width, num_bins, train_labels,
                                    train_counts=train_counts, bins=bins, many_thr=many_thr,
                                    few_thr=few_thr, shot_bins=shot_bins, depth=depth,
                                    allow_nonfinite=allow_nonfinite, **extra)
        self.add_state("table", default=self.binned._zeros("cpu"), dist_reduce_fx="sum")

    def update(self, pred, target, mask=None):
        """Add a batch (as BinnedMetrics.update)."""
        part, _, _ = self.binned.batch_table(pred, target, mask)
        self.table += part.to(self.table.device)

    def compute(self):
        # torchmetrics calls this with the table summed over processes (and caches the result)
        self.binned.load_state_dict({**self.binned.state_dict(), "table": self.table})
        self._full = res = self.binned.compute()
        keys = BASE_KEYS + (DEPTH_KEYS if self.binned.depth else ())
        return {f"{group}_{k}": torch.tensor(float(res[group][k]), dtype=torch.float64)
                for group in ("all", "many", "medium", "few") if group in res for k in keys}

    def compute_full(self):
        """BinnedMetrics.compute()'s dict (groups, per_bin, counters) of the synced table."""
        self.compute()
        return self._full
