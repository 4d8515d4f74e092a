"""Training configuration: one dataclass, filled in layers and validated before any work starts.

    defaults  <  data-set preset  <  config file (YAML / TOML / JSON)  <  command-line flags

Every field is a flag (``--reweight sqrt_inv``, ``--lds``, ``--no-lds``) and a config-file key
(``reweight: sqrt_inv``; dashes and underscores are interchangeable). The fields fall into the
sections of `SECTIONS` (data, model, method, ssir, optim, output); a config file may be flat or
sectioned (``data: {name: agedb, data_root: ...}``, ``[optim] lr = 1e-4``, see
`load_config_file`), and `write_config` saves a run's merged configuration in sectioned form.

The presets (the paper's schedules, SPEC 2) and the data-set rules live in the data-set registry,
`ssir_fast.data.registry`; the help strings show the preset values read from it. `validate`
rejects invalid combinations (LDS without re-weighting, RRT without a checkpoint, SMOGN on
images, an unknown ``--data-options`` key, ...) with a message naming the flags; it runs once
per configuration (`ensure_valid`).
"""
import argparse
import dataclasses
import json
import math
import os
from dataclasses import dataclass, field, fields
from typing import Optional

import torch

from ..data import registry

__all__ = ["TrainConfig", "ConfigError", "SECTIONS", "LOSSES", "load_config_file", "add_arguments",
           "make_config", "validate", "ensure_valid", "describe", "sectioned", "write_config",
           "preset_note"]

LOSSES = ("l1", "mse", "huber", "focal-l1", "focal-mse", "bmc", "gai", "bni")
REWEIGHTS = ("none", "inverse", "sqrt_inv")
SCHEDULES = ("multistep", "step", "cosine", "none")
MODELS = ("mlp", "cnn", "resnet18", "resnet50", "depthnet")


class ConfigError(ValueError):
    """An invalid option or combination of options (raised before any work starts)."""


def _f(default, help, choices=None, group="optim", flag_type=None):
    return field(default=default, metadata={"help": help, "choices": choices, "group": group,
                                            "type": flag_type})


@dataclass
class TrainConfig:
    # data
    data: str = _f("default", "data set (registered in ssir_fast.data.registry)", group="data")
    data_root: Optional[str] = _f(None, "where the data set is", group="data")
    image_size: Optional[int] = _f(None, "input image size (the default data are built at that "
                                   "size)", group="data", flag_type=int)
    target: Optional[str] = _f(None, "target column (tabular)", group="data")
    ratio: float = _f(10.0, "imbalance ratio N1/N2 (two_gaussians)", group="data", flag_type=float)
    data_options: Optional[dict] = _f(None, "options of the data set's loader, k=v,k=v",
                                      group="data", flag_type="kv")
    augment: Optional[bool] = _f(None, "DIR training augmentation (pad-16 random crop + flip; "
                                 "off for the default data: a flip changes the rotation angle)",
                                 group="data", flag_type="bool")
    backend: str = _f("auto", "image loader backend", ("auto", "dali", "torch"), "data")
    workers: Optional[int] = _f(None, "loader workers (default: 0 for images <= 32 px, else "
                                "min(4, CPUs))", group="data", flag_type=int)
    # model
    model: Optional[str] = _f(None, "model", MODELS, "model")
    width: Optional[int] = _f(None, "base width (mlp hidden / cnn / resnet channels)", group="model",
                              flag_type=int)
    standardize_target: Optional[bool] = _f(None, "the head predicts (y - mean) / std of the "
                                            "training labels", group="model", flag_type="bool")
    # supervised loss
    loss: Optional[str] = _f(None, "supervised loss", LOSSES, "method")
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
    fds_clip: Optional[list] = _f(None, "FDS variance-ratio clamp lo,hi", group="method",
                                  flag_type="floats")
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
    lam: Optional[float] = _f(None, "SSIR lambda", group="ssir", flag_type=float)
    epsilon: Optional[float] = _f(None, "SSIR perturbation radius; 0 = output noise only "
                                  "(ablation); auto = eps_i = rho * delta / ||grad_x D_i|| per "
                                  "sample", group="ssir", flag_type="eps")
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
    threads: Optional[int] = _f(None, "CPU threads for torch (unset: torch's; small models gain "
                                "little from more and suffer most on busy cores)", flag_type=int)
    # output, evaluation: shot groups by training count thresholds, or by fixed lists of bins
    many_thr: float = _f(100, "many-shot: more than this many training labels in the bin",
                         group="output", flag_type=float)
    few_thr: float = _f(20, "few-shot: fewer than this many training labels in the bin",
                        group="output", flag_type=float)
    many_bins: Optional[list] = _f(None, "many-shot bins as a list of bin indices, e.g. 2-38,40 "
                                   "(replaces the thresholds)",
                                   group="output", flag_type="ranges")
    medium_bins: Optional[list] = _f(None, "medium-shot bin indices (see --many-bins)",
                                     group="output", flag_type="ranges")
    few_bins: Optional[list] = _f(None, "few-shot bin indices (see --many-bins)",
                                  group="output", flag_type="ranges")
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


