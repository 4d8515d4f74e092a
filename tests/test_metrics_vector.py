"""BinnedMetrics / shot_metrics for vector targets ([N, D], bins a D-dim grid) against a float64
implementation written here with loops over the rows and the grid cells."""
import json
import math
import warnings

import numpy as np
import pytest
import torch

from ssir_fast.imbalance import LabelBins
from ssir_fast.metrics import BinnedMetrics, shot_metrics
from ssir_fast.ops import bin_reduce_nd as nd
from ssir_fast.ops.bin_reduce import COUNT, N_FLOORED, SUM_ABS, SUM_LOG_ABS, SUM_SQ

AXES = [(0.0, 10.0, 9), (-45.0, 10.0, 9)]   # e.g. yaw in [0, 90), pitch in [-45, 45)
FL = 1e-8


def gaze_like(seed=0, n_train=8000, n_test=1500):
    """Long-tailed 2-D training targets (most near (20, 0)), a uniform test set, predictions with
    an error that grows away from the head; some exact zero errors."""
    rng = np.random.default_rng(seed)
    train = np.stack([rng.gamma(3.0, 7.0, n_train).clip(0, 89.9),
                      rng.normal(0, 12, n_train).clip(-44.9, 44.9)], 1)
    test = np.stack([rng.uniform(0, 90, n_test), rng.uniform(-45, 45, n_test)], 1)
    scale = 1 + 0.05 * np.abs(test - [20, 0]).sum(1, keepdims=True)
    pred = test + rng.normal(0, 1, test.shape) * scale
    pred[::40] = test[::40]
    return train, test.astype(np.float64), pred.astype(np.float64)


def loop_metrics(pred, test, train, axes, many_thr=100, few_thr=20):
    """The protocol by hand: cell of each row, training counts per cell, groups by threshold,
    then per group sums over its rows (mae averaged over dimensions, l2, mae_d, gm, bmae)."""
    def cell(row):
        return tuple(min(max(math.floor((v - y0) / w), 0), n - 1)
                     for (y0, w, n), v in zip(axes, row))
    counts = {}
    for row in train:
        counts[cell(row)] = counts.get(cell(row), 0) + 1
    def group(c):
        n = counts.get(c, 0)
        return "many" if n > many_thr else ("few" if n < few_thr else "medium")
    out = {}
    d = len(axes)
    for name in ("all", "many", "medium", "few"):
        rows = [i for i in range(len(test)) if name == "all" or group(cell(test[i])) == name]
        if not rows:
            continue
        m = [sum(abs(pred[i][k] - test[i][k]) for k in range(d)) / d for i in rows]
        per_cell = {}
        for i, mi in zip(rows, m):
            per_cell.setdefault(cell(test[i]), []).append(mi)
        res = {"count": len(rows), "mae": sum(m) / len(rows),
               "mse": sum(sum((pred[i][k] - test[i][k]) ** 2 for k in range(d)) / d
                          for i in rows) / len(rows),
               "gm": math.exp(sum(math.log(max(v, FL)) for v in m) / len(rows)),
               "l2": sum(math.sqrt(sum((pred[i][k] - test[i][k]) ** 2 for k in range(d)))
                         for i in rows) / len(rows),
               "bmae": sum(sum(v) / len(v) for v in per_cell.values()) / len(per_cell)}
        res["rmse"] = math.sqrt(res["mse"])
        for k in range(d):
            res[f"mae_{k}"] = sum(abs(pred[i][k] - test[i][k]) for i in rows) / len(rows)
        out[name] = res
    return out


def _bins():
    return LabelBins(*(tuple(a[i] for a in AXES) for i in range(3)))


def test_columns_shared_with_the_scalar_table():
    """The summary code reads both tables by the scalar column constants."""
    assert nd.__module__ == "ssir_fast.ops.bin_reduce_nd"
    assert (nd.__globals__["COUNT"], nd.__globals__["SUM_ABS"], nd.__globals__["SUM_SQ"],
            nd.__globals__["SUM_LOG_ABS"], nd.__globals__["N_FLOORED"]) \
        == (COUNT, SUM_ABS, SUM_SQ, SUM_LOG_ABS, N_FLOORED)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_shot_metrics_match_loops(dtype):
    train, test, pred = gaze_like()
    res = shot_metrics(torch.tensor(pred, dtype=dtype), torch.tensor(test, dtype=dtype), train,
                       y_min=(0.0, -45.0), bin_width=(10.0, 10.0), num_bins=(9, 9))
    cast = (lambda a: a.astype(np.float32).astype(np.float64)) if dtype == torch.float32 else \
        (lambda a: a)
    ref = loop_metrics(cast(pred), cast(test), train, AXES)
    rtol = 1e-10 if dtype == torch.float64 else 2e-5
    assert set(ref) == {"all", "many", "medium", "few"}
    for g, want in ref.items():
        for k, v in want.items():
            assert res[g][k] == pytest.approx(v, rel=rtol), (g, k)
    assert res["n_floored"] == len(range(0, len(test), 40))
    pb = res["per_bin"]
    assert len(pb["count"]) == 81 and pb["bin_lo_1"][1] == -35.0 and pb["bin_hi_0"][9] == 20.0
    assert pb["train_count"].sum() == len(train)


