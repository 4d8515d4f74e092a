"""The command-line flags of `ssir-fast train`, declared to jsonargparse from the sections:
each option is one argument under its flat name (``--fds-ks``) and its path (``--method.fds.ks``,
also written with dashes), grouped in the help by section; the library checks each value
against the field's type, our own syntaxes (``60,80``, ``2-5,9``, ``k=v,..``) read through
`values`. Data-set choices and preset values in the help come from
the data-set registry."""
import argparse
from typing import Optional

from ...data import registry
from .sections import LEAVES, SECTION_NAMES
from .values import list_of, parse_kv, parse_ranges

__all__ = ["add_arguments", "preset_note", "option_strings", "PARSERS", "base_type"]


def _said(parse):
    """parse, its ValueError's message shown by argparse as it is (not 'invalid ... value');
    the checker keeps the ValueError, which jsonargparse reports."""
    def read(value):
        try:
            return parse(value)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    read.__name__ = parse.__name__
    return read


PARSERS = {"ints": list_of(int), "floats": list_of(float), "ranges": parse_ranges,
           "kv": parse_kv}
_METAVAR = {"ints": "N,N", "floats": "X,X", "ranges": "BINS", "kv": "K=V,..", int: "N",
            float: "X"}


def option_strings(leaf):
    """The flags of an option: its flat name, then its path (with dashes too where the key has
    an underscore): ('--fds-ks', '--method.fds.ks')."""
    nested = "--" + ".".join(leaf.path)
    if leaf.flat in SECTION_NAMES:   # --data.name: read as --data by `Parser.parse_args`, for
        return ["--" + leaf.flat]    # jsonargparse would take it for a key of the --data value
    flags = ["--" + leaf.flat.replace("_", "-"), nested]
    if "_" in leaf.key:
        flags.append(nested.replace("_", "-"))
    return flags


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


def _help(leaf, data):
    """The flag's help: its text and the preset values per data set (or its default); what
    --data-root names and the loader's options for the data set `data` (None: a pointer)."""
    name, text = leaf.flat, leaf.meta["help"]
    spec = registry.get(data) if data in registry.names() else None
    more = " (ssir-fast train --data NAME --help lists them)"
    if name == "data":
        text += ": " + "; ".join(f"{s.name} = {s.summary}" for s in registry.specs())
    elif name == "data_root" and spec is not None:
        text += f" ({spec.name}: {spec.root or 'unused'}{'' if spec.needs_root else ', optional'})"
    elif name == "data_options":
        text += " (a list value: k=a,b)"
        text += (f"; [{spec.name}] {', '.join(spec.describe_options(exclude=spec.flags))}"
                 if spec is not None else more)
    note = preset_note(name)
    if note:
        text += f" (preset per --data: {note})"
    elif leaf.default is not None and name != "data":
        text += f" (default: {_show(leaf.default)})"
    return text.replace("%", "%%")   # argparse formats help with %


def add_arguments(parser, data=None, checker=False):
    """Add one argument per option to a jsonargparse parser (defaults suppressed, so only the
    flags given are set), in argument groups by section. Data-set choices and presets come from
    the registry as it is when the parser is built; the help of --data-root and --data-options
    describes the data set `data` (None: none). A true/false option is --x / --no-x; with
    `checker` (a parser that checks values, not flags) it is of type bool and every option is
    under its path only (a flat name such as --data would shadow the section data)."""
    groups = {}
    for leaf in LEAVES:
        flags = ["--" + ".".join(leaf.path)] if checker else option_strings(leaf)
        g = leaf.section
        if g not in groups:
            groups[g] = parser.add_argument_group(f"[{g}]")
        kw = dict(dest=".".join(leaf.path) if checker else leaf.flat, default=argparse.SUPPRESS,
                  help=_help(leaf, data))
        kind = leaf.meta["kind"]
        if kind == "bool" and not checker:
            groups[g].add_argument(*flags, action=argparse.BooleanOptionalAction,
                                   **kw)
            continue
        kw["type"] = PARSERS.get(kind, Optional[bool] if kind == "bool" else leaf.field.type)
        if kind in PARSERS and not checker:
            kw["type"] = _said(kw["type"])
        choices = leaf.meta["choices"]   # (the data sets: those registered when it is built)
        if leaf.flat == "data" and not checker:
            choices = registry.names()
        if choices:
            kw["choices"] = choices
            kw["metavar"] = "{" + ",".join(choices) + "}"
        else:
            kw["metavar"] = _METAVAR.get(kind or base_type(leaf.field.type),
                                         "X|auto" if leaf.flat == "epsilon" else "S")
        groups[g].add_argument(*flags, **kw)
    parser.add_argument("--config", default=None, help="YAML, TOML or JSON config file, flat or "
                        "in sections (flags override it); a run's config.json reproduces it")
    return parser


def base_type(t):
    """int from Optional[int], else t."""
    args = [a for a in getattr(t, "__args__", ()) if a is not type(None)]
    return args[0] if len(args) == 1 else t
