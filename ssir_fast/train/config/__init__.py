"""Training configuration: typed sections, filled in layers and validated before any work starts.

    defaults  <  data-set preset  <  config file (YAML / TOML / JSON)  <  command-line flags

The shape is `TrainConfig` (`sections`): data, model, method (with its focal, bmse, lds, fds,
ranksim, smogn and rrt parts), ssir, optim, output. Every option is a config-file key in that
shape (``method: {fds: {ks: 5}}``) and under its flat name a flag (``--fds-ks 5``, also spelt
``--method.fds.ks``) and a key of a flat file (``fds_ks: 5``; dashes and underscores are
interchangeable). The generic machinery is jsonargparse's: `flags` declares the options to its
parser (flags, help, nested keys), `files` reads config files with its loaders, `adapter` checks
values through it and puts its errors in one line under the flag's name; `checks` checks single
options (through the constructors that own them), `rules` the combinations.
"""
import dataclasses
import warnings

from .errors import ConfigError, ConfigWarning
from ...data import registry
from .options import (DataSection, MethodSection, ModelSection, OptimSection, OutputSection,
                      SSIRSection)
from .sections import (FLAT, LEAVES, LOSSES, MODELS, REWEIGHTS, SCHEDULES, SECTIONS,
                       TrainConfig)
from .checks import field_errors
from .adapter import Parser, typed_values
from .files import flatten_sections, load_config_file, sectioned, write_config
from .flags import add_arguments, preset_note
from .rules import combination_errors, unused_options

__all__ = ["TrainConfig", "DataSection", "ModelSection", "MethodSection", "SSIRSection",
           "OptimSection", "OutputSection", "ConfigError", "ConfigWarning", "unused_options",
           "SECTIONS", "FLAT", "LEAVES", "LOSSES", "MODELS", "REWEIGHTS", "SCHEDULES",
           "load_config_file", "add_arguments", "make_config", "validate", "ensure_valid",
           "describe", "sectioned", "write_config", "preset_note", "typed_values", "Parser",
           "flatten_sections"]

_SHOT_BINS = ("many_bins", "medium_bins", "few_bins")


def make_config(cli=None, file_values=None, validate_now=True, check_unused=True):
    """TrainConfig from defaults < preset < file values < CLI values (mappings of option: value,
    flat or in sections). With `check_unused`, the options given that do nothing here are an
    error or a warning (`unused_options`); a checkpoint's configuration replayed is not checked
    so."""
    cli = flatten_sections(cli or {}, "options")
    file_values = typed_values(flatten_sections(file_values or {}, "config"), "option")
    given = {**file_values, **cli}
    data = given.get("data", "default")
    try:
        preset = dict(registry.get(data).preset)
    except ValueError:
        raise ConfigError(f"--data must be one of {list(registry.names())}, got {data!r}") \
            from None
    typos = sorted(set(preset) - set(FLAT))
    if typos:   # a registration's mistake: said, not dropped
        raise ConfigError(f"the preset of data set {data!r} sets unknown option(s) {typos}")
    if any(k in given for k in ("many_thr", "few_thr")) and not any(k in given
                                                                     for k in _SHOT_BINS):
        for k in _SHOT_BINS:   # thresholds given: they decide
            preset.pop(k, None)
    base = {**registry.BASE_PRESET, **preset}
    cfg = TrainConfig.from_flat({**base, **given})
    if validate_now:
        validate(cfg)
    if validate_now and check_unused:
        # options set to something else than they would be: those that do nothing here
        changed = {k for k, v in given.items() if v != base.get(k, FLAT[k].default)}
        errs, notes = unused_options(cfg, changed)
        if errs:
            raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(errs))
        for note in notes:
            warnings.warn(note, ConfigWarning, stacklevel=2)
    return cfg


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
    errs = field_errors(cfg) + combination_errors(cfg)
    if errs:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(errs))
    cfg._validated = _fingerprint(cfg)   # not a field: asdict and the checkpoints leave it out
    return cfg


def describe(cfg):
    """One line naming the data, model and method."""
    s, o = cfg.ssir, cfg.optim
    extra = ""
    if s.enabled:
        extra = f" (lam={s.lam}, eps={s.epsilon}, steps={s.n_steps}"
        extra += f", rho={s.rho}" if s.epsilon == "auto" else ""
        extra += f", subset={s.subset}" if s.subset is not None else ""
        extra += ", bf16 perturbation" if s.bf16 else ""
        extra += ")"
    return (f"data={cfg.data.name} model={cfg.model.name} loss={cfg.method.loss} "
            f"method={cfg.method_name()}{extra} epochs={o.epochs} batch={o.batch_size} "
            f"lr={o.lr} seed={o.seed}")
