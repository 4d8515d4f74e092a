"""Builders of a training run: from a validated TrainConfig to the data, loaders, model, losses,
SSIR, optimiser and the module the step calls. Each is a function of the configuration (and of
what the previous ones built), so `Trainer.setup`, `evaluate_checkpoint` and the plots build the
same pieces the same way.

Order matters for an exact rerun: `seed_everything` first, then `build_data` (SMOGN, loaders),
`build_model` (initial weights) and `build_losses` (a GMM for Balanced MSE) draw from the seeded
generators in this order.
"""
import os
import random
from dataclasses import dataclass
from functools import partial
from typing import Callable, Optional

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from .. import losses as L
from ..data import load_dataset, make_loader, registry
from ..data.tabular import TabularSplit
from ..fds import FDS
from ..imbalance import DIR_RECIPES, LabelBins, bin_weights
from ..metrics import check_shot_bins
from ..resample import smogn
from ..ssir import SSIRLoss
from . import distributed as D
from .config import ConfigError
from .models import Regressor, build_model as build_regressor

__all__ = ["seed_everything", "resolve_device", "check_world", "load_data", "input_shape", "Data",
           "build_data", "make_eval_loader", "build_model", "channels_last", "wrap_model",
           "make_base_loss", "ssir_distance", "Losses", "build_losses", "build_optimizer",
           "make_scheduler"]


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
        tr = ds.splits["train"]
        X, y = smogn(tr.X.astype(np.float64), tr.targets.astype(np.float64), k=cfg.smogn_k,
                     pert=cfg.smogn_pert, rel_thres=cfg.smogn_thres, seed=cfg.seed)
        ds.splits["train"] = TabularSplit("train", np.asarray(X, np.float32),
                                          np.asarray(y, np.float32), tr.source)
    return ds, train_labels


def input_shape(cfg, ds):
    """The model input shape of one sample of ds, as cfg.data's registration gives it."""
    return registry.get(cfg.data).input_shape(ds)


@dataclass
class Data:
    """The data side of a run: the data set, its label bins and training statistics, the
    re-weighting table and the loaders (this rank's shard of every batch)."""
    ds: object
    bins: LabelBins
    train_labels: np.ndarray         # the original training labels (before SMOGN)
    train_counts: np.ndarray         # per-bin training counts (shot groups, SSIR subset)
    depth: bool                      # dense depth targets (NYUD2): masks, RMSE selection
    bin_w: Optional[np.ndarray]      # per-bin loss weights (INV/SQINV/LDS) or None
    shot_bins: Optional[dict]        # explicit many/medium/few bin lists or None
    on_error: str                    # data_options on_error (raise / skip)
    loader_options: dict             # backend, device, seed, workers, on_error of every loader
    train_loader: object
    loaders: dict                    # "val" / "test" -> loader, for the splits the data set has


def build_data(cfg, env, device, progress=True):
    """Load the data set and build the loaders for a validated cfg (see `Data`)."""
    ds, train_labels = load_data(cfg, progress=progress)
    bins = ds.bins
    depth = getattr(ds, "kind", None) == "depth"
    # the official weighting of each code base: per-pixel depth counts are not clipped and LDS
    # pads them by reflection (nyud2-dir); ages clip INV counts to [5, 1000]
    recipe = DIR_RECIPES["depth" if depth else "age"]
    bin_w = (bin_weights(train_labels, bins, cfg.reweight, cfg.lds, cfg.lds_kernel, cfg.lds_ks,
                         cfg.lds_sigma, lds_int_counts=cfg.lds_int_counts, **recipe)
             if cfg.reweight != "none" else None)
    lists = {g: getattr(cfg, f"{g}_bins") for g in ("many", "medium", "few")}
    shot_bins = lists if any(v is not None for v in lists.values()) else None
    if shot_bins is not None:
        try:
            shot_bins = check_shot_bins(shot_bins, bins.num_bins, "--many/medium/few-bins")
        except ValueError as e:
            raise ConfigError(str(e)) from None
    per_rank = cfg.batch_size // env.world
    small = getattr(ds, "image_size", None) is None or max(ds.image_size) <= 32
    workers = cfg.workers if cfg.workers is not None else (0 if small else
                                                            min(4, os.cpu_count() or 1))
    # on_error=skip also covers files that fail to decode (a truncated JPEG), which only the
    # loaders see
    on_error = (cfg.data_options or {}).get("on_error", "raise")
    common = dict(backend=cfg.backend, device=device, seed=cfg.seed, num_workers=workers,
                  on_error=on_error)
    if cfg.backend == "auto" and getattr(ds, "kind", None) != "tabular":
        common["backend"] = "torch" if device.type != "cuda" else "auto"
    train_loader = make_loader(ds, "train", per_rank, shard=(env.rank, env.world),
                               even_shards=env.active, bin_weights=bin_w, augment=cfg.augment,
                               **common)
    loaders = {}
    for split in ("val", "test"):
        if split in ds.splits and len(ds.splits[split]):
            loaders[split] = make_loader(ds, split, per_rank, shard=(env.rank, env.world),
                                         **common)
    return Data(ds=ds, bins=bins, train_labels=train_labels,
                train_counts=bins.counts(train_labels), depth=depth, bin_w=bin_w,
                shot_bins=shot_bins, on_error=on_error, loader_options=common,
                train_loader=train_loader, loaders=loaders)


