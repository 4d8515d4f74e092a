"""Each data set in one place: a `DataSpec` carries the bins, the weighting recipe, the shot
groups, the selection metric, the normalisation and whether the target is dense; the NYUD2
constants live in `ssir_fast.nyud2`; rules receive plain values. A data set added by one
registration (and its loader function) trains from the command line with what its spec says."""
import json
import os
import sys

import numpy as np
import pytest
import torch

import ssir_fast.data as D
from ssir_fast import nyud2
from ssir_fast.cli import main
from ssir_fast.data import registry
from ssir_fast.data.tabular import TabularDataset, TabularSplit
from ssir_fast.imbalance import DIR_RECIPES, LabelBins
from ssir_fast.metrics import nyud2_shot_bins
from ssir_fast.train import ConfigError, make_config

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _dir_data import write_dir_csv  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _load_toy(root=None, *, n_train=400, seed=0):
    """Labels |x . (1.5, 1, 0.5)| * 2 clipped to [0, 9.9]: many small labels, few large ones. The
    data set's own bins (7 equal ones) are what the registration must replace."""
    rng = np.random.default_rng(seed)

    def split(name, m):
        x = rng.normal(size=(m, 3)).astype(np.float32)
        y = np.clip(np.abs(x @ np.array([1.5, 1.0, 0.5])) * 2.0, 0.0, 9.9).astype(np.float32)
        return TabularSplit(name, x, y)

    return TabularDataset("toy", {"train": split("train", n_train), "val": split("val", 120),
                                  "test": split("test", 120)}, num_bins=7)


TOY_BINS = LabelBins(0.0, 0.5, 20)
TOY_SHOTS = {"many": list(range(0, 6)), "medium": list(range(6, 12)), "few": list(range(12, 20))}


@pytest.fixture
def toy():
    seen = []

    def rules(**values):
        seen.append(values)
        return [] if values["loss"] != "l1" else ["--data toy: use --loss mse"]

    spec = registry.register(registry.DataSpec(
        "toy", "a toy regression", "tabular", _load_toy, models=("mlp",), rules=rules,
        bins=TOY_BINS, shot_groups=TOY_SHOTS, select="rmse",
        preset=dict(standardize_target=True, model="mlp", width=8, epochs=3, batch_size=64,
                    lr=0.01, schedule="none", loss="mse")))
    yield spec, seen
    registry.unregister("toy")


def test_a_registered_data_set_trains_from_the_cli_with_its_spec(toy, tmp_path):
    spec, seen = toy
    out = str(tmp_path / "run")
    assert main(["train", "--data", "toy", "--no-progress", "--no-plots", "--device", "cpu",
                 "--out", out]) == 0
    with open(os.path.join(out, "test_metrics.json")) as f:
        res = json.load(f)
    # the spec's bins, not the loader's 7 equal ones
    assert res["bins"]["num_bins"] == 20 and res["bins"]["bin_width"] == 0.5
    assert res["bins"]["y_min"] == 0.0
    assert len(res["per_bin"]["group"]) == 20
    # the spec's shot groups, bin by bin
    want = [g for b in range(20) for g in TOY_SHOTS if b in TOY_SHOTS[g]]
    assert list(res["per_bin"]["group"]) == want
    cfg = make_config({"data": "toy"})       # they reach the run as the preset's lists
    assert (cfg.many_bins, cfg.medium_bins, cfg.few_bins) == tuple(TOY_SHOTS.values())
    # the best epoch was selected by the validation RMSE: best.pt's score is the RMSE of its
    # model on the validation split, not the MAE
    best = torch.load(os.path.join(out, "best.pt"), weights_only=True)
    ev = str(tmp_path / "ev")
    assert main(["eval", "--checkpoint", os.path.join(out, "best.pt"), "--split", "val",
                 "--out", ev]) == 0
    with open(os.path.join(ev, "val_metrics.json")) as f:
        val = json.load(f)["all"]
    assert best["score"] == pytest.approx(val["rmse"], rel=1e-9)
    assert abs(val["rmse"] - val["mae"]) > 1e-3 * val["mae"]
    # the rules got plain values by name, not the training configuration
    assert seen and set(seen[-1]) == set(registry.RULE_VALUES)
    assert all(v is None or isinstance(v, (str, bool, int, float, dict)) for v in
               seen[-1].values())
    assert seen[-1]["data"] == "toy" and seen[-1]["loss"] == "mse"


def test_the_rules_of_a_registration_refuse_options(toy, tmp_path, capsys):
    assert main(["train", "--data", "toy", "--loss", "l1", "--out", str(tmp_path / "o")]) == 2
    assert "--data toy: use --loss mse" in capsys.readouterr().err