def test_groups_are_from_the_d_dim_training_counts():
    train, test, pred = gaze_like(1)
    bins = _bins()
    m = BinnedMetrics(bins=bins, train_labels=train, many_thr=50, few_thr=10)
    counts = np.zeros(81, np.int64)
    for row in train:
        i0 = min(max(math.floor(row[0] / 10), 0), 8)
        i1 = min(max(math.floor((row[1] + 45) / 10), 0), 8)
        counts[i0 * 9 + i1] += 1
    np.testing.assert_array_equal(m.train_counts, counts)
    np.testing.assert_array_equal(m.groups(), np.where(counts > 50, 0,
                                                       np.where(counts < 10, 2, 1)))


def test_streaming_mask_and_state_dict():
    train, test, pred = gaze_like(2)
    bins = _bins()
    one = BinnedMetrics(bins=bins, train_labels=train).update(torch.tensor(pred),
                                                                torch.tensor(test)).compute()
    m = BinnedMetrics(y_min=[0.0, -45.0], bin_width=[10.0, 10.0], num_bins=[9, 9],
                      train_labels=train)
    for a in range(0, len(test), 400):
        m.update(torch.tensor(pred[a:a + 400]), torch.tensor(test[a:a + 400]))
    res = m.compute()
    for g in ("all", "few"):
        for k in ("mae", "l2", "mae_1", "gm", "bmae"):
            assert res[g][k] == pytest.approx(one[g][k], rel=1e-12)
    keep = np.arange(len(test)) % 3 == 0
    masked = BinnedMetrics(bins=bins, train_labels=train).update(
        torch.tensor(pred), torch.tensor(test), mask=torch.tensor(keep)).compute()
    sel = BinnedMetrics(bins=bins, train_labels=train).update(
        torch.tensor(pred[keep]), torch.tensor(test[keep])).compute()
    assert masked["all"]["l2"] == pytest.approx(sel["all"]["l2"], rel=1e-12)
    again = BinnedMetrics(bins=bins).load_state_dict(m.state_dict())
    assert again.compute()["all"]["mae_0"] == pytest.approx(res["all"]["mae_0"], rel=1e-12)


def test_export_json_and_csv(tmp_path):
    train, test, pred = gaze_like(3, n_test=300)
    m = BinnedMetrics(bins=_bins(), train_labels=train).update(torch.tensor(pred),
                                                               torch.tensor(test))
    doc = json.load(open(m.to_json(tmp_path / "m.json")))
    assert doc["bins"]["num_bins"] == [9, 9] and "l2" in doc["all"]
    header = open(m.to_csv(tmp_path / "m.csv")).readline().strip().split(",")
    assert header[:4] == ["bin_lo_0", "bin_hi_0", "bin_lo_1", "bin_hi_1"]
    assert header[-3:] == ["l2", "mae_0", "mae_1"]


def test_far_outside_and_refusals():
    bins = _bins()
    m = BinnedMetrics(bins=bins)
    m.update(torch.tensor([[5.0, 0.0], [5.0, 500.0]]), torch.tensor([[5.0, 0.0], [5.0, 500.0]]))
    with pytest.warns(UserWarning, match=r"dimension 1"):
        m.compute()
    with pytest.raises(ValueError, match="depth=True .* needs scalar bins"):
        BinnedMetrics(bins=bins, depth=True)
    with pytest.raises(ValueError, match=r"pred must have shape \[N, 2\]"):
        BinnedMetrics(bins=bins).update(torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match="mask must hold one flag per row"):
        BinnedMetrics(bins=bins).update(torch.zeros(3, 2), torch.zeros(3, 2),
                                        mask=torch.ones(6, dtype=torch.bool))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        empty = BinnedMetrics(bins=bins).update(torch.zeros(0, 2), torch.zeros(0, 2))
        with pytest.raises(RuntimeWarning, match="no test samples"):
            empty.compute()


def test_derived_grid_from_train_labels():
    train, test, pred = gaze_like(4, n_test=200)
    res = shot_metrics(torch.tensor(pred), torch.tensor(test), train, bin_width=(10.0, 10.0))
    bins = LabelBins.from_labels(train, (10.0, 10.0))
    assert len(res["per_bin"]["count"]) == bins.size
    assert res["all"]["count"] == 200


def test_out_of_range_and_nonfinite_rows_are_counted():
    bins = _bins()
    pred = torch.tensor([[5.0, 0.0], [95.0, 0.0], [5.0, float("nan")], [5.0, -50.0]],
                        dtype=torch.float64)
    target = torch.tensor([[5.0, 0.0], [95.0, 0.0], [5.0, 0.0], [5.0, -50.0]],
                          dtype=torch.float64)
    with pytest.raises(ValueError, match="NaN or inf"):
        BinnedMetrics(bins=bins).update(pred, target)
    res = BinnedMetrics(bins=bins, allow_nonfinite=True).update(pred, target).compute()
    assert res["n_nonfinite"] == 1 and res["n_out_of_range"] == 2
    assert res["all"]["count"] == 3 and res["per_bin"]["count"][8 * 9 + 4] == 1   # 95 -> edge bin
