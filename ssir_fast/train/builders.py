"""Builders of a training run: the data, loaders, model, losses, SSIR, optimiser and the module
the step calls. Each receives the sections of a validated TrainConfig it reads (`cfg.data`,
`cfg.method`, `cfg.ssir`, ...; never the whole configuration) and what the previous ones built;
`runtime.build_parts` calls the first three in the order an exact rerun needs, for training,
evaluation and the plots alike.

What depends on the data set (its bins, weighting recipe, shot groups, selection metric, dense
targets) is read from its registration (`ssir_fast.data.registry.DataSpec`).
"""
import os
from dataclasses import dataclass
from functools import partial
from typing import Callable, Optional

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from .. import losses
from ..data import DataError, load_dataset, make_loader, registry
from ..data.tabular import TabularSplit
from ..fds import FDS
from ..imbalance import DIR_RECIPES, LabelBins, bin_weights
from ..metrics import check_shot_bins
from ..resample import smogn
from ..ssir import SSIRLoss
from . import distributed
from .config import ConfigError
from .models import Regressor, build_model as build_regressor
from .schedule import make_scheduler

__all__ = ["load_data", "input_shape", "Data",
           "build_data", "make_eval_loader", "build_model", "channels_last", "wrap_model",
           "make_base_loss", "ssir_distance", "Losses", "build_losses", "build_optimizer",
           "make_scheduler"]


# ---------------------------------------------------------------------------------- data

def load_data(data, smogn_opts, seed, flag_values=None, progress=True):
    """(dataset, original training labels) for the validated `data` section; SMOGN
    (`smogn_opts`, seeded with `seed`) resamples the training split. `flag_values`: the loader
    keywords the data set's registration takes from other options ({"seed": 0, ...}; see
    `runtime.data_flag_values`); --data-options were checked against the loader's signature
    by `validate`."""
    kwargs = {k: v for k, v in (flag_values or {}).items() if v is not None}
    if "progress" in kwargs:
        kwargs["progress"] = progress   # this rank's bar, not the flag alone
    try:
        ds = load_dataset(data.name, data.root, **kwargs, **(data.options or {}))
    except ValueError as e:   # a loader refusing its input (n_major=-5, ...): the user's to fix
        if isinstance(e, (DataError, ConfigError)):
            raise
        raise DataError(f"--data {data.name}: {e}") from e
    train_labels = np.asarray(ds.train_labels, np.float64)
    if smogn_opts.enabled:
        tr = ds.splits["train"]
        X, y = smogn(tr.X.astype(np.float64), tr.targets.astype(np.float64), k=smogn_opts.k,
                     pert=smogn_opts.pert, rel_thres=smogn_opts.thres, seed=seed)
        ds.splits["train"] = TabularSplit("train", np.asarray(X, np.float32),
                                          np.asarray(y, np.float32), tr.source)
    return ds, train_labels


def input_shape(data_name, ds):
    """The model input shape of one sample of ds, as the data set's registration gives it."""
    return registry.get(data_name).input_shape(ds)


@dataclass
class Data:
    """The data side of a run: the data set, its label bins and training statistics, the
    re-weighting table and the loaders (this rank's shard of every batch)."""
    name: str                        # the data set's registered name
    ds: object
    bins: LabelBins
    train_labels: np.ndarray         # the original training labels (before SMOGN)
    train_counts: np.ndarray         # per-bin training counts (shot groups, SSIR subset)
    dense: bool                      # dense targets (depth maps): masked pixels in the metrics
    select: str                      # the validation metric of the best epoch ("mae", "rmse")
    bin_w: Optional[np.ndarray]      # per-bin loss weights (INV/SQINV/LDS) or None
    shot_bins: Optional[dict]        # explicit many/medium/few bin lists or None
    loader_options: dict             # batch size (per rank), shard, backend, device, seed,
                                     # workers, on_error: what every loader of the run shares
    train_loader: object
    loaders: dict                    # "val" / "test" -> loader, for the splits the data set has


