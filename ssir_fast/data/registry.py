"""The data-set registry: everything the package knows about a data set, in one registration.

    from ssir_fast.data import registry
    registry.register(registry.DataSpec(
        name="my_set", summary="my data", kind="image", load=my_loader,
        preset=dict(model="resnet18", epochs=30, batch_size=64, lr=1e-3, loss="l1"),
        root="the folder with my_set.csv"))

A `DataSpec` holds
- ``load(root, **options)``: builds the data set. Its keyword parameters are the options
  ``load_dataset(name, root, **options)`` and ``--data-options k=v`` accept; a ``**kwargs`` that
  ``load`` passes on to another function is declared in ``forwards`` so that its parameters are
  accepted too (`options` reads both with `inspect.signature`);
- ``flags``: loader keywords the trainer sets from training flags (``image_size`` from
  ``--image-size``, ...); giving one of them in ``--data-options`` is an error naming the flag;
- ``preset``: the training defaults of the data set (SPEC 2); `BASE_PRESET` fills the fields a
  preset leaves out;
- ``kind`` ("image", "depth" or "tabular"), which gives the model input shape, and ``models``,
  the models that fit the data (empty: any image model);
- ``root``: what ``--data-root`` names (None: unused), ``needs_root``: whether it is required,
  and ``rules(cfg)``: further checks of a training configuration, returning error messages.

`ssir_fast.data.load_dataset`, the trainer (`load_data`, `input_shape`), the configuration's
presets, validation and help strings all read the registry, so adding a data set is one
`register` call.
"""
import inspect
import os
from dataclasses import dataclass, field
from typing import Callable, Optional

from ..imbalance import LabelBins
from ..metrics import nyud2_shot_bins
from .datasets import load_dir_csv, load_nyud2
from .default_data import DEFAULTS as DEFAULT_DATA_OPTIONS, load_default
from .synthetic import two_gaussians
from .tabular import TabularDataset, load_tabular

__all__ = ["DataSpec", "register", "unregister", "get", "names", "specs", "BASE_PRESET",
           "KINDS", "ON_ERROR"]

KINDS = ("image", "depth", "tabular")
ON_ERROR = ("raise", "skip")

# Training defaults for what a data set's preset leaves out: the paper's AgeDB / IMDB-WIKI values
# (SSIR lambda 0.1, epsilon 1e-3, FDS clamp 0.1..10), no schedule, augmentation on.
BASE_PRESET = dict(augment=True, standardize_target=False, lam=0.1, epsilon=1e-3,
                   fds_clip=[0.1, 10.0], schedule="none", weight_decay=0.0)


def _no_rules(cfg):
    return []


@dataclass(frozen=True)
class DataSpec:
    """One data set: how to build it and how to train on it (see the module docstring)."""
    name: str
    summary: str
    kind: str
    load: Callable
    preset: dict = field(default_factory=dict)
    # what a **kwargs of `load` is passed on to, in order: (function, parameters `load` sets
    # itself) or (names, ()) where the function takes **kwargs and checks them by name
    forwards: tuple = ()
    flags: dict = field(default_factory=dict)     # loader keyword -> TrainConfig field
    root: Optional[str] = None    # what --data-root names (None: unused)
    needs_root: bool = False      # True: --data-root is required
    models: tuple = ()
    rules: Callable = _no_rules

    def __post_init__(self):
        if not str(self.name).isidentifier():
            raise ValueError(f"DataSpec name must be an identifier, got {self.name!r}")
        if self.kind not in KINDS:
            raise ValueError(f"DataSpec {self.name}: kind must be one of {list(KINDS)}, got "
                             f"{self.kind!r}")
        if not callable(self.load):
            raise TypeError(f"DataSpec {self.name}: load must be callable, got {self.load!r}")

    @property
    def options(self):
        """Sorted names ``load`` accepts as options (root excluded), through ``forwards``."""
        names, fns = set(), [(self.load, ("root",))] + list(self.forwards)
        for fn, skip in fns:
            if not callable(fn):         # the names a **kwargs accepts
                names |= set(fn) - set(skip)
                break
            params = inspect.signature(fn).parameters.values()
            names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                      and p.name not in skip}
            if not any(p.kind == p.VAR_KEYWORD for p in params):
                break   # no **kwargs: the forwarded functions are not reached
        return tuple(sorted(names))

    def option_errors(self, options, arg="options"):
        """Messages for option names ``load`` does not accept, naming the accepted ones."""
        accepted = self.options
        return [f"{arg}: unknown option {k!r} for data set {self.name!r}; accepted: "
                f"{', '.join(accepted)}" for k in sorted(options) if k not in accepted]

    def input_shape(self, ds):
        """The model input shape of one sample: (features,) or (3, H, W)."""
        if self.kind == "tabular":
            return (ds.num_features,)
        return (3,) + tuple(ds.image_size)


_REGISTRY = {}


def register(spec, replace=False):
    """Add a data set; a name already registered is an error unless ``replace``."""
    if not isinstance(spec, DataSpec):
        raise TypeError(f"register() takes a DataSpec, got {type(spec).__name__}")
    if spec.name in _REGISTRY and not replace:
        raise ValueError(f"data set {spec.name!r} is already registered (pass replace=True)")
    _REGISTRY[spec.name] = spec
    return spec


