"""Training on vector targets from the CLI: a model head of D outputs, the joint shot table and
each dimension's, the per-dimension files, the heat map; the per-dimension metrics against the
float64 numpy reference of the DIR protocol on each column."""
import json
import os

import numpy as np
import pytest
import torch

from ssir_fast.cli import main
from ssir_fast.imbalance import LabelBins
from ssir_fast.metrics import BinnedMetrics
from ssir_fast.reference import dir_shot_metrics_numpy
from ssir_fast.train.evaluation import axis_metrics, evaluate
from ssir_fast.train.models import build_model
from ssir_fast.train.plots import grid_image, plot_per_bin_grid


def _table(path, n=600, seed=0):
    """x1..x3 and two long-tailed targets a, b driven by the features."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    a = np.exp(0.7 * X[:, 0]) * 3 + rng.normal(0, 0.2, n)
    b = np.exp(0.6 * X[:, 1] - 0.3 * X[:, 2]) * 10 + rng.normal(0, 0.5, n)
    with open(path, "w") as f:
        f.write("x1,x2,x3,a,b\n")
        for i in range(n):
            f.write(",".join(f"{v:.5f}" for v in (*X[i], a[i], b[i])) + "\n")
    return str(path)


def test_cli_trains_tabular_with_two_targets(tmp_path, capsys):
    csv = _table(tmp_path / "t.csv")
    out = tmp_path / "run"
    rc = main(["train", "--data", "tabular", "--data-root", csv, "--target", "a,b", "--epochs", "2",
               "--data-options", "bin_width=1,4", "--out", str(out), "--no-progress"])
    assert rc in (0, None)
    text = capsys.readouterr().out
    assert "test shot metrics (vanilla" in text and "L2" in text
    assert "dimension 0 (a) alone" in text and "dimension 1 (b) alone" in text
    summary = json.load(open(out / "summary.json"))
    assert len(summary["dims"]) == 2 and summary["dims"][0]["all_count"] > 0
    per_bin = open(out / "test_per_bin.csv").readline().strip().split(",")
    assert per_bin[:4] == ["bin_lo_0", "bin_hi_0", "bin_lo_1", "bin_hi_1"]
    for k in (0, 1):
        assert os.path.isfile(out / f"test_dim{k}_metrics.json")
    assert os.path.isfile(out / "per_bin_test.png")
    ck = torch.load(out / "best.pt", weights_only=False)
    state = ck["model"]
    assert state["head.weight"].shape[0] == 2 and state["out_shift"].shape == (2,)


@pytest.mark.parametrize("method", [["--ssir"], ["--loss", "bmc"], ["--reweight", "sqrt_inv",
                                                                      "--lds"], ["--fds"]])
def test_cli_methods_on_two_targets(tmp_path, capsys, method):
    csv = _table(tmp_path / "t.csv", n=300)
    rc = main(["train", "--data", "tabular", "--data-root", csv, "--target", "a;b", "--epochs", "1",
               "--out", str(tmp_path / "run"), "--no-progress", "--no-plots", *method])
    assert rc in (0, None)
    assert "dimension 1 (b) alone" in capsys.readouterr().out


@pytest.mark.parametrize("flags,message", [(["--loss", "gai"], "mode='gai'"),
                                           (["--loss", "bni"], "mode='bni'"),
                                           (["--smogn"], "SMOTER/SMOGN take a scalar target")])
def test_cli_refuses_one_dimensional_methods_on_two_targets(tmp_path, capsys, flags, message):
    csv = _table(tmp_path / "t.csv", n=200)
    rc = main(["train", "--data", "tabular", "--data-root", csv, "--target", "a,b", "--epochs", "1",
               "--out", str(tmp_path / "run"), "--no-progress", *flags])
    assert rc not in (0, None)
    assert message in capsys.readouterr().err


def test_cli_trains_default2d(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SSIR_FAST_DATA", str(tmp_path / "data"))
    out = tmp_path / "run"
    rc = main(["train", "--data", "default2d", "--epochs", "1", "--out", str(out),
               "--no-progress", "--data-options", "n_train=300,val_per_bin=1,test_per_bin=1"])
    assert rc in (0, None)
    text = capsys.readouterr().out
    assert "dimension 0 (angle) alone" in text and "dimension 1 (shrink) alone" in text
    res = json.load(open(out / "test_metrics.json"))
    assert res["all"]["count"] == 90   # one test image per joint bin (9 x 10)
    assert os.path.isfile(out / "per_bin_test.png")
    # evaluation and the perturbation figure of the checkpoint
    assert main(["eval", "--checkpoint", str(out / "best.pt"), "--out",
                 str(tmp_path / "ev")]) in (0, None)
    assert "dimension 1 (shrink) alone" in capsys.readouterr().out
    assert main(["perturbations", "--checkpoint", str(out / "best.pt"), "--out",
                 str(tmp_path / "p.png")]) in (0, None)
    assert os.path.getsize(tmp_path / "p.png") > 1000


def test_model_head_and_output_range_per_dimension():
    model = build_model("mlp", (3,), 8, outputs=2)
    model.set_output_range(np.array([1.0, -5.0]), np.array([2.0, 0.5]))
    x = torch.randn(4, 3)
    with torch.no_grad():
        raw = model.head(model.encoder(x))
        torch.testing.assert_close(model(x), raw * torch.tensor([2.0, 0.5])
                                   + torch.tensor([1.0, -5.0]))
    assert build_model("mlp", (3,), 8).out_shift.shape == ()    # scalar models unchanged


class _Fixed(torch.nn.Module):
    """Returns the prediction stored for each input row (x holds the row number)."""

    def __init__(self, pred):
        super().__init__()
        self.pred = pred

    def forward(self, x):
        return self.pred[x[:, 0].long()]


def test_per_dimension_metrics_match_the_numpy_protocol():
    rng = np.random.default_rng(1)
    train = np.stack([rng.exponential(3, 2000), rng.exponential(8, 2000)], 1)
    test = np.stack([rng.uniform(0, 15, 300), rng.uniform(0, 40, 300)], 1)
    pred = test + rng.normal(0, 1.5, test.shape)
    bins = LabelBins((0.0, 0.0), (1.0, 4.0), (15, 10))
    x = torch.arange(300, dtype=torch.float32)[:, None]
    loader = _Loader(x, torch.from_numpy(test).float(), 64)
    axes = axis_metrics(bins, train)
    m = evaluate(_Fixed(torch.from_numpy(pred).float()), loader, bins,
                 train_counts=bins.counts(train), axes=axes)
    for k in range(2):
        got = m.axes[k].compute()
        want = dir_shot_metrics_numpy(pred[:, k].astype(np.float32), test[:, k].astype(np.float32),
                                      train[:, k], y_min=0.0, bin_width=bins.bin_width[k],
                                      num_bins=bins.grid[k])
        for g in ("all", "many", "medium", "few"):
            assert got[g]["count"] == want[g]["count"]
            if want[g]["count"]:
                assert got[g]["mae"] == pytest.approx(want[g]["mae"], rel=1e-5)
                assert got[g]["gm"] == pytest.approx(want[g]["gm"], rel=1e-4)
    assert axis_metrics(LabelBins(0.0, 1.0, 10), train[:, 0]) is None


class _Loader:
    def __init__(self, x, y, bs):
        self.x, self.y, self.bs = x, y, bs

    def set_epoch(self, e):
        pass

    def __iter__(self):
        for s in range(0, len(self.x), self.bs):
            x = self.x[s:s + self.bs]
            yield x, self.y[s:s + self.bs], torch.ones(len(x), 1)


def test_grid_image_is_row_major_and_heat_map_written(tmp_path):
    bins = LabelBins((0.0, 10.0), (2.0, 5.0), (3, 4))
    m = BinnedMetrics(bins=bins, train_counts=np.arange(12))
    y = torch.tensor(bins.centers(), dtype=torch.float32)
    m.update(y + torch.arange(12, dtype=torch.float32)[:, None], y)
    res = m.compute()
    img, e0, e1 = grid_image(res["per_bin"], "mae")
    for i in range(3):
        for j in range(4):
            assert img[i, j] == pytest.approx(i * 4 + j)   # flat bin i * n1 + j
    np.testing.assert_allclose(e0, [0, 2, 4, 6])
    np.testing.assert_allclose(e1, [10, 15, 20, 25, 30])
    assert os.path.getsize(plot_per_bin_grid(res, str(tmp_path / "h.png"))) > 1000
    assert os.path.getsize(m.plot(str(tmp_path / "m.png"), res)) > 1000   # the same heat maps
    bins3 = LabelBins((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), (2, 2, 2))
    with pytest.raises(ValueError, match="one or two target dimensions, these bins have 3"):
        BinnedMetrics(bins=bins3, train_counts=np.ones(8)).plot(str(tmp_path / "x.png"))
