"""The training loop behind `ssir-fast train` and `ssir-fast eval`.

One epoch (per rank, on its shard of every global batch):

    for x, y, w in train_loader:                        # w: INV/SQINV/LDS weights (0 on padding)
        pred = model(x)                                 # encoder -> [FDS] -> head
        L = mean_i w_i D_R(pred_i, y_i)                 # l1/mse/huber/focal/balanced MSE
          (+ lam * SSIR consistency)  (+ RankSim(features, y))
        L.backward(); [all_reduce gradients]; Adam step
    FDS: fold the epoch's feature statistics (summed over ranks) into the running ones
    lr schedule step; validation MAE (all) -> best checkpoint; last.pt written atomically

At the end the best checkpoint (on the validation set; the last epoch when the data set has no
validation split) is evaluated on the test split and the shot table printed and saved.

Exact resume: last.pt holds model (FDS statistics included), optimiser, scheduler, loss module,
every rank's RNG states (torch, CUDA, numpy, random), the epoch, the best score and the history,
as tensors and plain values (read with weights_only=True, see `checkpoint`). The loaders draw
their order and augmentation from (seed, epoch), so a resumed run repeats the uninterrupted one.
`--resume` with a larger `--epochs` extends a run (finished or not); options that would make the
continued run differ from one trained with them from the start are refused.
"""
import copy
import csv
import json
import os
import random
import time
import warnings
from functools import partial

import numpy as np
import torch

from . import distributed as D
from .checkpoint import (FORMAT, atomic_save, load_checkpoint, load_model_state, rng_state,
                         set_rng_state)
from ..data import load_dataset, registry
from .config import ConfigError, describe, ensure_valid, write_config
from .models import build_model
from .precision import choose_precision

__all__ = ["Trainer", "train", "evaluate_checkpoint", "format_table", "atomic_save"]

def _write_text_atomic(path, text):
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


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


# ---------------------------------------------------------------------------------- data

def load_data(cfg, progress=True):
    """(dataset, original training labels) for a validated cfg; SMOGN resamples the training
    split. The registry says which loader keywords come from flags (--image-size, --target, ...);
    --data-options were checked against the loader's signature by `validate`."""
    spec = registry.get(cfg.data)
    kwargs = {k: getattr(cfg, f) for k, f in spec.flags.items() if getattr(cfg, f) is not None}
    if "progress" in kwargs:
        kwargs["progress"] = progress   # this rank's bar, not the flag alone
    ds = load_dataset(cfg.data, cfg.data_root, **kwargs, **(cfg.data_options or {}))
    train_labels = np.asarray(ds.train_labels, np.float64)
    if cfg.smogn:
        from ..data.tabular import TabularSplit
        from ..resample import smogn
        tr = ds.splits["train"]
        X, y = smogn(tr.X.astype(np.float64), tr.targets.astype(np.float64), k=cfg.smogn_k,
                     pert=cfg.smogn_pert, rel_thres=cfg.smogn_thres, seed=cfg.seed)
        ds.splits["train"] = TabularSplit("train", np.asarray(X, np.float32),
                                          np.asarray(y, np.float32), tr.source)
    return ds, train_labels


def input_shape(cfg, ds):
    """The model input shape of one sample of ds, as cfg.data's registration gives it."""
    return registry.get(cfg.data).input_shape(ds)


def make_base_loss(cfg, bins, train_labels, device):
    """(loss_fn(pred, y, weight), module with parameters or None)."""
    from .. import losses as L
    if cfg.loss in ("bmc", "gai", "bni"):
        mod = L.BalancedMSELoss(cfg.loss, cfg.bmse_sigma, True, bins=bins,
                                train_labels=train_labels, n_components=cfg.gmm_components)
        mod = mod.to(device)
        return _float_loss(mod), mod
    fns = {"l1": L.weighted_l1, "mse": L.weighted_mse, "huber": L.weighted_huber,
           "focal-l1": partial(L.focal_l1, activate=cfg.focal_activate, beta=cfg.focal_beta,
                               gamma=cfg.focal_gamma),
           "focal-mse": partial(L.focal_mse, activate=cfg.focal_activate, beta=cfg.focal_beta,
                                gamma=cfg.focal_gamma)}
    return _float_loss(fns[cfg.loss]), None


