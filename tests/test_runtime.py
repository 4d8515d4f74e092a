"""One run set-up: `build_runtime` (process group, device, precision, threads, seed) and
`build_parts` (data, model, losses) build the same run for training, evaluation and RRT."""
import os

import numpy as np
import pytest
import torch

from ssir_fast.cli import main
from ssir_fast.train import make_config
from ssir_fast.train.builders import make_eval_loader
from ssir_fast.train.evaluation import load_run
from ssir_fast.train.runtime import Runtime, build_parts, build_runtime
from ssir_fast.train.trainer import Trainer

GAUSS = {"data": "two_gaussians", "ratio": 4, "epochs": 1, "batch_size": 64, "width": 16,
         "progress": False, "plots": False, "device": "cpu", "threads": 1}


@pytest.fixture(autouse=True)
def _threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_runtime_seeds_sets_threads_and_picks_the_device():
    cfg = make_config(dict(GAUSS, seed=7, threads=2))
    torch.manual_seed(0)
    rt = build_runtime(cfg)
    try:
        drawn = torch.rand(3)
        torch.manual_seed(7)
        assert torch.equal(drawn, torch.rand(3))           # seeded with cfg.seed
        assert torch.get_num_threads() == 2
        assert isinstance(rt, Runtime) and rt.device == torch.device("cpu")
        assert rt.precision.name == "fp32" and not rt.channels_last
        assert rt.env.world == 1 and rt.env.main
    finally:
        rt.close()


def test_trainer_and_build_parts_build_the_same_run(tmp_path):
    cfg = make_config(dict(GAUSS, ssir=True, reweight="sqrt_inv", out=str(tmp_path / "t")))
    t = Trainer(cfg, log=lambda *a: None)
    try:
        t.setup()
    finally:
        t.runtime.close()
    rt = build_runtime(cfg)
    try:
        parts = build_parts(cfg, rt)
    finally:
        rt.close()
    a, b = _state(t.model), _state(parts.model)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert t.data.bins == parts.data.bins
    np.testing.assert_array_equal(t.data.bin_w, parts.data.bin_w)
    np.testing.assert_array_equal(t.data.train_counts, parts.data.train_counts)
    assert t.losses.ssir is not None and parts.losses.ssir is not None
    assert t.data.loader_options == parts.data.loader_options
    assert build_parts.__module__ == "ssir_fast.train.runtime"


def test_load_run_rebuilds_the_training_set_up(tmp_path):
    out = str(tmp_path / "run")
    args = ["train", "--data", "two_gaussians", "--ratio", "4", "--epochs", "1",
            "--batch-size", "64", "--width", "16", "--no-progress", "--no-plots",
            "--device", "cpu", "--out", out]
    assert main(args) == 0
    ck = torch.load(os.path.join(out, "best.pt"), weights_only=True)
    with load_run(os.path.join(out, "best.pt"), "eval --checkpoint", log=lambda *a: None) as run:
        assert isinstance(run.runtime, Runtime) and run.runtime.device.type == "cpu"
        assert all(torch.equal(v, ck["model"][k]) for k, v in run.model.state_dict().items())
        # the data of the run, as training built it
        cfg = make_config(dict(GAUSS, out=str(tmp_path / "again")))
        rt = build_runtime(cfg)
        try:
            data = build_parts(cfg, rt, losses=False).data
        finally:
            rt.close()
        assert run.data.bins == data.bins and run.data.shot_bins == data.shot_bins
        np.testing.assert_array_equal(run.data.train_counts, data.train_counts)


def test_the_eval_loader_of_the_training_split_uses_the_run_loader_options(tmp_path):
    cfg = make_config(dict(GAUSS, batch_size=48, out=str(tmp_path / "o")))
    rt = build_runtime(cfg)
    try:
        data = build_parts(cfg, rt, losses=False).data
    finally:
        rt.close()
    assert data.loader_options["batch_size"] == 48 and data.loader_options["shard"] == (0, 1)
    assert make_eval_loader(data, "test") is data.loaders["test"]
    loader = make_eval_loader(data, "train")
    assert loader.batch_size == 48
    ys = [torch.cat([y.reshape(-1) for _, y, _ in loader]) for _ in range(2)]
    want = torch.from_numpy(data.ds.splits["train"].targets)
    assert torch.equal(ys[0], want) and torch.equal(ys[1], want)   # in order: not shuffled
    with pytest.raises(ValueError, match="split 'dev' is not in the data set"):
        make_eval_loader(data, "dev")


