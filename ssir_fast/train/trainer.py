"""The training loop behind `ssir-fast train`: epochs of steps, validation, checkpoints, test.

One epoch (per rank, on its shard of every global batch):

    for x, y, w in train_loader:                        # w: INV/SQINV/LDS weights (0 on padding)
        stats = step(x, y, w, epoch)                    # train/step.py: loss, SSIR, RankSim,
                                                        #   backward, optimiser, FDS update
        acc += stats                                    # on the device: no host sync per step
    FDS: fold the epoch's feature statistics (summed over ranks) into the running ones
    lr schedule step; validation (train/evaluation.py) -> best checkpoint; last.pt written
    atomically with the logs (train/checkpoint.py)

At the end the best checkpoint (on the validation set; the last epoch when the data set has no
validation split) is evaluated on the test split and the shot table printed and saved.

The pieces come from train/runtime.py (process group, device, precision, seed; data, model,
losses: the set-up `ssir-fast eval` shares) and train/builders.py (optimiser, the DDP / compile
wrapper), so this module only orders them.

Exact resume: last.pt holds model (FDS statistics included), optimiser, scheduler, loss module,
every rank's RNG states (torch, CUDA, numpy, random), the epoch, the best score and the history,
as tensors and plain values (read with weights_only=True, see `checkpoint`). The loaders draw
their order and augmentation from (seed, epoch), so a resumed run repeats the uninterrupted one.
`--resume` with a larger `--epochs` extends a run (finished or not); options that would make the
continued run differ from one trained with them from the start are refused.
"""
import contextlib
import copy
import json
import math
import os
import time
import warnings
from functools import partial

import torch

from ..rrt import rrt_mode, rrt_prepare
from . import distributed
from .builders import build_optimizer, wrap_model
from .checkpoint import (RunRecord, atomic_save, best_checkpoint, load_checkpoint,
                         load_model_state, resume, tensorboard, training_state, write_history,
                         write_text_atomic)
from .config import ConfigError, describe, ensure_valid, write_config
from .evaluation import (axis_metrics, evaluate, format_table, group_summary, report_axes,
                         write_results)
from .plots import plot_run
from .runfolder import RunLock, choose_folder
from .runtime import build_parts, build_runtime
from .step import StepStats, TrainStep

__all__ = ["Trainer", "train", "TrainingError"]


class TrainingError(RuntimeError):
    """The run stopped because it went wrong (a NaN or inf loss or metric): the message says
    where, and which checkpoint holds the last good state."""


@contextlib.contextmanager
def _progress_bar(enabled, total, desc):
    """A tqdm bar (closed on exit), or None when off or tqdm is not installed."""
    tqdm = None
    if enabled:
        try:
            from tqdm import tqdm   # optional dependency: the bar is a nicety
        except ImportError:
            pass
    if tqdm is None:   # (yielded outside the except: an error in the loop is not chained to it)
        yield None
        return
    bar = tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)
    try:
        yield bar
    finally:
        bar.close()


