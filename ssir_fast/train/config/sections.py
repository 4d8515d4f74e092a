"""The training configuration's shape: one typed dataclass per section.

    TrainConfig
      data     name root image_size target ratio options augment backend workers
      model    name width standardize_target
      method   loss reweight, focal, bmse, lds, fds, ranksim, smogn, rrt (each a section)
      ssir     enabled lam epsilon rho eps_max n_steps subset bf16 target distance clip bin_width
      optim    epochs batch_size lr weight_decay schedule milestones ... device amp compile threads
      output   many_thr few_thr many/medium/few_bins out resume overwrite tensorboard progress ...

A config file and `sectioned` use this shape (``method: {fds: {enabled: true, ks: 5}}``); every
option also has its flat name, the flag of the command line (``--fds-ks``) and the key of a flat
config file (``fds_ks: 5``), recorded in the field's metadata (`LEAVES`). ``cfg.fds_ks`` reads
``cfg.method.fds.ks`` (a read-only accessor, for code written against the flat names).
"""
import copy
import dataclasses
from dataclasses import dataclass, field, fields

from ...imbalance import KERNELS, REWEIGHTS
from ..models import MODELS
from .options import (LOSSES, SCHEDULES, DataSection, MethodSection, ModelSection, OptimSection,
                      OutputSection, SSIRSection)

__all__ = ["TrainConfig", "LEAVES", "FLAT", "SECTIONS", "SECTION_NAMES", "get_path", "LOSSES",
           "SCHEDULES", "MODELS", "REWEIGHTS", "KERNELS"]


def _sub(cls):
    return field(default_factory=cls)


class Leaf:
    """One option: its path in the sections, its flat name (the flag) and its field."""
    __slots__ = ("path", "flat", "field")

    def __init__(self, path, flat, f):
        self.path, self.flat, self.field = path, flat, f

    @property
    def section(self):
        return ".".join(self.path[:-1])

    @property
    def key(self):
        return self.path[-1]

    @property
    def default(self):
        return self.field.default

    @property
    def meta(self):
        return self.field.metadata


def _leaves(cls, path=()):
    for f in fields(cls):
        if f.default_factory is not dataclasses.MISSING:   # a section
            yield from _leaves(f.default_factory, path + (f.name,))
        else:
            yield Leaf(path + (f.name,), f.metadata["flat"] or f.name, f)


@dataclass
class TrainConfig:
    """A run's configuration, in sections (see the module docstring). Build it with
    `make_config` (defaults < preset < file < flags, validated) or `TrainConfig.from_flat`."""
    data: DataSection = _sub(DataSection)
    model: ModelSection = _sub(ModelSection)
    method: MethodSection = _sub(MethodSection)
    ssir: SSIRSection = _sub(SSIRSection)
    optim: OptimSection = _sub(OptimSection)
    output: OutputSection = _sub(OutputSection)

    @classmethod
    def from_flat(cls, values):
        """A TrainConfig from {flat name: value}; the options left out keep their defaults."""
        unknown = sorted(set(values) - set(FLAT))
        if unknown:
            raise TypeError(f"TrainConfig: unknown option(s) {unknown}")
        cfg = cls()
        for name, value in values.items():
            *head, key = FLAT[name].path
            setattr(get_path(cfg, head), key, value)
        return cfg

    def __getattr__(self, name):   # only called for names that are no attribute: flat names
        leaf = FLAT.get(name)
        if leaf is None or name in SECTION_NAMES:
            raise AttributeError(f"TrainConfig has no option {name!r}")
        return get_path(self, leaf.path)

    def __setattr__(self, name, value):   # a flat name is read-only: set the section's field
        if name in FLAT and name not in SECTION_NAMES:
            raise AttributeError(f"cfg.{name} is read-only; set cfg.{'.'.join(FLAT[name].path)}")
        super().__setattr__(name, value)

    def to_dict(self):
        """{flat name: value}: the form checkpoints store and the resume check compares."""
        return copy.deepcopy({leaf.flat: get_path(self, leaf.path) for leaf in LEAVES})

    def method_name(self):
        """Short method tag, e.g. 'sqinv+lds+ssir'."""
        m = self.method
        parts = []
        if m.reweight != "none":
            parts.append({"inverse": "inv", "sqrt_inv": "sqinv"}[m.reweight])
        if m.lds.enabled:
            parts.append("lds")
        if m.fds.enabled:
            parts.append("fds")
        if m.loss and m.loss not in ("l1", "mse"):
            parts.append(m.loss)
        for on, tag in ((m.ranksim.enabled, "ranksim"), (m.smogn.enabled, "smogn"),
                        (m.rrt.enabled, "rrt"), (self.ssir.enabled, "ssir")):
            if on:
                parts.append(tag)
        return "+".join(parts) or "vanilla"


def get_path(obj, path):
    """The value at `path` (a tuple of attribute names) inside obj."""
    for part in path:
        obj = getattr(obj, part)
    return obj


LEAVES = tuple(_leaves(TrainConfig))
FLAT = {leaf.flat: leaf for leaf in LEAVES}
# the top-level sections; data, model and ssir are flat names too (cfg.data is the section, its
# name is cfg.data.name)
SECTION_NAMES = {f.name for f in fields(TrainConfig)}
if len(FLAT) != len(LEAVES):
    raise RuntimeError("two options of TrainConfig share a flat name")
# the top-level sections and the sub-sections of each ("method.lds", ...), in order
SECTIONS = {}
for _leaf in LEAVES:
    SECTIONS.setdefault(_leaf.section, []).append(_leaf.key)
SECTIONS = {s: tuple(keys) for s, keys in SECTIONS.items()}
