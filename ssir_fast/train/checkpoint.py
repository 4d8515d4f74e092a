"""Checkpoint files and run logs of the training CLI: what a run writes to its folder and reads
back on --resume.

    state = training_state(...)        # last.pt: everything an exact resume needs
    atomic_save(state, path)           # never half-written
    start, record = resume(...)        # restore model, optimiser, scheduler, RNGs; refuse what
                                       # would make the continued run differ
    write_history(out, history)        # metrics.jsonl and metrics.csv
    with tensorboard(out, on) as tb:   # a SummaryWriter or None

Checkpoints hold tensors and plain values only, read with ``torch.load(weights_only=True)``.

A checkpoint someone sent you cannot run code when it is opened: nothing in it needs the full
pickle machinery. What used to need it is stored as tensors and lists instead:

    numpy RNG   ('MT19937', uint32[624], pos, has_gauss, cached)  ->  {"keys": int64 tensor, ...}
    python RNG  (version, (625 ints), gauss_next)                 ->  {"state": [625 ints], ...}

so an exact resume restores the same generator states bit for bit.

Every failure to read a checkpoint is a `CheckpointError` naming the file and what is wrong:
missing, empty, truncated, not a PyTorch file, objects other than tensors and plain values,
another ssir-fast format, no model state; a model whose parameters differ from the one the
options build (missing / unexpected keys, other shapes) is a `ConfigError`.
"""
import contextlib
import csv
import json
import os
import pickle
import random
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from .atomic import atomic_write
from .config import ConfigError

__all__ = ["CheckpointError", "FORMAT", "atomic_save", "write_text_atomic", "load_checkpoint",
           "load_model_state", "rng_state", "set_rng_state", "RunRecord", "training_state",
           "best_checkpoint", "RESUME_FREE", "resume", "write_history", "tensorboard"]


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: missing, empty, corrupt, unsafe or of another
    format (the message names the file and the option it came from)."""


# 2: RNG states as tensors / lists (weights_only), torchvision's ResNet key names
FORMAT = 2


def atomic_save(obj, path):
    """torch.save to a temporary file in the same folder, then os.replace (never half-written;
    on a failure the temporary file is removed and the previous file kept)."""
    atomic_write(path, lambda f: torch.save(obj, f), "wb")


def write_text_atomic(path, text):
    """Write `text` to a temporary file in the same folder, then os.replace."""
    atomic_write(path, lambda f: f.write(text))


# ---- RNG states as tensors and plain values ---------------------------------------------------

def rng_state():
    """The torch, CUDA, numpy and python RNG states, as tensors, lists and numbers."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, state, gauss_next = random.getstate()
    s = {"torch": torch.get_rng_state(),
         "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                   "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
         "python": {"version": version, "state": list(state), "gauss_next": gauss_next}}
    if torch.cuda.is_available():
        s["cuda"] = torch.cuda.get_rng_state_all()
    return s


