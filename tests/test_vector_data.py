"""Vector targets in the data layer: tabular CSVs with several target columns, DIR CSVs with
several label columns, the two-target default data set (default2d) and its registration."""

import numpy as np
import pytest
import torch

from ssir_fast import data as D
from ssir_fast.data import registry
from ssir_fast.data.datasets import DataError, load_dir_csv
from ssir_fast.data.default2d_data import bins_2d, load_default2d, render
from ssir_fast.data.tabular import TensorLoader, load_tabular
from ssir_fast.imbalance import LabelBins


def _table(tmp_path, n=300, seed=0):
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    a = np.round(rng.exponential(2.0, n), 3)
    b = np.round(10 + rng.exponential(5.0, n), 3)
    split = np.where(np.arange(n) % 10 == 0, "val", np.where(np.arange(n) % 10 == 1, "test",
                                                                "train"))
    path = tmp_path / "multi.csv"
    with open(path, "w") as f:
        f.write("x1,a,x2,b,split\n")
        for row in zip(x1, a, x2, b, split):
            f.write(",".join(str(v) for v in row) + "\n")
    return str(path), np.stack([a, b], 1), np.stack([x1, x2], 1), split


@pytest.mark.parametrize("target", ["a,b", "a;b", ["a", "b"]])
def test_tabular_several_target_columns(tmp_path, target):
    path, y, x, split = _table(tmp_path)
    ds = load_tabular(path, target, bin_width="0.5;2")
    tr = ds.split("train")
    assert tr.targets.shape == (240, 2) and ds.feature_names == ["x1", "x2"]
    np.testing.assert_allclose(tr.targets, y[split == "train"].astype(np.float32))
    np.testing.assert_allclose(tr.X, x[split == "train"].astype(np.float32))
    assert ds.bins.dim == 2 and ds.bins.bin_width == (0.5, 2.0)
    lo = np.floor(tr.targets.astype(np.float64).min(0) / [0.5, 2.0]) * [0.5, 2.0]
    assert ds.bins.y_min == pytest.approx(tuple(lo))
    assert ds.target_names == ["a", "b"]


def test_tabular_vector_default_and_per_dimension_bins(tmp_path):
    path, y, _, split = _table(tmp_path)
    ds = load_tabular(path, "a,b")
    # about auto_num_bins(240) = 10 joint cells: round(10 ** 0.5) = 3 per dimension (at least 3)
    assert ds.bins.grid[0] in (3, 4) and ds.bins.grid[1] in (3, 4)
    ds = load_tabular(path, "a,b", num_bins=[4, 6])
    ytr = y[split == "train"].astype(np.float32).astype(np.float64)
    span = ytr.max(0) - ytr.min(0)
    assert ds.bins.bin_width == pytest.approx(tuple(span / [4, 6]), rel=1e-6)
    with pytest.raises(ValueError, match=r"num_bins must be one number or one per target column "
                                         r"\(2\), got 3"):
        load_tabular(path, "a,b", num_bins=[4, 6, 2])
    with pytest.raises(ValueError, match="bin_width must be numbers > 0"):
        load_tabular(path, "a,b", bin_width=[1.0, -1.0])


def test_tabular_vector_errors(tmp_path):
    path, *_ = _table(tmp_path)
    with pytest.raises(DataError, match=r"missing target column\(s\) \['c'\]"):
        load_tabular(path, "a,c")
    with pytest.raises(DataError, match="target names a column twice"):
        load_tabular(path, "a,a")
    with pytest.raises(DataError, match=r"\['a'\] are both features and targets"):
        load_tabular(path, "a,b", features="x1,a")
    with pytest.raises(DataError, match="target must name the target column"):
        load_tabular(path, " , ")


def test_tensor_loader_vector_batches_and_joint_bin_weights(tmp_path):
    path, *_ = _table(tmp_path)
    ds = load_tabular(path, "a,b", bin_width=[1.0, 4.0])
    counts = ds.bins.counts(ds.train_labels)
    bw = np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0).astype(np.float32)
    loader = TensorLoader(ds, "train", 64, shuffle=False, bin_weights=bw)
    x, yb, w = next(iter(loader))
    assert yb.shape == (64, 2) and w.shape == (64, 1) and x.shape == (64, 2)
    tr = ds.split("train")
    for i in range(64):
        ia = int(np.floor((float(tr.targets[i, 0]) - ds.bins.y_min[0]) / 1.0))
        ib = int(np.floor((float(tr.targets[i, 1]) - ds.bins.y_min[1]) / 4.0))
        flat = min(ia, ds.bins.grid[0] - 1) * ds.bins.grid[1] + min(ib, ds.bins.grid[1] - 1)
        assert float(w[i, 0]) == pytest.approx(1.0 / counts[flat])
    with pytest.raises(ValueError, match=rf"one weight per bin \({ds.bins.size}\)"):
        TensorLoader(ds, "train", 8, bin_weights=np.ones(3))


