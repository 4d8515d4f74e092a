"""ssir_fast.data: DIR formats, the default data set, synthetic/tabular data and the torch loader.
The DALI backend has its own file (test_dali.py)."""
import csv
import filecmp
import os

import numpy as np
import pytest
import torch
from PIL import Image

import ssir_fast.data as D
from ssir_fast.data import DataError
from ssir_fast.data.datasets import _balanced_pixel_mask_np
from ssir_fast.data.transforms import aug_params, epoch_order
from _dir_data import depth_of, expected_image, write_dir_csv, write_nyud2


@pytest.fixture(scope="module")
def agedb(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("agedb"))
    rows = write_dir_csv(root)
    return root, rows


def rows_of(rows, split):
    return [r for r in rows if r[2] == split]


def labels(loader):
    return torch.cat([b[1].view(-1) for b in loader]).numpy()


# ----------------------------------------------------------------------------- DIR CSV

def test_dir_csv_views_labels_order_bins(agedb):
    root, rows = agedb
    ds = D.load_dataset("agedb", root=root)
    for s in ("train", "val", "test"):
        v = ds.split(s)
        exp = rows_of(rows, s)
        assert len(v) == len(exp)
        np.testing.assert_allclose(v.targets, [r[0] for r in exp])
        assert v.paths == [os.path.join(root, r[1]) for r in exp]
        assert v.extra["source"] == ["digits"] * len(exp)     # extra column kept, ignored
    np.testing.assert_allclose(ds.train_labels, [r[0] for r in rows_of(rows, "train")])
    assert (ds.bins.y_min, ds.bins.bin_width, ds.bins.num_bins) == (0.0, 1.0, 121)
    assert ds.mean == (0.5,) * 3 and ds.std == (0.5,) * 3
    lo, hi = ds.clip_bounds()
    assert lo == (-1.0,) * 3 and hi == (1.0,) * 3


def test_test_split_tensors_order_and_partial_batch(agedb):
    root, rows = agedb
    ds = D.load_dataset("agedb", root=root, image_size=16)
    loader = D.make_loader(ds, "test", 3, backend="torch", num_workers=0)
    batches = list(loader)
    assert len(loader) == len(batches) == 3                  # 7 samples: 3 + 3 + 1, last kept
    assert [b[0].shape[0] for b in batches] == [3, 3, 1]
    exp = rows_of(rows, "test")
    np.testing.assert_allclose(labels(loader), [r[0] for r in exp])
    x = torch.cat([b[0] for b in batches])
    assert x.shape == (7, 3, 16, 16) and x.dtype == torch.float32
    for k, r in enumerate(exp):                               # resize only, no augmentation
        ref = expected_image(os.path.join(root, r[1]))
        np.testing.assert_allclose(x[k].numpy(), ref, atol=1e-6)
    w = torch.cat([b[2] for b in batches])
    assert torch.equal(w, torch.ones(7, 1))


def test_train_augmentation_matches_reference_and_bounds(agedb):
    root, rows = agedb
    ds = D.load_dataset("agedb", root=root, image_size=16)
    loader = D.make_loader(ds, "train", 5, backend="torch", num_workers=0, seed=7)
    loader.set_epoch(3)
    x = torch.cat([b[0] for b in loader])
    y = labels_epoch(ds, "train", seed=7, epoch=3)
    order, _ = epoch_order(len(ds.split("train")), 7, 3, True)
    anchors, flips = aug_params(len(ds.split("train")), 7, 3)
    v = ds.split("train")
    for p, i in enumerate(order):
        ref = expected_image(v.paths[i], anchors[i], flips[i])
        np.testing.assert_allclose(x[p].numpy(), ref, atol=1e-6)
    np.testing.assert_allclose(y, v.targets[order])
    assert x.min() >= -1 and x.max() <= 1
    # the padding-16 crop of a 16 px image: every anchor in [-16, 16], zero padding shows as -1
    a, f = aug_params(10000, 7, 0)
    assert a.min() == -16 and a.max() == 16 and 0.45 < f.mean() < 0.55


