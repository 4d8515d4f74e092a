"""The data-set registry: everything the package knows about a data set, in one registration.

    from ssir_fast.data import registry
    registry.register(registry.DataSpec(
        name="my_set", summary="my data", kind="image", load=my_loader,
        preset=dict(model="resnet18", epochs=30, batch_size=64, lr=1e-3, loss="l1"),
        root="the folder with my_set.csv",
        bins=LabelBins(0.0, 1.0, 100),              # optional: the loader's own bins otherwise
        shot_groups={"many": [...], "few": [...]},  # optional: count thresholds otherwise
        select="rmse"))                             # optional: the MAE picks the best epoch

A `DataSpec` holds
- ``load(root, **options)``: builds the data set. Its keyword parameters are the options
  ``load_dataset(name, root, **options)`` and ``--data-options k=v`` accept; a ``**kwargs`` that
  ``load`` passes on to another function is declared in ``forwards`` so that its parameters are
  accepted too (`options` reads both with `inspect.signature`);
- ``flags``: loader keywords the trainer sets from training flags (``image_size`` from
  ``--image-size``, ...); giving one of them in ``--data-options`` is an error naming the flag;
- ``preset``: the training defaults of the data set (docs/algorithm.md, section 3);
  `BASE_PRESET` fills the fields a preset leaves out;
- ``kind`` ("image", "depth" or "tabular"), which gives the model input shape, and ``models``,
  the models that fit the data (empty: any image model);
- ``root``: what ``--data-root`` names (None: unused), ``needs_root``: whether it is required,
  and ``rules(**values)``: further checks of the run's options, given as plain values by
  keyword (the names in `RULE_VALUES`: the loss name, FDS on/off, ...), returning error
  messages;
- how to train and evaluate on it: ``bins`` (a `LabelBins`, a function of the loaded data set
  returning one, or None for the data set's own), ``recipe`` (the `DIR_RECIPES` weighting),
  ``shot_groups`` (fixed many/medium/few bin lists, or a function of ``bins`` returning them;
  None: thresholds on the training counts), ``select`` (the validation metric that picks the
  best epoch, lower is better), ``normalize`` (per-channel (mean, std) of the inputs, None: the
  data set's own); ``dense`` says whether the target is a map (depth) rather than a number.

`load_dataset` builds a data set through `DataSpec.build`, which applies the bins and
normalisation of its registration. The trainer (`load_data`, `build_data`, `input_shape`), the
configuration's presets, validation and help strings all read the registry, so adding a data
set is one `register` call (plus its loader function).
"""
import inspect
import os
from dataclasses import dataclass, field
from typing import Callable, Optional

from .. import nyud2
from ..imbalance import DIR_RECIPES, LabelBins
from ..shot_groups import GROUPS, check_shot_bins, nyud2_shot_bins
from .datasets import load_dir_csv, load_nyud2
from .default_data import DEFAULTS as DEFAULT_DATA_OPTIONS, load_default
from .default2d_data import DEFAULTS_2D, load_default2d
from .synthetic import two_gaussians
from .tabular import TabularDataset, load_tabular

__all__ = ["DataSpec", "register", "unregister", "get", "names", "specs", "BASE_PRESET",
           "KINDS", "ON_ERROR", "RULE_VALUES", "SELECT_METRICS"]

KINDS = ("image", "depth", "tabular")
ON_ERROR = ("raise", "skip")
# the options a data set's rules receive, by keyword, as plain values
RULE_VALUES = ("data", "model", "width", "loss", "fds", "ranksim", "image_size", "target",
               "data_options")
# metrics of the "all" group a data set may select the best epoch by (lower is better)
SELECT_METRICS = ("mae", "mse", "rmse", "gm")

# Training defaults for what a data set's preset leaves out: the paper's AgeDB / IMDB-WIKI values
# (SSIR lambda 0.1, epsilon 1e-3, FDS clamp 0.1..10), no schedule, augmentation on.
BASE_PRESET = dict(augment=True, standardize_target=False, lam=0.1, epsilon=1e-3,
                   fds_clip=[0.1, 10.0], schedule="none", weight_decay=0.0)