def set_rng_state(s):
    """Restore the states written by `rng_state`."""
    torch.set_rng_state(s["torch"])
    n = s["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = s["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


# ---- reading ----------------------------------------------------------------------------------

def load_checkpoint(path, what="--checkpoint", need=("config", "model")):
    """The checkpoint dict in `path`, read with weights_only=True on the CPU.

    `what` names the option the file came from in the messages (--resume, --checkpoint, eval);
    `need` lists the keys an ssir-fast checkpoint must have."""
    if os.path.isdir(path):
        raise CheckpointError(f"{what}: {path} is a folder; give the checkpoint file in it "
                              f"(best.pt or last.pt)")
    if not os.path.isfile(path):
        raise CheckpointError(f"{what}: checkpoint not found: {path}")
    size = os.path.getsize(path)
    if size == 0:
        raise CheckpointError(f"{what}: checkpoint {path} is empty (0 bytes): the run was "
                              f"probably killed while the file was created; delete it (and "
                              f"resume from an earlier copy or start again)")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # an object the safe reader refuses names its class ("Unsupported global: GLOBAL x");
        # any other failure is bytes that are no pickle of plain values at all
        refused = [ln.strip() for ln in str(e).splitlines() if "Unsupported global" in ln]
        if not refused:
            raise CheckpointError(f"{what}: cannot read checkpoint {path} ({size} bytes): "
                                  f"truncated or not a PyTorch checkpoint") from None
        first = refused[0].split("WeightsUnpickler error: ")[-1].split(". ")[0][:160]
        raise CheckpointError(f"{what}: {path} holds objects other than tensors and plain "
                              f"values, so it is not loaded (opening it could run code pickled "
                              f"into it). Checkpoints of this ssir-fast version never do; "
                              f"re-create it or, if you trust its origin, convert it yourself. "
                              f"({first})") from None
    except Exception as e:   # EOFError, RuntimeError, BadZipFile, KeyError (a text file), ...
        first = (str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)[:160]
        raise CheckpointError(f"{what}: cannot read checkpoint {path} ({size} bytes): "
                              f"truncated or not a PyTorch checkpoint ({first})") from None
    if not isinstance(ck, dict) or any(k not in ck for k in need):
        have = sorted(ck)[:8] if isinstance(ck, dict) else type(ck).__name__
        raise CheckpointError(f"{what}: {path} is not an ssir-fast checkpoint (needs keys "
                              f"{list(need)}, has {have})")
    fmt = ck.get("format")
    if ("format" in ck or "config" in need) and fmt != FORMAT:
        raise CheckpointError(f"{what}: {path} has checkpoint format {fmt}, this ssir-fast "
                              f"reads format {FORMAT}; evaluate or resume it with the version "
                              f"that wrote it")
    return ck


def _describe_mismatch(model_state, state, ignore=()):
    """(missing, unexpected, shape differences) between a model's and a checkpoint's state."""
    skip = lambda k: any(k.startswith(p) for p in ignore)  # noqa: E731
    missing = [k for k in model_state if k not in state and not skip(k)]
    unexpected = [k for k in state if k not in model_state and not skip(k)]
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
              for k, v in model_state.items()
              if k in state and isinstance(state[k], torch.Tensor) and state[k].shape != v.shape]
    return missing, unexpected, shapes


def load_model_state(model, state, path, what, model_desc="this model", ignore=()):
    """model.load_state_dict(state), or a ConfigError naming `path`, the model and what differs
    (at most 5 keys of each kind; a CheckpointError when `state` is no state dict). Keys starting
    with a prefix in `ignore` (e.g. "fds." for RRT) may be missing or extra."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{what}: {path} has no model state dict")
    missing, unexpected, shapes = _describe_mismatch(model.state_dict(), state, ignore)
    if missing or unexpected or shapes:
        parts = []
        for name, items in (("missing", missing), ("unexpected", unexpected),
                            ("different shapes", shapes)):
            if items:
                more = f" and {len(items) - 5} more" if len(items) > 5 else ""
                parts.append(f"{name} ({len(items)}): {items[:5]}{more}")
        raise ConfigError(f"{what}: the model in {path} does not fit {model_desc}: "
                          + "; ".join(parts))
    model.load_state_dict(state, strict=not ignore)


# ---- a run's state: writing and resuming ------------------------------------------------------

@dataclass
class RunRecord:
    """What a run has learnt about itself so far: the best epoch and score ({"epoch", "score"}),
    one record per epoch, and the best model's state (on the CPU)."""
    best: Optional[dict] = None
    history: list = field(default_factory=list)
    best_state: Optional[dict] = None


def training_state(cfg, epoch, model, optimizer, scheduler, loss_module, precision, env, record):
    """The last.pt dict after `epoch` (0-based): model (FDS statistics included), optimiser,
    scheduler, loss module, gradient scaler, every rank's RNG states (gathered: a collective,
    all ranks call it), the run record and the configuration."""
    rngs = [rng_state()]
    if env.active:
        rngs = [None] * env.world
        torch.distributed.all_gather_object(rngs, rng_state())
    return {"format": FORMAT, "kind": "last", "config": cfg.to_dict(), "epoch": epoch,
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "loss_module": None if loss_module is None else loss_module.state_dict(),
            "rng": rngs, "best": record.best, "history": record.history,
            "best_model": record.best_state, "world": env.world,
            "scaler": precision.state_dict()}


