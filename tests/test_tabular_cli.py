"""The tabular data set through the CLI: choosing feature columns, bins, the split column, the
default bins of a small table, the progress unit and what --help says."""
import os

import numpy as np
import pytest
import torch

from ssir_fast import data as D
from ssir_fast.cli import main
from ssir_fast.data.datasets import DataError
from ssir_fast.data.tabular import auto_num_bins
from ssir_fast.metrics import BinnedMetrics
from ssir_fast.train import make_config
from ssir_fast.train.builders import load_data
from ssir_fast.train.runtime import data_flag_values
from ssir_fast.train.config.values import parse_kv as _kv


def _table(path, n=1000, split=False, seed=0):
    """age, bmi, bp and a long-tailed target (an exponential of the features), as diabetes."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    y = np.exp(0.8 * X[:, 0] + 0.3 * X[:, 1]) * 20 + rng.normal(0, 1, n)
    with open(path, "w") as f:
        f.write("age,bmi,bp,target" + (",split" if split else "") + "\n")
        for i in range(n):
            s = ("," + ("train" if i % 10 < 7 else "val" if i % 10 < 8 else "test")) if split else ""
            f.write(",".join(f"{v:.5f}" for v in X[i]) + f",{y[i]:.5f}{s}\n")
    return str(path)


def _load(cfg):
    # the data builder receives its sections and the flag values the registration names
    return load_data(cfg.data, cfg.method.smogn, cfg.optim.seed, data_flag_values(cfg),
                     progress=False)


def _cfg(csv, **options):
    return make_config({"data": "tabular", "data_root": csv, "target": "target",
                        "data_options": options or None})


def test_data_options_list_values():
    assert _kv("features=age,bmi,on_error=skip") == {"features": ["age", "bmi"], "on_error": "skip"}
    assert _kv("features=age;bmi") == {"features": "age;bmi"}
    assert _kv("num_bins=10,features=age") == {"num_bins": 10, "features": "age"}


@pytest.mark.parametrize("text", ["features=age,bmi", "features=age;bmi"])
def test_choose_feature_columns_on_the_command_line(tmp_path, text):
    csv = _table(tmp_path / "t.csv", n=200)
    cfg = make_config({"data": "tabular", "data_root": csv, "target": "target",
                       "data_options": _kv(text)})
    ds, _ = _load(cfg)
    assert ds.feature_names == ["age", "bmi"] and ds.num_features == 2
    one, _ = _load(_cfg(csv, features="bp"))
    assert one.feature_names == ["bp"]
    with pytest.raises(DataError, match="missing feature column"):
        _load(_cfg(csv, features=["age", "weight"]))


def test_bins_option_is_a_number_of_bins(tmp_path):
    csv = _table(tmp_path / "t.csv", n=300)
    ds, _ = _load(_cfg(csv, bins=10))
    # bins of width span / 10, from a multiple of the width: 10 bins, or 11 with the offset
    assert ds.bins.num_bins in (10, 11)
    ytr = ds.train_labels
    assert ds.bins.bin_width == pytest.approx((ytr.max() - ytr.min()) / 10)
    assert _load(_cfg(csv, num_bins=7))[0].bins.num_bins in (7, 8)
    with pytest.raises(TypeError, match="bins must be a LabelBins or a number of bins"):
        _load(_cfg(csv, bins="ten"))
    with pytest.raises(ValueError, match="num_bins must be an integer >= 1"):
        _load(_cfg(csv, num_bins=0))


def test_split_column_must_exist_when_named(tmp_path):
    csv = _table(tmp_path / "t.csv", n=100, split=True)
    with pytest.raises(DataError, match="missing split column 'nonexistent'"):
        D.load_dataset("tabular", root=csv, target="target", split_column="nonexistent")
    ds = D.load_dataset("tabular", root=csv, target="target")      # the 'split' column
    assert [len(ds.split(s)) for s in ("train", "val", "test")] == [70, 10, 20]
    ds = D.load_dataset("tabular", root=csv, target="target", split_column="split")
    assert len(ds.split("test")) == 20
    plain = _table(tmp_path / "p.csv", n=100)
    ds = D.load_dataset("tabular", root=plain, target="target")    # no column: a random split
    assert sum(len(ds.split(s)) for s in ds.splits) == 100


def test_default_bins_leave_many_and_medium_shot_groups_on_a_small_table(tmp_path):
    # 100 equal bins over ~700 training rows left every bin "few" (< 20 rows); the default is
    # one bin per 50 rows, between 10 and 100
    assert [auto_num_bins(n) for n in (100, 700, 2000, 50_000)] == [10, 14, 40, 100]
    csv = _table(tmp_path / "t.csv", n=1000)
    ds, _ = _load(_cfg(csv))
    ytr = ds.train_labels
    assert ds.bins.num_bins - auto_num_bins(len(ytr)) in (0, 1)
    test = ds.split("test").targets
    m = BinnedMetrics(bins=ds.bins, train_labels=ytr)
    m.update(torch.from_numpy(test) + 1.0, torch.from_numpy(test))
    res = m.compute()
    assert res["many"]["count"] > 0 and res["medium"]["count"] > 0 and res["few"]["count"] > 0
    assert res["many"]["mae"] == pytest.approx(1.0) and res["medium"]["mae"] == pytest.approx(1.0)


def test_progress_line_counts_rows_for_tables(tmp_path, capsys):
    csv = _table(tmp_path / "t.csv", n=120)
    out = str(tmp_path / "run")
    assert main(["train", "--data", "tabular", "--data-root", csv, "--target", "target",
                 "--epochs", "1", "--no-progress", "--no-plots", "--data-options",
                 "features=age,bmi", "--out", out]) == 0
    text = capsys.readouterr()
    log = text.out + text.err
    assert "rows/s" in log and "img/s" not in log
    with open(os.path.join(out, "config.json")) as f:
        assert "features" in f.read()


def test_help_shows_defaults_and_data_option_types(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag, default in (("--n-steps", "2"), ("--seed", "0"), ("--gamma", "0.1"),
                          ("--many-thr", "100"), ("--few-thr", "20"), ("--focal-beta", "0.2"),
                          ("--focal-gamma", "1"), ("--focal-activate", "sigmoid")):
        start = text.rindex(flag + " ")   # the option's entry, not the usage line
        nxt = text.index(" --", start + len(flag) + 1)
        assert f"(default: {default})" in text[start:nxt], (flag, text[start:nxt])
    with pytest.raises(SystemExit):   # a data set's loader options: with --data NAME --help
        main(["train", "--data", "tabular", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "features=age,bmi" in text and "training rows // 50" in text
    assert "val_fraction: float = 0.1" in text or "val_fraction: float = 0.1," in text
    assert "split_column: str" in text