def labels_epoch(ds, split, seed, epoch, **kw):
    ld = D.make_loader(ds, split, 4, backend="torch", num_workers=0, seed=seed, **kw)
    ld.set_epoch(epoch)
    return labels(ld)


def test_shuffle_is_seeded_per_epoch(agedb):
    root, _ = agedb
    ds = D.load_dataset("agedb", root=root, image_size=16)
    a, b = labels_epoch(ds, "train", 0, 0), labels_epoch(ds, "train", 0, 1)
    assert sorted(a) == sorted(b) == sorted(ds.train_labels)
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(a, labels_epoch(ds, "train", 0, 0))
    # the epoch advances by itself from pass to pass
    ld = D.make_loader(ds, "train", 4, backend="torch", num_workers=0)
    np.testing.assert_array_equal(labels(ld), a)
    np.testing.assert_array_equal(labels(ld), b)


@pytest.mark.parametrize("split,world", [("train", 2), ("test", 2), ("val", 3)])
def test_shards_disjoint_and_cover(agedb, split, world):
    root, _ = agedb
    ds = D.load_dataset("agedb", root=root, image_size=16)
    parts = [labels(D.make_loader(ds, split, 2, backend="torch", num_workers=0, shard=(r, world)))
             for r in range(world)]
    allv = np.concatenate(parts)
    assert len(allv) == len(set(allv.tolist())) == len(ds.split(split))
    assert set(allv.tolist()) == set(ds.split(split).targets.tolist())
    if split != "train":  # unshuffled: contiguous blocks, concatenation = file order
        np.testing.assert_array_equal(allv, ds.split(split).targets)


def test_even_shards_pad_with_zero_weight(agedb):
    root, _ = agedb
    ds = D.load_dataset("agedb", root=root, image_size=16)   # val has 5 samples
    lds = [D.make_loader(ds, "val", 2, backend="torch", num_workers=0, shard=(r, 2),
                         even_shards=True) for r in range(2)]
    ws = [torch.cat([b[2] for b in ld]).view(-1) for ld in lds]
    assert [len(w) for w in ws] == [3, 3] and [len(ld) for ld in lds] == [2, 2]
    assert float(sum(w.sum() for w in ws)) == 5.0
    assert sum(ld.stats["padded"] for ld in lds) == 1


def test_workers_give_same_batches(agedb):
    root, _ = agedb
    ds = D.load_dataset("agedb", root=root, image_size=16)
    a = list(D.make_loader(ds, "train", 4, backend="torch", num_workers=0, seed=1))
    b = list(D.make_loader(ds, "train", 4, backend="torch", num_workers=2, seed=1))
    for u, v in zip(a, b):
        for s, t in zip(u, v):
            assert torch.equal(s, t)


def test_persistent_workers_reused_with_per_epoch_order_and_augmentation(agedb):
    root, _ = agedb
    ds = D.load_dataset("agedb", root=root, image_size=16)
    ld = D.make_loader(ds, "train", 3, backend="torch", num_workers=2, seed=5)
    ref = D.make_loader(ds, "train", 3, backend="torch", num_workers=0, seed=5)
    pids = None
    for epoch in range(3):
        got, exp = list(ld), list(ref)
        assert ld.epoch == ref.epoch == epoch + 1
        np.testing.assert_array_equal(torch.cat([b[1] for b in got]).view(-1).numpy(),
                                      labels_epoch(ds, "train", seed=5, epoch=epoch))
        for u, v in zip(got, exp):            # this epoch's crops and flips, not epoch 0's
            assert all(torch.equal(s, t) for s, t in zip(u, v))
        assert len(ld.worker_pids()) == 2
        assert pids is None or ld.worker_pids() == pids   # the same processes every epoch
        pids = ld.worker_pids()
    val = D.make_loader(ds, "val", 2, backend="torch", num_workers=2)
    a, b = list(val), list(val)
    vp = val.worker_pids()
    c = list(val)
    assert val.worker_pids() == vp and len(vp) == 2
    for u, v, w in zip(a, b, c):
        assert torch.equal(u[0], v[0]) and torch.equal(v[0], w[0])
    ld.close()
    assert ld.worker_pids() == []