_FIELDS = {f.name: f for f in fields(TrainConfig)}

# The sections of the configuration, each field in one (its metadata "group"; config files and
# the saved run configuration use them, the flags stay flat).
SECTIONS = {s: tuple(f.name for f in fields(TrainConfig) if f.metadata["group"] == s)
            for s in ("data", "model", "method", "ssir", "optim", "output")}
_SECTION_OF = {name: s for s, names in SECTIONS.items() for name in names}
_NAMED = ("data", "model")   # sections whose main option is written `name` (data: {name: agedb})
if len(_SECTION_OF) != len(_FIELDS):
    raise RuntimeError(f"TrainConfig fields outside the sections {list(SECTIONS)}: "
                       f"{sorted(set(_FIELDS) - set(_SECTION_OF))}")


def _norm_key(k):
    return str(k).replace("-", "_")


def _section_key(section, key, where):
    """The field a key of a config-file section names: the field itself, ``name`` for the data
    set / model, or the field without the section prefix (``root`` -> data_root, ``rho`` ->
    ssir_rho)."""
    names = SECTIONS[section]
    if key == "name" and section in _NAMED:
        return section
    if key in names:
        return key
    if f"{section}_{key}" in names:
        return f"{section}_{key}"
    if key in _SECTION_OF:
        raise ConfigError(f"{where}: option {key!r} belongs in section [{_SECTION_OF[key]}], not "
                          f"[{section}]")
    raise ConfigError(f"{where}: unknown option {key!r} in section [{section}]; its options: "
                      f"{', '.join(names)}")


def flatten_sections(doc, where="config"):
    """{field: value} from a flat or sectioned mapping (both forms may be mixed). A mapping under
    a key that is no section (and no mapping-valued option), an unknown key of a section, an
    option in the wrong section or an option given twice is a ConfigError naming it."""
    flat = {}

    def put(name, value):
        if name in flat:
            raise ConfigError(f"{where}: option {name!r} is given twice")
        flat[name] = value

    for k, v in doc.items():
        key = _norm_key(k)
        if key in SECTIONS and isinstance(v, dict):
            for sk, sv in v.items():
                put(_section_key(key, _norm_key(sk), where), sv)
        elif key in SECTIONS and key not in _FIELDS:
            raise ConfigError(f"{where}: section [{key}] must be a table of option: value, got "
                              f"{v!r}")
        elif isinstance(v, dict) and key not in _FIELDS:
            raise ConfigError(f"{where}: unknown section {key!r}; the sections are "
                              f"{', '.join(SECTIONS)}")
        else:
            put(key, v)
    return flat


def sectioned(cfg):
    """The configuration as {section: {option: value}} (the data set and model as ``name``),
    the form `write_config` saves and `load_config_file` reads back."""
    values = dataclasses.asdict(cfg)
    return {sec: {("name" if n == sec and sec in _NAMED else n): values[n] for n in names}
            for sec, names in SECTIONS.items()}


def write_config(cfg, path):
    """Save the merged configuration as sectioned JSON (atomically): ``--config path`` gives the
    same configuration back. ``resume`` is saved as false: the file describes the run, and
    replaying it starts the run afresh."""
    doc = sectioned(cfg)
    doc["output"]["resume"] = False
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)
    return path


