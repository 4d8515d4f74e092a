"""ssir_fast.metrics (docs/algorithm.md, section 6) against an independent float64 numpy
implementation of the DIR shot metrics, plus groups, empty groups, masks, streaming, checkpoints,
export and DDP."""
import io
import json
import math
import os
import re
import warnings

import numpy as np
import pytest
import torch

from ssir_fast.imbalance import LabelBins
from ssir_fast.metrics import (NYUD2_SHOT_BUCKETS, BinnedMetrics, balanced_pixel_mask,
                               nyud2_shot_bins, plot_per_bin, shot_metrics)
from ssir_fast.reference import dir_shot_metrics_numpy

KEYS = ("mae", "mse", "rmse", "gm", "bmae", "count")
DEPTH = ("delta1", "delta2", "delta3", "absrel", "log10")


def agedb_like(seed=0):
    """12k long-tailed training ages in 0-100 and a balanced test set (20 per age), predictions
    with an error that grows towards the tail; a few exact zero errors."""
    rng = np.random.default_rng(seed)
    train = np.clip(np.round(rng.gamma(6.0, 6.0, 12_000)), 0, 100)
    test = np.repeat(np.arange(0, 101), 20).astype(np.float64)
    scale = 3 + 0.1 * np.abs(test - 36)
    pred = (test + rng.normal(0, 1, test.size) * scale).astype(np.float32)
    pred[::50] = test[::50]
    return train, test.astype(np.float32), pred


def assert_close(res, ref, keys=KEYS, rtol=1e-6):
    for g in ("all", "many", "medium", "few"):
        for k in keys:
            a, b = res[g][k], ref[g][k]
            if isinstance(b, float) and math.isnan(b):
                assert math.isnan(a), (g, k, a)
            else:
                assert a == pytest.approx(b, rel=rtol, abs=1e-12), (g, k, a, b)


def test_shot_metrics_match_numpy_dir_reference():
    train, test, pred = agedb_like()
    res = shot_metrics(torch.from_numpy(pred), torch.from_numpy(test), train, y_min=0,
                       bin_width=1.0, num_bins=121, depth=True)
    ref = dir_shot_metrics_numpy(pred, test, train, 0.0, 1.0, 121)
    assert_close(res, ref, KEYS + DEPTH)
    assert res["all"]["count"] == test.size
    assert res["many"]["count"] + res["medium"]["count"] + res["few"]["count"] == test.size
    assert min(res[g]["count"] for g in ("many", "medium", "few")) > 0
    assert res["n_floored"] == (pred == test).sum()
    # group metrics are averages over test samples, not over bins
    pb = res["per_bin"]
    few = pb["group"] == "few"
    n = pb["count"][few]
    assert res["few"]["mae"] == pytest.approx((pb["mae"][few][n > 0] * n[n > 0]).sum() / n.sum())
    assert res["few"]["bmae"] == pytest.approx(np.mean(pb["mae"][few][n > 0]))


def test_groups_use_training_counts_and_thresholds():
    # bins 0..4 with training counts 101, 100, 20, 19, 0: many, medium, medium, few, few
    m = BinnedMetrics(y_min=0, bin_width=1, num_bins=5, train_counts=[101, 100, 20, 19, 0])
    assert m.groups().tolist() == [0, 1, 1, 2, 2]
    y = torch.tensor([0.5, 1.5, 2.5, 3.5, 4.5])
    p = y + torch.tensor([1.0, 2.0, 3.0, 4.0, 6.0])
    res = m.update(p, y).compute()
    assert res["many"]["mae"] == pytest.approx(1.0)
    assert res["medium"]["mae"] == pytest.approx(2.5) and res["medium"]["count"] == 2
    assert res["few"]["mae"] == pytest.approx(5.0)
    assert res["few"]["rmse"] == pytest.approx(math.sqrt((16 + 36) / 2))
    assert res["few"]["gm"] == pytest.approx(math.sqrt(24))
    assert res["all"]["bmae"] == pytest.approx(16 / 5)
    # configurable thresholds
    m2 = BinnedMetrics(y_min=0, bin_width=1, num_bins=5, train_counts=[101, 100, 20, 19, 0],
                       many_thr=50, few_thr=50)
    assert m2.groups().tolist() == [0, 0, 2, 2, 2]
    # training labels give the same counts as LabelBins
    labels = np.repeat(np.arange(5), [101, 100, 20, 19, 0])
    m3 = BinnedMetrics(y_min=0, bin_width=1, num_bins=5, train_labels=labels)
    assert m3.train_counts.tolist() == [101, 100, 20, 19, 0]