def test_epoch_left_half_way_leaks_nothing_torch(agedb):
    root, _ = agedb
    ds = D.load_dataset("agedb", root=root, image_size=16)
    ld = D.make_loader(ds, "train", 2, backend="torch", num_workers=2, seed=4, prefetch=3)
    old = iter(ld)
    next(old)                                  # epoch 0 abandoned after one of 6 batches
    ld.set_epoch(7)
    got = list(ld)
    ref = _epoch(ds, 7, seed=4, bs=2)
    assert len(got) == len(ref) == 6
    for u, v in zip(got, ref):                 # exactly epoch 7's samples, order and crops
        assert all(torch.equal(s, t) for s, t in zip(u, v))
    assert list(old) == []                     # the abandoned pass yields nothing more


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_leaves_the_global_rng_alone(agedb, workers):
    # an exact --resume restarts the loader's stream where an uninterrupted run continues it;
    # neither may consume the global torch RNG (SSIR's noise and dropout draw from it)
    root, _ = agedb
    ds = D.load_dataset("agedb", root=root, image_size=16)
    ld = D.make_loader(ds, "train", 4, backend="torch", num_workers=workers)
    state = torch.get_rng_state()
    list(ld)
    ld.set_epoch(5)
    next(iter(ld))
    assert torch.equal(torch.get_rng_state(), state)


def _epoch(ds, epoch, seed, bs):
    ref = D.make_loader(ds, "train", bs, backend="torch", num_workers=0, seed=seed)
    ref.set_epoch(epoch)
    return list(ref)


def test_workers_send_uint8_for_cuda_and_the_device_normalises(agedb):
    from ssir_fast.data.torch_loader import _Samples
    from ssir_fast.data.transforms import normalize_batch, normalize_uint8
    root, rows = agedb
    ds = D.load_dataset("agedb", root=root, image_size=16)
    ld = D.make_loader(ds, "test", 3, backend="torch", num_workers=0)
    pos, x, _, _, err = _Samples(ld, normalise=False)[(0, 0, 0, 0, 0)]   # for a CUDA device
    assert err is None and x.dtype == torch.uint8 and x.shape == (16, 16, 3)
    xf = _Samples(ld, normalise=True)[(0, 0, 0, 0, 0)][1]                 # for the CPU
    assert torch.equal(xf, normalize_uint8(x.numpy(), ds.mean, ds.std))
    batch = torch.stack([x, x.flip(1)])
    ref = torch.stack([normalize_uint8(x.numpy(), ds.mean, ds.std),
                       normalize_uint8(x.flip(1).numpy(), ds.mean, ds.std)])
    out = normalize_batch(batch, ds.mean, ds.std, "cpu")
    assert out.dtype == torch.float32 and out.is_contiguous() and torch.equal(out, ref)
    cl = normalize_batch(batch, ds.mean, ds.std, "cpu", channels_last=True)
    assert cl.is_contiguous(memory_format=torch.channels_last) and torch.equal(cl, ref)
    first = next(iter(ld))[0]
    np.testing.assert_allclose(first[0].numpy(), expected_image(os.path.join(root,
                               rows_of(rows, "test")[0][1])), atol=1e-6)


def test_uint8_batches_through_the_workers_equal_float_ones(agedb):
    # the CUDA path (uint8 from the workers, first batch joined from chunks, normalised by
    # `_finish`) run on the CPU, against the CPU path (float32 from the workers)
    root, _ = agedb
    ds = D.load_dataset("agedb", root=root, image_size=16)
    a = D.make_loader(ds, "train", 5, backend="torch", num_workers=2, seed=9)
    b = D.make_loader(ds, "train", 5, backend="torch", num_workers=2, seed=9)
    b.uint8_batches = True
    for _ in range(2):
        for u, v in zip(list(a), list(b)):
            assert u[0].dtype == v[0].dtype == torch.float32
            assert all(torch.equal(s, t) for s, t in zip(u, v))
    assert b._dl.dataset.normalise is False and a._dl.dataset.normalise is True


