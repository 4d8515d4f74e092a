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
import warnings
from typing import NamedTuple

import numpy as np
import torch

from ..metrics import BinnedMetrics
from ..ops.bin_reduce import N_NONFINITE
from ..ops.bin_reduce_nd import N_NONFINITE as ND_NONFINITE
from .builders import make_eval_loader
from .checkpoint import load_checkpoint, load_model_state
from .config import ConfigError, make_config
from .runfolder import holds_run
from .runtime import build_parts, build_runtime

__all__ = ["evaluate", "evaluate_checkpoint", "load_run", "LoadedRun", "format_table",
           "group_summary", "write_results", "axis_metrics", "axis_tables", "report_axes"]


@torch.no_grad()
def evaluate(model, loader, bins, *, train_counts=None, depth=False, many_thr=100, few_thr=20,
             shot_bins=None, device=None, autocast=None, channels_last=False, split="eval",
             axes=None):
    """Run `model` (in eval mode, its mode restored after) over every batch (x, y, w) of
    `loader` and return the BinnedMetrics over `bins` (summed over DDP ranks).

    train_counts, many_thr, few_thr, shot_bins: the shot groups (see BinnedMetrics). depth: dense
    targets, pixels with w = 0 masked out. autocast: a context factory for the forward (mixed
    precision), default none. channels_last: 4-d inputs in channels_last. Raises ValueError
    naming `split` when the model predicted NaN or inf. axes: for a vector target, one
    BinnedMetrics per dimension (`axis_metrics`) fed column k of the predictions and targets in
    the same pass; they come back as the result's `.axes`."""
    was = model.training
    model.eval()
    try:
        m = BinnedMetrics(bins=bins, train_counts=train_counts, depth=depth, many_thr=many_thr,
                          few_thr=few_thr, shot_bins=shot_bins, device=device,
                          allow_nonfinite=True)
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
            for k, mk in enumerate(axes or ()):
                mk.update(pred[:, k], y.reshape(pred.shape)[:, k])
        m.all_reduce()
        for mk in axes or ():
            mk.all_reduce()
        m.axes = axes
    finally:
        model.train(was)   # also when a batch, the loader or the all_reduce raises
    bad = int(m.table[:, ND_NONFINITE if m.vector else N_NONFINITE].sum().item())
    if bad:
        raise ValueError(f"evaluation on {split}: the model predicted NaN or inf for {bad} "
                         f"target(s); the training diverged")
    return m


def axis_metrics(bins, train_labels, many_thr=100, few_thr=20, device=None):
    """For bins over D > 1 dimensions: one BinnedMetrics per dimension, on that dimension's 1-D
    bins with shot groups from its own training counts (the marginal histogram); None for
    scalar bins."""
    if getattr(bins, "dim", 1) < 2:
        return None
    y = np.asarray(train_labels, np.float64).reshape(-1, bins.dim)
    return [BinnedMetrics(bins=ax, train_counts=ax.counts(y[:, k]), many_thr=many_thr,
                          few_thr=few_thr, device=device, allow_nonfinite=True)
            for k, ax in enumerate(bins.axes())]


def report_axes(m, res, split, out, names=None, log=print):
    """For a vector target (`m.axes` set): log each dimension's shot table and write its files
    (<split>_dim<k>_metrics.json / _per_bin.csv in `out`); returns the summary entries (the joint
    L2 and each dimension's groups), {} for a scalar target."""
    if not getattr(m, "axes", None):
        return {}
    with warnings.catch_warnings():   # a marginal often has no few-shot bin: the table says so
        warnings.filterwarnings("ignore", message="BinnedMetrics: no test samples")
        dims = [mk.compute() for mk in m.axes]
    log(axis_tables(dims, split, names))
    for k, (mk, r) in enumerate(zip(m.axes, dims)):
        write_results(mk, r, out, f"{split}_dim{k}")
    return {"l2": group_summary(res, ("l2",)),
            "dims": [group_summary(r, ("mae", "gm", "count")) for r in dims]}


# ---------------------------------------------------------------------------------- tables

def axis_tables(results, split, names=None):
    """The per-dimension shot tables of a vector target, one after the other."""
    out = []
    for k, r in enumerate(results):
        name = f" ({names[k]})" if names is not None and k < len(names) else ""
        out.append(format_table(r, title=f"{split} shot metrics of dimension {k}{name} alone "
                                         f"(its own bins and training counts)"))
    return "\n".join(out)


