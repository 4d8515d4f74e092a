"""Data loading throughput: images/s of the training split with the DIR training augmentation
(resize 224, padded random crop, flip, normalise) on the default data set built at 224x224.

DALI (CPU decoding, ``num_threads = T``) vs the torch DataLoader (``num_workers = T``), both
measured in the same run, best of ``SSIR_BENCH_LOADER_ROUNDS`` epochs each, alternating; the speed-up
is their ratio. On a CUDA machine with DALI, "mixed" (nvJPEG) decoding vs the DataLoader feeding
the GPU is measured too.

    pytest benchmarks/bench_loader.py --benchmark-only -s
Environment: SSIR_BENCH_LOADER_THREADS (default: CPU count, at most 8), SSIR_BENCH_LOADER_N
(training images, default 1024), SSIR_BENCH_LOADER_BATCH (default 64).
"""
import os
import time

import pytest
import torch

import ssir_fast.data as D
from harness import device_name, record

THREADS = int(os.environ.get("SSIR_BENCH_LOADER_THREADS", min(8, os.cpu_count() or 1)))
N_TRAIN = int(os.environ.get("SSIR_BENCH_LOADER_N", 1024))
BATCH = int(os.environ.get("SSIR_BENCH_LOADER_BATCH", 64))
ROUNDS = int(os.environ.get("SSIR_BENCH_LOADER_ROUNDS", 3))


@pytest.fixture(scope="module")
def default224():
    return D.load_default(image_size=224, n_train=N_TRAIN, val_per_bin=1, test_per_bin=1)


def epoch_rate(loader, device):
    """Images/s of one full epoch, its first-batch wait included. Both loaders start their
    workers / pipeline once, in the warm-up epoch (`bench_e2e.py` reports that start-up)."""
    t0 = time.perf_counter()
    n = 0
    for x, y, w in loader:
        n += x.shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def compare(ds, device, benchmark, name):
    loaders = {be: D.make_loader(ds, "train", BATCH, backend=be, device=device,
                                 num_workers=THREADS, seed=0) for be in ("torch", "dali")}
    for ld in loaders.values():           # warm-up: page cache, worker start, pipeline build
        epoch_rate(ld, device)
    best = {"torch": 0.0, "dali": 0.0}
    for _ in range(ROUNDS):
        for be, ld in loaders.items():
            best[be] = max(best[be], epoch_rate(ld, device))
    benchmark.pedantic(lambda: epoch_rate(loaders["dali"], device), rounds=1, iterations=1)
    ratio = best["dali"] / best["torch"]
    benchmark.extra_info.update({"dali_img_s": best["dali"], "torch_img_s": best["torch"],
                                 "ratio": ratio, "threads": THREADS})
    record(dict(bench=name, device=device_name(device), threads=THREADS,
                n_images=len(ds.split("train")), batch=BATCH, size=224,
                dali_img_s=round(best["dali"], 1), torch_img_s=round(best["torch"], 1),
                dali_over_torch=round(ratio, 3)))


def test_loader_dali_cpu_vs_torch(benchmark, default224):
    pytest.importorskip("nvidia.dali")
    compare(default224, torch.device("cpu"), benchmark, "loader_cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_loader_dali_mixed_vs_torch_gpu(benchmark, default224):
    pytest.importorskip("nvidia.dali")
    compare(default224, torch.device("cuda"), benchmark, "loader_gpu")