def unregister(name):
    """Remove a registered data set (tests, plug-ins)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown data set {name!r}; choose one of {list(names())}")
    del _REGISTRY[name]


def names():
    """Registered data-set names, in registration order."""
    return tuple(_REGISTRY)


def specs():
    return tuple(_REGISTRY.values())


def get(name):
    """The `DataSpec` of ``name``; an unknown name is a ValueError listing the known ones."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown data set {name!r}; choose one of {list(names())}") from None


# ------------------------------------------------------------------------------ loaders

def _load_dir(name):
    """AgeDB-DIR / IMDB-WIKI-DIR: ``root`` holds ``<name>.csv`` (or ``csv=``) and the images."""
    def load(root, *, csv=None, image_root=None, **options):
        if root is None:
            raise ValueError(f"load_dataset({name!r}) needs root= (the folder with {name}.csv)")
        csv_path = csv or os.path.join(root, f"{name}.csv")
        if not os.path.isabs(csv_path) and not os.path.exists(csv_path):
            csv_path = os.path.join(root, csv_path)
        return load_dir_csv(csv_path, image_root or root, name=name, **options)
    load.__name__ = f"load_{name}"
    return load


def _load_nyud2(root, **options):
    if root is None:
        raise ValueError("load_dataset('nyud2') needs root= (the folder with nyu2_train.csv)")
    return load_nyud2(root, **options)


def _load_two_gaussians(root=None, *, on_error="raise", **options):
    # generated in memory: there is nothing to skip, and no folder to read
    return two_gaussians(**options)


def _load_tabular(root=None, *, path=None, target=None, **options):
    path = path or root
    if path is None:
        raise ValueError("load_dataset('tabular') needs root= (the CSV file) and target=")
    if target is None:
        raise ValueError("load_dataset('tabular') needs target= (the target column)")
    return load_tabular(path, target, **options)


# ------------------------------------------------------------------------------ rules

def _depth_rules(cfg):
    errs = []
    if cfg.fds or cfg.ranksim:
        errs.append("--fds and --ranksim work on per-sample features; the depth model has none "
                    "(use --reweight/--lds/--ssir for nyud2)")
    if cfg.loss == "bmc":
        errs.append("--loss bmc builds an M x M matrix over every output pixel: use --loss bni or "
                    "gai for depth maps")
    return errs


def _tabular_rules(cfg):
    return [] if cfg.target else ["--data tabular needs --target COLUMN"]


# ------------------------------------------------------------------------------ the data sets

_PAPER_IMAGES = dict(model="resnet50", image_size=224, epochs=90, batch_size=256, lr=1e-3,
                     weight_decay=0.0, schedule="multistep", milestones=[60, 80], loss="l1")

register(DataSpec(
    "default", "rotated digits (built on first use; the target is the angle)", "image",
    load_default, forwards=((tuple(DEFAULT_DATA_OPTIONS), ()),),
    flags={"image_size": "image_size", "progress": "progress"},
    root="the build folder (unset: under $SSIR_FAST_DATA or ~/.cache/ssir_fast)",
    preset=dict(augment=False, standardize_target=True, model="cnn", width=16, image_size=16,
                epochs=8, batch_size=128, lr=1e-3, weight_decay=0.0, schedule="multistep",
                milestones=[5, 7], loss="l1", threads=1)))
for _name, _summary in (("agedb", "AgeDB-DIR (age from faces)"),
                        ("imdb_wiki", "IMDB-WIKI-DIR (age from faces)")):
    register(DataSpec(
        _name, _summary, "image", _load_dir(_name),
        forwards=((load_dir_csv, ("csv_path", "image_root", "name")),),
        flags={"image_size": "image_size"},
        root=f"the folder with {_name}.csv and the images", needs_root=True,
        preset=dict(_PAPER_IMAGES)))
register(DataSpec(
    "nyud2", "NYUD2-DIR (depth maps)", "depth", _load_nyud2,
    forwards=((load_nyud2, ("root",)),), flags={"image_size": "image_size"},
    root="the folder with the NYUD2-DIR list files", needs_root=True, models=("depthnet",),
    rules=_depth_rules,
    preset=dict(model="depthnet", epochs=20, batch_size=32, lr=1e-4, weight_decay=1e-4,
                schedule="step", step_size=5, loss="mse", lam=1.0, epsilon=5e-4,
                fds_clip=[0.2, 5.0], **{f"{g}_bins": b for g, b in nyud2_shot_bins(
                    LabelBins(0.7, 0.1, 93)).items()})))
register(DataSpec(
    "two_gaussians", "two Gaussians with imbalance ratio --ratio (synthetic)", "tabular",
    _load_two_gaussians, forwards=((two_gaussians, ()),),
    flags={"ratio": "ratio", "seed": "seed"}, models=("mlp",),
    preset=dict(standardize_target=True, model="mlp", width=128, epochs=200, batch_size=256,
                lr=1e-3, weight_decay=5e-5, schedule="none", loss="mse")))
register(DataSpec(
    "tabular", "a CSV of numeric features and a --target column", "tabular", _load_tabular,
    forwards=((load_tabular, ("path", "target")),
              (TabularDataset.__init__, ("self", "name", "splits", "feature_names"))),
    flags={"target": "target"}, root="the CSV file", needs_root=True, models=("mlp",),
    rules=_tabular_rules,
    preset=dict(standardize_target=True, model="mlp", width=128, epochs=100, batch_size=256,
                lr=1e-3, weight_decay=0.0, schedule="none", loss="l1")))
del _name, _summary
