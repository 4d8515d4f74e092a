"""The set-up of a run, written once for every command that builds one: training and its RRT
stage (`Trainer`), `ssir-fast eval` (`evaluation.load_run`) and `ssir-fast perturbations`.

    rt = build_runtime(cfg, log)      # process group, device, world size, precision, threads, seed
    parts = build_parts(cfg, rt)      # data and loaders, model, losses (train/builders.py)
    ...
    rt.close()                        # leave the process group

Order matters for an exact rerun: `build_runtime` seeds last, and `build_parts` follows it at
once: the data (SMOGN, loaders), the model (initial weights) and the losses (a GMM for Balanced
MSE) draw from the seeded generators in this order.
"""
import importlib
import os
import random
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from ..cpu_heap import keep_freed_memory
from ..data import registry
from . import distributed
from .builders import Data, Losses, build_data, build_losses, build_model, channels_last
from .config import ConfigError
from .models import Regressor
from .precision import Precision, choose_precision

__all__ = ["Runtime", "build_runtime", "Parts", "build_parts", "seed_everything",
           "resolve_device", "check_world", "data_flag_values", "check_environment"]


def seed_everything(seed, deterministic=False):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True


def resolve_device(name, env):
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", env.local_rank if env.active else torch.cuda.current_device())
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    return dev


def check_world(cfg, env):
    """Every process gets the same share of each batch."""
    if cfg.batch_size % env.world:
        raise ConfigError(f"--batch-size {cfg.batch_size} must be divisible by the number of "
                          f"processes ({env.world})")


@dataclass
class Runtime:
    """Where and how a run computes: this process's place in the process group (`env`: rank,
    world size), its device, the mixed precision and whether images go channels_last."""
    env: distributed.DistEnv
    device: torch.device
    precision: Precision
    channels_last: bool

    def close(self, barrier=False):
        """Leave the process group (see `DistEnv.close`)."""
        self.env.close(barrier=barrier)


def check_environment(cfg):
    """What this machine must provide for cfg, checked before any work (the configuration's own
    validation reads no file and probes no device): the --checkpoint file, the tensorboard
    package, a CUDA device. Raises ConfigError naming each problem."""
    errs = []
    checkpoint = cfg.method.rrt.checkpoint
    if checkpoint and not os.path.isfile(checkpoint):
        errs.append(f"--checkpoint: file not found: {checkpoint}")
    if cfg.output.tensorboard:
        try:   # optional dependency: checked here, imported by the run that writes to it
            importlib.import_module("torch.utils.tensorboard")
        except Exception:
            errs.append("--tensorboard needs the tensorboard package: pip install tensorboard")
    if str(cfg.optim.device).startswith("cuda") and not torch.cuda.is_available():
        errs.append(f"--device {cfg.optim.device}: no CUDA device is available")
    if errs:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(errs))


def build_runtime(cfg, log=None) -> Runtime:
    """Join the process group (under torchrun), pick the device, check the batch splits over the
    processes, choose the precision (bf16 autocast where the GPU has it, else fp16 with a
    gradient scaler, or a clear refusal; `log` hears the choice on the main process), set the
    CPU threads (and, on the CPU, keeps freed memory for the next step: `cpu_heap`) and seed
    every generator. On an error the process group is left again. First,
    `check_environment`."""
    check_environment(cfg)
    env = distributed.setup("cuda" if (cfg.device != "cpu" and torch.cuda.is_available())
                            else "cpu")
    try:
        device = resolve_device(cfg.device, env)
        check_world(cfg, env)
        precision = choose_precision(device, cfg.amp, cfg.amp_dtype, log if env.main else None)
    except BaseException:
        env.close()
        raise
    seed_everything(cfg.seed, cfg.deterministic)
    if device.type == "cpu":
        keep_freed_memory()   # no fresh pages to fault in every step (ssir_fast.cpu_heap)
        if cfg.threads is not None:
            torch.set_num_threads(cfg.threads)
    return Runtime(env, device, precision, channels_last(cfg.optim, device))


@dataclass
class Parts:
    """What a run is built from: the data side (`builders.Data`), the model, and the losses
    (None where only evaluation follows)."""
    data: Data
    model: Regressor
    losses: Optional[Losses]


def build_parts(cfg, rt, losses=True) -> Parts:
    """The data and loaders, the model (the same weights on every rank) and, with `losses`, the
    supervised loss and SSIR, for a validated cfg on the runtime `rt` (call right after
    `build_runtime`, see the module docstring)."""
    data = build_data(cfg.data, cfg.method, cfg.output, cfg.optim, rt.env, rt.device,
                      data_flag_values(cfg), progress=rt.env.main and cfg.progress)
    model = build_model(cfg.model, cfg.method.fds, data, rt.device, rt.env, rt.channels_last)
    return Parts(data, model, build_losses(cfg.method, cfg.ssir, data, rt.device)
                 if losses else None)


def data_flag_values(cfg):
    """{loader keyword: value} of the options the data set's registration takes from the
    configuration (`DataSpec.flags`: --image-size, --target, --seed, ...)."""
    flat = cfg.to_dict()
    return {k: flat[f] for k, f in registry.get(cfg.data.name).flags.items()}
