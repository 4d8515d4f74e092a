"""End to end: `ssir-fast train`'s epoch loop fed by each loader backend, against the same model
step fed from memory.

    pytest benchmarks/bench_e2e.py --benchmark-only -s          (CPU cases; CUDA ones on a GPU)

Data: an AgeDB-layout folder (``agedb.csv`` + JPEGs) of synthetic photos written by the benchmark
(smooth colour fields with edges and noise, ``SIZE`` px, JPEG quality 90, ~20-30 KB each: decoding
cost like real face crops), trained at 224 px with the DIR augmentation; or, with
``SSIR_E2E_DATA=default``, the default data set built at 224 px.

Per backend (torch, dali) and method (vanilla, SSIR) one `Trainer` runs ``EPOCHS`` epochs, each
followed by the validation pass, as `ssir-fast train` does. Reported:
- ``first_batch_s``: per epoch, the wait for the first batch (epoch 1 includes starting the
  workers / building the pipeline); ``later_over_first``: the largest later wait / epoch 1's;
- ``steady_img_s``: images/s of the epochs after the first, first batch excluded;
- ``model_img_s``: the same Trainer's epoch loop (same model, batch, precision, method) fed one
  device-resident batch over and over: the step alone, measured in the same run;
- ``feed_efficiency`` = steady_img_s / model_img_s (1.0: the loader costs nothing);
- ``loader_img_s``: one more epoch of the training loader alone (no model): when the feed
  efficiency is short, this says whether decoding is the bound.

CPU case: the 2-layer MLP with ``SSIR_E2E_CPU_WIDTH`` (64) hidden units (a step as fast as the
loader), ``SSIR_E2E_CPU_WORKERS`` (2) workers, batch 64; on 2 cores the workers and the step
share the same cores, so the CPU feed efficiency measures that sharing too. CUDA case: ResNet-50,
bf16 autocast, channels_last, batch 256, ``SSIR_E2E_GPU_WORKERS`` (14) workers / DALI threads.
Environment: SSIR_E2E_N (training images; CPU 512, GPU 4096), SSIR_E2E_SIZE (stored px, 256),
SSIR_E2E_EPOCHS (3), SSIR_E2E_DATA (agedb | default), SSIR_E2E_BATCH (64 CPU / 256 GPU),
SSIR_E2E_ROOT (use the folder there, written first when it has no agedb.csv).
``python benchmarks/bench_e2e.py DIR N`` writes such a folder of N training images.
"""
import csv
import os
import tempfile
import time

import numpy as np
import pytest
import torch

from harness import device_name, record
from harness import sync as sync_device

EPOCHS = int(os.environ.get("SSIR_E2E_EPOCHS", 3))
SIZE = int(os.environ.get("SSIR_E2E_SIZE", 256))
DATA = os.environ.get("SSIR_E2E_DATA", "agedb")
GPU = torch.cuda.is_available()


