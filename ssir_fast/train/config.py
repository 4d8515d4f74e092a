"""Training configuration: one dataclass, filled in layers and validated before any work starts.

    defaults  <  data-set preset (PRESETS[data])  <  config file (YAML / TOML)  <  command-line flags

Every field is a flag (``--reweight sqrt_inv``, ``--lds``, ``--no-lds``) and a config-file key
(``reweight: sqrt_inv``; dashes and underscores are interchangeable). The presets hold the
paper's schedules (SPEC 2): AgeDB / IMDB-WIKI Adam 1e-3, x0.1 at epochs 60 and 80 of 90, batch
256, L1; NYUD2 Adam 1e-4, x0.1 every 5 epochs, 20 epochs, batch 32, weight decay 1e-4, MSE.
`validate` rejects invalid combinations (LDS without re-weighting, RRT without a checkpoint,
SMOGN on images, ...) with a message naming the flags.
"""
import argparse
import dataclasses
import math
import os
from dataclasses import dataclass, field, fields
from typing import Optional

from ..imbalance import LabelBins
from ..metrics import nyud2_shot_bins

__all__ = ["TrainConfig", "ConfigError", "PRESETS", "LOSSES", "load_config_file", "add_arguments",
           "make_config", "validate", "describe"]

LOSSES = ("l1", "mse", "huber", "focal-l1", "focal-mse", "bmc", "gai", "bni")
REWEIGHTS = ("none", "inverse", "sqrt_inv")
SCHEDULES = ("multistep", "step", "cosine", "none")
DATASETS = ("default", "agedb", "imdb_wiki", "nyud2", "two_gaussians", "tabular")
MODELS = ("mlp", "cnn", "resnet18", "resnet50", "depthnet")


class ConfigError(ValueError):
    """An invalid option or combination of options (raised before any work starts)."""


def _f(default, help, choices=None, group="training", flag_type=None):
    return field(default=default, metadata={"help": help, "choices": choices, "group": group,
                                            "type": flag_type})