def test_empty_group_is_nan_with_warning():
    train = np.repeat(np.arange(10), 200)  # every bin many-shot
    y = torch.arange(10, dtype=torch.float32) + 0.5
    with pytest.warns(RuntimeWarning, match="'medium' group"):
        res = shot_metrics(y + 1, y, train, y_min=0, bin_width=1.0, num_bins=10)
    for g in ("medium", "few"):
        assert res[g]["count"] == 0 and all(math.isnan(res[g][k]) for k in KEYS if k != "count")
    assert res["many"]["mae"] == pytest.approx(1.0)
    ref = dir_shot_metrics_numpy((y + 1).numpy(), y.numpy(), train, 0.0, 1.0, 10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert_close(res, ref)
    # nothing at all: NaN everywhere, no crash
    m = BinnedMetrics(y_min=0, bin_width=1, num_bins=10, train_labels=train)
    with pytest.warns(RuntimeWarning):
        res = m.compute()
    assert math.isnan(res["all"]["mae"]) and res["all"]["count"] == 0


def test_streaming_equals_one_call_and_state():
    train, test, pred = agedb_like(1)
    m = BinnedMetrics(y_min=0, bin_width=1.0, num_bins=121, train_labels=train)
    one = BinnedMetrics(y_min=0, bin_width=1.0, num_bins=121, train_labels=train)
    one.update(torch.from_numpy(pred), torch.from_numpy(test))
    perm = np.random.default_rng(0).permutation(test.size)
    for chunk in np.array_split(perm, 7):
        # [N, 1] predictions with [N] targets, as data loaders give them
        m.update(torch.from_numpy(pred[chunk]).reshape(-1, 1), torch.from_numpy(test[chunk]))
    np.testing.assert_allclose(m.table.numpy(), one.table.numpy(), rtol=1e-12)
    # integer targets are promoted (here to float32, the predictions' dtype)
    ints = BinnedMetrics(y_min=0, bin_width=1.0, num_bins=121, train_labels=train)
    ints.update(torch.from_numpy(pred), torch.from_numpy(test).long())
    np.testing.assert_allclose(ints.table.numpy(), one.table.numpy(), rtol=1e-12)
    r1, r2 = m.compute(), m.compute()  # repeatable
    assert r1["few"] == r2["few"] and r1["all"]["count"] == test.size
    # checkpoint round trip
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    buf.seek(0)
    m2 = BinnedMetrics(y_min=0, bin_width=1.0, num_bins=121, train_labels=train)
    m2.load_state_dict(torch.load(buf))
    assert m2.compute()["many"] == r1["many"]
    with pytest.raises(ValueError, match="num_bins"):
        BinnedMetrics(y_min=0, bin_width=1.0, num_bins=120, train_labels=train).load_state_dict(
            m.state_dict())
    m.reset()
    with pytest.warns(RuntimeWarning):
        assert m.compute()["all"]["count"] == 0


def test_mask_equals_selection():
    train, test, pred = agedb_like(2)
    mask = torch.from_numpy(np.random.default_rng(3).random(test.size) < 0.4)
    p, y = torch.from_numpy(pred), torch.from_numpy(test)
    a = shot_metrics(p, y, train, y_min=0, bin_width=1.0, num_bins=121, mask=mask)
    b = shot_metrics(p[mask], y[mask], train, y_min=0, bin_width=1.0, num_bins=121)
    assert_close(a, b, rtol=1e-12)


def test_out_of_range_targets_go_to_edge_bins():
    train = np.arange(0, 121)  # one training sample per age 0..120
    y = torch.tensor([130.0, 120.0, -3.0])
    with pytest.warns(RuntimeWarning, match="'many' group"):
        res = shot_metrics(y + 1, y, train, y_min=0, bin_width=1.0, num_bins=121)
    assert res["n_out_of_range"] == 2
    assert res["per_bin"]["count"][120] == 2 and res["per_bin"]["count"][0] == 1


def test_nonfinite_is_error_or_counted():
    y = torch.arange(5.0)
    p = y.clone()
    p[2] = float("nan")
    m = BinnedMetrics(y_min=0, bin_width=1, num_bins=5)
    with pytest.raises((RuntimeError, ValueError), match="NaN or inf"):
        m.update(p, y)
    m = BinnedMetrics(y_min=0, bin_width=1, num_bins=5, allow_nonfinite=True)
    res = m.update(p, y + 0.5).compute()
    assert res["n_nonfinite"] == 1 and res["all"]["count"] == 4
    assert res["all"]["mae"] == pytest.approx(0.5)


def test_dense_depth_maps_with_balanced_mask():
    g = torch.Generator().manual_seed(0)
    # 3 depth maps, long-tailed depths in [0.7, 10), a few invalid (0) pixels
    depth = (0.7 + 9.3 * torch.rand(3, 1, 96, 128, generator=g) ** 2).clamp(max=9.999)
    depth[:, :, :4] = 0.0
    pred = depth * torch.exp(0.15 * torch.randn(depth.shape, generator=g))
    train = (0.7 + 9.3 * torch.rand(4000, generator=g) ** 3).numpy()  # all three groups occur
    mask = balanced_pixel_mask(depth, y_min=0.7, bin_width=0.1, seed=0)
    assert mask.shape == depth.shape and mask.dtype == torch.bool
    bins = LabelBins(0.7, 0.1, 93)
    per_bin = np.bincount(bins.index(depth[mask].double().numpy()), minlength=93)
    assert (per_bin == per_bin[0]).all() and per_bin[0] > 0  # same number in every bin
    assert not mask[:, :, :4].any()  # invalid pixels never selected
    assert torch.equal(mask, balanced_pixel_mask(depth, seed=0))
    assert not torch.equal(mask, balanced_pixel_mask(depth, seed=1))
    assert balanced_pixel_mask(depth, per_bin=5).sum() == 5 * 93

    res = shot_metrics(pred, depth, train, y_min=0.7, bin_width=0.1, num_bins=93, mask=mask,
                       depth=True)
    ref = dir_shot_metrics_numpy(pred[mask].numpy(), depth[mask].numpy(), train, 0.7, 0.1, 93)
    assert_close(res, ref, KEYS + DEPTH, rtol=2e-6)
    assert 0 < res["all"]["delta1"] < res["all"]["delta2"] < res["all"]["delta3"] <= 1
    assert min(res[g]["count"] for g in ("many", "medium", "few")) > 0


def test_export_csv_json_and_plot(tmp_path):
    train, test, pred = agedb_like(4)
    m = BinnedMetrics(y_min=0, bin_width=1.0, num_bins=121, train_labels=train)
    m.update(torch.from_numpy(pred), torch.from_numpy(test))
    res = m.compute()
    csv_path = m.to_csv(tmp_path / "bins.csv", res)
    lines = open(csv_path).read().strip().splitlines()
    assert len(lines) == 122 and lines[0].startswith("bin_lo,bin_hi,train_count,group,count,mae")
    assert lines[-1].split(",")[4] == "0" and lines[-1].split(",")[5] == ""  # empty bin 120
    doc = json.load(open(m.to_json(tmp_path / "metrics.json", res)))
    assert doc["few"]["mae"] == pytest.approx(res["few"]["mae"])
    assert doc["per_bin"]["mae"][120] is None and len(doc["per_bin"]["count"]) == 121
    png = m.plot(tmp_path / "per_bin.png", res)
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    plot_per_bin(res, tmp_path / "gm.png", metric="gm")
    assert os.path.getsize(tmp_path / "gm.png") > 1000


def test_bad_configuration():
    with pytest.raises(ValueError, match="bins"):
        BinnedMetrics()
    with pytest.raises(ValueError, match="train_counts"):
        BinnedMetrics(y_min=0, bin_width=1, num_bins=5, train_counts=[1, 2])
    with pytest.raises(ValueError, match="bin_width"):
        BinnedMetrics(y_min=0, bin_width=0, num_bins=5)
    m = BinnedMetrics(y_min=0, bin_width=1, num_bins=5)
    with pytest.raises(ValueError, match="same number of elements"):
        m.update(torch.zeros(3), torch.zeros(4))


def _ddp_worker(rank, world, init_file, out_dir, train, test, pred):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        m = BinnedMetrics(y_min=0, bin_width=1.0, num_bins=121, train_labels=train)
        idx = np.arange(rank, test.size, world)  # a DistributedSampler-like split
        m.update(torch.from_numpy(pred[idx]), torch.from_numpy(test[idx]))
        m.all_reduce()
        m.all_reduce()  # idempotent: the local table is kept
        res = m.compute()
        torch.save({"table": m.table, "few": res["few"], "all": res["all"]},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_all_reduce_across_two_gloo_processes(tmp_path):
    import torch.multiprocessing as mp
    train, test, pred = agedb_like(5)
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path), train, test, pred),
             nprocs=2, join=True)
    single = BinnedMetrics(y_min=0, bin_width=1.0, num_bins=121, train_labels=train)
    single.update(torch.from_numpy(pred), torch.from_numpy(test))
    ref = single.compute()
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        np.testing.assert_allclose(got["table"].numpy(), single.table.numpy(), rtol=1e-12)
        for g in ("all", "few"):
            for k in KEYS:
                assert got[g][k] == pytest.approx(ref[g][k], rel=1e-12)


