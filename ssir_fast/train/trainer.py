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

The pieces come from train/builders.py (data, loaders, model, losses, optimiser, the DDP /
compile wrapper), so this module only orders them.

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
import os
import time
import warnings
from functools import partial

import torch

from ..rrt import rrt_mode, rrt_prepare
from . import distributed as D
from .builders import (build_data, build_losses, build_model, build_optimizer, channels_last,
                       check_world, resolve_device, seed_everything, wrap_model)
from .checkpoint import (RunRecord, atomic_save, best_checkpoint, load_checkpoint,
                         load_model_state, resume, tensorboard, training_state, write_history,
                         write_text_atomic)
from .config import describe, ensure_valid, write_config
from .evaluation import evaluate, format_table, group_summary, write_results
from .plots import plot_run
from .precision import choose_precision
from .step import TrainStep

__all__ = ["Trainer", "train"]


@contextlib.contextmanager
def _progress_bar(enabled, total, desc):
    """A tqdm bar (closed on exit), or None when off or tqdm is not installed."""
    if not enabled:
        yield None
        return
    try:
        from tqdm import tqdm   # optional dependency: the bar is a nicety
    except ImportError:
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
    the optimiser and the step, then `train_epoch(epoch)` and `evaluate(split)`."""

    def __init__(self, cfg, log=None):
        ensure_valid(cfg)   # once: make_config has validated it unless changed since
        self.cfg = cfg
        self.env = D.setup("cuda" if (cfg.device != "cpu" and torch.cuda.is_available()) else "cpu")
        self.device = resolve_device(cfg.device, self.env)
        self._log = log or partial(print, flush=True)
        check_world(cfg, self.env)
        self.out = cfg.out or os.path.join("runs", f"{cfg.data}-{cfg.method_name()}-s{cfg.seed}")
        if self.env.main:
            os.makedirs(self.out, exist_ok=True)
        self.cuda = self.device.type == "cuda"
        # bf16 autocast where the GPU has it, else fp16 + GradScaler (or a clear refusal)
        self.precision = choose_precision(self.device, cfg.amp, cfg.amp_dtype, self.log)
        self.channels_last = channels_last(cfg, self.device)
        self.data = self.model = self.losses = self.step = None

    def log(self, *a):
        if self.env.main:
            self._log(*a)

    def _path(self, name):
        return os.path.join(self.out, name)

    # ---- building ----------------------------------------------------------------------------
    def setup(self):
        """Seed, then build the data and loaders, the model and the losses (builders.py)."""
        cfg = self.cfg
        seed_everything(cfg.seed, cfg.deterministic)
        if cfg.threads is not None and self.device.type == "cpu":
            torch.set_num_threads(cfg.threads)
        self.data = build_data(cfg, self.env, self.device,
                               progress=self.env.main and cfg.progress)
        self.model = build_model(cfg, self.data, self.device, self.env)
        self.losses = build_losses(cfg, self.data, self.device)

    def prepare(self, params, rrt=False):
        """The module the step calls (DDP / compile wrapper), the optimiser over `params` (and
        the loss module's), its schedule and the TrainStep; `rrt`: the RRT stage's step."""
        cfg = self.cfg
        self.forward_model = wrap_model(self.model, cfg, self.env, self.device)
        self.opt, self.sched, self.params = build_optimizer(cfg, params, self.losses.module)
        self.step = TrainStep(self.model, self.forward_model, self.losses.base, self.opt,
                              self.precision, self.env, ssir=self.losses.ssir,
                              loss_module=self.losses.module, fds=cfg.fds, ranksim=cfg.ranksim,
                              ranksim_gamma=cfg.ranksim_gamma, ranksim_lam=cfg.ranksim_lam,
                              compiled=cfg.compile, rrt=rrt)

    # what the builders made, by name
    ds = property(lambda self: self.data.ds)
    bins = property(lambda self: self.data.bins)
    train_labels = property(lambda self: self.data.train_labels)
    train_counts = property(lambda self: self.data.train_counts)
    depth = property(lambda self: self.data.depth)
    bin_w = property(lambda self: self.data.bin_w)
    shot_bins = property(lambda self: self.data.shot_bins)
    loaders = property(lambda self: self.data.loaders)
    ssir = property(lambda self: self.losses.ssir)
    loss_module = property(lambda self: self.losses.module)

    @property
    def train_loader(self):
        return self.data.train_loader

    @train_loader.setter
    def train_loader(self, loader):   # a benchmark feeds the loop its own loader
        self.data.train_loader = loader

    # ---- one epoch -------------------------------------------------------------------------
    def train_epoch(self, epoch, epochs=None):
        """Train one epoch (0-based) with the prepared step; returns the epoch's record (means
        of the step statistics, img/s, times). `epochs`: the total, for the progress bar."""
        cfg, model, step = self.cfg, self.model, self.step
        loader = self.train_loader
        loader.set_epoch(epoch)
        # loss, supervised, consistency, similarity, ||x~-x||/||x||, |f(x~)-f(x)|/dy summed on
        # the device: no host sync per step
        acc = torch.zeros(6, dtype=torch.float64, device=self.device)
        every = max(1, len(loader) // 50)
        n_batches, n_samples = 0, 0
        first_batch_s = None     # wait for the loader's first batch (worker start-up, decoding)
        with contextlib.ExitStack() as stack:
            bar = stack.enter_context(_progress_bar(
                cfg.progress and self.env.main, len(loader),
                f"epoch {epoch + 1}/{epochs if epochs is not None else cfg.epochs}"))
            t0 = time.perf_counter()
            if step.rrt:   # BatchNorm frozen (running statistics used, not updated)
                stack.enter_context(rrt_mode(model))
            else:
                model.train()
            for x, y, w in loader:
                if first_batch_s is None:
                    first_batch_s = time.perf_counter() - t0
                if self.channels_last and x.dim() == 4:
                    x = x.contiguous(memory_format=torch.channels_last)
                acc += step(x, y, w, epoch).as_tensor()
                n_batches += 1
                n_samples += x.shape[0]
                if bar is not None:
                    if n_batches % every == 0 or n_batches == len(loader):
                        mean = (acc / n_batches).tolist()
                        rate = n_samples * self.env.world / max(time.perf_counter() - t0, 1e-9)
                        post = {"loss": f"{mean[0]:.3f}"}
                        if step.ssir is not None:
                            post["sim"] = f"{mean[3]:.3f}"
                        post["img/s"] = f"{rate:.0f}"
                        bar.set_postfix(post, refresh=False)
                    bar.update(1)
        if self.cuda:
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        stats = torch.cat([acc, torch.tensor([float(n_batches)], dtype=torch.float64,
                                             device=self.device)])
        if self.env.active:
            torch.distributed.all_reduce(stats)
        stats = stats.cpu()
        nb = max(stats[6].item(), 1)
        rec = {"train_loss": stats[0].item() / nb, "train_supervised": stats[1].item() / nb,
               "images_per_s": n_samples * self.env.world / dt, "epoch_time_s": dt,
               "first_batch_s": first_batch_s}
        if step.ssir is not None:
            rec["train_consistency"] = stats[2].item() / nb
            rec["similarity"] = stats[3].item() / nb
            rec["perturbation"] = stats[4].item() / nb     # mean ||x~ - x|| / ||x||
            rec["output_change"] = stats[5].item() / nb    # mean |f(x~) - f(x)| / dy
        if step.fds:
            model.fds.end_epoch(epoch)   # sums the epoch statistics over ranks
        if self.env.active:
            D.broadcast_module(model, params=False, buffers=True)
        return rec

    def evaluate(self, split, model=None):
        """BinnedMetrics of `model` (default this run's) on the loader of `split`."""
        d, cfg = self.data, self.cfg
        return evaluate(model or self.model, d.loaders[split], d.bins,
                        train_counts=d.train_counts, depth=d.depth, many_thr=cfg.many_thr,
                        few_thr=cfg.few_thr, shot_bins=d.shot_bins, device=self.device,
                        autocast=self.precision.autocast, channels_last=self.channels_last,
                        split=split)

    # ---- main ------------------------------------------------------------------------------
    def run(self):
        """Train (or RRT) then test. Returns the test result dict of BinnedMetrics.compute() (with
        "stopped": True and no test when --stop-after interrupted the run)."""
        cfg = self.cfg
        finished = False
        try:
            self.setup()
            if self.env.main:   # the merged configuration: --config gives the run back
                write_config(cfg, self._path("config.json"))
            self.log(describe(cfg))
            self.log(f"device={self.device} processes={self.env.world} out={self.out} "
                     f"train={len(self.ds.splits['train'])}")
            if cfg.rrt:
                result = self._run_rrt()
            else:
                self.prepare(self.model.parameters())
                start, record = 0, RunRecord()
                if cfg.resume:
                    start, record = resume(self.out, cfg, self.env, self.model, self.opt,
                                           self.sched, self.losses.module, self.precision,
                                           self.log)
                    self.log(f"resuming from epoch {start + 1} ({self._path('last.pt')})")
                result = self._loop(start, cfg.epochs, record)
            finished = True
            return result
        finally:
            self.env.close(barrier=finished)

    def _loop(self, start, epochs, record):
        cfg = self.cfg
        done = 0
        with tensorboard(self._path("tensorboard"), cfg.tensorboard and self.env.main) as tb:
            for epoch in range(start, epochs):
                rec = {"epoch": epoch + 1, "lr": self.opt.param_groups[0]["lr"]}
                rec.update(self.train_epoch(epoch, epochs))
                self.sched.step()
                select = "val" if "val" in self.loaders else None
                if select:
                    with warnings.catch_warnings():   # an empty shot group: said once, at test
                        warnings.simplefilter("ignore", RuntimeWarning)
                        vm = self.evaluate("val").compute()
                    score = vm["all"]["rmse" if self.depth else "mae"]
                    rec.update({f"val_{k}": v for k, v in group_summary(vm).items()})
                else:
                    score = -epoch   # no validation split: the last epoch is the best
                improved = record.best is None or score < record.best["score"]
                if improved:
                    record.best = {"epoch": epoch + 1, "score": score}
                    record.best_state = copy.deepcopy({k: v.detach().cpu()
                                                       for k, v in self.model.state_dict().items()})
                    if self.env.main:
                        atomic_save(best_checkpoint(cfg, epoch + 1, record.best_state, score),
                                    self._path("best.pt"))
                record.history.append(rec)
                state = training_state(cfg, epoch, self.model, self.opt, self.sched,
                                       self.losses.module, self.precision, self.env, record)
                if self.env.main:
                    atomic_save(state, self._path("last.pt"))
                    write_history(self.out, record.history)
                    if tb is not None:
                        for k, v in rec.items():
                            if isinstance(v, (int, float)) and k != "epoch" and v == v:
                                tb.add_scalar(k, v, epoch + 1)
                msg = (f"epoch {epoch + 1}/{epochs} loss {rec['train_loss']:.4f} "
                       f"{rec['images_per_s']:.0f} img/s")
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

    def _test(self, record):
        cfg = self.cfg
        if record.best_state is not None:
            self.model.load_state_dict(record.best_state)
        split = "test" if "test" in self.loaders else "val"
        m = self.evaluate(split)
        res = m.compute()
        res["best_epoch"] = record.best["epoch"] if record.best else None
        if self.env.main:
            title = (f"{split} shot metrics ({cfg.method_name()}, best epoch "
                     f"{res['best_epoch']} on {'val' if 'val' in self.loaders else 'last epoch'})")
            self.log(format_table(res, self.depth, title))
            write_results(m, res, self.out, split)
            summary = {"method": cfg.method_name(), "data": cfg.data, "seed": cfg.seed,
                       "best_epoch": res["best_epoch"], **group_summary(res, ("mae", "gm", "rmse",
                                                                             "count"))}
            write_text_atomic(self._path("summary.json"), json.dumps(summary, indent=1))
            if cfg.plots:
                try:
                    plot_run(self.out, res, record.history)
                except ImportError as e:
                    self.log(f"plots skipped ({e})")
            self.log(f"results in {self.out}/")
        return res

    def _run_rrt(self):
        cfg = self.cfg
        ck = load_checkpoint(cfg.checkpoint, "--rrt --checkpoint", need=())
        # the first stage may have trained with FDS: its statistics are not part of RRT
        load_model_state(self.model, ck.get("model", ck), cfg.checkpoint, "--rrt --checkpoint",
                         f"--model {cfg.model} --width {cfg.width}", ignore=("fds.",))
        head = rrt_prepare(self.model)
        self.prepare(head.parameters(), rrt=True)
        epochs = cfg.rrt_epochs or cfg.epochs
        self.log(f"RRT: re-training the last layer for {epochs} epochs from {cfg.checkpoint}")
        return self._loop(0, epochs, RunRecord())


def train(cfg, log=None):
    """Run one training job from a TrainConfig; returns the test result (see Trainer.run)."""
    return Trainer(cfg, log).run()