def write_agedb(root, n_train, n_eval, size, seed=0):
    """AgeDB layout: root/agedb.csv (age,path,split) and root/images/*.jpg; long-tailed ages."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    n = n_train + 2 * n_eval
    ages = np.clip(np.round(rng.gamma(4.0, 9.0, n)), 0, 100).astype(int)
    splits = ["train"] * n_train + ["val"] * n_eval + ["test"] * n_eval
    yy, xx = np.mgrid[0:size, 0:size] / size
    rows = []
    for k in range(n):
        a, b, c = rng.uniform(0, 255, 3)
        fx, fy = rng.uniform(1, 6, 2)
        base = np.stack([a * xx + (255 - a) * yy,
                         127 + 120 * np.sin(2 * np.pi * (fx * xx + fy * yy)),
                         c * (xx > rng.uniform(0.2, 0.8)) + b * yy * (1 - yy) * 4], -1)
        img = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        rel = f"images/{k:06d}.jpg"
        Image.fromarray(img).save(os.path.join(root, rel), quality=90)
        rows.append((ages[k], rel, splits[k]))
    with open(os.path.join(root, "agedb.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["age", "path", "split"])
        w.writerows(rows)
    return root


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    if DATA == "default":
        return None
    n = int(os.environ.get("SSIR_E2E_N", 4096 if GPU else 512))
    root = os.environ.get("SSIR_E2E_ROOT") or str(tmp_path_factory.mktemp("e2e_agedb"))
    if os.path.isfile(os.path.join(root, "agedb.csv")):
        return root
    t0 = time.perf_counter()
    write_agedb(root, n, max(64, n // 8), SIZE)
    print(f"\nwrote {n} + 2 x {max(64, n // 8)} JPEGs of {SIZE} px in "
          f"{time.perf_counter() - t0:.1f} s")
    return root


class _SameBatch:
    """Stand-in training loader: one device-resident batch, ``steps`` times per epoch."""

    backend = "memory"

    def __init__(self, batch, steps):
        self.batch, self.steps = batch, steps

    def set_epoch(self, epoch):
        pass

    def __len__(self):
        return self.steps

    def __iter__(self):
        return (self.batch for _ in range(self.steps))


def make_trainer(data_root, backend, method, device, out):
    from ssir_fast.train import make_config
    from ssir_fast.train.trainer import Trainer
    cuda = device == "cuda"
    values = {"backend": backend, "device": device, "epochs": EPOCHS, "progress": False,
              "plots": False, "out": out, "ssir": method == "ssir", "image_size": 224,
              "batch_size": int(os.environ.get("SSIR_E2E_BATCH", 256 if cuda else 64)),
              "workers": int(os.environ.get("SSIR_E2E_GPU_WORKERS" if cuda else
                                            "SSIR_E2E_CPU_WORKERS", 14 if cuda else 2)),
              "model": "resnet50" if cuda else "mlp"}
    if not cuda:   # the 2-layer MLP: even a width-4 CNN trains ~10 img/s at 224 px on 2 cores
        values["width"] = int(os.environ.get("SSIR_E2E_CPU_WIDTH", 64))
    values.update({"data": "default"} if data_root is None else
                  {"data": "agedb", "data_root": data_root})
    t = Trainer(make_config(values), log=lambda *a: None)
    t.setup()
    t.prepare(t.model.parameters())
    return t


def run_case(data_root, backend, method, device, benchmark, tmp_path):
    if backend == "dali":
        pytest.importorskip("nvidia.dali")
    t = make_trainer(data_root, backend, method, device, str(tmp_path / "run"))
    recs = []
    for epoch in range(EPOCHS):
        if epoch == EPOCHS - 1:      # the last epoch is the one pytest-benchmark times
            rec = {}
            benchmark.pedantic(lambda: rec.update(t.train_epoch(epoch, EPOCHS)), rounds=1, iterations=1)
        else:
            rec = t.train_epoch(epoch, EPOCHS)
        recs.append(rec)
        if "val" in t.data.loaders:
            t.evaluate("val")        # as in training: the next epoch's loading overlaps it
    bs = t.data.train_loader.batch_size
    n = len(t.data.train_loader.view)
    later = recs[1:]
    steady = sum(n - bs for _ in later) / sum(r["epoch_time_s"] - r["first_batch_s"]
                                               for r in later)
    # the loader alone, one epoch without the model: what bounds the feed when it is short
    t0 = time.perf_counter()
    n_read = sum(b[0].shape[0] for b in t.data.train_loader)
    sync_device(t.runtime.device)
    loader_only = n_read / (time.perf_counter() - t0)
    # the same epoch loop fed one batch already on the device: the model step alone
    batch = next(iter(t.data.train_loader))
    loader = t.data.train_loader
    t.data.train_loader = _SameBatch(batch, max(4, len(loader)))
    t.train_epoch(EPOCHS)                      # warm-up for this exact shape
    model = t.train_epoch(EPOCHS + 1)["images_per_s"]
    t.data.train_loader = loader
    first = [round(r["first_batch_s"], 3) for r in recs]
    fig = {"backend": backend, "method": method, "device": device_name(t.runtime.device),
           "workers": t.cfg.workers, "batch": bs, "n_train": n, "epochs": EPOCHS,
           "data": DATA, "stored_px": None if data_root is None else SIZE,
           "first_batch_s": first, "later_over_first": round(max(first[1:]) / first[0], 3),
           "steady_img_s": round(steady, 1), "model_img_s": round(model, 1),
           "loader_img_s": round(loader_only, 1),
           "feed_efficiency": round(steady / model, 3),
           "epoch_img_s": [round(r["images_per_s"], 1) for r in recs]}
    benchmark.extra_info.update(fig)
    record({"bench": f"e2e_{device}", **fig})
    for ld in [t.data.train_loader, *t.data.loaders.values()]:
        ld.close()
    return fig


@pytest.mark.parametrize("method", ["vanilla", "ssir"])
@pytest.mark.parametrize("backend", ["torch", "dali"])
def test_e2e_cpu(benchmark, data_root, tmp_path, backend, method):
    run_case(data_root, backend, method, "cpu", benchmark, tmp_path)


@pytest.mark.skipif(not GPU, reason="needs a CUDA device")
@pytest.mark.parametrize("method", ["vanilla", "ssir"])
@pytest.mark.parametrize("backend", ["torch", "dali"])
def test_e2e_cuda(benchmark, data_root, tmp_path, backend, method):
    run_case(data_root, backend, method, "cuda", benchmark, tmp_path)


if __name__ == "__main__":       # write a data folder for a manual `ssir-fast train` run
    import sys
    out = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="e2e_agedb_")
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 1024
    print(write_agedb(out, n, max(64, n // 8), SIZE))