# ---- shot groups from fixed bin lists (NYUD2) --------------------------------------------------

def _official_nyud2_shots(output, depth):
    """nyud2-dir util.py Evaluator.evaluate_shot, transcribed (MAE, RMSE, DELTA1 and NUM per shot):
    bucket = min(int(d * float32(10)), 99), a test pixel's group from the shot_idx lists."""
    shot_idx = NYUD2_SHOT_BUCKETS
    bucket = np.array([min(int(v * np.float32(10)), 99) for v in depth])
    out = {}
    for shot in ("many", "medium", "few"):
        mask = np.isin(bucket, shot_idx[shot])
        o, d = output[mask].astype(np.float64), depth[mask].astype(np.float64)
        diff = np.abs(o - d)
        ratio = np.maximum(o / d, d / o)
        out[shot] = {"mae": diff.mean(), "rmse": np.sqrt((diff ** 2).mean()),
                     "delta1": (ratio < 1.25).mean(), "count": int(mask.sum())}
    return out


def test_nyud2_shot_groups_match_official_lists():
    bins = LabelBins(0.7, 0.1, 93)
    rng = np.random.default_rng(0)
    bucket = rng.integers(7, 100, 20_000)
    depth = ((bucket + rng.uniform(0.05, 0.95, bucket.size)) / 10).astype(np.float32)
    pred = (depth * rng.uniform(0.7, 1.3, depth.size)).astype(np.float32)
    # per-pixel training counts would put every bin in "many": the lists must win
    train_counts = np.full(93, 10**7)
    res = BinnedMetrics(bins=bins, train_counts=train_counts, depth=True,
                        shot_bins=nyud2_shot_bins(bins)).update(
        torch.from_numpy(pred), torch.from_numpy(depth)).compute()
    ref = _official_nyud2_shots(pred, depth)
    for shot in ("many", "medium", "few"):
        assert res[shot]["count"] == ref[shot]["count"] > 0
        for k in ("mae", "rmse", "delta1"):
            assert res[shot][k] == pytest.approx(ref[shot][k], rel=1e-9), (shot, k)
    assert set(res["per_bin"]["group"]) == {"many", "medium", "few"}