@dataclass
class TrainConfig:
    # data
    data: str = _f("default", "data set", DATASETS, "data")
    data_root: Optional[str] = _f(None, "data folder (agedb/imdb_wiki/nyud2) or CSV file (tabular);"
                                  " default data: the build folder", group="data")
    image_size: Optional[int] = _f(None, "input image size (default data: builds that size)",
                                   group="data", flag_type=int)
    target: Optional[str] = _f(None, "target column (tabular)", group="data")
    ratio: float = _f(10.0, "imbalance ratio N1/N2 (two_gaussians)", group="data", flag_type=float)
    data_options: Optional[dict] = _f(None, "extra data-set options k=v,k=v (default data: n_train,"
                                      " val_per_bin, test_per_bin, max_angle, tau)", group="data",
                                      flag_type="kv")
    augment: Optional[bool] = _f(None, "DIR training augmentation (pad-16 random crop + flip; "
                                 "default on, off for the default data: a flip changes the "
                                 "rotation angle)", group="data", flag_type="bool")
    backend: str = _f("auto", "image loader backend", ("auto", "dali", "torch"), "data")
    workers: Optional[int] = _f(None, "loader workers (default: 0 for images <= 32 px, else "
                                "min(4, CPUs))", group="data", flag_type=int)
    # model
    model: Optional[str] = _f(None, "model (default: per data set)", MODELS, "model")
    width: Optional[int] = _f(None, "base width (mlp hidden / cnn / resnet channels)", group="model",
                              flag_type=int)
    standardize_target: Optional[bool] = _f(None, "the head predicts (y - mean) / std of the "
                                            "training labels (default on for default/tabular/"
                                            "two_gaussians, off for the paper data sets)",
                                            group="model", flag_type="bool")
    # supervised loss
    loss: Optional[str] = _f(None, "supervised loss (default: l1, mse for nyud2/two_gaussians)",
                             LOSSES, "method")
    focal_beta: float = _f(0.2, "Focal-R beta", group="method", flag_type=float)
    focal_gamma: float = _f(1.0, "Focal-R gamma", group="method", flag_type=float)
    focal_activate: str = _f("sigmoid", "Focal-R activation", ("sigmoid", "tanh"), "method")
    bmse_sigma: float = _f(1.0, "Balanced MSE initial noise sigma (learned)", group="method",
                           flag_type=float)
    gmm_components: int = _f(8, "Balanced MSE GAI: GMM components", group="method", flag_type=int)
    # re-weighting and LDS
    reweight: str = _f("none", "re-weighting (inverse = INV, sqrt_inv = SQINV)", REWEIGHTS, "method")
    lds: bool = _f(False, "label distribution smoothing (needs --reweight)", group="method")
    lds_kernel: str = _f("gaussian", "LDS kernel", ("gaussian", "triang", "laplace"), "method")
    lds_ks: int = _f(5, "LDS kernel size (odd)", group="method", flag_type=int)
    lds_sigma: float = _f(2.0, "LDS kernel sigma", group="method", flag_type=float)
    lds_int_counts: bool = _f(False, "INV + LDS: truncate the smoothed counts to integers as the "
                              "official DIR code does (its weights differ from the exact ones by "
                              "2-8%%)", group="method")
    # FDS
    fds: bool = _f(False, "feature distribution smoothing", group="method")
    fds_kernel: str = _f("gaussian", "FDS kernel", ("gaussian", "triang", "laplace"), "method")
    fds_ks: int = _f(5, "FDS kernel size (odd)", group="method", flag_type=int)
    fds_sigma: float = _f(2.0, "FDS kernel sigma", group="method", flag_type=float)
    fds_momentum: float = _f(0.9, "FDS momentum", group="method", flag_type=float)
    fds_start_update: int = _f(0, "FDS first epoch collecting statistics", group="method",
                               flag_type=int)
    fds_start_smooth: int = _f(1, "FDS first epoch calibrating features", group="method",
                               flag_type=int)
    fds_clip: Optional[list] = _f(None, "FDS variance-ratio clamp lo,hi (default 0.1,10; nyud2 "
                                  "0.2,5)", group="method", flag_type="floats")
    # RankSim
    ranksim: bool = _f(False, "RankSim regulariser on the features", group="method")
    ranksim_gamma: float = _f(100.0, "RankSim weight gamma", group="method", flag_type=float)
    ranksim_lam: float = _f(2.0, "RankSim interpolation lambda", group="method", flag_type=float)
    # SMOGN
    smogn: bool = _f(False, "SMOGN over-sampling of the training set (tabular data)", group="method")
    smogn_k: int = _f(5, "SMOGN neighbours", group="method", flag_type=int)
    smogn_pert: float = _f(0.02, "SMOGN Gaussian perturbation", group="method", flag_type=float)
    smogn_thres: float = _f(0.5, "SMOGN relevance threshold", group="method", flag_type=float)
    # RRT
    rrt: bool = _f(False, "second stage: re-train the last layer with re-weighting, starting from "
                   "--checkpoint", group="method")
    rrt_epochs: Optional[int] = _f(None, "RRT epochs (default: --epochs)", group="method",
                                   flag_type=int)
    checkpoint: Optional[str] = _f(None, "model checkpoint (RRT first stage)", group="method")
    # SSIR
    ssir: bool = _f(False, "SSIR consistency loss", group="ssir")
    lam: Optional[float] = _f(None, "SSIR lambda (default 0.1; nyud2 1.0)", group="ssir",
                              flag_type=float)
    epsilon: Optional[float] = _f(None, "SSIR perturbation radius (default 1e-3; nyud2 5e-4); 0 "
                                  "= output noise only (ablation); auto = eps_i = rho * delta / "
                                  "||grad_x D_i|| per sample", group="ssir", flag_type="eps")
    ssir_rho: float = _f(0.5, "auto-epsilon: first-order output change as a fraction of delta, in "
                         "(0, 1]", group="ssir", flag_type=float)
    ssir_eps_max: Optional[float] = _f(None, "auto-epsilon: cap on the per-sample radius",
                                       group="ssir", flag_type=float)
    n_steps: int = _f(2, "SSIR adversarial steps (1: fast mode, one forward and one input "
                      "backward fewer)", group="ssir", flag_type=int)
    ssir_subset: Optional[float] = _f(None, "fast mode: consistency term on this fraction of each "
                                      "batch, drawn in proportion to rarity (1 / bin count)",
                                      group="ssir", flag_type=float)
    ssir_bf16: bool = _f(False, "fast mode: the direction-finding passes (steps 2..n) under bf16 "
                         "autocast when the model trains in fp32", group="ssir")
    ssir_target: str = _f("noisy", "SSIR target", ("noisy", "clean"), "ssir")
    ssir_distance: str = _f("auto", "SSIR distance (auto: follows the loss)",
                            ("auto", "l1", "mse", "huber"), "ssir")
    ssir_clip: bool = _f(True, "clip perturbed inputs to the valid (normalised) range", group="ssir")
    ssir_bin_width: Optional[float] = _f(None, "SSIR noise range / similarity threshold (default: "
                                         "the data set's bin width)", group="ssir", flag_type=float)
    # optimisation
    epochs: Optional[int] = _f(None, "epochs", flag_type=int)
    batch_size: Optional[int] = _f(None, "global batch size (split across DDP ranks)",
                                   flag_type=int)
    lr: Optional[float] = _f(None, "Adam learning rate", flag_type=float)
    weight_decay: Optional[float] = _f(None, "weight decay", flag_type=float)
    schedule: Optional[str] = _f(None, "learning-rate schedule", SCHEDULES)
    milestones: Optional[list] = _f(None, "multistep milestones (epochs), e.g. 60,80",
                                    flag_type="ints")
    step_size: Optional[int] = _f(None, "step schedule period (epochs)", flag_type=int)
    gamma: float = _f(0.1, "learning-rate decay factor", flag_type=float)
    seed: int = _f(0, "random seed", flag_type=int)
    deterministic: bool = _f(False, "deterministic algorithms (slower on GPU)")
    device: str = _f("auto", "device: auto, cpu, cuda, cuda:N")
    amp: bool = _f(True, "mixed precision on GPU (ignored on CPU): bf16 autocast, or fp16 with "
                   "a gradient scaler on GPUs without bf16")
    amp_dtype: str = _f("auto", "mixed-precision dtype (auto: bf16 where supported, else fp16)",
                        ("auto", "bf16", "fp16"))
    channels_last: bool = _f(True, "channels_last memory format on GPU (ignored on CPU)")
    compile: bool = _f(False, "torch.compile the model")
    threads: Optional[int] = _f(None, "CPU threads for torch (default: torch's; 1 for the small "
                                "default model, which gains little from more and suffers most on "
                                "busy cores)", flag_type=int)
    # evaluation: shot groups by training count thresholds, or by fixed lists of bins
    many_thr: float = _f(100, "many-shot: more than this many training labels in the bin",
                         group="evaluation", flag_type=float)
    few_thr: float = _f(20, "few-shot: fewer than this many training labels in the bin",
                        group="evaluation", flag_type=float)
    many_bins: Optional[list] = _f(None, "many-shot bins as a list of bin indices, e.g. 2-38,40 "
                                   "(replaces the thresholds; nyud2: the official lists)",
                                   group="evaluation", flag_type="ranges")
    medium_bins: Optional[list] = _f(None, "medium-shot bin indices (see --many-bins)",
                                     group="evaluation", flag_type="ranges")
    few_bins: Optional[list] = _f(None, "few-shot bin indices (see --many-bins)",
                                  group="evaluation", flag_type="ranges")
    # output
    out: Optional[str] = _f(None, "run folder (default runs/<data>-<method>-s<seed>)", group="output")
    resume: bool = _f(False, "continue the run in --out from its last checkpoint", group="output")
    tensorboard: bool = _f(False, "also log to TensorBoard (needs tensorboard)", group="output")
    progress: bool = _f(True, "progress bars", group="output")
    plots: bool = _f(True, "PNG plots at the end (needs matplotlib)", group="output")
    stop_after: Optional[int] = _f(None, "stop after this many epochs in this invocation (as if "
                                   "interrupted; continue with --resume)", group="output",
                                   flag_type=int)

    def method_name(self):
        """Short method tag, e.g. 'sqinv+lds+ssir'."""
        parts = []
        if self.reweight != "none":
            parts.append({"inverse": "inv", "sqrt_inv": "sqinv"}[self.reweight])
        if self.lds:
            parts.append("lds")
        if self.fds:
            parts.append("fds")
        if self.loss and self.loss not in ("l1", "mse"):
            parts.append(self.loss)
        for flag in ("ranksim", "smogn", "rrt", "ssir"):
            if getattr(self, flag):
                parts.append(flag)
        return "+".join(parts) or "vanilla"

    def to_dict(self):
        return dataclasses.asdict(self)