def load_config_file(path):
    """A YAML (.yaml/.yml), TOML (.toml) or JSON (.json) file of option: value pairs, flat or in
    sections (``data: {name: agedb}``, ``[optim] lr = 1e-4``; a legacy ``train:`` table is also
    accepted). Unknown sections and keys are an error naming them."""
    if not os.path.isfile(path):
        raise ConfigError(f"--config: file not found: {path}")
    ext = os.path.splitext(path)[1].lower()
    # optional dependencies, imported for the config file that needs them: tomllib (Python >=
    # 3.11, else tomli) and PyYAML
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
    elif ext == ".json":
        with open(path) as f:
            try:
                doc = json.load(f)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path}: line {e.lineno}, column {e.colno}: JSON syntax "
                                  f"error: {e.msg}") from None
    else:
        raise ConfigError(f"--config must be a .yaml, .yml, .toml or .json file, got {path}")
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a mapping of option: value")
    if "train" in doc and isinstance(doc["train"], dict):
        doc = {**{k: v for k, v in doc.items() if k != "train"}, **doc["train"]}
    doc = flatten_sections({k: v for k, v in doc.items() if _norm_key(k) != "description"},
                           path)
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


def _show(v):
    """A preset value as a flag would take it: 0.001, on, 60,80."""
    if isinstance(v, bool):
        return "on" if v else "off"
    if isinstance(v, (list, tuple)):
        return f"{len(v)} values" if len(v) > 4 else ",".join(_show(x) for x in v)
    return f"{v:g}" if isinstance(v, float) else str(v)


def preset_note(name):
    """The preset values of option ``name`` per data set, read from the registry, e.g.
    'nyud2 1, else 0.1' ('' when no data set presets it)."""
    groups = {}
    for spec in registry.specs():
        v = spec.preset.get(name, registry.BASE_PRESET.get(name))
        if v is not None:
            groups.setdefault(_show(v), []).append(spec.name)
    if not groups:
        return ""
    n = len(registry.names())
    common = max(groups, key=lambda v: len(groups[v]))
    others = common if len(groups[common]) > n / 2 and len(groups) > 1 else None
    parts = [f"{'/'.join(who)} {v}" for v, who in groups.items() if v != others]
    if len(groups) == 1 and len(groups[common]) == n:
        parts = [common]
    if others is not None:
        parts.append(f"else {others}")
    return ", ".join(parts)


def _help(f):
    """The flag's help: its text, the preset values per data set, and for the data options
    what each data set's loader accepts."""
    extra = ""
    if f.name == "data":
        extra = ": " + "; ".join(f"{s.name} = {s.summary}" for s in registry.specs())
    elif f.name == "data_root":
        extra = ": " + "; ".join(f"{s.name}{'' if s.needs_root else ' (optional)'}: {s.root}"
                                 for s in registry.specs() if s.root)
    elif f.name == "data_options":
        extra = "; " + "; ".join(
            f"{s.name}: {', '.join(o for o in s.options if o not in s.flags)}"
            for s in registry.specs())
    note = preset_note(f.name)
    if note:
        extra += f" (preset per --data: {note})"
    return f.metadata["help"] + extra.replace("%", "%%")   # argparse formats help with %


def add_arguments(parser):
    """Add one flag per TrainConfig field (defaults suppressed, so only given flags are set), in
    argument groups by section. Data-set choices, presets and options come from the registry as
    it is when the parser is built."""
    groups = {}
    for f in fields(TrainConfig):
        md = f.metadata
        g = md["group"]
        if g not in groups:
            groups[g] = parser.add_argument_group(g)
        flag = "--" + f.name.replace("_", "-")
        kw = dict(dest=f.name, default=argparse.SUPPRESS, help=_help(f))
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
        if md["choices"] or f.name == "data":
            kw["choices"] = registry.names() if f.name == "data" else md["choices"]
        groups[g].add_argument(flag, **kw)
    parser.add_argument("--config", default=None, help="YAML, TOML or JSON config file, flat or "
                        "in sections (flags override it); a run's config.json reproduces it")
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
    try:
        preset = dict(registry.get(data).preset)
    except ValueError:
        raise ConfigError(f"--data must be one of {list(registry.names())}, got {data!r}") \
            from None
    typos = sorted(set(preset) - set(_FIELDS))
    if typos:   # a registration's mistake: said, not dropped
        raise ConfigError(f"the preset of data set {data!r} sets unknown option(s) {typos}")
    if any(k in given for k in ("many_thr", "few_thr")) and not any(
            k in given for k in ("many_bins", "medium_bins", "few_bins")):
        for k in ("many_bins", "medium_bins", "few_bins"):   # thresholds given: they decide
            preset.pop(k, None)
    values = {**registry.BASE_PRESET, **preset, **given}
    cfg = TrainConfig(**values)
    if validate_now:
        validate(cfg)
    return cfg


