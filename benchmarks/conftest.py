"""Shared benchmark helpers: a copy-bandwidth probe measured in the same run, device info, and a
results file (benchmarks/results.jsonl) that BENCHMARKS.md tables are made from."""
import json
import os
import platform
import time

import pytest
import torch


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timings(fn, device="cpu", repeats=5, warmup=2):
    """Seconds of each of `repeats` synchronised calls of fn(), after `warmup` calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


def median_time(fn, device="cpu", repeats=5, warmup=2):
    times = sorted(timings(fn, device, repeats, warmup))
    return times[len(times) // 2]


def best_time(fn, device="cpu", repeats=3, warmup=1):
    """Fastest call: the least disturbed by other jobs on a shared machine."""
    return min(timings(fn, device, repeats, warmup))


def copy_bandwidth(nbytes, device="cpu", repeats=5):
    """GB/s of dst.copy_(src) for a buffer of `nbytes`: bytes read + bytes written per second."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    dst.copy_(src)
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.numel() * 4 / best / 1e9


def device_name(device="cpu"):
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} x{torch.get_num_threads()} threads"


def record(name, **fields):
    """Append one result row to benchmarks/results.jsonl (device and versions included)."""
    row = {"bench": name, "torch": torch.__version__, "time": time.strftime("%Y-%m-%d %H:%M:%S"),
           **fields}
    path = os.environ.get("SSIR_BENCH_RESULTS",
                          os.path.join(os.path.dirname(__file__), "results.jsonl"))
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row))


@pytest.fixture
def cpu_copy_gbps():
    return copy_bandwidth(256 * 2**20, "cpu")
