"""Evaluation: a model over a loader into the per-bin metric table, and a checkpoint file
evaluated on a split (`ssir-fast eval`). The training loop (validation, test, RRT) and the CLI
use these functions; nothing here reaches into a Trainer.

    m = evaluate(model, loader, bins, train_counts=counts, device=dev)   # BinnedMetrics
    res = m.compute()                  # {"all": {...}, "many": ..., "medium": ..., "few": ...}
    print(format_table(res))
    write_results(m, res, out, "test")  # test_metrics.json, test_per_bin.csv

The metric table stays on the model's device (NCCL reduces CUDA tensors only), is summed over
the ranks and read once at the end of the pass: non-finite predictions are counted per batch,
not checked (a host sync per batch), and reported once.
"""
import contextlib
import os
from typing import NamedTuple

import torch

from ..metrics import BinnedMetrics
from ..ops.bin_reduce import N_NONFINITE
from . import distributed as D
from .builders import (build_data, build_model, channels_last, check_world, make_eval_loader,
                       resolve_device, seed_everything)
from .checkpoint import load_checkpoint, load_model_state
from .config import make_config
from .precision import choose_precision

__all__ = ["evaluate", "evaluate_checkpoint", "load_run", "LoadedRun", "format_table",
           "group_summary", "write_results"]


@torch.no_grad()
def evaluate(model, loader, bins, *, train_counts=None, depth=False, many_thr=100, few_thr=20,
             shot_bins=None, device=None, autocast=None, channels_last=False, split="eval"):
    """Run `model` (in eval mode, its mode restored after) over every batch (x, y, w) of
    `loader` and return the BinnedMetrics over `bins` (summed over DDP ranks).

    train_counts, many_thr, few_thr, shot_bins: the shot groups (see BinnedMetrics). depth: dense
    targets, pixels with w = 0 masked out. autocast: a context factory for the forward (mixed
    precision), default none. channels_last: 4-d inputs in channels_last. Raises ValueError
    naming `split` when the model predicted NaN or inf."""
    was = model.training
    model.eval()
    m = BinnedMetrics(bins=bins, train_counts=train_counts, depth=depth, many_thr=many_thr,
                      few_thr=few_thr, shot_bins=shot_bins, device=device, allow_nonfinite=True)
    autocast = autocast or contextlib.nullcontext
    loader.set_epoch(0)
    for x, y, w in loader:
        if channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast():
            pred = model(x)
        pred = pred.float()
        mask = (w > 0) if depth else None
        m.update(pred, y, mask=mask)
    m.all_reduce()
    model.train(was)
    bad = int(m.table[:, N_NONFINITE].sum().item())
    if bad:
        raise ValueError(f"evaluation on {split}: the model predicted NaN or inf for {bad} "
                         f"target(s); the training diverged")
    return m


# ---------------------------------------------------------------------------------- tables

def format_table(result, depth=False, title=None):
    """The shot table: rows all/many/medium/few, columns count, MAE, GM (+ RMSE, delta1 for depth)."""
    cols = ["count", "mae", "gm"] + (["rmse", "delta1", "absrel"] if depth else ["mse"])
    head = f"{'group':<8}" + "".join(f"{c.upper():>10}" for c in cols)
    lines = ([title] if title else []) + [head, "-" * len(head)]
    for g in ("all", "many", "medium", "few"):
        if g not in result:
            continue
        row = result[g]
        cells = []
        for c in cols:
            v = row.get(c, float("nan"))
            cells.append(f"{v:>10d}" if c == "count" else f"{v:>10.3f}" if v == v else f"{'nan':>10}")
        lines.append(f"{g:<8}" + "".join(cells))
    return "\n".join(lines)


def group_summary(result, keys=("mae", "gm")):
    """{"all_mae": ..., "many_gm": ...}: the shot groups' values of `keys`, flat."""
    out = {}
    for g in ("all", "many", "medium", "few"):
        for k in keys:
            if g in result:
                out[f"{g}_{k}"] = result[g].get(k)
    return out


def write_results(m, res, out, split):
    """<out>/<split>_metrics.json and <out>/<split>_per_bin.csv."""
    m.to_json(os.path.join(out, f"{split}_metrics.json"), res)
    m.to_csv(os.path.join(out, f"{split}_per_bin.csv"), res)


# ---------------------------------------------------------------------------------- checkpoints

class LoadedRun(NamedTuple):
    """A trained model rebuilt from its checkpoint, with the data of its run (`load_run`)."""
    cfg: object
    env: object
    device: torch.device
    precision: object
    data: object                     # builders.Data
    model: torch.nn.Module


@contextlib.contextmanager
def load_run(path, what, log=print, **overrides):
    """Rebuild the run of checkpoint `path` (best.pt / last.pt): its configuration with
    `overrides` (device, data_root, batch_size, out, ...), its data and loaders, and its model
    with the checkpoint's weights. `what` names the command in error messages. The distributed
    environment is closed on exit."""
    ck = load_checkpoint(path, what)
    values = dict(ck["config"])
    values.update(resume=False, rrt=False, checkpoint=None, stop_after=None, smogn=False)
    values.update({k: v for k, v in overrides.items() if v is not None})
    cfg = make_config(values)
    env = D.setup("cuda" if (cfg.device != "cpu" and torch.cuda.is_available()) else "cpu")
    try:
        dev = resolve_device(cfg.device, env)
        check_world(cfg, env)
        precision = choose_precision(dev, cfg.amp, cfg.amp_dtype, log if env.main else None)
        seed_everything(cfg.seed, cfg.deterministic)
        if cfg.threads is not None and dev.type == "cpu":
            torch.set_num_threads(cfg.threads)
        data = build_data(cfg, env, dev, progress=env.main and cfg.progress)
        model = build_model(cfg, data, dev, env)
        load_model_state(model, ck["model"], path, what,
                         f"--model {cfg.model} --width {cfg.width} built here")
        yield LoadedRun(cfg, env, dev, precision, data, model)
    finally:
        env.close()


def evaluate_checkpoint(path, split="test", data_root=None, out=None, device="auto",
                        batch_size=None, log=print):
    """Evaluate a best.pt / last.pt checkpoint on a split; prints and saves the shot table
    (<out>/<split>_metrics.json and _per_bin.csv, default next to the checkpoint). Returns the
    result dict of BinnedMetrics.compute()."""
    out = out or os.path.dirname(os.path.abspath(path))
    with load_run(path, "eval --checkpoint", log, device=device, data_root=data_root,
                  batch_size=batch_size, out=out) as run:
        cfg, data, dev = run.cfg, run.data, run.device
        loader = make_eval_loader(cfg, data, split, run.env, dev)
        m = evaluate(run.model, loader, data.bins, train_counts=data.train_counts,
                     depth=data.depth, many_thr=cfg.many_thr, few_thr=cfg.few_thr,
                     shot_bins=data.shot_bins, device=dev, autocast=run.precision.autocast,
                     channels_last=channels_last(cfg, dev), split=split)
        res = m.compute()
        if run.env.main:
            log(format_table(res, data.depth, f"{split} shot metrics of {path}"))
            os.makedirs(cfg.out, exist_ok=True)
            write_results(m, res, cfg.out, split)
        return res
