"""The DALI backend (CPU pipelines here; GPU "mixed" decoding when CUDA is present): equality with
the torch backend, sharding, the depth pair pipeline, bad inputs. Skips only when DALI is not
importable (CI installs the `dali` extra, so these run there)."""
import os

import numpy as np
import pytest
import torch

pytest.importorskip("nvidia.dali")
pytest.importorskip("nvidia.dali.plugin.pytorch")

import ssir_fast.data as D  # noqa: E402
from ssir_fast.data import DataError  # noqa: E402
from _dir_data import write_dir_csv, write_nyud2  # noqa: E402

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def agedb(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("agedb_dali"))
    write_dir_csv(root, sizes=(13, 5, 7), size=24)
    return D.load_dataset("agedb", root=root, image_size=24)


def both(ds, split, bs=4, **kw):
    out = {}
    for be in ("torch", "dali"):
        ld = D.make_loader(ds, split, bs, backend=be, num_workers=2, **kw)
        assert ld.backend == be
        out[be] = (ld, list(ld))
    return out


def cat(batches, k):
    return torch.cat([b[k] for b in batches])


def test_auto_picks_dali(agedb):
    assert D.dali_available()
    assert D.make_loader(agedb, "test", 4).backend == "dali"


def test_test_split_equal_to_torch_no_resize(agedb):
    r = both(agedb, "test", bs=3)
    (lt, bt), (ld, bd) = r["torch"], r["dali"]
    assert len(lt) == len(ld) == len(bd) == 3
    assert [b[0].shape[0] for b in bd] == [3, 3, 1]           # last partial batch kept
    assert torch.equal(cat(bt, 1), cat(bd, 1))                # same labels, same order
    np.testing.assert_array_equal(cat(bd, 1).view(-1).numpy(), agedb.split("test").targets)
    diff = (cat(bt, 0) - cat(bd, 0)).abs().max().item()
    assert diff <= D.TEST_TOLERANCE["no_resize_max_abs"]       # same libjpeg-turbo decode
    assert torch.equal(cat(bt, 2), cat(bd, 2))


def test_test_split_equal_to_torch_with_resize(agedb):
    r = both(agedb, "test", bs=4, size=40)
    xt, xd = cat(r["torch"][1], 0), cat(r["dali"][1], 0)
    assert xt.shape == xd.shape == (7, 3, 40, 40)
    d = (xt - xd).abs()
    assert d.max().item() <= D.TEST_TOLERANCE["resize_max_abs"]
    assert d.mean().item() <= D.TEST_TOLERANCE["resize_mean_abs"]
    assert torch.equal(cat(r["torch"][1], 1), cat(r["dali"][1], 1))


def test_train_augmentation_equal_to_torch(agedb):
    r = both(agedb, "train", bs=5, seed=11)
    xt, xd = cat(r["torch"][1], 0), cat(r["dali"][1], 0)
    assert xd.shape == (13, 3, 24, 24)
    assert xd.min() >= -1 and xd.max() <= 1
    assert (xd == -1).all(dim=1).any()                          # zero padding of the crop shows
    assert (xt - xd).abs().max().item() <= D.TEST_TOLERANCE["no_resize_max_abs"]
    assert torch.equal(cat(r["torch"][1], 1), cat(r["dali"][1], 1))


def test_epochs_shuffle_and_shards(agedb):
    ld = D.make_loader(agedb, "train", 4, backend="dali", num_workers=1, seed=2)
    e0 = cat(list(ld), 1).view(-1).numpy()
    e1 = cat(list(ld), 1).view(-1).numpy()
    assert not np.array_equal(e0, e1) and sorted(e0) == sorted(e1)
    ld.set_epoch(0)
    np.testing.assert_array_equal(cat(list(ld), 1).view(-1).numpy(), e0)
    parts = [cat(list(D.make_loader(agedb, "train", 3, backend="dali", num_workers=1,
                                    shard=(k, 2), seed=2)), 1).view(-1).numpy() for k in range(2)]
    allv = np.concatenate(parts)
    assert len(allv) == 13 and set(allv.tolist()) == set(agedb.train_labels.tolist())
    np.testing.assert_array_equal(allv, e0)   # shards are blocks of the epoch's order


def torch_epoch(ds, split, epoch, bs, seed):
    ref = D.make_loader(ds, split, bs, backend="torch", num_workers=0, seed=seed)
    ref.set_epoch(epoch)
    return list(ref)


def assert_same_batches(got, ref):
    assert [b[0].shape[0] for b in got] == [b[0].shape[0] for b in ref]
    for g, r in zip(got, ref):
        assert torch.equal(g[1], r[1]) and torch.equal(g[2], r[2])   # samples, order, weights
        assert (g[0] - r[0]).abs().max().item() <= D.TEST_TOLERANCE["no_resize_max_abs"]