# The paper's settings per data set (SPEC 2), and fast settings for the small data sets.
PRESETS = {
    "default": dict(augment=False, standardize_target=True, model="cnn", width=16, image_size=16,
                    epochs=8, batch_size=128, lr=1e-3, weight_decay=0.0, schedule="multistep",
                    milestones=[5, 7], loss="l1", threads=1),
    "agedb": dict(model="resnet50", image_size=224, epochs=90, batch_size=256, lr=1e-3,
                  weight_decay=0.0, schedule="multistep", milestones=[60, 80], loss="l1"),
    "imdb_wiki": dict(model="resnet50", image_size=224, epochs=90, batch_size=256, lr=1e-3,
                      weight_decay=0.0, schedule="multistep", milestones=[60, 80], loss="l1"),
    "nyud2": dict(model="depthnet", epochs=20, batch_size=32, lr=1e-4, weight_decay=1e-4,
                  schedule="step", step_size=5, loss="mse", lam=1.0, epsilon=5e-4,
                  fds_clip=[0.2, 5.0], **{f"{g}_bins": b for g, b in nyud2_shot_bins(
                      LabelBins(0.7, 0.1, 93)).items()}),
    "two_gaussians": dict(standardize_target=True, model="mlp", width=128, epochs=200,
                          batch_size=256, lr=1e-3,
                          weight_decay=5e-5, schedule="none", loss="mse"),
    "tabular": dict(standardize_target=True, model="mlp", width=128, epochs=100, batch_size=256,
                    lr=1e-3,
                    weight_decay=0.0, schedule="none", loss="l1"),
}
FALLBACK = dict(augment=True, standardize_target=False, lam=0.1, epsilon=1e-3,
                fds_clip=[0.1, 10.0], schedule="none", weight_decay=0.0)