def best_checkpoint(cfg, epoch, model_state, score):
    """The best.pt dict: the model of 1-based `epoch` and its validation score."""
    return {"format": FORMAT, "kind": "best", "config": cfg.to_dict(), "epoch": epoch,
            "model": model_state, "score": score}


# options that do not change what is trained: free to change on --resume (--epochs may also
# grow: the epochs already trained are the same for any total, schedules included, except
# cosine, whose period follows --epochs and is stretched from the resumed epoch on)
RESUME_FREE = ("resume", "stop_after", "progress", "out", "plots", "tensorboard", "device",
               "workers", "backend", "epochs", "many_thr", "few_thr", "many_bins",
               "medium_bins", "few_bins", "overwrite")


def resume(out, cfg, env, model, optimizer, scheduler, loss_module, precision, log):
    """Restore the run in <out>/last.pt into the freshly built pieces and this rank's RNG
    states. Returns (the first epoch to train, RunRecord). A ConfigError when the checkpoint was
    trained with other options (except RESUME_FREE), holds more epochs than cfg.epochs, came
    from another number of processes, or does not fit."""
    path = os.path.join(out, "last.pt")
    ck = load_checkpoint(path, "--resume", need=("config", "model", "optimizer", "scheduler",
                                                 "rng", "epoch", "world"))
    old = {k: v for k, v in ck["config"].items() if k not in RESUME_FREE}
    new = {k: v for k, v in cfg.to_dict().items() if k in old}
    diff = {k: (old[k], new[k]) for k in old if old[k] != new[k]}
    if diff:
        raise ConfigError(f"--resume: the run in {out} was trained with different options "
                          f"(checkpoint vs now): {diff}")
    done = ck["epoch"] + 1
    if cfg.epochs < done:
        raise ConfigError(f"--resume: the run in {out} has already trained {done} epochs; "
                          f"--epochs {cfg.epochs} would leave some out (give --epochs >= "
                          f"{done})")
    if ck["world"] != env.world:
        raise ConfigError(f"--resume: the checkpoint was written by {ck['world']} processes, "
                          f"now {env.world}")
    load_model_state(model, ck["model"], path, "--resume",
                     f"--model {cfg.model.name} --width {cfg.width}")
    try:
        optimizer.load_state_dict(ck["optimizer"])
        scheduler.load_state_dict(ck["scheduler"])
        if loss_module is not None:
            loss_module.load_state_dict(ck["loss_module"])
        precision.load_state_dict(ck.get("scaler"))
    except (ValueError, KeyError, RuntimeError, TypeError) as e:
        raise ConfigError(f"--resume: the optimiser, scheduler or loss state in {path} does "
                          f"not fit this run: {e}") from None
    old_epochs = ck["config"].get("epochs")
    if old_epochs != cfg.epochs:
        if cfg.schedule == "cosine":
            scheduler.T_max = cfg.epochs
        log(f"--resume: extending the run from {old_epochs} to {cfg.epochs} epochs")
    set_rng_state(ck["rng"][env.rank])
    return done, RunRecord(ck["best"], ck["history"], ck["best_model"])


# ---- logs -------------------------------------------------------------------------------------

def write_history(out, history):
    """<out>/metrics.jsonl (one record per epoch) and <out>/metrics.csv (every key seen), both
    replaced atomically."""
    write_text_atomic(os.path.join(out, "metrics.jsonl"),
                      "".join(json.dumps(r) + "\n" for r in history))
    keys = []
    for r in history:
        keys += [k for k in r if k not in keys]

    def rows(f):
        w = csv.DictWriter(f, keys)
        w.writeheader()
        for r in history:
            w.writerow(r)

    atomic_write(os.path.join(out, "metrics.csv"), rows, newline="")


@contextlib.contextmanager
def tensorboard(folder, enabled):
    """A SummaryWriter writing to `folder` when `enabled` (closed on exit), else None."""
    if not enabled:
        yield None
        return
    # optional dependency (tensorboard): imported only when --tensorboard asks for it
    from torch.utils.tensorboard import SummaryWriter
    writer = SummaryWriter(folder)
    try:
        yield writer
    finally:
        writer.close()