def _float_loss(fn):
    # bf16 predictions under autocast: the loss itself in float32
    def loss(pred, y, weight=None):
        return fn(pred.float(), y.float().reshape(pred.shape), weight)
    return loss


def ssir_distance(cfg):
    if cfg.ssir_distance != "auto":
        return cfg.ssir_distance
    return {"l1": "l1", "focal-l1": "l1", "huber": "huber"}.get(cfg.loss, "mse")


def make_scheduler(cfg, opt):
    S = torch.optim.lr_scheduler
    if cfg.schedule == "multistep":
        return S.MultiStepLR(opt, cfg.milestones, cfg.gamma)
    if cfg.schedule == "step":
        return S.StepLR(opt, cfg.step_size, cfg.gamma)
    if cfg.schedule == "cosine":
        return S.CosineAnnealingLR(opt, cfg.epochs)
    return S.LambdaLR(opt, lambda e: 1.0)


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


def _group_summary(result, keys=("mae", "gm")):
    out = {}
    for g in ("all", "many", "medium", "few"):
        for k in keys:
            if g in result:
                out[f"{g}_{k}"] = result[g].get(k)
    return out


# ---------------------------------------------------------------------------------- trainer

class Trainer:
    """Builds everything from a validated TrainConfig; `run()` trains (or RRT) and tests."""

    def __init__(self, cfg, log=None):
        ensure_valid(cfg)   # once: make_config has validated it unless changed since
        self.cfg = cfg
        self.env = D.setup("cuda" if (cfg.device != "cpu" and torch.cuda.is_available()) else "cpu")
        self.device = resolve_device(cfg.device, self.env)
        self._log = log or partial(print, flush=True)
        if cfg.batch_size % self.env.world:
            raise ConfigError(f"--batch-size {cfg.batch_size} must be divisible by the number of "
                              f"processes ({self.env.world})")
        self.out = cfg.out or os.path.join("runs", f"{cfg.data}-{cfg.method_name()}-s{cfg.seed}")
        if self.env.main:
            os.makedirs(self.out, exist_ok=True)
        self.cuda = self.device.type == "cuda"
        self.amp = cfg.amp and self.cuda
        # bf16 autocast where the GPU has it, else fp16 + GradScaler (or a clear refusal)
        self.precision = choose_precision(self.device, cfg.amp, cfg.amp_dtype, self.log)
        self.channels_last = cfg.channels_last and self.cuda

    def log(self, *a):
        if self.env.main:
            self._log(*a)

    # ---- setup -----------------------------------------------------------------------------
    def _setup(self):
        cfg, env = self.cfg, self.env
        seed_everything(cfg.seed, cfg.deterministic)
        if cfg.threads is not None and self.device.type == "cpu":
            torch.set_num_threads(cfg.threads)
        ds, train_labels = load_data(cfg, progress=env.main and cfg.progress)
        self.ds, self.bins, self.train_labels = ds, ds.bins, train_labels
        self.depth = getattr(ds, "kind", None) == "depth"
        self.train_counts = self.bins.counts(train_labels)
        from ..imbalance import DIR_RECIPES, bin_weights
        # the official weighting of each code base: per-pixel depth counts are not clipped and
        # LDS pads them by reflection (nyud2-dir); ages clip INV counts to [5, 1000]
        recipe = DIR_RECIPES["depth" if self.depth else "age"]
        self.bin_w = (bin_weights(train_labels, self.bins, cfg.reweight, cfg.lds, cfg.lds_kernel,
                                  cfg.lds_ks, cfg.lds_sigma, lds_int_counts=cfg.lds_int_counts,
                                  **recipe) if cfg.reweight != "none" else None)
        lists = {g: getattr(cfg, f"{g}_bins") for g in ("many", "medium", "few")}
        self.shot_bins = lists if any(v is not None for v in lists.values()) else None
        if self.shot_bins is not None:
            from ..metrics import check_shot_bins
            try:
                self.shot_bins = check_shot_bins(self.shot_bins, self.bins.num_bins,
                                                 "--many/medium/few-bins")
            except ValueError as e:
                raise ConfigError(str(e)) from None
        from ..data import make_loader
        per_rank = cfg.batch_size // env.world
        small = getattr(ds, "image_size", None) is None or max(ds.image_size) <= 32
        workers = cfg.workers if cfg.workers is not None else (0 if small else
                                                                min(4, os.cpu_count() or 1))
        # on_error=skip also covers files that fail to decode (a truncated JPEG), which only
        # the loaders see
        self.on_error = (cfg.data_options or {}).get("on_error", "raise")
        common = dict(backend=cfg.backend, device=self.device, seed=cfg.seed, num_workers=workers,
                      on_error=self.on_error)
        if cfg.backend == "auto" and getattr(ds, "kind", None) != "tabular":
            common["backend"] = "torch" if not self.cuda else "auto"
        self.train_loader = make_loader(ds, "train", per_rank, shard=(env.rank, env.world),
                                        even_shards=env.active, bin_weights=self.bin_w,
                                        augment=cfg.augment, **common)
        self.loaders = {}
        for split in ("val", "test"):
            if split in ds.splits and len(ds.splits[split]):
                self.loaders[split] = make_loader(ds, split, per_rank, shard=(env.rank, env.world),
                                                  **common)
        # model
        fds = None
        if cfg.fds:
            from ..fds import FDS
            fds = partial(FDS, bins=self.bins, kernel=cfg.fds_kernel, ks=cfg.fds_ks,
                          sigma=cfg.fds_sigma, momentum=cfg.fds_momentum,
                          start_update=cfg.fds_start_update, start_smooth=cfg.fds_start_smooth,
                          clip=tuple(cfg.fds_clip))
        self.model = build_model(cfg.model, input_shape(cfg, ds), cfg.width, fds)
        # The output starts at the mean training label (and, with --standardize-target, the head
        # predicts (y - mean) / std): with an L1 loss and Adam at lr 1e-3 the raw head otherwise
        # needs many epochs just to reach the label range.
        self.model.set_output_range(np.mean(train_labels),
                                    np.std(train_labels) if cfg.standardize_target else 1.0)
        self.model = self.model.to(self.device)
        if self.channels_last and not getattr(ds, "kind", None) == "tabular":
            self.model = self.model.to(memory_format=torch.channels_last)
        if env.active:
            D.broadcast_module(self.model)
        self.base_loss, self.loss_module = make_base_loss(cfg, self.bins, train_labels, self.device)
        self.ssir = None
        if cfg.ssir:
            from ..ssir import SSIRLoss
            lo = hi = None
            if cfg.ssir_clip and hasattr(ds, "clip_bounds") and ds.clip_bounds() is not None:
                lo, hi = (torch.tensor(b) for b in ds.clip_bounds())
            self.ssir = SSIRLoss(cfg.ssir_bin_width or self.bins.bin_width, cfg.epsilon, cfg.lam,
                                 ssir_distance(cfg), cfg.n_steps, cfg.ssir_target, lo, hi,
                                 base_loss=self.base_loss, validate=False, rho=cfg.ssir_rho,
                                 eps_max=cfg.ssir_eps_max, subset=cfg.ssir_subset,
                                 bins=self.bins, bin_counts=self.train_counts,
                                 perturb_autocast=torch.bfloat16 if cfg.ssir_bf16 else None)

    def _optimizer(self, params):
        cfg = self.cfg
        params = list(params)
        self._wrap()
        if self.loss_module is not None:
            params += list(self.loss_module.parameters())
        self.opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.sched = make_scheduler(cfg, self.opt)
        self.params = params

    def _wrap(self):
        """The module the training step calls: DistributedDataParallel under torchrun (built
        after RRT froze the encoder, so it only syncs trainable parameters), then torch.compile."""
        cfg = self.cfg
        fwd = self.model
        if self.env.active:
            from torch.nn.parallel import DistributedDataParallel as DDP
            fwd = DDP(fwd, device_ids=[self.device.index] if self.cuda else None)
        if cfg.compile:
            if cfg.ssir:
                # SSIR's step 1 backpropagates through the clean graph with retain_graph=True,
                # which compiled backwards with donated buffers refuse.
                import torch._functorch.config as fconfig
                fconfig.donated_buffer = False
            fwd = torch.compile(fwd)
        self.forward_model = fwd

    # ---- one epoch -------------------------------------------------------------------------
    def _autocast(self):
        return self.precision.autocast() if self.cuda else \
            torch.autocast("cpu", enabled=False)

    def train_epoch(self, epoch, rrt=False):
        cfg, model = self.cfg, self.model
        loader = self.train_loader
        loader.set_epoch(epoch)
        capture = (cfg.fds or cfg.ranksim) and not rrt
        # loss, supervised, consistency, similarity, ||x~-x||/||x||, |f(x~)-f(x)|/dy summed on
        # the device: no host sync per step
        acc = torch.zeros(6, dtype=torch.float64, device=self.device)
        zero = torch.zeros((), device=self.device)
        every = max(1, len(loader) // 50)
        n_batches, n_samples = 0, 0
        first_batch_s = None     # wait for the loader's first batch (worker start-up, decoding)
        bar = None
        if cfg.progress and self.env.main:
            try:
                from tqdm import tqdm
                bar = tqdm(total=len(loader), desc=f"epoch {epoch + 1}/{self._epochs}",
                           leave=False, dynamic_ncols=True)
            except ImportError:
                bar = None
        t0 = time.perf_counter()
        if rrt:
            from ..rrt import rrt_mode
            ctx = rrt_mode(model)
            ctx.__enter__()
        else:
            model.train()
        try:
            for x, y, w in loader:
                if first_batch_s is None:
                    first_batch_s = time.perf_counter() - t0
                if self.channels_last and x.dim() == 4:
                    x = x.contiguous(memory_format=torch.channels_last)
                model.begin_step(labels=y if (cfg.fds and not rrt) else None, epoch=epoch,
                                 capture=capture)
                with self._autocast():
                    if self.ssir is not None and not rrt:
                        res = self.ssir(self.forward_model, x, y, weight=w)
                        loss, sup = res.loss, res.supervised
                        cons, sim = res.consistency, res.similarity
                        moved, change = res.perturbation, res.output_change
                    else:
                        pred = self.forward_model(x)
                        sup = loss = self.base_loss(pred.float(), y.reshape(pred.shape), w)
                        cons = sim = moved = change = None
                    feats = model.features
                    if cfg.ranksim and not rrt:
                        from ..losses import ranksim
                        loss = loss + ranksim(feats.float(), y, cfg.ranksim_gamma, cfg.ranksim_lam)
                model.end_step()
                self.opt.zero_grad(set_to_none=True)
                self.precision.backward(loss)   # DDP averages the gradients over the ranks here
                if self.loss_module is not None:
                    D.all_reduce_grads(list(self.loss_module.parameters()), self.env.world)
                self.precision.step(self.opt)   # fp16: unscaled, skipped on inf/NaN grads
                if cfg.fds and not rrt and feats is not None:
                    model.fds.update(feats.detach().float(), y)
                n_batches += 1
                n_samples += x.shape[0]
                acc += torch.stack([loss.detach(), sup.detach(),
                                    zero if cons is None else cons.detach(),
                                    zero if sim is None else sim.detach(),
                                    zero if moved is None else moved.detach(),
                                    zero if change is None else change.detach()]).double()
                if bar is not None:
                    if n_batches % every == 0 or n_batches == len(loader):
                        mean = (acc / n_batches).tolist()
                        rate = n_samples * self.env.world / max(time.perf_counter() - t0, 1e-9)
                        post = {"loss": f"{mean[0]:.3f}"}
                        if cons is not None:
                            post["sim"] = f"{mean[3]:.3f}"
                        post["img/s"] = f"{rate:.0f}"
                        bar.set_postfix(post, refresh=False)
                    bar.update(1)
        finally:
            if rrt:
                ctx.__exit__(None, None, None)
            if bar is not None:
                bar.close()
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
        if self.ssir is not None and not rrt:
            rec["train_consistency"] = stats[2].item() / nb
            rec["similarity"] = stats[3].item() / nb
            rec["perturbation"] = stats[4].item() / nb     # mean ||x~ - x|| / ||x||
            rec["output_change"] = stats[5].item() / nb    # mean |f(x~) - f(x)| / dy
        if cfg.fds and not rrt:
            model.fds.end_epoch(epoch)   # sums the epoch statistics over ranks
        if self.env.active:
            D.broadcast_module(model, params=False, buffers=True)
        return rec

    @torch.no_grad()
    def evaluate(self, split, model=None):
        from ..metrics import BinnedMetrics
        model = model or self.model
        was = model.training
        model.eval()
        from ..ops.bin_reduce import N_NONFINITE
        # the table lives on the model's device (NCCL reduces CUDA tensors only) and is read
        # once at the end: NaN/inf are counted per batch, not checked (a host sync per batch)
        m = BinnedMetrics(bins=self.bins, train_counts=self.train_counts, depth=self.depth,
                          many_thr=self.cfg.many_thr, few_thr=self.cfg.few_thr,
                          shot_bins=self.shot_bins, device=self.device, allow_nonfinite=True)
        loader = self.loaders[split]
        loader.set_epoch(0)
        for x, y, w in loader:
            if self.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            with self._autocast():
                pred = model(x)
            pred = pred.float()
            mask = (w > 0) if self.depth else None
            m.update(pred, y, mask=mask)
        m.all_reduce()
        model.train(was)
        bad = int(m.table[:, N_NONFINITE].sum().item())
        if bad:
            raise ValueError(f"evaluation on {split}: the model predicted NaN or inf for {bad} "
                             f"target(s); the training diverged")
        return m

    # ---- checkpoints -----------------------------------------------------------------------
    def _path(self, name):
        return os.path.join(self.out, name)

    def _state(self, epoch):
        rngs = [rng_state()]
        if self.env.active:
            rngs = [None] * self.env.world
            torch.distributed.all_gather_object(rngs, rng_state())
        return {"format": FORMAT, "kind": "last", "config": self.cfg.to_dict(), "epoch": epoch,
                "model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(),
                "loss_module": None if self.loss_module is None else self.loss_module.state_dict(),
                "rng": rngs, "best": self.best, "history": self.history,
                "best_model": self.best_state, "world": self.env.world,
                "scaler": self.precision.state_dict()}

    # options that do not change what is trained: free to change on --resume (--epochs may
    # also grow: the epochs already trained are the same for any total, schedules included,
    # except cosine, whose period follows --epochs and is stretched from the resumed epoch on)
    RESUME_FREE = ("resume", "stop_after", "progress", "out", "plots", "tensorboard", "device",
                   "workers", "backend", "epochs", "many_thr", "few_thr", "many_bins",
                   "medium_bins", "few_bins")

    def _load_resume(self):
        cfg, path = self.cfg, self._path("last.pt")
        ck = load_checkpoint(path, "--resume", need=("config", "model", "optimizer", "scheduler",
                                                     "rng", "epoch", "world"))
        old = {k: v for k, v in ck["config"].items() if k not in self.RESUME_FREE}
        new = {k: v for k, v in cfg.to_dict().items() if k in old}
        diff = {k: (old[k], new[k]) for k in old if old[k] != new[k]}
        if diff:
            raise ConfigError(f"--resume: the run in {self.out} was trained with different options "
                              f"(checkpoint vs now): {diff}")
        done = ck["epoch"] + 1
        if cfg.epochs < done:
            raise ConfigError(f"--resume: the run in {self.out} has already trained {done} epochs; "
                              f"--epochs {cfg.epochs} would leave some out (give --epochs >= "
                              f"{done})")
        if ck["world"] != self.env.world:
            raise ConfigError(f"--resume: the checkpoint was written by {ck['world']} processes, "
                              f"now {self.env.world}")
        load_model_state(self.model, ck["model"], path, "--resume",
                         f"--model {cfg.model} --width {cfg.width}")
        try:
            self.opt.load_state_dict(ck["optimizer"])
            self.sched.load_state_dict(ck["scheduler"])
            if self.loss_module is not None:
                self.loss_module.load_state_dict(ck["loss_module"])
            self.precision.load_state_dict(ck.get("scaler"))
        except (ValueError, KeyError, RuntimeError, TypeError) as e:
            raise ConfigError(f"--resume: the optimiser, scheduler or loss state in {path} does "
                              f"not fit this run: {e}") from None
        old_epochs = ck["config"].get("epochs")
        if old_epochs != cfg.epochs:
            if cfg.schedule == "cosine":
                self.sched.T_max = cfg.epochs
            self.log(f"--resume: extending the run from {old_epochs} to {cfg.epochs} epochs")
        self.best, self.history, self.best_state = ck["best"], ck["history"], ck["best_model"]
        set_rng_state(ck["rng"][self.env.rank])
        return done

    def _write_logs(self):
        if not self.env.main:
            return
        _write_text_atomic(self._path("metrics.jsonl"),
                           "".join(json.dumps(r) + "\n" for r in self.history))
        keys = []
        for r in self.history:
            keys += [k for k in r if k not in keys]
        tmp = self._path("metrics.csv") + f".tmp-{os.getpid()}"
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, keys)
            w.writeheader()
            for r in self.history:
                w.writerow(r)
        os.replace(tmp, self._path("metrics.csv"))

    # ---- main ------------------------------------------------------------------------------
    def run(self):
        """Train (or RRT) then test. Returns the test result dict of BinnedMetrics.compute() (with
        "stopped": True and no test when --stop-after interrupted the run)."""
        cfg = self.cfg
        try:
            self._setup()
            if self.env.main:   # the merged configuration: --config gives the run back
                write_config(cfg, self._path("config.json"))
            self.log(describe(cfg))
            self.log(f"device={self.device} processes={self.env.world} out={self.out} "
                     f"train={len(self.ds.splits['train'])}")
            if cfg.rrt:
                return self._run_rrt()
            self._optimizer(self.model.parameters())
            self.best, self.history, self.best_state = None, [], None
            start = self._load_resume() if cfg.resume else 0
            if cfg.resume:
                self.log(f"resuming from epoch {start + 1} ({self._path('last.pt')})")
            return self._loop(start, cfg.epochs)
        finally:
            self.env.close()

    def _loop(self, start, epochs, rrt=False):
        cfg = self.cfg
        self._epochs = epochs
        tb = None
        if cfg.tensorboard and self.env.main:
            from torch.utils.tensorboard import SummaryWriter
            tb = SummaryWriter(self._path("tensorboard"))
        done = 0
        for epoch in range(start, epochs):
            rec = {"epoch": epoch + 1, "lr": self.opt.param_groups[0]["lr"]}
            rec.update(self.train_epoch(epoch, rrt=rrt))
            self.sched.step()
            select = "val" if "val" in self.loaders else None
            if select:
                with warnings.catch_warnings():   # an empty shot group: said once, at test
                    warnings.simplefilter("ignore", RuntimeWarning)
                    vm = self.evaluate("val").compute()
                score = vm["all"]["rmse" if self.depth else "mae"]
                rec.update({f"val_{k}": v for k, v in _group_summary(vm).items()})
            else:
                score = -epoch   # no validation split: the last epoch is the best
            improved = self.best is None or score < self.best["score"]
            if improved:
                self.best = {"epoch": epoch + 1, "score": score}
                self.best_state = copy.deepcopy({k: v.detach().cpu()
                                                 for k, v in self.model.state_dict().items()})
                if self.env.main:
                    atomic_save({"format": FORMAT, "kind": "best", "config": cfg.to_dict(),
                                 "epoch": epoch + 1, "model": self.best_state,
                                 "score": score}, self._path("best.pt"))
            self.history.append(rec)
            state = self._state(epoch)
            if self.env.main:
                atomic_save(state, self._path("last.pt"))
                self._write_logs()
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
                if tb is not None:
                    tb.close()
                return {"stopped": True, "epoch": epoch + 1}
        if tb is not None:
            tb.close()
        return self._test()

    def _test(self):
        cfg = self.cfg
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        split = "test" if "test" in self.loaders else "val"
        m = self.evaluate(split)
        res = m.compute()
        res["best_epoch"] = self.best["epoch"] if self.best else None
        if self.env.main:
            title = (f"{split} shot metrics ({cfg.method_name()}, best epoch "
                     f"{res['best_epoch']} on {'val' if 'val' in self.loaders else 'last epoch'})")
            self.log(format_table(res, self.depth, title))
            m.to_json(self._path(f"{split}_metrics.json"), res)
            m.to_csv(self._path(f"{split}_per_bin.csv"), res)
            summary = {"method": cfg.method_name(), "data": cfg.data, "seed": cfg.seed,
                       "best_epoch": res["best_epoch"], **_group_summary(res, ("mae", "gm", "rmse",
                                                                              "count"))}
            _write_text_atomic(self._path("summary.json"), json.dumps(summary, indent=1))
            if cfg.plots:
                try:
                    from .plots import plot_run
                    plot_run(self.out, res, self.history)
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
        from ..rrt import rrt_prepare
        head = rrt_prepare(self.model)
        self._optimizer(head.parameters())
        self.best, self.history, self.best_state = None, [], None
        epochs = cfg.rrt_epochs or cfg.epochs
        self.log(f"RRT: re-training the last layer for {epochs} epochs from {cfg.checkpoint}")
        return self._loop(0, epochs, rrt=True)