def test_the_trainer_reaches_each_value_one_way(tmp_path):
    t = Trainer(make_config(dict(GAUSS, out=str(tmp_path / "o"))), log=lambda *a: None)
    try:
        t.setup()
    finally:
        t.runtime.close()
    # through what built it (t.data.bins, t.runtime.device, t.losses.ssir), not a second name
    for alias in ("ds", "bins", "train_labels", "train_counts", "depth", "bin_w", "shot_bins",
                  "loaders", "ssir", "loss_module", "train_loader", "env", "device",
                  "precision", "channels_last", "cuda"):
        assert not hasattr(t, alias), alias
    assert t.data.bins is not None and t.runtime.device.type == "cpu"


def test_validation_reads_no_files_and_probes_no_device(tmp_path, monkeypatch):
    # the configuration is checked on its own; what the machine must provide (the checkpoint
    # file, tensorboard, a GPU) is check_environment's, which build_runtime runs first
    from ssir_fast.train import ConfigError
    from ssir_fast.train.runtime import check_environment
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: calls.append(1) or False)
    missing = str(tmp_path / "first.pt")
    cfg = make_config({"data": "two_gaussians", "rrt": True, "checkpoint": missing,
                       "reweight": "sqrt_inv", "device": "cuda"})
    assert calls == []
    with pytest.raises(ConfigError) as info:
        check_environment(cfg)
    msg = str(info.value)
    assert f"--checkpoint: file not found: {missing}" in msg
    assert "--device cuda: no CUDA device is available" in msg
    with pytest.raises(ConfigError, match="file not found"):
        build_runtime(cfg)


def test_cpu_runs_keep_freed_memory_for_the_next_step(monkeypatch):
    # build_runtime on the CPU asks malloc to keep freed memory (cpu_heap)
    import ssir_fast.train.runtime as R
    calls = []
    monkeypatch.setattr(R, "keep_freed_memory", lambda: calls.append(1) or True)
    rt = R.build_runtime(make_config({"data": "two_gaussians", "device": "cpu"}))
    rt.close()
    assert calls == [1]


def test_keep_freed_memory_removes_most_page_faults_of_an_ssir_step():
    # in fresh processes: an exact SSIR step of a small CNN (batch 128, 32 px) keeps several
    # graphs alive; under glibc's defaults part of that memory is given back and faulted in again
    # every step, with freed memory kept (cpu_heap) most of those faults are gone
    import subprocess
    import sys
    code = """
import resource, sys, torch
from torch import nn
from ssir_fast import SSIRLoss
from ssir_fast.cpu_heap import keep_freed_memory
torch.manual_seed(0); torch.set_num_threads(1)
took = keep_freed_memory() if sys.argv[1] == "keep" else None
def block(cin, cout):
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
model = nn.Sequential(*block(3, 32), *block(32, 32), nn.MaxPool2d(2), *block(32, 64),
                      nn.MaxPool2d(2), *block(64, 64), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                      nn.Linear(64, 1))
x, y = torch.randn(128, 3, 32, 32), torch.rand(128) * 50
loss_fn = SSIRLoss(bin_width=1.0, epsilon=1e-3, lam=0.1)
def faults(n):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(n):
        model.zero_grad()
        loss_fn(model, x, y).loss.backward()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // n
faults(1)
steps = [faults(1) for _ in range(4)]
# glibc's defaults: the mean (its mmap threshold adapts, so the count falls from step to step);
# kept: the quietest step (the host may reclaim a process's idle pages now and then)
print(took, sum(steps) // len(steps), min(steps))
"""
    runs = {mode: subprocess.run([sys.executable, "-c", code, mode], capture_output=True,
                                 text=True, check=True).stdout.split()
            for mode in ("default", "keep")}
    assert runs["keep"][0] == "True"
    default, kept = int(runs["default"][1]), int(runs["keep"][2])
    # torch 2.13 CPU: 4-16k faults per step -> 0-2k; torch 2.14.1 (CUDA build): 25k -> 9k
    assert default > 2000 and kept < default / 2, (default, kept)