def test_one_pipeline_for_the_run_with_per_epoch_order_and_augmentation(agedb):
    ld = D.make_loader(agedb, "train", 4, backend="dali", num_workers=2, seed=6)
    pipes = set()
    for epoch in range(3):
        assert_same_batches(list(ld), torch_epoch(agedb, "train", epoch, 4, seed=6))
        pipes.add(id(ld._it._pipes[0]))
    assert len(pipes) == 1                                    # built once, reset per epoch
    assert len(ld._it._pipes[0]._py_pool.pids()) == ld.py_workers   # parallel source workers
    val = D.make_loader(agedb, "val", 2, backend="dali", num_workers=1)
    a, b = list(val), list(val)
    assert_same_batches(a, b)
    assert_same_batches(a, torch_epoch(agedb, "val", 0, 2, seed=0))


@pytest.mark.parametrize("then", ["same_epoch", "other_epoch"])
def test_epoch_left_half_way_leaks_nothing(agedb, then):
    ld = D.make_loader(agedb, "train", 2, backend="dali", num_workers=1, seed=4, prefetch=3)
    old = iter(ld)
    next(old)                            # abandon epoch 0 after one batch of 7
    pipe = ld._it
    nxt = 0 if then == "same_epoch" else 5
    ld.set_epoch(nxt)
    got = list(ld)
    assert_same_batches(got, torch_epoch(agedb, "train", nxt, 2, seed=4))
    assert list(old) == []               # the abandoned pass yields nothing more
    assert ld._it is pipe                # no rebuild
    # the pass prepared at the end (epoch nxt + 1) is replaced when another epoch is asked for
    ld.set_epoch(2)
    assert_same_batches(list(ld), torch_epoch(agedb, "train", 2, 2, seed=4))
    assert_same_batches(list(ld), torch_epoch(agedb, "train", 3, 2, seed=4))


def test_spawned_source_workers(agedb):
    ld = D.make_loader(agedb, "train", 5, backend="dali", num_workers=2, seed=8)
    ld.start_method = "spawn"            # what a CUDA process uses
    for epoch in range(2):
        assert_same_batches(list(ld), torch_epoch(agedb, "train", epoch, 5, seed=8))


def test_depth_pairs_equal_to_torch(tmp_path):
    write_nyud2(str(tmp_path), n_train=5, n_test=3, size=16)
    ds = D.load_dataset("nyud2", root=str(tmp_path), image_size=16)
    for split in ("train", "test"):
        r = both(ds, split, bs=2, seed=3)
        (_, bt), (_, bd) = r["torch"], r["dali"]
        assert cat(bd, 1).shape == (len(ds.split(split)), 1, 16, 16)
        assert torch.equal(cat(bt, 1), cat(bd, 1))              # identical crop/flip of depth
        assert torch.equal(cat(bt, 2), cat(bd, 2))              # test: balanced mask
        assert (cat(bt, 0) - cat(bd, 0)).abs().max() <= 1e-5


def _bad_dataset(tmp_path, content):
    from _dir_data import digit_images
    for k, im in enumerate(digit_images(1, 16)):
        im.save(tmp_path / f"{k}.jpg")
    (tmp_path / "bad.jpg").write_bytes((tmp_path / "0.jpg").read_bytes())
    (tmp_path / "agedb.csv").write_text("age,path,split\n30,0.jpg,train\n31,0.jpg,val\n"
                                        "32,0.jpg,test\n33,bad.jpg,test\n34,0.jpg,test\n")
    ds = D.load_dataset("agedb", root=str(tmp_path), image_size=16)
    if content is None:
        os.remove(tmp_path / "bad.jpg")
    else:
        (tmp_path / "bad.jpg").write_bytes(content)
    return ds


@pytest.mark.parametrize("kind", ["missing", "truncated", "garbage"])
def test_bad_files_raise_or_skip(tmp_path, kind):
    content = {"missing": None, "garbage": b"not an image, just text", "truncated": None}[kind]
    if kind == "truncated":
        from _dir_data import digit_images
        import io
        b = io.BytesIO()
        digit_images(1, 16)[0].save(b, format="JPEG")
        content = b.getvalue()[:150]
    ds = _bad_dataset(tmp_path, content)
    with pytest.raises(DataError, match=r"agedb\.csv line 5 \(.*bad\.jpg\)"):
        list(D.make_loader(ds, "test", 2, backend="dali", num_workers=1))
    for bs in (2, 1):                    # batch size 1: a batch with no good sample at all
        ld = D.make_loader(ds, "test", bs, backend="dali", num_workers=1, on_error="skip")
        for _ in range(2):
            with pytest.warns(UserWarning, match="skipped 1 bad sample"):
                ys = cat(list(ld), 1).view(-1).numpy()
            np.testing.assert_array_equal(ys, [32, 34])
            assert ld.stats["skipped"] == 1


def test_decoder_failure_names_the_batch_files(tmp_path):
    ds = _bad_dataset(tmp_path, b"\xff\xd8" + bytes(range(256)) * 4 + b"\xff\xd9")
    ld = D.make_loader(ds, "test", 2, backend="dali", num_workers=1)
    for _ in range(2):                   # the broken pipeline is dropped, the next pass rebuilds
        with pytest.raises(DataError, match=r"DALI failed on a batch .*bad\.jpg"):
            list(ld)
    assert ld._it is None