class Trainer:
    """One run from a validated TrainConfig: `run()` trains (or RRT) and tests.

    For finer control (tests, benchmarks): `setup()` builds data, model and losses, `prepare()`
    the optimiser and the step, then `train_epoch(epoch)` and `evaluate(split)`. What they
    built: `runtime` (process group `runtime.env`, `device`, `precision`), `data` (data set,
    bins, loaders: `builders.Data`), `model`, `losses`, `step`."""

    def __init__(self, cfg, log=None):
        ensure_valid(cfg)   # once: make_config has validated it unless changed since
        self.cfg = cfg
        self._log = log or partial(print, flush=True)
        self.runtime = build_runtime(cfg, self._log)   # (logs on the main process only)
        try:
            self.out = choose_folder(cfg)
        except BaseException:
            self.runtime.close()
            raise
        self.data = self.model = self.losses = self.step = None

    def log(self, *a):
        if self.runtime.env.main:
            self._log(*a)

    def _path(self, name):
        return os.path.join(self.out, name)

    # ---- building ----------------------------------------------------------------------------
    def setup(self):
        """Build the data and loaders, the model and the losses (`runtime.build_parts`; the
        generators were seeded by `build_runtime`)."""
        parts = build_parts(self.cfg, self.runtime)
        self.data, self.model, self.losses = parts.data, parts.model, parts.losses

    def prepare(self, params, rrt=False):
        """The module the step calls (DDP / compile wrapper), the optimiser over `params` (and
        the loss module's), its schedule and the TrainStep; `rrt`: the RRT stage's step."""
        cfg, rt = self.cfg, self.runtime
        self.forward_model = wrap_model(self.model, cfg.optim, rt.env, rt.device)
        self.opt, self.sched, self.params = build_optimizer(cfg.optim, params, self.losses.module)
        self.step = TrainStep(self.model, self.forward_model, self.losses.base, self.opt,
                              rt.precision, rt.env, ssir=self.losses.ssir,
                              loss_module=self.losses.module, fds=cfg.fds, ranksim=cfg.ranksim,
                              ranksim_gamma=cfg.ranksim_gamma, ranksim_lam=cfg.ranksim_lam,
                              compiled=cfg.compile, rrt=rrt, skip_nonfinite=cfg.skip_nonfinite)

    @property
    def _unit(self):
        """The throughput unit of the progress line: table rows are not images."""
        return "rows/s" if getattr(self.data.ds, "kind", "") == "tabular" else "img/s"

    # ---- one epoch -------------------------------------------------------------------------
    def train_epoch(self, epoch, epochs=None):
        """Train one epoch (0-based) with the prepared step; returns the epoch's record (means
        of the step statistics, img/s, times). `epochs`: the total, for the progress bar."""
        cfg, model, step, env = self.cfg, self.model, self.step, self.runtime.env
        device = self.runtime.device
        loader = self.data.train_loader
        loader.set_epoch(epoch)
        # the StepStats (loss, supervised, consistency, similarity, ||x~-x||/||x||,
        # |f(x~)-f(x)|/dy) summed on the device: no host sync per step
        names = StepStats._fields
        acc = torch.zeros(len(names), dtype=torch.float64, device=device)
        every = max(1, len(loader) // 50)
        n_batches, n_samples, skipped = 0, 0, step.skipped
        first_batch_s = None     # wait for the loader's first batch (worker start-up, decoding)
        with contextlib.ExitStack() as stack:
            bar = stack.enter_context(_progress_bar(
                cfg.progress and env.main, len(loader),
                f"epoch {epoch + 1}/{epochs if epochs is not None else cfg.epochs}"))
            t0 = time.perf_counter()
            if step.rrt:   # BatchNorm frozen (running statistics used, not updated)
                stack.enter_context(rrt_mode(model))
            else:
                model.train()
            for x, y, w in loader:
                if first_batch_s is None:
                    first_batch_s = time.perf_counter() - t0
                if self.runtime.channels_last and x.dim() == 4:
                    x = x.contiguous(memory_format=torch.channels_last)
                stats = step(x, y, w, epoch)
                if stats is None:   # --skip-nonfinite: a NaN/inf loss, nothing changed
                    continue
                acc += stats.as_tensor()
                n_batches += 1
                n_samples += x.shape[0]
                if bar is not None:
                    if n_batches % every == 0 or n_batches == len(loader):
                        mean = dict(zip(names, (acc / n_batches).tolist()))
                        rate = n_samples * env.world / max(time.perf_counter() - t0, 1e-9)
                        post = {"loss": f"{mean['loss']:.3f}"}
                        if step.ssir is not None:
                            post["sim"] = f"{mean['similarity']:.3f}"
                        post[self._unit] = f"{rate:.0f}"
                        bar.set_postfix(post, refresh=False)
                    bar.update(1)
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        stats = torch.cat([acc, torch.tensor([float(n_batches)], dtype=torch.float64,
                                             device=device)])
        if env.active:
            torch.distributed.all_reduce(stats)
        totals = dict(zip(names + ("batches",), stats.cpu().tolist()))   # summed over ranks
        nb = max(totals["batches"], 1)
        rec = {"train_loss": totals["loss"] / nb, "train_supervised": totals["supervised"] / nb,
               "images_per_s": n_samples * env.world / dt, "epoch_time_s": dt,
               "first_batch_s": first_batch_s}
        if step.skip_nonfinite:
            rec["skipped_batches"] = step.skipped - skipped
            if rec["skipped_batches"]:
                self.log(f"epoch {epoch + 1}: skipped {rec['skipped_batches']} batch(es) with a "
                         f"NaN or inf loss (--skip-nonfinite)")
            if totals["batches"] == 0:
                rec["train_loss"] = rec["train_supervised"] = float("nan")
        if step.ssir is not None:
            rec["train_consistency"] = totals["consistency"] / nb
            rec["similarity"] = totals["similarity"] / nb
            rec["perturbation"] = totals["perturbation"] / nb     # mean ||x~ - x|| / ||x||
            rec["output_change"] = totals["output_change"] / nb   # mean |f(x~) - f(x)| / dy
        if step.fds:
            model.fds.end_epoch(epoch)   # sums the epoch statistics over ranks
        if env.active:
            distributed.broadcast_module(model, params=False, buffers=True)
        return rec

    def evaluate(self, split, model=None, axes=False):
        """BinnedMetrics of `model` (default this run's) on the loader of `split`; with `axes`,
        for a vector target, also per dimension (`.axes`)."""
        d, cfg, rt = self.data, self.cfg, self.runtime
        per_dim = axes and axis_metrics(d.bins, d.train_labels, cfg.many_thr, cfg.few_thr,
                                        rt.device)
        return evaluate(model or self.model, d.loaders[split], d.bins,
                        train_counts=d.train_counts, depth=d.dense, many_thr=cfg.many_thr,
                        few_thr=cfg.few_thr, shot_bins=d.shot_bins, device=rt.device,
                        autocast=rt.precision.autocast, channels_last=rt.channels_last,
                        split=split, axes=per_dim)

    # ---- main ------------------------------------------------------------------------------
    def run(self):
        """Train (or RRT) then test. Returns the test result dict of BinnedMetrics.compute() (with
        "stopped": True and no test when --stop-after interrupted the run)."""
        cfg, rt = self.cfg, self.runtime
        finished = False
        lock = RunLock(self.out, cfg.resume, cfg.overwrite)
        try:
            self._claim(lock)
            self.setup()
            self.log(describe(cfg))
            self.log(f"device={rt.device} processes={rt.env.world} out={self.out} "
                     f"train={len(self.data.ds.splits['train'])}")
            if cfg.rrt:
                result = self._run_rrt()
            else:
                self.prepare(self.model.parameters())
                start, record = 0, RunRecord()
                if cfg.resume:
                    start, record = resume(self.out, cfg, rt.env, self.model, self.opt,
                                           self.sched, self.losses.module, rt.precision,
                                           self.log)
                    self.log(f"resuming from epoch {start + 1} ({self._path('last.pt')})")
                result = self._loop(start, cfg.epochs, record)
            finished = True
            return result
        finally:
            lock.release()
            rt.close(barrier=finished)

    def _claim(self, lock):
        """The main process takes the run folder (refused when it holds another run or is in
        use); under DDP every rank learns the outcome, so none waits for a rank that left."""
        refused, env = None, self.runtime.env
        if env.main:
            try:
                lock.acquire()
            except ConfigError as e:
                refused = e
        if env.active:
            flag = torch.tensor([0.0 if refused is None else 1.0], device=self.runtime.device)
            torch.distributed.broadcast(flag, 0)
            if refused is None and flag.item():
                raise ConfigError(f"--out {self.out}: refused by rank 0 (see its message)")
        if refused is not None:
            raise refused

    def _loop(self, start, epochs, record):
        cfg, env = self.cfg, self.runtime.env
        done = 0
        if env.main:   # the merged configuration (--config gives the run back), written
            write_config(cfg, self._path("config.json"))   # once the run is accepted
        with tensorboard(self._path("tensorboard"), cfg.tensorboard and env.main) as tb:
            for epoch in range(start, epochs):
                rec = {"epoch": epoch + 1, "lr": self.opt.param_groups[0]["lr"]}
                rec.update(self.train_epoch(epoch, epochs))
                self._check_finite(epoch, rec, record)
                self.sched.step()
                select = "val" if "val" in self.data.loaders else None
                if select:
                    with warnings.catch_warnings():   # an empty shot group: said once, at test
                        warnings.simplefilter("ignore", RuntimeWarning)
                        try:
                            vm = self.evaluate("val").compute()
                        except ValueError as e:   # NaN/inf predictions
                            raise TrainingError(f"epoch {epoch + 1}: {e}; "
                                                f"{self._last_good(record)}") from None
                    score = vm["all"][self.data.select]
                    self._check_score(epoch, score, "validation", record)
                    rec.update({f"val_{k}": v for k, v in group_summary(vm).items()})
                else:
                    score = -epoch   # no validation split: the last epoch is the best
                improved = record.best is None or score < record.best["score"]
                if improved:
                    record.best = {"epoch": epoch + 1, "score": score}
                    record.best_state = copy.deepcopy({k: v.detach().cpu()
                                                       for k, v in self.model.state_dict().items()})
                    if env.main:
                        atomic_save(best_checkpoint(cfg, epoch + 1, record.best_state, score),
                                    self._path("best.pt"))
                record.history.append(rec)
                state = training_state(cfg, epoch, self.model, self.opt, self.sched,
                                       self.losses.module, self.runtime.precision, env, record)
                if env.main:
                    atomic_save(state, self._path("last.pt"))
                    write_history(self.out, record.history)
                    if tb is not None:
                        for k, v in rec.items():
                            if isinstance(v, (int, float)) and k != "epoch" and v == v:
                                tb.add_scalar(k, v, epoch + 1)
                msg = (f"epoch {epoch + 1}/{epochs} loss {rec['train_loss']:.4f} "
                       f"{rec['images_per_s']:.0f} {self._unit}")
                if "similarity" in rec:
                    msg += (f" sim {rec['similarity']:.3f} |x~-x|/|x| {rec['perturbation']:.2e} "
                            f"|df|/dy {rec['output_change']:.3f}")
                if select:
                    msg += f" | val MAE {rec['val_all_mae']:.3f}" + (" *" if improved else "")
                self.log(msg)
                done += 1
                if cfg.stop_after is not None and done >= cfg.stop_after and epoch + 1 < epochs:
                    self.log(f"stopped after epoch {epoch + 1} (--stop-after); continue with "
                             f"--resume --out {self.out}")
                    return {"stopped": True, "epoch": epoch + 1}
        return self._test(record)

    def _last_good(self, record):
        """Where the last good state of a run that went wrong is (nothing newer was saved)."""
        if record.history:
            return (f"stopped; {self._path('last.pt')} holds the last good epoch "
                    f"({record.history[-1]['epoch']}) and {self._path('best.pt')} the best")
        return "stopped before any checkpoint was written"

    # A validation / test error this many times the label range: no model that learnt anything
    # is that far off (the mean label is off by at most the range); the run diverged.
    DIVERGED = 1000.0

    def _check_score(self, epoch, score, split, record):
        """TrainingError when the error on `split` is NaN/inf or DIVERGED times the label range."""
        span = max(ax.bin_width * ax.num_bins for ax in self.data.bins.axes())   # widest dim
        what = f"{split} {self.data.select.upper()}"
        if not math.isfinite(score):
            raise TrainingError(f"epoch {epoch + 1}: the {what} is {score}; "
                                f"{self._last_good(record)}")
        if score > self.DIVERGED * span:
            raise TrainingError(f"epoch {epoch + 1}: the {what} {score:.3g} is over "
                                f"{self.DIVERGED:g} times the label range ({span:g}): the run "
                                f"diverged (lower --lr); {self._last_good(record)}")

    def _check_finite(self, epoch, rec, record):
        """TrainingError when the epoch's mean loss is NaN or inf (the run diverged)."""
        for key in ("train_loss", "train_supervised", "train_consistency"):
            v = rec.get(key)
            if v is not None and not math.isfinite(v):
                hint = ("every batch had a NaN or inf loss" if self.cfg.skip_nonfinite else
                        "lower --lr, check the data for NaN/inf, or --skip-nonfinite to skip "
                        "such batches")
                raise TrainingError(f"epoch {epoch + 1}: the {key.replace('_', ' ')} is {v} "
                                    f"(the run diverged: {hint}); {self._last_good(record)}")

    def _test(self, record):
        cfg, d = self.cfg, self.data
        if record.best_state is not None:
            self.model.load_state_dict(record.best_state)
        split = "test" if "test" in d.loaders else "val"
        m = self.evaluate(split, axes=True)
        res = m.compute()
        res["best_epoch"] = record.best["epoch"] if record.best else None
        if "val" not in d.loaders:   # no validation has checked the model yet
            self._check_score((res["best_epoch"] or 1) - 1, res["all"][d.select], split, record)
        if self.runtime.env.main:
            title = (f"{split} shot metrics ({cfg.method_name()}, best epoch "
                     f"{res['best_epoch']} on {'val' if 'val' in d.loaders else 'last epoch'})")
            self.log(format_table(res, d.dense, title))
            write_results(m, res, self.out, split)
            summary = {"method": cfg.method_name(), "data": cfg.data.name, "seed": cfg.seed,
                       "best_epoch": res["best_epoch"], **group_summary(res, ("mae", "gm", "rmse",
                                                                             "count"))}
            names = getattr(d.ds, "target_names", None)   # a vector target: per dimension too
            summary.update(report_axes(m, res, split, self.out, names, self.log))
            write_text_atomic(self._path("summary.json"), json.dumps(summary, indent=1))
            if cfg.plots:
                try:
                    plot_run(self.out, res, record.history, names)
                except ImportError as e:
                    self.log(f"plots skipped ({e})")
            self.log(f"results in {self.out}/")
        return res

    def _run_rrt(self):
        cfg = self.cfg
        ck = load_checkpoint(cfg.checkpoint, "--rrt --checkpoint", need=())
        # the first stage may have trained with FDS: its statistics are not part of RRT
        load_model_state(self.model, ck.get("model", ck), cfg.checkpoint, "--rrt --checkpoint",
                         f"--model {cfg.model.name} --width {cfg.width}", ignore=("fds.",))
        head = rrt_prepare(self.model)
        self.prepare(head.parameters(), rrt=True)
        epochs = cfg.rrt_epochs or cfg.epochs
        self.log(f"RRT: re-training the last layer for {epochs} epochs from {cfg.checkpoint}")
        return self._loop(0, epochs, RunRecord())


def train(cfg, log=None):
    """Run one training job from a TrainConfig; returns the test result (see Trainer.run)."""
    return Trainer(cfg, log).run()