def test_nyud2_shot_bins_conversion():
    sb = nyud2_shot_bins(LabelBins(0.7, 0.1, 93))
    assert sb["many"][:3] == [2, 3, 4] and sb["medium"][:2] == [0, 1]
    assert sb["few"][0] == 50 and sb["few"][-1] == 92          # bucket 57 .. bucket 99
    assert sorted(sb["many"] + sb["medium"] + sb["few"]) == list(range(93))
    with pytest.raises(ValueError, match="0.1 m"):
        nyud2_shot_bins(LabelBins(0, 1, 10))


def test_shot_bins_equal_thresholds_when_they_agree():
    train, test, pred = agedb_like()
    counts = LabelBins.dir_age().counts(train)
    lists = {"many": np.nonzero(counts > 100)[0].tolist(),
             "medium": np.nonzero((counts >= 20) & (counts <= 100))[0].tolist(),
             "few": np.nonzero(counts < 20)[0].tolist()}
    a = shot_metrics(pred, test, train, y_min=0, num_bins=121)
    b = shot_metrics(pred, test, train, y_min=0, num_bins=121, shot_bins=lists)
    assert_close(a, b, rtol=1e-12)


def test_bins_in_no_group_and_state_dict():
    m = BinnedMetrics(y_min=0, bin_width=1, num_bins=4, shot_bins={"many": [0], "few": [3]})
    m.update(torch.tensor([0.5, 1.5, 2.5, 3.0]), torch.tensor([0.5, 1.5, 2.5, 3.5]))
    with pytest.warns(RuntimeWarning, match="'medium' group"):
        res = m.compute()
    assert res["many"]["count"] == 1 and res["few"]["count"] == 1 and res["all"]["count"] == 4
    assert list(res["per_bin"]["group"]) == ["many", "", "", "few"]
    m2 = BinnedMetrics(y_min=0, bin_width=1, num_bins=4).load_state_dict(m.state_dict())
    assert m2.shot_bins == m.shot_bins