def build_data(data, method, output, optim, env, device, flag_values=None, progress=True):
    """Load the data set (the `data` section) and build the loaders (`optim`'s batch size and
    seed), the re-weighting table (`method`) and the shot groups (`output`); see `Data`."""
    ds, train_labels = load_data(data, method.smogn, optim.seed, flag_values, progress=progress)
    spec = registry.get(data.name)
    bins = ds.bins   # the registration's (DataSpec.build)
    # the official weighting of the data set's code base (per-pixel depth counts: no INV clip,
    # LDS padded by reflection; ages: INV counts clipped to [5, 1000])
    recipe = DIR_RECIPES[spec.recipe]
    lds = method.lds
    bin_w = (bin_weights(train_labels, bins, method.reweight, lds.enabled, lds.kernel, lds.ks,
                         lds.sigma, lds_int_counts=lds.int_counts, **recipe)
             if method.reweight != "none" else None)
    lists = {g: getattr(output, f"{g}_bins") for g in ("many", "medium", "few")}
    shot_bins = lists if any(v is not None for v in lists.values()) else None
    if shot_bins is not None:
        try:
            shot_bins = check_shot_bins(shot_bins, bins.size, "--many/medium/few-bins")
        except ValueError as e:
            raise ConfigError(str(e)) from None
    per_rank = optim.batch_size // env.world
    small = getattr(ds, "image_size", None) is None or max(ds.image_size) <= 32
    workers = data.workers if data.workers is not None else (0 if small else
                                                              min(4, os.cpu_count() or 1))
    # on_error=skip also covers files that fail to decode (a truncated JPEG), which only the
    # loaders see
    on_error = (data.options or {}).get("on_error", "raise")
    common = dict(batch_size=per_rank, shard=(env.rank, env.world), backend=data.backend,
                  device=device, seed=optim.seed, num_workers=workers, on_error=on_error)
    if data.backend == "auto" and getattr(ds, "kind", None) != "tabular":
        common["backend"] = "torch" if device.type != "cuda" else "auto"
    train_loader = make_loader(ds, "train", even_shards=env.active, bin_weights=bin_w,
                               augment=data.augment, **common)
    loaders = {}
    for split in ("val", "test"):
        if split in ds.splits and len(ds.splits[split]):
            loaders[split] = make_loader(ds, split, **common)
    return Data(name=data.name, ds=ds, bins=bins, train_labels=train_labels,
                train_counts=bins.counts(train_labels), dense=spec.dense, select=spec.select,
                bin_w=bin_w, shot_bins=shot_bins, loader_options=common,
                train_loader=train_loader, loaders=loaders)


def make_eval_loader(data, split):
    """An un-shuffled, un-augmented loader over `split` (the training split too), this rank's
    shard, with the run's loader options; the loaders `build_data` made for val / test are
    returned as they are."""
    if split in data.loaders:
        return data.loaders[split]
    if split != "train" or "train" not in data.ds.splits:
        raise ConfigError(f"split {split!r} is not in the data set "
                          f"(have {sorted(data.loaders)})")
    return make_loader(data.ds, "train", shuffle=False, augment=False, **data.loader_options)


# ---------------------------------------------------------------------------------- model

def build_model(model_opts, fds_opts, data, device, env, channels_last=False) -> Regressor:
    """The Regressor of the `model` section for data.ds's inputs (with FDS when the `fds`
    section is enabled), its output set to the training label range, on `device`
    (channels_last where asked), the same weights on every rank."""
    fds = None
    if fds_opts.enabled:
        fds = partial(FDS, bins=data.bins, kernel=fds_opts.kernel, ks=fds_opts.ks,
                      sigma=fds_opts.sigma, momentum=fds_opts.momentum,
                      start_update=fds_opts.start_update, start_smooth=fds_opts.start_smooth,
                      clip=tuple(fds_opts.clip))
    outputs = target_dim(data)
    model = build_regressor(model_opts.name, input_shape(data.name, data.ds),
                            model_opts.width, fds, outputs=outputs)
    # The output starts at the mean training label (and, with --standardize-target, the head
    # predicts (y - mean) / std): with an L1 loss and Adam at lr 1e-3 the raw head otherwise
    # needs many epochs just to reach the label range. Per dimension for a vector target.
    if outputs > 1:
        y = data.train_labels.reshape(-1, outputs)
        model.set_output_range(y.mean(0), y.std(0) if model_opts.standardize_target else 1.0)
    else:
        model.set_output_range(np.mean(data.train_labels),
                               np.std(data.train_labels) if model_opts.standardize_target
                               else 1.0)
    model = model.to(device)
    if channels_last and getattr(data.ds, "kind", None) != "tabular":
        model = model.to(memory_format=torch.channels_last)
    if env.active:
        distributed.broadcast_module(model)
    return model