def format_table(result, depth=False, title=None):
    """The shot table: rows all/many/medium/few, columns count, MAE, GM (+ RMSE, delta1 for depth)."""
    cols = ["count", "mae", "gm"] + (["rmse", "delta1", "absrel"] if depth else ["mse"])
    if "l2" in result.get("all", {}):   # a vector target: the Euclidean error too
        cols.append("l2")
    head = f"{'group':<8}" + "".join(f"{c.upper():>10}" for c in cols)
    lines = ([title] if title else []) + [head, "-" * len(head)]
    for g in ("all", "many", "medium", "few"):
        if g not in result:
            continue
        row = result[g]
        cells = []
        for c in cols:
            v = row.get(c, float("nan"))
            cells.append(f"{v:>10d}" if c == "count" else f"{'nan':>10}" if v != v else
                         f"{v:>10.3f}" if abs(v) < 1e6 else f" {v:>9.3g}")   # columns stay apart
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
    """<out>/<split>_metrics.json and <out>/<split>_per_bin.csv, each replaced atomically (a full
    disk leaves the previous file, not half of a new one)."""
    for name, write in ((f"{split}_metrics.json", m.to_json), (f"{split}_per_bin.csv", m.to_csv)):
        path = os.path.join(out, name)
        tmp = f"{path}.tmp-{os.getpid()}"
        try:
            write(tmp, res)
            os.replace(tmp, path)
        except BaseException as e:
            if os.path.exists(tmp):
                os.remove(tmp)
            if isinstance(e, OSError):
                raise OSError(e.errno, f"{e.strerror or e}: {path} was not written (its previous "
                              f"version, if any, is kept)", path) from None
            raise


# ---------------------------------------------------------------------------------- checkpoints

class LoadedRun(NamedTuple):
    """A trained model rebuilt from its checkpoint, with the data of its run (`load_run`)."""
    cfg: object
    runtime: object                  # runtime.Runtime: process group, device, precision
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
    cfg = make_config(values, check_unused=False)
    rt = build_runtime(cfg, log)   # the set-up of training (train/runtime.py), losses left out
    try:
        parts = build_parts(cfg, rt, losses=False)
        load_model_state(parts.model, ck["model"], path, what,
                         f"--model {cfg.model.name} --width {cfg.width} built here")
        yield LoadedRun(cfg, rt, parts.data, parts.model)
    finally:
        rt.close()


def evaluate_checkpoint(path, split="test", data_root=None, out=None, device="auto",
                        batch_size=None, log=print):
    """Evaluate a best.pt / last.pt checkpoint on a split; prints and saves the shot table as
    <out>/<split>_metrics.json and _per_bin.csv in a folder `out` of your own, or as
    eval_<checkpoint>_<split>_metrics.json / _per_bin.csv next to the checkpoint (the default) or
    in any folder that holds a run: never over the run's own files. Returns the result dict of
    BinnedMetrics.compute()."""
    # a folder named with --out gets the plain names, unless it holds a run: the run's own
    # <split>_metrics.json is never overwritten
    prefix = "" if out and not holds_run(out) else \
        f"eval_{os.path.splitext(os.path.basename(path))[0]}_"
    if out and os.path.exists(out) and not os.path.isdir(out):
        raise ConfigError(f"eval --out {out} is a file, not a folder")
    out = out or os.path.dirname(os.path.abspath(path))
    with load_run(path, "eval --checkpoint", log, device=device, data_root=data_root,
                  batch_size=batch_size, out=out) as run:
        cfg, data, rt = run.cfg, run.data, run.runtime
        m = evaluate(run.model, make_eval_loader(data, split), data.bins,
                     train_counts=data.train_counts, depth=data.dense, many_thr=cfg.many_thr,
                     few_thr=cfg.few_thr, shot_bins=data.shot_bins, device=rt.device,
                     autocast=rt.precision.autocast, channels_last=rt.channels_last,
                     split=split, axes=axis_metrics(data.bins, data.train_labels, cfg.many_thr,
                                                    cfg.few_thr, rt.device))
        res = m.compute()
        if rt.env.main:
            log(format_table(res, data.dense, f"{split} shot metrics of {path}"))
            if m.axes:
                log(axis_tables([mk.compute() for mk in m.axes], split,
                                getattr(data.ds, "target_names", None)))
            try:
                os.makedirs(cfg.out, exist_ok=True)
                write_results(m, res, cfg.out, f"{prefix}{split}")
            except OSError as e:
                raise ConfigError(f"eval --out {cfg.out}: cannot write the results there "
                                  f"({e.strerror or e})") from None
            log(f"results in {os.path.join(cfg.out, f'{prefix}{split}_metrics.json')}")
        return res