def test_thresholds_given_replace_the_spec_shot_lists(toy):
    cfg = make_config({"data": "toy", "many_thr": 30})
    assert cfg.many_bins is None and cfg.few_bins is None


def test_nyud2_lives_in_one_module_and_its_spec_reads_it():
    spec = registry.get("nyud2")
    assert spec.bins == nyud2.BINS == LabelBins(0.7, 0.1, 93)
    assert nyud2.BINS.y_max == pytest.approx(nyud2.Y_MAX)
    assert spec.recipe == nyud2.RECIPE and DIR_RECIPES[spec.recipe] == dict(inv_clip=None,
                                                                             lds_padding="reflect")
    assert spec.select == "rmse" and spec.dense
    assert spec.normalize == (nyud2.MEAN, nyud2.STD)
    lists = nyud2_shot_bins(nyud2.BINS)
    assert {g: spec.preset[f"{g}_bins"] for g in lists} == lists
    # bucket k is [0.1 k, 0.1 (k + 1)) m: the spec's bin b is bucket b + 7
    assert lists["many"][0] == nyud2.SHOT_BUCKETS["many"][0] - nyud2.BUCKET_START
    # the float32 index rule: 0.9 m is bucket 9, bin 2 (the float64 quotient says bin 1)
    assert nyud2.BINS.index(np.array([0.9], np.float32)).tolist() == [2]
    assert int((np.float32(0.9) - 0.7) / 0.1) == 1


def test_the_other_specs():
    for name in ("agedb", "imdb_wiki"):
        spec = registry.get(name)
        assert spec.bins == LabelBins.dir_age() and spec.recipe == "age"
        assert spec.select == "mae" and not spec.dense and spec.shot_groups is None
        assert spec.normalize == ((0.5,) * 3, (0.5,) * 3)
    for name in ("default", "two_gaussians", "tabular"):
        assert registry.get(name).bins is None      # bins from the data (its label range)


def test_build_applies_the_spec_bins_and_normalisation(tmp_path):
    root = str(tmp_path / "agedb")
    write_dir_csv(root, sizes=(8, 3, 3), size=16)
    ds = D.load_dataset("agedb", root)
    assert ds.bins == LabelBins.dir_age() and ds.mean == (0.5,) * 3 and ds.std == (0.5,) * 3
    # what the caller passes is kept
    own = LabelBins(0.0, 2.0, 61)
    ds = D.load_dataset("agedb", root, bins=own, mean=(0.4, 0.4, 0.4), std=(0.2, 0.2, 0.2))
    assert ds.bins == own and ds.mean == (0.4,) * 3 and ds.std == (0.2,) * 3
    # bins as a function of the loaded data set
    spec = registry.DataSpec("fn", "x", "tabular", _load_toy,
                             bins=lambda d: LabelBins(0.0, 1.0, len(d.splits["val"]) // 10))
    assert spec.build().bins == LabelBins(0.0, 1.0, 12)


def test_rules_take_plain_values():
    spec = registry.get("nyud2")
    errs = spec.check(fds=True, ranksim=False, loss="bmc", data="nyud2", width=None)
    assert len(errs) == 2 and "--fds and --ranksim" in errs[0] and "--loss bmc" in errs[1]
    assert spec.check(fds=False, ranksim=False, loss="mse") == []
    assert registry.get("tabular").check(target=None) == ["--data tabular needs --target COLUMN"]
    assert registry.get("default").check(image_size=4)[0].startswith("--image-size must be >= 8")


@pytest.mark.parametrize("kwargs, message", [
    (dict(recipe="ages"), "recipe must be one of"),
    (dict(select="r2"), "select must be one of"),
    (dict(bins=3), "bins must be a LabelBins"),
    (dict(shot_groups={"many": [0]}), "shot_groups need fixed bins"),
    (dict(bins=LabelBins(0, 1, 4), shot_groups={"many": [5]}), r"bin 5 is outside \[0, 4\)"),
    (dict(bins=LabelBins(0, 1, 4), shot_groups={"lots": [1]}), "unknown group"),
    (dict(normalize=((0.5,), (0.5, 0.5))), "normalize must be"),
])
def test_bad_registrations_are_refused(kwargs, message):
    with pytest.raises((TypeError, ValueError), match=message):
        registry.DataSpec("bad", "x", "tabular", _load_toy, **kwargs)


def test_a_rule_refusal_is_a_config_error(toy):
    with pytest.raises(ConfigError, match="use --loss mse"):
        make_config({"data": "toy", "loss": "l1"})