def target_dim(data):
    """D of the run's targets: the dimensions of its label bins (1 for scalar targets)."""
    return int(getattr(data.bins, "dim", 1))


def channels_last(optim, device):
    """Whether images go through the model in channels_last (`optim.channels_last`, CUDA
    only)."""
    return optim.channels_last and device.type == "cuda"


def wrap_model(model, optim, env, device):
    """The module the training step calls: DistributedDataParallel under torchrun (built after
    RRT froze the encoder, so it only syncs trainable parameters), then torch.compile. The step
    scopes the compiler setting SSIR needs (see `TrainStep`)."""
    fwd = model
    if env.active:
        fwd = DistributedDataParallel(fwd, device_ids=[device.index] if device.type == "cuda"
                                      else None)
    if optim.compile:
        fwd = torch.compile(fwd)
    return fwd


# ---------------------------------------------------------------------------------- losses

def make_base_loss(method, bins, train_labels, device):
    """(loss_fn(pred, y, weight), module with parameters or None) for the `method` section's
    loss."""
    if method.loss in ("bmc", "gai", "bni"):
        mod = losses.BalancedMSELoss(method.loss, method.bmse.sigma, True, bins=bins,
                                     train_labels=train_labels,
                                     n_components=method.bmse.gmm_components)
        mod = mod.to(device)
        return _float_loss(mod), mod
    focal = dict(activate=method.focal.activate, beta=method.focal.beta,
                 gamma=method.focal.gamma)
    fns = {"l1": losses.weighted_l1, "mse": losses.weighted_mse, "huber": losses.weighted_huber,
           "focal-l1": partial(losses.focal_l1, **focal),
           "focal-mse": partial(losses.focal_mse, **focal)}
    return _float_loss(fns[method.loss]), None


def _float_loss(fn):
    # bf16 predictions under autocast: the loss itself in float32
    def loss(pred, y, weight=None):
        return fn(pred.float(), y.float().reshape(pred.shape), weight)
    return loss


def ssir_distance(ssir, loss):
    """The SSIR distance: the `ssir` section's, or with "auto" the one of the supervised loss."""
    if ssir.distance != "auto":
        return ssir.distance
    return {"l1": "l1", "focal-l1": "l1", "huber": "huber"}.get(loss, "mse")


@dataclass
class Losses:
    base: Callable                   # base(pred, y, weight): the supervised loss, in float32
    module: Optional[torch.nn.Module]  # its parameters (Balanced MSE's noise scale) or None
    ssir: Optional[SSIRLoss]


def build_losses(method, ssir_opts, data, device) -> Losses:
    """The supervised loss of the `method` section and, with the `ssir` section enabled, the
    SSIR loss around it."""
    base, module = make_base_loss(method, data.bins, data.train_labels, device)
    ssir = None
    s = ssir_opts
    if s.enabled:
        ds = data.ds
        lo = hi = None
        if s.clip and hasattr(ds, "clip_bounds") and ds.clip_bounds() is not None:
            lo, hi = (torch.tensor(b) for b in ds.clip_bounds())
        ssir = SSIRLoss(s.bin_width or data.bins.bin_width, s.epsilon, s.lam,
                        ssir_distance(s, method.loss), s.n_steps, s.target, lo, hi,
                        base_loss=base, validate=False, rho=s.rho, eps_max=s.eps_max,
                        subset=s.subset, bins=data.bins, bin_counts=data.train_counts,
                        perturb_autocast=torch.bfloat16 if s.bf16 else None)
    return Losses(base, module, ssir)


# ---------------------------------------------------------------------------------- optimiser

def build_optimizer(optim, params, loss_module=None):
    """(Adam over `params` and the loss module's parameters with the `optim` section's lr and
    weight decay, its lr schedule, the parameter list)."""
    params = list(params)
    if loss_module is not None:
        params += list(loss_module.parameters())
    opt = torch.optim.Adam(params, lr=optim.lr, weight_decay=optim.weight_decay)
    return opt, make_scheduler(optim, opt), params