@pytest.mark.parametrize("shot_bins,match", [
    ({"many": [0], "rare": [1]}, "unknown group"),
    ({"many": [0, 5]}, "outside"),
    ({"many": [0, 1], "few": [1]}, "both"),
    ({"many": [0.5]}, "integers"),
    ([0, 1], "dict"),
])
def test_bad_shot_bins(shot_bins, match):
    with pytest.raises(ValueError, match=match):
        BinnedMetrics(y_min=0, bin_width=1, num_bins=4, shot_bins=shot_bins)


@pytest.mark.parametrize("bad", [-5.0, 1e9])
def test_test_targets_far_outside_warn(bad):
    m = BinnedMetrics(bins=LabelBins.dir_age())
    m.update(torch.tensor([20.0, bad]), torch.tensor([20.0, bad]))
    with pytest.warns(UserWarning, match="test targets lie far outside.*" + re.escape(f"{bad:g}")):
        m.compute()
    ok = BinnedMetrics(bins=LabelBins.dir_age()).update(torch.tensor([130.0]), torch.tensor([186.0]))
    masked = BinnedMetrics(bins=LabelBins.dir_age()).update(      # a masked-out 1e9 is ignored
        torch.tensor([20.0, 1e9]), torch.tensor([20.0, 1e9]), mask=torch.tensor([True, False]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ok.compute()
        masked.compute()


def test_balanced_pixel_mask_bins_millimetre_depths_as_the_official_code():
    # every 0.1 m bucket of 0.700..9.999 m holds exactly 100 millimetre depths under the official
    # int(depth * 10); so with the default per_bin (smallest bin) every pixel is kept. The float64
    # quotient moved ~46 edge depths one bin down (bins of 99 and 101): pixels were dropped.
    from ssir_fast.data.datasets import _balanced_pixel_mask_np
    depth = torch.arange(700, 10000, dtype=torch.int32).float() / 1000
    assert balanced_pixel_mask(depth).all()
    assert _balanced_pixel_mask_np(depth.numpy()).all()
    mask = balanced_pixel_mask(depth, per_bin=1, seed=3)          # one pixel per bucket
    buckets = [int(v * np.float32(10)) for v in depth[mask].numpy()]
    assert sorted(buckets) == list(range(7, 100))