SCRIPT = """
import sys, warnings
warnings.simplefilter("always")
import ssir_fast.data as D
ds = D.load_dataset("agedb", root=sys.argv[1], image_size=16)
ld = D.make_loader(ds, "train", 4, backend=sys.argv[2], num_workers=2, seed=3)
for epoch in range(2):
    ys = [float(v) for b in ld for v in b[1].view(-1)]
    print("epoch", epoch, len(ys), sorted(ys) == sorted(ds.train_labels.tolist()), flush=True)
"""


@pytest.mark.parametrize("backend,guarded", [("torch", False), ("torch", True), ("dali", False)])
def test_plain_script_iterates_a_loader_with_workers(agedb, tmp_path, backend, guarded):
    if backend == "dali":
        pytest.importorskip("nvidia.dali")
    import subprocess
    import sys
    root, rows = agedb
    body = SCRIPT if not guarded else "if __name__ == '__main__':\n" + "\n".join(
        "    " + line for line in SCRIPT.strip().splitlines())
    script = tmp_path / "plain.py"
    script.write_text(body)
    r = subprocess.run([sys.executable, str(script), root, backend], capture_output=True,
                       text=True, timeout=240, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    n = len(rows_of(rows, "train"))
    assert r.stdout.split("\n")[:2] == [f"epoch 0 {n} True", f"epoch 1 {n} True"]
    # torch: a script without the guard gets forked workers and is told why; a guarded one
    # forkserver. DALI forks its source workers while CUDA is not initialised (no warning).
    assert ("no 'if __name__ == \"__main__\":' guard" in r.stderr) is (backend == "torch" and
                                                                    not guarded)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batches_pinned_channels_last_equal_to_cpu(agedb):
    root, _ = agedb
    ds = D.load_dataset("agedb", root=root, image_size=16)
    cpu = list(D.make_loader(ds, "train", 4, backend="torch", num_workers=2, seed=2))
    gpu = list(D.make_loader(ds, "train", 4, backend="torch", num_workers=2, seed=2,
                             device="cuda"))
    for c, g in zip(cpu, gpu):
        assert g[0].is_cuda and g[0].is_contiguous(memory_format=torch.channels_last)
        assert all(torch.equal(s, t.cpu()) for s, t in zip(c, g))


def test_sample_and_bin_weights(agedb):
    root, _ = agedb
    ds = D.load_dataset("agedb", root=root, image_size=16)
    v = ds.split("test")
    sw = np.arange(len(v), dtype=np.float32) + 1
    ld = D.make_loader(ds, "test", 3, backend="torch", num_workers=0, sample_weights=sw)
    np.testing.assert_allclose(torch.cat([b[2] for b in ld]).view(-1).numpy(), sw)
    bw = np.arange(121, dtype=np.float32)
    ld = D.make_loader(ds, "test", 3, backend="torch", num_workers=0, bin_weights=bw)
    np.testing.assert_allclose(torch.cat([b[2] for b in ld]).view(-1).numpy(),
                               np.floor(v.targets))
    with pytest.raises(ValueError, match="sample_weights"):
        D.make_loader(ds, "test", 3, backend="torch", sample_weights=sw[:-1])
    with pytest.raises(ValueError, match="bin_weights"):
        D.make_loader(ds, "test", 3, backend="torch", bin_weights=bw[:5])


# ----------------------------------------------------------------------------- bad input

def _csv(tmp_path, lines, images=1):
    root = tmp_path
    from _dir_data import digit_images
    for k, im in enumerate(digit_images(images, 16)):
        im.save(root / f"{k}.jpg")
    (root / "agedb.csv").write_text("\n".join(lines) + "\n")
    return str(root)


GOOD = ["0.jpg,30,train", "0.jpg,31,val", "0.jpg,32,test"]


@pytest.mark.parametrize("bad,pattern", [
    ("0.jpg,abc,train", r"agedb\.csv line 5: label 'abc' in column 'age' is not a number"),
    ("0.jpg,nan,train", r"agedb\.csv line 5: label 'nan' in column 'age' is NaN"),
    ("0.jpg,33,holdout", r"agedb\.csv line 5: unknown split 'holdout'"),
    ("missing.jpg,33,train", r"agedb\.csv line 5: image file not found: .*missing\.jpg"),
])
def test_bad_rows_raise_with_file_and_line_or_skip(tmp_path, bad, pattern):
    root = _csv(tmp_path, ["path,age,split"] + GOOD + [bad])
    with pytest.raises(DataError, match=pattern):
        D.load_dataset("agedb", root=root)
    with pytest.warns(UserWarning, match="skipped 1 bad row"):
        ds = D.load_dataset("agedb", root=root, on_error="skip")
    assert len(ds.skipped) == 1 and len(ds.split("train")) == 1


def test_missing_column_and_empty_split(tmp_path):
    root = _csv(tmp_path, ["path,label,split"] + GOOD)
    with pytest.raises(DataError, match=r"agedb\.csv line 1: missing required column\(s\) \['age'\]"):
        D.load_dataset("agedb", root=root)
    (tmp_path / "agedb.csv").write_text("age,path,split\n30,0.jpg,train\n31,0.jpg,test\n")
    with pytest.raises(DataError, match=r"split\(s\) \['val'\] are empty"):
        D.load_dataset("agedb", root=root)
    ds = D.load_dataset("agedb", root=root, required_splits=("train", "test"))
    with pytest.raises(DataError, match="split 'val' .* is empty"):
        D.make_loader(ds, "val", 2, backend="torch")


def _loader_with_bad_file(tmp_path, content):
    root = _csv(tmp_path, ["age,path,split", "30,0.jpg,train", "31,0.jpg,val", "32,0.jpg,test",
                           "33,bad.jpg,test", "34,0.jpg,test"])
    ds = D.load_dataset("agedb", root=root, image_size=16)
    if content is None:
        os.remove(os.path.join(root, "bad.jpg"))
    else:
        (tmp_path / "bad.jpg").write_bytes(content)
    return ds


def _jpeg_bytes():
    import io
    from _dir_data import digit_images
    b = io.BytesIO()
    digit_images(1, 16)[0].save(b, format="JPEG")
    return b.getvalue()


BAD_FILES = {
    "missing": (None, "image file not found"),
    "truncated": (_jpeg_bytes()[:200], "truncated or corrupt JPEG"),
    "garbage": (b"this is not an image at all", "unrecognised header"),
    "corrupt_body": (b"\xff\xd8" + bytes(range(256)) * 4 + b"\xff\xd9", "cannot decode image"),
}


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_bad_image_files_torch(tmp_path, kind):
    content, msg = BAD_FILES[kind]
    (tmp_path / "bad.jpg").write_bytes(_jpeg_bytes())   # exists at load time
    ds = _loader_with_bad_file(tmp_path, content)
    ld = D.make_loader(ds, "test", 2, backend="torch", num_workers=0)
    with pytest.raises(DataError, match=rf"agedb\.csv line 5 \(.*bad\.jpg\): .*{msg}"):
        list(ld)
    ld = D.make_loader(ds, "test", 2, backend="torch", num_workers=0, on_error="skip")
    with pytest.warns(UserWarning, match="skipped 1 bad sample"):
        ys = labels(ld)
    np.testing.assert_array_equal(ys, [32, 34])
    assert ld.stats["skipped"] == 1 and "bad.jpg" in ld.stats["skipped_items"][0]


def test_unknown_backend_and_dataset():
    with pytest.raises(ValueError, match="unknown data set 'mnist'"):
        D.load_dataset("mnist")
    with pytest.raises(ValueError, match="backend must be"):
        D.make_loader(D.two_gaussians(), "train", 4, backend="tpu")


# ----------------------------------------------------------------------------- default data set

SMALL = dict(image_size=16, n_train=300, val_per_bin=2, test_per_bin=3, max_angle=30, tau=6.0)


def test_default_builder_deterministic_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("SSIR_FAST_DATA", str(tmp_path / "cache"))
    ds1 = D.load_dataset("default", progress=False, **SMALL)
    assert ds1.root.startswith(str(tmp_path / "cache"))
    other = D.build_default(str(tmp_path / "again"), progress=False, **SMALL)
    cmp = filecmp.dircmp(ds1.root, other)
    assert not cmp.diff_files and not cmp.left_only and not cmp.right_only
    for s in ("train", "val", "test"):
        a, b = os.path.join(ds1.root, "images", s), os.path.join(other, "images", s)
        match, mismatch, errors = filecmp.cmpfiles(a, b, os.listdir(a), shallow=False)
        assert not mismatch and not errors and len(match) == len(ds1.split(s))
    stamp = os.path.getmtime(os.path.join(ds1.root, "default.csv"))
    ds2 = D.load_dataset("default", progress=False, **SMALL)         # cached, not rebuilt
    assert ds2.root == ds1.root
    assert os.path.getmtime(os.path.join(ds1.root, "default.csv")) == stamp
    assert D.default_root(**SMALL) != D.default_root(**{**SMALL, "seed": 1})


def test_default_data_long_tailed_balanced_and_disjoint(tmp_path):
    ds = D.load_default(str(tmp_path / "d"), progress=False)        # the real default options
    b = ds.bins
    assert (b.y_min, b.bin_width, b.num_bins) == (0.0, 1.0, 90)
    c = b.counts(ds.train_labels)
    assert len(ds.split("train")) == 4000
    assert (c > 100).sum() >= 10 and ((c >= 20) & (c <= 100)).sum() >= 20 and (c < 20).sum() >= 30
    assert c[:10].min() > c[-30:].max()                               # long tail
    for s, k in (("val", 5), ("test", 10)):
        np.testing.assert_array_equal(b.counts(ds.split(s).targets), np.full(90, k))
    digit = {s: set(ds.split(s).extra["digit_index"]) for s in ("train", "val", "test")}
    assert not digit["train"] & digit["test"] and not digit["train"] & digit["val"]
    # real JPEGs of the configured size, in the DIR CSV layout
    with open(os.path.join(ds.root, "default.csv")) as f:
        assert next(csv.reader(f))[:3] == ["age", "path", "split"]
    im = Image.open(ds.split("test").paths[0])
    assert im.format == "JPEG" and im.size == (32, 32) and im.mode == "RGB"


def test_default_rotation_is_the_target(tmp_path):
    """The image at angle a equals its digit rendered and rotated by a (independent re-render)."""
    ds = D.load_default(str(tmp_path / "d"), progress=False, **SMALL)
    from sklearn.datasets import load_digits
    digits = load_digits().images
    v = ds.split("test")
    for k in (0, 40, 80):
        src = digits[int(v.extra["digit_index"][k])]
        up = Image.fromarray(np.uint8(np.clip(src * 255 / 16, 0, 255)), "L").resize(
            (16, 16), Image.BICUBIC)
        ref = np.asarray(up.rotate(float(v.targets[k]), resample=Image.BILINEAR), np.float64)
        got = np.asarray(Image.open(v.paths[k]).convert("L"), np.float64)
        wrong = np.asarray(up.rotate(float(v.targets[k]) + 25, resample=Image.BILINEAR), np.float64)
        assert np.abs(got - ref).mean() < 6 < np.abs(got - wrong).mean()


# ----------------------------------------------------------------------------- NYUD2 depth pairs

@pytest.fixture(scope="module")
def nyu(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("nyu"))
    write_nyud2(root)
    return root


def test_nyud2_layout_depth_and_bins(nyu):
    ds = D.load_dataset("nyud2", root=nyu, image_size=16)
    assert len(ds.split("train")) == 6 and len(ds.split("test")) == 4
    assert (ds.bins.y_min, ds.bins.bin_width, ds.bins.num_bins) == (0.7, 0.1, 93)
    d = D.read_depth(ds.split("test").depth_paths[0])
    np.testing.assert_allclose(d, depth_of(6, 16, 16), atol=6e-4)       # mm PNG -> metres
    assert ds.train_labels.size == 6 * 16 * 16 and ds.train_labels.min() > 0.7


def test_depth_pairs_share_crop_and_flip(nyu):
    ds = D.load_dataset("nyud2", root=nyu, image_size=16)
    ld = D.make_loader(ds, "train", 4, backend="torch", num_workers=0, seed=5)
    batches = list(ld)
    x = torch.cat([b[0] for b in batches])
    dep = torch.cat([b[1] for b in batches])
    assert torch.equal(torch.cat([b[2] for b in batches]), (dep > 0).float())  # padding: weight 0
    assert x.shape == (6, 3, 16, 16) and dep.shape == (6, 1, 16, 16)
    order, _ = epoch_order(6, 5, 0, True)
    anchors, flips = aug_params(6, 5, 0)
    v = ds.split("train")
    from ssir_fast.data.transforms import crop_pad
    for p, i in enumerate(order):
        d = crop_pad(D.read_depth(v.depth_paths[i]), anchors[i], (16, 16))
        d = d[:, ::-1] if flips[i] else d
        np.testing.assert_array_equal(dep[p, 0].numpy(), d)
        # the image got the same transform (ImageNet normalisation for NYUD2)
        ref = expected_image(v.paths[i], anchors[i], flips[i])
        ref = ((ref * 0.5 + 0.5) - np.array(ds.mean)[:, None, None]) / np.array(ds.std)[:, None, None]
        np.testing.assert_allclose(x[p].numpy(), ref, atol=1e-5)
    assert any(flips[order]) and (anchors[order] != 0).any()


@pytest.mark.parametrize("fn", [D.balanced_pixel_mask, _balanced_pixel_mask_np],
                         ids=["package", "numpy_fallback"])
def test_balanced_pixel_mask(fn):
    rng = np.random.default_rng(0)
    maps = rng.uniform(0.7, 3.0, size=(3, 20, 20))
    maps[0, 0, :5] = 9.95                         # a rare far bin with 5 pixels
    maps[1, 0, 0] = 0.0                           # invalid pixel, never selected
    m = np.asarray(fn(maps, seed=1))
    assert m.shape == maps.shape and m.dtype == bool and not m[1, 0, 0]
    sel = np.floor((maps[m] - 0.7) / 0.1).astype(int)
    counts = np.bincount(sel, minlength=93)
    nonempty = np.bincount(np.floor((maps[maps >= 0.7] - 0.7) / 0.1).astype(int), minlength=93) > 0
    assert set(counts[nonempty].tolist()) == {5} and counts[~nonempty].sum() == 0
    np.testing.assert_array_equal(m, np.asarray(fn(maps, seed=1)))
    assert not np.array_equal(m, np.asarray(fn(maps, seed=2)))


def test_nyud2_test_weights_are_the_balanced_mask(nyu):
    # NYUD2 test batches: weights are the balanced mask, depth untouched (no augmentation)
    ds = D.load_dataset("nyud2", root=nyu, image_size=16)
    ld = D.make_loader(ds, "test", 3, backend="torch", num_workers=0)
    w = torch.cat([b[2] for b in ld])
    np.testing.assert_array_equal(w[:, 0].bool().numpy(), ds.test_mask())
    np.save(os.path.join(nyu, "given_mask.npy"), np.ones((4, 16, 16), bool))
    ds2 = D.load_dataset("nyud2", root=nyu, mask_file="given_mask.npy")
    assert ds2.test_mask().all()


def test_nyud2_bad_list_rows(tmp_path):
    write_nyud2(str(tmp_path), n_train=2, n_test=2)
    with open(tmp_path / "nyu2_train.csv", "a") as f:
        f.write("data/0.jpg,data/nope.png\n")
    with pytest.raises(DataError, match=r"nyu2_train\.csv line 3: file not found: .*nope\.png"):
        D.load_dataset("nyud2", root=str(tmp_path))
    with pytest.warns(UserWarning, match="skipped 1"):
        ds = D.load_dataset("nyud2", root=str(tmp_path), on_error="skip")
    assert len(ds.split("train")) == 2


# ----------------------------------------------------------------------------- synthetic / tabular

def test_two_gaussians():
    ds = D.load_dataset("two_gaussians", ratio=4, n_major=400, n_test=100, seed=3)
    tr, te = ds.split("train"), ds.split("test")
    assert tr.X.shape == (500, 100) and te.X.shape == (200, 100)
    assert (tr.component == 0).sum() == 400 and (tr.component == 1).sum() == 100
    assert (te.component == 0).sum() == (te.component == 1).sum() == 100
    np.testing.assert_allclose(tr.targets, tr.X.astype(np.float64) @ ds.w, rtol=1e-4, atol=1e-3)
    m0 = tr.X[tr.component == 0].mean()
    assert abs(m0 - 10) < 0.1 and abs(tr.X[tr.component == 0].var() - 25) < 1.0
    ld = D.make_loader(ds, "train", 64, seed=0)
    xb, yb, wb = next(iter(ld))
    assert xb.shape == (64, 100) and yb.shape == (64, 1) and wb.shape == (64, 1)
    assert len(ld) == 8 and sum(b[0].shape[0] for b in ld) == 500
    with pytest.raises(ValueError, match="backend='dali'"):
        D.make_loader(ds, "train", 8, backend="dali")


def test_tabular_csv(tmp_path):
    p = tmp_path / "t.csv"
    rng = np.random.default_rng(0)
    with open(p, "w") as f:
        f.write("a,b,price,note\n")
        for k in range(50):
            f.write(f"{rng.normal()},{rng.normal() * 3 + 1},{k * 1.5},x\n")
    with pytest.raises(DataError, match=r"t\.csv line 2: value 'x' in column 'note'"):
        D.load_dataset("tabular", root=str(p), target="price")
    ds = D.load_dataset("tabular", root=str(p), target="price", features=["a", "b"])
    n = sum(len(ds.split(s)) for s in ds.splits)
    assert n == 50 and ds.num_features == 2
    x = torch.cat([b[0] for b in D.make_loader(ds, "train", 7, shuffle=False)])
    np.testing.assert_allclose(x.mean(0).numpy(), 0, atol=1e-5)
    np.testing.assert_allclose(x.std(0, unbiased=False).numpy(), 1, atol=1e-4)
    with open(p, "a") as f:
        f.write("1,2,nan,x\n")
    with pytest.raises(DataError, match=r"t\.csv line 52: value 'nan' in column 'price' is NaN"):
        D.load_dataset("tabular", root=str(p), target="price", features=["a", "b"])
    with pytest.raises(DataError, match="missing target column 'y'"):
        D.load_dataset("tabular", root=str(p), target="y")


def test_has_main_guard_reads_the_script_without_running_it(tmp_path):
    # both backends ask it whether spawned / forkserver workers may re-import the main script
    from ssir_fast.data.loader_base import has_main_guard
    cases = {"guarded.py": "import sys\nif __name__ == \"__main__\":\n    sys.exit(3)\n",
             "reversed.py": "if '__main__' == __name__:\n    pass\n",
             "bare.py": "raise SystemExit(3)\n",
             "nested.py": "def f():\n    if __name__ == '__main__':\n        pass\n",
             "broken.py": "if __name__ == '__main__'\n"}
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
    got = {name: has_main_guard(str(tmp_path / name)) for name in cases}
    assert got == {"guarded.py": True, "reversed.py": True, "bare.py": False, "nested.py": False,
                   "broken.py": False}
    assert has_main_guard(str(tmp_path / "missing.py")) is False