def _data_errors(cfg):
    """What the data set's registration says about cfg: its --data-root, models, --data-options
    (checked against its loader's signature) and its own rules."""
    try:
        spec = registry.get(cfg.data)
    except ValueError:
        return [f"--data must be one of {list(registry.names())}, got {cfg.data!r}"]
    errs = []
    if cfg.smogn and spec.kind != "tabular":
        tab = " or ".join(s.name for s in registry.specs() if s.kind == "tabular")
        errs.append(f"--smogn over-samples feature vectors: it needs tabular data "
                    f"(--data {tab}), not --data {cfg.data}")
    if spec.models and cfg.model not in spec.models:
        what = {"depth": "predicts depth maps", "tabular": "holds feature vectors"}.get(
            spec.kind, "is an image data set")
        errs.append(f"--data {cfg.data} {what}: use --model {' or '.join(spec.models)}, not "
                    f"{cfg.model}")
    if cfg.model == "depthnet" and spec.kind != "depth":
        depth = " or ".join(s.name for s in registry.specs() if s.kind == "depth")
        errs.append(f"--model depthnet is the NYUD2 depth model: use it with --data {depth}")
    if spec.needs_root and not cfg.data_root:
        errs.append(f"--data {cfg.data} needs --data-root ({spec.root})")
    opts = cfg.data_options or {}
    if not isinstance(opts, dict):
        return errs + [f"--data-options must be a mapping of option: value, got {opts!r}"]
    accepted = [o for o in spec.options if o not in spec.flags]
    for k in sorted(opts):
        flag = spec.flags.get(k)
        if flag is not None and getattr(cfg, flag) is not None:
            errs.append(f"--data-options {k}: set by --{flag.replace('_', '-')} for --data "
                        f"{cfg.data}; give it there")
        elif k not in spec.options:
            errs.append(f"--data-options: unknown option {k!r} for --data {cfg.data}; accepted: "
                        f"{', '.join(accepted)}")
    if "on_error" in opts and opts["on_error"] not in registry.ON_ERROR:
        errs.append(f"--data-options on_error must be raise or skip, got {opts['on_error']!r}")
    return errs + list(spec.rules(cfg))


def _fingerprint(cfg):
    return repr(dataclasses.asdict(cfg))


def ensure_valid(cfg):
    """validate(cfg) unless it already passed as it is now (make_config validates; the trainer
    calls this, so a configuration is checked once, and again only if changed since)."""
    if getattr(cfg, "_validated", None) != _fingerprint(cfg):
        validate(cfg)
    return cfg


def validate(cfg):
    """Raise ConfigError on an invalid option or combination; called before any work."""
    errs = []

    def need(cond, msg):
        if not cond:
            errs.append(msg)

    for name, choices in (("model", MODELS), ("loss", LOSSES),
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
    errs += _data_errors(cfg)
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
        try:   # optional dependency: checked here, imported by the run that writes to it
            import torch.utils.tensorboard  # noqa: F401
        except Exception:
            errs.append("--tensorboard needs the tensorboard package: pip install tensorboard")
    if cfg.device not in ("auto", "cpu") and not str(cfg.device).startswith("cuda"):
        errs.append(f"--device must be auto, cpu, cuda or cuda:N, got {cfg.device!r}")
    if str(cfg.device).startswith("cuda"):
        need(torch.cuda.is_available(), f"--device {cfg.device}: no CUDA device is available")
    if cfg.threads is not None:
        need(cfg.threads >= 1, f"--threads must be >= 1, got {cfg.threads}")
    if cfg.stop_after is not None:
        need(cfg.stop_after >= 1, f"--stop-after must be >= 1, got {cfg.stop_after}")
    if cfg.resume:
        need(cfg.out is not None, "--resume needs --out RUN_FOLDER (the run to continue)")
    if errs:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(errs))
    cfg._validated = _fingerprint(cfg)   # not a field: asdict and the checkpoints leave it out
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