def train(cfg, log=None):
    """Run one training job from a TrainConfig; returns the test result (see Trainer.run)."""
    return Trainer(cfg, log).run()


def evaluate_checkpoint(path, split="test", data_root=None, out=None, device="auto",
                        batch_size=None, log=print):
    """Evaluate a best.pt / last.pt checkpoint on a split; prints and saves the shot table
    (<out>/<split>_metrics.json and _per_bin.csv, default next to the checkpoint)."""
    from .config import make_config
    ck = load_checkpoint(path, "eval --checkpoint")
    values = dict(ck["config"])
    values.update(resume=False, rrt=False, checkpoint=None, stop_after=None, device=device,
                  smogn=False)
    if data_root is not None:
        values["data_root"] = data_root
    if batch_size is not None:
        values["batch_size"] = batch_size
    values["out"] = out or os.path.dirname(os.path.abspath(path))
    cfg = make_config(values)
    t = Trainer(cfg, log)
    try:
        t._setup()
        if split == "train":   # un-shuffled, un-augmented pass over the training split
            from ..data import make_loader
            t.loaders["train"] = make_loader(t.ds, "train", cfg.batch_size // t.env.world,
                                             backend="torch" if t.train_loader.backend == "torch"
                                             else "auto", device=t.device,
                                             shard=(t.env.rank, t.env.world), shuffle=False,
                                             augment=False, num_workers=0, on_error=t.on_error)
        if split not in t.loaders:
            raise ConfigError(f"split {split!r} is not in the data set (have {sorted(t.loaders)})")
        load_model_state(t.model, ck["model"], path, "eval --checkpoint",
                         f"--model {cfg.model} --width {cfg.width} built here")
        m = t.evaluate(split)
        res = m.compute()
        if t.env.main:
            log(format_table(res, t.depth, f"{split} shot metrics of {path}"))
            os.makedirs(cfg.out, exist_ok=True)
            m.to_json(os.path.join(cfg.out, f"{split}_metrics.json"), res)
            m.to_csv(os.path.join(cfg.out, f"{split}_per_bin.csv"), res)
        return res
    finally:
        t.env.close()