_FIELDS = {f.name: f for f in fields(TrainConfig)}


def _norm_key(k):
    return str(k).replace("-", "_")


def load_config_file(path):
    """A YAML (.yaml/.yml) or TOML (.toml) file of field: value pairs (a `train:` table is also
    accepted). Unknown keys are an error naming them."""
    if not os.path.isfile(path):
        raise ConfigError(f"--config: file not found: {path}")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".toml":
        try:
            import tomllib
        except ImportError:  # Python < 3.11
            try:
                import tomli as tomllib
            except ImportError:
                raise ConfigError("reading TOML configs needs Python >= 3.11 or `pip install "
                                  "tomli`") from None
        with open(path, "rb") as f:
            try:
                doc = tomllib.load(f)
            except tomllib.TOMLDecodeError as e:
                raise ConfigError(f"{path}: TOML syntax error: {e}") from None
    elif ext in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ConfigError("reading YAML configs needs `pip install pyyaml`") from None
        with open(path) as f:
            try:
                doc = yaml.safe_load(f) or {}
            except yaml.YAMLError as e:
                mark = getattr(e, "problem_mark", None)
                where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
                problem = getattr(e, "problem", None) or str(e).splitlines()[0]
                raise ConfigError(f"{path}:{where}: YAML syntax error: {problem}") from None
    else:
        raise ConfigError(f"--config must be a .yaml, .yml or .toml file, got {path}")
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a mapping of option: value")
    if "train" in doc and isinstance(doc["train"], dict):
        doc = {**{k: v for k, v in doc.items() if k != "train"}, **doc["train"]}
    doc = {_norm_key(k): v for k, v in doc.items() if _norm_key(k) != "description"}
    unknown = sorted(set(doc) - set(_FIELDS))
    if unknown:
        raise ConfigError(f"{path}: unknown option(s) {unknown}")
    try:
        return {k: coerce_value(k, v) for k, v in doc.items()}
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def _list_of(kind):
    def parse(text):
        try:
            return [kind(t) for t in str(text).replace(" ", "").split(",") if t]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of "
                                             f"{kind.__name__}, got {text!r}") from None
    return parse