def make_eval_loader(cfg, data, split, env, device):
    """An un-shuffled, un-augmented loader over `split` (the training split too), this rank's
    shard; the loaders `build_data` made for val / test are returned as they are."""
    if split in data.loaders:
        return data.loaders[split]
    if split != "train" or "train" not in data.ds.splits:
        raise ConfigError(f"split {split!r} is not in the data set "
                          f"(have {sorted(data.loaders)})")
    backend = "torch" if data.train_loader.backend == "torch" else "auto"
    return make_loader(data.ds, "train", cfg.batch_size // env.world, backend=backend,
                       device=device, shard=(env.rank, env.world), shuffle=False, augment=False,
                       num_workers=0, on_error=data.on_error)


# ---------------------------------------------------------------------------------- model

def build_model(cfg, data, device, env) -> Regressor:
    """The Regressor of cfg.model for data.ds's inputs (with FDS when cfg.fds), its output set
    to the training label range, on `device` (channels_last where asked), the same weights on
    every rank."""
    fds = None
    if cfg.fds:
        fds = partial(FDS, bins=data.bins, kernel=cfg.fds_kernel, ks=cfg.fds_ks,
                      sigma=cfg.fds_sigma, momentum=cfg.fds_momentum,
                      start_update=cfg.fds_start_update, start_smooth=cfg.fds_start_smooth,
                      clip=tuple(cfg.fds_clip))
    model = build_regressor(cfg.model, input_shape(cfg, data.ds), cfg.width, fds)
    # The output starts at the mean training label (and, with --standardize-target, the head
    # predicts (y - mean) / std): with an L1 loss and Adam at lr 1e-3 the raw head otherwise
    # needs many epochs just to reach the label range.
    model.set_output_range(np.mean(data.train_labels),
                           np.std(data.train_labels) if cfg.standardize_target else 1.0)
    model = model.to(device)
    if channels_last(cfg, device) and getattr(data.ds, "kind", None) != "tabular":
        model = model.to(memory_format=torch.channels_last)
    if env.active:
        D.broadcast_module(model)
    return model


def channels_last(cfg, device):
    """Whether images go through the model in channels_last (CUDA only)."""
    return cfg.channels_last and device.type == "cuda"


def wrap_model(model, cfg, env, device):
    """The module the training step calls: DistributedDataParallel under torchrun (built after
    RRT froze the encoder, so it only syncs trainable parameters), then torch.compile. The step
    scopes the compiler setting SSIR needs (see `TrainStep`)."""
    fwd = model
    if env.active:
        fwd = DistributedDataParallel(fwd, device_ids=[device.index] if device.type == "cuda"
                                      else None)
    if cfg.compile:
        fwd = torch.compile(fwd)
    return fwd


# ---------------------------------------------------------------------------------- losses

def make_base_loss(cfg, bins, train_labels, device):
    """(loss_fn(pred, y, weight), module with parameters or None)."""
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


@dataclass
class Losses:
    base: Callable                   # base(pred, y, weight): the supervised loss, in float32
    module: Optional[torch.nn.Module]  # its parameters (Balanced MSE's noise scale) or None
    ssir: Optional[SSIRLoss]


def build_losses(cfg, data, device) -> Losses:
    """The supervised loss and, with cfg.ssir, the SSIR loss around it."""
    base, module = make_base_loss(cfg, data.bins, data.train_labels, device)
    ssir = None
    if cfg.ssir:
        ds = data.ds
        lo = hi = None
        if cfg.ssir_clip and hasattr(ds, "clip_bounds") and ds.clip_bounds() is not None:
            lo, hi = (torch.tensor(b) for b in ds.clip_bounds())
        ssir = SSIRLoss(cfg.ssir_bin_width or data.bins.bin_width, cfg.epsilon, cfg.lam,
                        ssir_distance(cfg), cfg.n_steps, cfg.ssir_target, lo, hi,
                        base_loss=base, validate=False, rho=cfg.ssir_rho,
                        eps_max=cfg.ssir_eps_max, subset=cfg.ssir_subset, bins=data.bins,
                        bin_counts=data.train_counts,
                        perturb_autocast=torch.bfloat16 if cfg.ssir_bf16 else None)
    return Losses(base, module, ssir)


# ---------------------------------------------------------------------------------- optimiser

def make_scheduler(cfg, opt):
    S = torch.optim.lr_scheduler
    if cfg.schedule == "multistep":
        return S.MultiStepLR(opt, cfg.milestones, cfg.gamma)
    if cfg.schedule == "step":
        return S.StepLR(opt, cfg.step_size, cfg.gamma)
    if cfg.schedule == "cosine":
        return S.CosineAnnealingLR(opt, cfg.epochs)
    return S.LambdaLR(opt, lambda e: 1.0)


def build_optimizer(cfg, params, loss_module=None):
    """(Adam over `params` and the loss module's parameters, its lr schedule, the parameter
    list)."""
    params = list(params)
    if loss_module is not None:
        params += list(loss_module.parameters())
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return opt, make_scheduler(cfg, opt), params