def test_close_stops_the_pipeline_and_removes_its_epoch_table(agedb):
    ld = D.make_loader(agedb, "val", 2, backend="dali", num_workers=1)
    first = list(ld)
    path = ld._table.path
    assert os.path.exists(path)
    ld.close()
    import gc
    gc.collect()
    assert ld._it is None and not os.path.exists(path)
    assert_same_batches(list(ld), first)                      # a later pass builds a new one


@gpu
def test_mixed_gpu_decoding_matches_cpu(agedb):
    cpu = list(D.make_loader(agedb, "test", 4, backend="dali", num_workers=2))
    g = list(D.make_loader(agedb, "test", 4, backend="dali", device="cuda", num_workers=2))
    assert g[0][0].is_cuda and g[0][1].is_cuda
    xc, xg = cat(cpu, 0), torch.cat([b[0].cpu() for b in g])
    # nvJPEG and libjpeg-turbo differ by a few levels on some pixels
    assert (xc - xg).abs().mean() <= D.TEST_TOLERANCE["gpu_mean_abs"]
    assert torch.equal(cat(cpu, 1), torch.cat([b[1].cpu() for b in g]))


@gpu
def test_mixed_gpu_train_depth(tmp_path):
    write_nyud2(str(tmp_path), n_train=4, n_test=2, size=16)
    ds = D.load_dataset("nyud2", root=str(tmp_path), image_size=16)
    c = list(D.make_loader(ds, "train", 2, backend="dali", num_workers=1, seed=1))
    g = list(D.make_loader(ds, "train", 2, backend="dali", device="cuda", num_workers=1, seed=1))
    assert torch.equal(cat(c, 1), torch.cat([b[1].cpu() for b in g]))


@gpu
def test_mixed_gpu_one_pipeline_half_way_and_no_host_sync(agedb):
    ld = D.make_loader(agedb, "train", 4, backend="dali", device="cuda", num_workers=2, seed=6)
    first = list(ld)                                   # epoch 0 (pipeline built, workers spawned)
    pipe = ld._it
    it = iter(ld)
    next(it)                                           # epoch 1 left after one batch
    ld.set_epoch(1)
    torch.cuda.set_sync_debug_mode("error")            # any host synchronisation raises
    try:
        got = list(ld)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert ld._it is pipe
    assert all(b[0].is_contiguous(memory_format=torch.channels_last) for b in got)
    cpu = torch_epoch(agedb, "train", 1, 4, seed=6)
    assert torch.equal(torch.cat([b[1].cpu() for b in got]), cat(cpu, 1))
    assert (torch.cat([b[0].cpu() for b in got]) - cat(cpu, 0)).abs().mean() <= \
        D.TEST_TOLERANCE["gpu_mean_abs"]
    assert len(first) == len(got)


def _graph(ld, device_id, parallel):
    from ssir_fast.data.dali_pipeline import BatchSource, EpochTable, build_pipeline
    pipe = build_pipeline(ld, BatchSource(ld, EpochTable()), device_id, parallel=parallel)
    pipe._build_graph()                  # the operator graph only: needs no GPU
    devices = {}
    for op in pipe._ops:                 # "__Resize_5" -> "Resize": devices of its outputs
        devices.setdefault(op.name.split("_")[-2], set()).update(
            op.spec.OutputDevice(i) for i in range(op.spec.NumOutput()))
    return devices, [o.device for o in pipe._graph_outputs]


@pytest.mark.parametrize("parallel", [True, False])
def test_gpu_pipeline_decodes_mixed_and_stays_on_the_gpu(agedb, tmp_path, parallel):
    # the same pipeline definition for both devices, checked as a graph on any machine
    ld = D.make_loader(agedb, "train", 2, backend="dali", num_workers=1)
    ops, outs = _graph(ld, 0, parallel)
    assert ops["ExternalSource"] == {"cpu"}                  # files, positions, draws
    for name in ("Image", "Resize", "Slice", "CropMirrorNormalize"):
        assert ops[name] == {"gpu"}, name                    # decoder "mixed", then all GPU
    assert outs == ["gpu", "cpu"]                            # images, positions
    ops, outs = _graph(ld, None, parallel)
    assert all(d == {"cpu"} for d in ops.values()) and outs == ["cpu", "cpu"]
    write_nyud2(str(tmp_path), n_train=2, n_test=2, size=16)
    depth = D.load_dataset("nyud2", root=str(tmp_path), image_size=16)
    ops, outs = _graph(D.make_loader(depth, "test", 2, backend="dali", num_workers=1), 0, parallel)
    assert outs == ["gpu", "cpu", "gpu", "gpu"]              # images, positions, depth, mask


def test_in_process_source_fallback(agedb, monkeypatch):
    # what a script without a __main__ guard gets once CUDA is initialised: no source workers
    import ssir_fast.data.dali_loader as DL
    monkeypatch.setattr(DL, "_workers_mode", lambda forced=None: (False, None))
    ld = D.make_loader(agedb, "train", 4, backend="dali", num_workers=2, seed=6)
    for epoch in range(2):
        assert_same_batches(list(ld), torch_epoch(agedb, "train", epoch, 4, seed=6))
    assert ld._it._pipes[0]._py_pool is None