def _ranges(text):
    """'2-5,9,11-12' -> [2, 3, 4, 5, 9, 11, 12] (bin indices; ranges inclusive)."""
    out = []
    for item in str(text).replace(" ", "").split(","):
        if not item:
            continue
        lo, sep, hi = item.partition("-")
        try:
            a, b = int(lo), int(hi) if sep else int(lo)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected bin indices like 2-5,9, got {text!r}") \
                from None
        if b < a:
            raise argparse.ArgumentTypeError(f"empty range {item!r} in {text!r}")
        out += range(a, b + 1)
    return out


def _auto(v):
    for kind in (int, float):
        try:
            return kind(v)
        except ValueError:
            pass
    return v


def _kv(text):
    out = {}
    for item in str(text).split(","):
        if not item.strip():
            continue
        if "=" not in item:
            raise argparse.ArgumentTypeError(f"expected k=v,k=v, got {text!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = _auto(v.strip())
    return out


def _epsilon(text):
    """--epsilon: a float or 'auto'."""
    if str(text).strip().lower() == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a float or 'auto', got {text!r}") from None


def add_arguments(parser):
    """Add one flag per TrainConfig field (defaults suppressed, so only given flags are set)."""
    groups = {}
    for f in fields(TrainConfig):
        md = f.metadata
        g = md["group"]
        if g not in groups:
            groups[g] = parser.add_argument_group(g)
        flag = "--" + f.name.replace("_", "-")
        kw = dict(dest=f.name, default=argparse.SUPPRESS, help=md["help"])
        if isinstance(f.default, bool) or md["type"] == "bool":
            groups[g].add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
            continue
        t = md["type"]
        if t == "ints":
            kw["type"] = _list_of(int)
        elif t == "floats":
            kw["type"] = _list_of(float)
        elif t == "ranges":
            kw["type"] = _ranges
        elif t == "kv":
            kw["type"] = _kv
        elif t == "eps":
            kw["type"] = _epsilon
        elif t is not None:
            kw["type"] = t
        if md["choices"]:
            kw["choices"] = md["choices"]
        groups[g].add_argument(flag, **kw)
    parser.add_argument("--config", default=None, help="YAML or TOML config file (flags override it)")
    return parser


def _integral(v):
    """An int from an int, an integral float (2.0, 1e3) or a string of one; else ValueError."""
    if isinstance(v, str):
        v = v.strip()
        try:
            return int(v)
        except ValueError:
            v = float(v)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError
    if isinstance(v, float) and not (math.isfinite(v) and v.is_integer()):
        raise ValueError
    return int(v)


def _strict(name, value, t, is_bool):
    """Refuse values that a plain conversion would change silently: epochs 1.9 or true, lds: 2,
    a bool where a number belongs, a mapping where a scalar belongs."""
    kinds = {int: "an integer", float: "a number", "ints": "a list of integers",
             "floats": "a list of numbers", "ranges": "bin indices (a list or '2-5,9')",
             "eps": "a number or 'auto'"}
    kind = "true or false" if is_bool else kinds.get(t)
    if kind is None:
        return
    bad = ConfigError(f"option {name}: expected {kind}, got {value!r} "
                      f"({type(value).__name__})")
    if is_bool:
        ok = isinstance(value, (bool, str)) or (isinstance(value, int) and value in (0, 1))
    elif t in ("ints", "floats", "ranges"):
        if isinstance(value, str):
            return   # parsed, and checked, by the list conversion
        ok = isinstance(value, (list, tuple))
        if ok:
            for v in value:
                _strict(name, v, float if t == "floats" else int, False)
    else:
        ok = not isinstance(value, bool) and isinstance(value, (int, float, str))
        if ok and t is int:
            try:
                _integral(value)
            except (TypeError, ValueError):
                ok = False
    if not ok:
        raise bad


def coerce_value(name, value):
    """Config-file values to the field's type (e.g. '1e-3' strings from YAML). Values a plain
    conversion would change (1.9 or true for an integer option) are a ConfigError."""
    f = _FIELDS[name]
    if value is None:
        return None
    t = f.metadata["type"]
    _strict(name, value, t, isinstance(f.default, bool) or t == "bool")
    if t == "ranges":
        try:
            return _ranges(value) if isinstance(value, str) else [_integral(v) for v in value]
        except argparse.ArgumentTypeError as e:
            raise ConfigError(f"option {name}: {e}") from None
    try:
        if isinstance(f.default, bool) or t == "bool":
            if isinstance(value, str):
                if value.lower() in ("true", "yes", "1", "on"):
                    return True
                if value.lower() in ("false", "no", "0", "off"):
                    return False
                raise ValueError
            return bool(value)
        if t == "eps":
            return _epsilon(value) if isinstance(value, str) else float(value)
        if t == "kv":
            if isinstance(value, str):
                return _kv(value)
            if not isinstance(value, dict):
                raise ValueError
            return dict(value)
        if t in ("ints", "floats"):
            kind = int if t == "ints" else float
            if isinstance(value, str):
                return _list_of(kind)(value)
            return [_integral(v) if kind is int else kind(v) for v in value]
        if t in (int, float):
            return _integral(value) if t is int else float(value)
    except (TypeError, ValueError, argparse.ArgumentTypeError):
        raise ConfigError(f"option {name}: cannot read {value!r} as "
                          f"{getattr(t, '__name__', t) if t else 'bool'}") from None
    return value


def make_config(cli=None, file_values=None, validate_now=True):
    """TrainConfig from defaults < preset < file values < CLI values (dicts of field: value)."""
    cli = {_norm_key(k): v for k, v in (cli or {}).items()}
    file_values = {k: coerce_value(k, v) for k, v in (file_values or {}).items()}
    given = {**file_values, **cli}
    unknown = sorted(set(given) - set(_FIELDS))
    if unknown:
        raise ConfigError(f"unknown option(s) {unknown}")
    data = given.get("data", "default")
    if data not in PRESETS:
        raise ConfigError(f"--data must be one of {list(DATASETS)}, got {data!r}")
    preset = dict(PRESETS[data])
    if any(k in given for k in ("many_thr", "few_thr")) and not any(
            k in given for k in ("many_bins", "medium_bins", "few_bins")):
        for k in ("many_bins", "medium_bins", "few_bins"):   # thresholds given: they decide
            preset.pop(k, None)
    values = {**FALLBACK, **preset, **given}
    cfg = TrainConfig(**{k: v for k, v in values.items() if k in _FIELDS})
    if validate_now:
        validate(cfg)
    return cfg


def validate(cfg):
    """Raise ConfigError on an invalid option or combination; called before any work."""
    errs = []

    def need(cond, msg):
        if not cond:
            errs.append(msg)

    for name, choices in (("data", DATASETS), ("model", MODELS), ("loss", LOSSES),
                          ("reweight", REWEIGHTS), ("schedule", SCHEDULES),
                          ("amp_dtype", ("auto", "bf16", "fp16"))):
        v = getattr(cfg, name)
        need(v in choices, f"--{name.replace('_', '-')} must be one of {list(choices)}, got {v!r}")
    for name in ("epochs", "batch_size", "n_steps", "lds_ks", "fds_ks", "smogn_k",
                 "gmm_components"):
        v = getattr(cfg, name)
        need(isinstance(v, int) and not isinstance(v, bool) and v >= 1,
             f"--{name.replace('_', '-')} must be an integer >= 1, "
             f"got {v!r}")
    for name in ("lr", "bmse_sigma", "lds_sigma", "fds_sigma"):
        v = getattr(cfg, name)
        need(v is not None and math.isfinite(v) and v > 0,
             f"--{name.replace('_', '-')} must be > 0, got {v!r}")
    for name in ("lam", "epsilon", "weight_decay", "gamma", "ranksim_gamma", "smogn_pert"):
        v = getattr(cfg, name)
        if name == "epsilon" and v == "auto":
            continue
        need(v is not None and math.isfinite(v) and v >= 0,
             f"--{name.replace('_', '-')} must be >= 0, got {v!r}")
    for name in ("lds_ks", "fds_ks"):
        v = getattr(cfg, name)
        need(not isinstance(v, int) or v % 2 == 1, f"--{name.replace('_', '-')} must be odd, got {v}")
    need(0 < cfg.ssir_rho <= 1, f"--ssir-rho must be in (0, 1], got {cfg.ssir_rho}")
    if cfg.ssir_eps_max is not None:
        need(cfg.ssir_eps_max > 0, f"--ssir-eps-max must be > 0, got {cfg.ssir_eps_max}")
    if cfg.ssir_subset is not None:
        need(0 < cfg.ssir_subset <= 1, f"--ssir-subset must be in (0, 1], got {cfg.ssir_subset}")
    if cfg.ssir_bin_width is not None:
        need(cfg.ssir_bin_width > 0, f"--ssir-bin-width must be > 0, got {cfg.ssir_bin_width}")
    need(cfg.ratio >= 1, f"--ratio must be >= 1, got {cfg.ratio}")
    for name in ("many_thr", "few_thr"):
        v = getattr(cfg, name)
        need(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0,
             f"--{name.replace('_', '-')} must be a number >= 0, got {v!r}")
    if all(isinstance(getattr(cfg, n), (int, float)) for n in ("many_thr", "few_thr")):
        need(cfg.few_thr <= cfg.many_thr + 1, f"--few-thr must be <= --many-thr + 1, got "
             f"{cfg.few_thr} and {cfg.many_thr}")
    seen = {}
    for group in ("many", "medium", "few"):
        for b in getattr(cfg, f"{group}_bins") or []:
            if isinstance(b, bool) or not isinstance(b, int) or b < 0:
                errs.append(f"--{group}-bins: bin indices must be integers >= 0, got {b!r}")
            elif seen.setdefault(b, group) != group:
                errs.append(f"--{group}-bins: bin {b} is also in --{seen[b]}-bins")
    # combinations
    if cfg.lds and cfg.reweight == "none":
        errs.append("--lds smooths the counts of a re-weighting scheme: add --reweight inverse or "
                    "--reweight sqrt_inv")
    if cfg.rrt:
        if not cfg.checkpoint:
            errs.append("--rrt re-trains the last layer of a trained model: give --checkpoint "
                        "PATH (the first-stage model)")
        elif not os.path.isfile(cfg.checkpoint):
            errs.append(f"--checkpoint: file not found: {cfg.checkpoint}")
        if cfg.reweight == "none":
            errs.append("--rrt re-trains the last layer WITH re-weighting: add --reweight inverse "
                        "or sqrt_inv")
        if cfg.ssir or cfg.fds or cfg.ranksim:
            errs.append("--rrt is a second stage: train --ssir/--fds/--ranksim in the first stage")
    elif cfg.checkpoint and not os.path.isfile(cfg.checkpoint):
        errs.append(f"--checkpoint: file not found: {cfg.checkpoint}")
    if cfg.smogn and cfg.data not in ("tabular", "two_gaussians"):
        errs.append(f"--smogn over-samples feature vectors: it needs tabular data "
                    f"(--data tabular or two_gaussians), not --data {cfg.data}")
    dense = cfg.data == "nyud2" or cfg.model == "depthnet"
    if dense and cfg.model != "depthnet":
        errs.append(f"--data nyud2 predicts depth maps: use --model depthnet, not {cfg.model}")
    if cfg.model == "depthnet" and cfg.data != "nyud2":
        errs.append("--model depthnet is the NYUD2 depth model: use it with --data nyud2")
    if dense and (cfg.fds or cfg.ranksim):
        errs.append("--fds and --ranksim work on per-sample features; the depth model has none "
                    "(use --reweight/--lds/--ssir for nyud2)")
    if dense and cfg.loss == "bmc":
        errs.append("--loss bmc builds an M x M matrix over every output pixel: use --loss bni or "
                    "gai for depth maps")
    tab = cfg.data in ("tabular", "two_gaussians")
    if tab and cfg.model not in ("mlp",):
        errs.append(f"--data {cfg.data} holds feature vectors: use --model mlp, not {cfg.model}")
    if cfg.data in ("agedb", "imdb_wiki", "nyud2", "tabular") and not cfg.data_root:
        errs.append(f"--data {cfg.data} needs --data-root (the folder with the CSV / list files"
                    f"{' or the CSV file' if cfg.data == 'tabular' else ''})")
    if cfg.data == "tabular" and not cfg.target:
        errs.append("--data tabular needs --target COLUMN")
    if cfg.fds:
        need(cfg.fds_start_smooth > cfg.fds_start_update,
             "--fds-start-smooth must be > --fds-start-update")
        need(0 <= cfg.fds_momentum <= 1, f"--fds-momentum must be in [0, 1], got {cfg.fds_momentum}")
    if cfg.fds_clip is not None:
        need(len(cfg.fds_clip) == 2 and 0 <= cfg.fds_clip[0] <= cfg.fds_clip[1],
             f"--fds-clip must be lo,hi with 0 <= lo <= hi, got {cfg.fds_clip}")
    if cfg.schedule == "multistep":
        need(bool(cfg.milestones) and all(isinstance(m, int) and m >= 1
                                                for m in cfg.milestones),
             f"--schedule multistep needs --milestones E1,E2,... (epochs >= 1), got "
             f"{cfg.milestones}")
    if cfg.schedule == "step":
        need(isinstance(cfg.step_size, int) and cfg.step_size >= 1,
             f"--schedule step needs --step-size >= 1, got {cfg.step_size}")
    if cfg.tensorboard:
        try:
            import torch.utils.tensorboard  # noqa: F401
        except Exception:
            errs.append("--tensorboard needs the tensorboard package: pip install tensorboard")
    if cfg.device not in ("auto", "cpu") and not str(cfg.device).startswith("cuda"):
        errs.append(f"--device must be auto, cpu, cuda or cuda:N, got {cfg.device!r}")
    if str(cfg.device).startswith("cuda"):
        import torch
        need(torch.cuda.is_available(), f"--device {cfg.device}: no CUDA device is available")
    if cfg.threads is not None:
        need(cfg.threads >= 1, f"--threads must be >= 1, got {cfg.threads}")
    if cfg.stop_after is not None:
        need(cfg.stop_after >= 1, f"--stop-after must be >= 1, got {cfg.stop_after}")
    if cfg.resume:
        need(cfg.out is not None, "--resume needs --out RUN_FOLDER (the run to continue)")
    if errs:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(errs))
    return cfg


def describe(cfg):
    """One line naming the data, model and method."""
    extra = ""
    if cfg.ssir:
        extra = f" (lam={cfg.lam}, eps={cfg.epsilon}, steps={cfg.n_steps}"
        extra += f", rho={cfg.ssir_rho}" if cfg.epsilon == "auto" else ""
        extra += f", subset={cfg.ssir_subset}" if cfg.ssir_subset is not None else ""
        extra += ", bf16 perturbation" if cfg.ssir_bf16 else ""
        extra += ")"
    return (f"data={cfg.data} model={cfg.model} loss={cfg.loss} method={cfg.method_name()}{extra} "
            f"epochs={cfg.epochs} batch={cfg.batch_size} lr={cfg.lr} seed={cfg.seed}")