def _no_rules(**values):
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
    option_help: dict = field(default_factory=dict)   # option -> "type: meaning (default ...)"
    bins: object = None           # LabelBins, ds -> LabelBins, or None (the data set's own)
    recipe: str = "age"           # the DIR_RECIPES weighting (INV clip, LDS padding)
    shot_groups: object = None    # {"many"|"medium"|"few": [bin, ...]}, bins -> that, or None
    select: str = "mae"           # the validation metric of the best epoch (lower is better)
    normalize: Optional[tuple] = None   # ((mean per channel), (std per channel)) or None

    def __post_init__(self):
        if not str(self.name).isidentifier():
            raise ValueError(f"DataSpec name must be an identifier, got {self.name!r}")
        if self.kind not in KINDS:
            raise ValueError(f"DataSpec {self.name}: kind must be one of {list(KINDS)}, got "
                             f"{self.kind!r}")
        if not callable(self.load):
            raise TypeError(f"DataSpec {self.name}: load must be callable, got {self.load!r}")
        if not (self.bins is None or isinstance(self.bins, LabelBins) or callable(self.bins)):
            raise TypeError(f"DataSpec {self.name}: bins must be a LabelBins, a function of the "
                            f"data set returning one, or None, got {self.bins!r}")
        if self.recipe not in DIR_RECIPES:
            raise ValueError(f"DataSpec {self.name}: recipe must be one of {list(DIR_RECIPES)}, "
                             f"got {self.recipe!r}")
        if self.select not in SELECT_METRICS:
            raise ValueError(f"DataSpec {self.name}: select must be one of "
                             f"{list(SELECT_METRICS)}, got {self.select!r}")
        if self.normalize is not None and (len(self.normalize) != 2 or
                                           len(self.normalize[0]) != len(self.normalize[1])):
            raise ValueError(f"DataSpec {self.name}: normalize must be (mean, std), one value "
                             f"per channel each, got {self.normalize!r}")
        if self.shot_groups is not None:
            # fixed lists need fixed bins; they become the preset's --many/medium/few-bins, so
            # that the flags and thresholds given by the user replace them as usual
            if not isinstance(self.bins, LabelBins):
                raise ValueError(f"DataSpec {self.name}: shot_groups need fixed bins (a "
                                 f"LabelBins), got bins={self.bins!r}")
            groups = (self.shot_groups(self.bins) if callable(self.shot_groups)
                      else self.shot_groups)
            lists = check_shot_bins(groups, self.bins.num_bins, f"DataSpec {self.name}: "
                                                                "shot_groups")
            given = {f"{g}_bins": lists[g] for g in GROUPS[1:] if lists[g]}
            object.__setattr__(self, "preset", {**self.preset, **given})

    @property
    def dense(self):
        """Whether the target is a map (depth: one label per pixel) rather than a number."""
        return self.kind == "depth"

    def build(self, root=None, **options):
        """``load(root, **options)`` with this registration's bins and normalisation applied
        (``bins``, ``mean`` or ``std`` given as options are kept)."""
        ds = self.load(root, **options)
        if self.bins is not None and "bins" not in options:
            ds.bins = self.bins if isinstance(self.bins, LabelBins) else self.bins(ds)
        if self.normalize is not None and not ({"mean", "std"} & set(options)):
            ds.mean, ds.std = (tuple(float(v) for v in t) for t in self.normalize)
        return ds

    def check(self, **values):
        """The messages of ``rules`` for the run's options `values` (plain values by name, the
        ones in `RULE_VALUES`)."""
        return list(self.rules(**{k: values[k] for k in RULE_VALUES if k in values}))

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

    def option_defaults(self):
        """{option: default} of each option, from the signatures ``options`` reads
        (`inspect.Parameter.empty` where there is none, e.g. a **kwargs name)."""
        found, fns = {}, [(self.load, ("root",))] + list(self.forwards)
        for fn, skip in fns:
            if not callable(fn):     # names (a mapping: names and their defaults)
                found.update({k: v for k, v in fn.items() if k not in found}
                             if isinstance(fn, dict) else {})
                break
            params = inspect.signature(fn).parameters.values()
            for p in params:
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in skip:
                    found.setdefault(p.name, p.default)
            if not any(p.kind == p.VAR_KEYWORD for p in params):
                break
        return {o: found.get(o, inspect.Parameter.empty) for o in self.options}

    def describe_options(self, exclude=()):
        """'name: type = default' for each option (the help of --data-options; the name alone
        where there is no default)."""
        out = []
        for o, d in self.option_defaults().items():
            if o in exclude:
                continue
            if o in self.option_help:
                out.append(f"{o}: {self.option_help[o]}")
            elif d is inspect.Parameter.empty or d is None:
                out.append(o)
            else:
                out.append(f"{o}: {type(d).__name__} = {d}")
        return out

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

def _default_rules(*, image_size=None, data_options=None, **_):
    """The default data's option values (n_train >= 1, tau > 0, ...), checked before any work."""
    from .default_data import option_errors
    errs = []
    if image_size is not None and image_size < 8:
        errs.append(f"--image-size must be >= 8 for --data default, got {image_size}")
    # numbers only: a value of the wrong type is reported by the options' type check
    opts = {k: v for k, v in (data_options or {}).items() if k in DEFAULT_DATA_OPTIONS
            and k != "image_size" and isinstance(v, (int, float)) and not isinstance(v, bool)}
    return errs + [f"--data-options: {m}" for m in option_errors(opts)]


