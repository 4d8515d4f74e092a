"""ShotMetrics (torchmetrics adapter) against BinnedMetrics: one process, two gloo processes
(torchmetrics syncs the per-bin table), reset, and the depth metrics."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torchmetrics

from ssir_fast.integrations.torchmetrics import ShotMetrics
from ssir_fast.metrics import BinnedMetrics

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def _data(seed=0, n=300):
    g = torch.Generator().manual_seed(seed)
    train = (torch.rand(2000, generator=g) ** 3) * 40       # long-tailed: few large labels
    y = torch.rand(n, generator=g) * 40
    pred = y + torch.randn(n, generator=g) * 2
    return train, pred, y


def _flat(res, depth=False):
    keys = ("mae", "mse", "rmse", "gm", "bmae", "count") + (
        ("delta1", "delta2", "delta3", "absrel", "log10") if depth else ())
    return {f"{g}_{k}": float(res[g][k]) for g in ("all", "many", "medium", "few") for k in keys}


@pytest.mark.parametrize("depth", [False, True])
def test_equals_binned_metrics_and_resets(depth):
    train, pred, y = _data()
    kw = dict(y_min=0.0, bin_width=1.0, num_bins=40, train_labels=train, depth=depth)
    metric, ref = ShotMetrics(**kw), BinnedMetrics(**kw)
    assert isinstance(metric, torchmetrics.Metric)
    for s in range(0, 300, 64):
        metric.update(pred[s:s + 64], y[s:s + 64])
        ref.update(pred[s:s + 64], y[s:s + 64])
    got = {k: float(v) for k, v in metric.compute().items()}
    assert got == pytest.approx(_flat(ref.compute(), depth), rel=1e-12, nan_ok=True)
    assert metric.compute_full()["per_bin"]["count"].tolist() == \
        ref.compute()["per_bin"]["count"].tolist()
    metric.reset()
    assert float(metric.table.abs().sum()) == 0
    metric.update(pred[:10], y[:10])
    assert float(metric.compute()["all_count"]) == 10


def _rank(rank, world, path, queue):
    dist.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=world)
    train, pred, y = _data()
    metric = ShotMetrics(y_min=0.0, bin_width=1.0, num_bins=40, train_labels=train)
    for s in range(rank * 64, 300, 64 * world):      # this rank's batches
        metric.update(pred[s:s + 64], y[s:s + 64])
    values = {k: float(v) for k, v in metric.compute().items()}   # synced by torchmetrics
    metric.reset()
    local = float(metric.compute()["all_count"])                  # empty after reset, synced
    queue.put((rank, values, local))
    dist.destroy_process_group()


def test_two_gloo_processes_equal_one(tmp_path):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_rank, args=(r, 2, str(tmp_path / "rdzv"), queue))
             for r in range(2)]
    for p in procs:
        p.start()
    results = sorted(queue.get(timeout=300) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    train, pred, y = _data()
    ref = BinnedMetrics(y_min=0.0, bin_width=1.0, num_bins=40, train_labels=train)
    ref.update(pred, y)
    expect = _flat(ref.compute())
    for _, values, local in results:
        assert values == pytest.approx(expect, rel=1e-12, nan_ok=True)
        assert local == 0