def test_dir_csv_several_label_columns(tmp_path):
    from PIL import Image
    Image.new("RGB", (8, 8)).save(tmp_path / "a.jpg")
    with open(tmp_path / "d.csv", "w") as f:
        f.write("angle,shrink,path,split\n1.5,2,a.jpg,train\n3,4.25,a.jpg,val\n5,6,a.jpg,test\n")
    ds = load_dir_csv(str(tmp_path / "d.csv"), label_column=["angle", "shrink"],
                      bins=LabelBins((0.0, 0.0), (1.0, 1.0), (10, 10)))
    np.testing.assert_array_equal(ds.split("val").targets, np.array([[3.0, 4.25]], np.float32))
    with open(tmp_path / "e.csv", "w") as f:
        f.write("angle,shrink,path,split\n1.5,x,a.jpg,train\n")
    with pytest.raises(DataError, match="line 2: label 'x' in column 'shrink' is not a number"):
        load_dir_csv(str(tmp_path / "e.csv"), label_column=["angle", "shrink"])


def _ring(img, size, inner):
    a = np.asarray(img).astype(np.float64)[..., 0]
    off = (size - inner) // 2
    mask = np.ones((size, size), bool)
    mask[off:off + inner, off:off + inner] = False
    return a[mask]


def test_render_factors_are_visible():
    from sklearn.datasets import load_digits
    digit = load_digits().images[5]
    full = np.asarray(render(digit, 32, 0.0, 0.0)).astype(np.float64)
    half = render(digit, 32, 0.0, 50.0)
    # shrunk by half: nothing outside the central 16 x 16 square, and the ink is a quarter
    assert _ring(half, 32, 16).max() == 0
    assert np.asarray(half).sum() == pytest.approx(full.sum() / 4, rel=0.15)
    # rotated by 90 degrees counter-clockwise: the unrotated picture turned with rot90
    turned = np.asarray(render(digit, 32, 90.0, 0.0)).astype(np.float64)[..., 0]
    assert np.abs(turned - np.rot90(full[..., 0])).mean() < 0.05 * full.mean() + 1.0


def test_default2d_build_targets_bins_and_registry(tmp_path):
    opts = dict(n_train=300, val_per_bin=1, test_per_bin=2, image_size=16)
    ds = load_default2d(str(tmp_path / "d2"), progress=False, **opts)
    bins = bins_2d(**opts)
    assert ds.bins == bins and bins.grid == (9, 10) and bins.bin_width == (10.0, 5.0)
    ytr = ds.train_labels
    assert ytr.shape == (300, 2)
    assert (ytr[:, 0] >= 0).all() and (ytr[:, 0] < 90).all()
    assert (ytr[:, 1] >= 0).all() and (ytr[:, 1] < 50).all()
    # long-tailed in each dimension: the first bin of each holds far more than the last
    c = bins.counts(ytr).reshape(9, 10)
    assert c.sum(1)[0] > 5 * c.sum(1)[-1] and c.sum(0)[0] > 5 * c.sum(0)[-1]
    # val / test balanced over the joint bins
    assert (bins.counts(ds.split("val").targets) == 1).all()
    assert (bins.counts(ds.split("test").targets) == 2).all()
    # deterministic: the CSV of a second build is byte-identical
    load_default2d(str(tmp_path / "again"), progress=False, **opts)
    with open(tmp_path / "d2" / "default2d.csv", "rb") as f1, \
            open(tmp_path / "again" / "default2d.csv", "rb") as f2:
        assert f1.read() == f2.read()
    # registered, and loadable through the registry with its options
    assert "default2d" in registry.names() and registry.get("default2d").kind == "image"
    assert {"n_train", "tau_shrink", "shrink_bin", "angle_bin"} <= set(
        registry.get("default2d").options)
    again = D.load_dataset("default2d", str(tmp_path / "d2"), progress=False, **opts)
    np.testing.assert_array_equal(again.train_labels, ytr)
    loader = D.make_loader(again, "train", 16, backend="torch", num_workers=0, shuffle=False)
    x, y, w = next(iter(loader))
    assert x.shape == (16, 3, 16, 16) and y.shape == (16, 2) and w.shape == (16, 1)
    torch.testing.assert_close(y, torch.from_numpy(ytr[:16]))


def test_default2d_bad_options(tmp_path):
    with pytest.raises(ValueError, match="shrink_bin must be an integer >= 1 dividing max_shrink"):
        load_default2d(str(tmp_path / "x"), shrink_bin=7)
    with pytest.raises(TypeError, match="unknown default2d option"):
        load_default2d(str(tmp_path / "x"), tilt=3)