def _default2d_rules(*, image_size=None, data_options=None, **_):
    """The two-target default data's option values, checked before any work."""
    from .default2d_data import option_errors
    errs = []
    if image_size is not None and image_size < 8:
        errs.append(f"--image-size must be >= 8 for --data default2d, got {image_size}")
    opts = {k: v for k, v in (data_options or {}).items() if k in DEFAULTS_2D
            and k != "image_size" and isinstance(v, (int, float)) and not isinstance(v, bool)}
    return errs + [f"--data-options: {m}" for m in option_errors(opts)]


def _depth_rules(*, fds=False, ranksim=False, loss=None, **_):
    errs = []
    if fds or ranksim:
        errs.append("--fds and --ranksim work on per-sample features; the depth model has none "
                    "(use --reweight/--lds/--ssir for nyud2)")
    if loss == "bmc":
        errs.append("--loss bmc builds an M x M matrix over every output pixel: use --loss bni or "
                    "gai for depth maps")
    return errs


def _tabular_rules(*, target=None, **_):
    return [] if target else ["--data tabular needs --target COLUMN"]


# ------------------------------------------------------------------------------ the data sets

_DIR_NORM = (0.5, 0.5, 0.5)   # AgeDB-DIR / IMDB-WIKI-DIR: mean = std = 0.5 per channel
_PAPER_IMAGES = dict(model="resnet50", image_size=224, epochs=90, batch_size=256, lr=1e-3,
                     weight_decay=0.0, schedule="multistep", milestones=[60, 80], loss="l1")

register(DataSpec(
    "default", "rotated digits (built on first use; the target is the angle)", "image",
    load_default, forwards=((dict(DEFAULT_DATA_OPTIONS), ()),),
    flags={"image_size": "image_size", "progress": "progress"}, rules=_default_rules,
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
        bins=LabelBins.dir_age(), normalize=(_DIR_NORM, _DIR_NORM),
        preset=dict(_PAPER_IMAGES)))
register(DataSpec(
    "nyud2", "NYUD2-DIR (depth maps)", "depth", _load_nyud2,
    forwards=((load_nyud2, ("root",)),), flags={"image_size": "image_size"},
    root="the folder with the NYUD2-DIR list files", needs_root=True, models=("depthnet",),
    rules=_depth_rules, bins=nyud2.BINS, recipe=nyud2.RECIPE, shot_groups=nyud2_shot_bins,
    select=nyud2.SELECT_METRIC, normalize=(nyud2.MEAN, nyud2.STD),
    preset=dict(model="depthnet", epochs=20, batch_size=32, lr=1e-4, weight_decay=1e-4,
                schedule="step", step_size=5, loss="mse", lam=1.0, epsilon=5e-4,
                fds_clip=[0.2, 5.0])))
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
    option_help=dict(
        features="feature columns, features=age,bmi or features=age;bmi (default: every column "
                 "but the target and split column)",
        split_column="str, the train/val/test column (default: 'split' when the CSV has one, "
                     "else a seeded random split; a named column must exist)",
        num_bins="int, equal label bins over the training range (default: training rows // 50, "
                 "between 10 and 100; several targets: one int or one per target, num_bins=4,6)",
        bin_width="float, the label bin length instead of num_bins (default: unset; several "
                  "targets: one or one per target, bin_width=1,0.25)",
        bins="int, the same as num_bins",
        normalize="bool = True, standardise the features with the training statistics",
        val_fraction="float = 0.1, random split: validation share",
        test_fraction="float = 0.2, random split: test share",
        seed="int = 0, the random split's seed",
        on_error="raise|skip = raise, bad rows stop the run or are skipped with a warning"),
    preset=dict(standardize_target=True, model="mlp", width=128, epochs=100, batch_size=256,
                lr=1e-3, weight_decay=0.0, schedule="none", loss="l1")))
register(DataSpec(
    "default2d", "rotated and shrunk digits: two long-tailed targets [angle, shrink] (built on "
    "first use)", "image", load_default2d, forwards=((dict(DEFAULTS_2D), ()),),
    flags={"image_size": "image_size", "progress": "progress"}, rules=_default2d_rules,
    root="the build folder (unset: under $SSIR_FAST_DATA or ~/.cache/ssir_fast)",
    preset=dict(augment=False, standardize_target=True, model="cnn", width=16, image_size=16,
                epochs=8, batch_size=128, lr=1e-3, weight_decay=0.0, schedule="multistep",
                milestones=[5, 7], loss="l1", threads=1)))
del _name, _summary
