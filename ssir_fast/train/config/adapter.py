"""Between jsonargparse and the configuration: the parser class whose errors are one line under
the flag's name (with the closest valid key for an unknown flag), and `typed_values`, which
checks values of a config file, the Python API or a sweep against the fields' types through the
same library and says what is wrong in one line."""
import argparse
import copy
import difflib
import functools
import re
import reprlib
import sys

import jsonargparse

from .errors import ConfigError
from .sections import FLAT, LEAVES, SECTION_NAMES
from .flags import PARSERS, add_arguments, base_type

__all__ = ["Parser", "typed_values", "closest_flag", "expected"]

_PATHS = {".".join(leaf.path): leaf for leaf in LEAVES}
# the nested spelling of an option whose flat name is a section's: --data.name is --data
_SAME = {f"--{no}{'.'.join(FLAT[s].path)}": f"--{no}{s}" for s in SECTION_NAMES & set(FLAT)
         for no in ("", "no-")}
_WHAT = {int: "an integer", float: "a number", str: "a string", dict: "a mapping",
         "bool": "true or false", "ints": "a list of integers", "floats": "a list of numbers",
         "ranges": "bin indices (a list or '2-5,9')", "kv": "k=v,k=v or a mapping"}


def expected(leaf):
    """What the option's value must be, in words: 'an integer', "a number or 'auto'", ..."""
    if leaf.flat == "epsilon":
        return "a number or 'auto'"
    if leaf.meta["choices"] and leaf.flat not in ("data", "model"):
        return f"one of {list(leaf.meta['choices'])}"
    return _WHAT.get(leaf.meta["kind"] or base_type(leaf.field.type), "a string")


def _short(value):
    """repr(value) cut to a readable length (a config value may be a big nested structure)."""
    r = reprlib.Repr()
    r.maxstring, r.maxother, r.maxlist, r.maxdict, r.maxlevel = 60, 60, 6, 6, 3
    return r.repr(value)


def closest_flag(args):
    """'; closest valid key: --fds-kernel (section [method.fds])' for the first unknown flag
    that is close to an option, else ''."""
    for arg in args:
        if not arg.startswith("--"):
            continue
        key = arg.split("=", 1)[0][2:].replace("-", "_")
        section, _, key = key.rpartition(".")
        names = {leaf.flat: leaf.flat for leaf in LEAVES}
        if section:   # a nested flag: every option's path
            names = {".".join(leaf.path): leaf.flat for leaf in LEAVES}
            key = f"{section}.{key}"
        near = difflib.get_close_matches(key, sorted(names), n=1)
        if near:
            flag = "--" + (near[0] if section else near[0].replace("_", "-"))
            return f"; closest valid key: {flag} (section [{FLAT[names[near[0]]].section}])"
    return ""


def _rephrase(message):
    """jsonargparse's message in one line, under the flag's name: 'Parser key "optim.lr": ...
    Given value: abc' -> "--lr: expected a number, got 'abc'"."""
    key = re.match(r'Parser key "([^"]+)"', message)
    leaf = key and (FLAT.get(key.group(1)) or next((lf for p, lf in _PATHS.items() if
                                                    key.group(1).endswith("." + p)), None))
    if leaf is not None:
        got = re.findall(r"(?:Got|Given) value: (.*)", message)
        return (f"--{leaf.flat.replace('_', '-')}: expected {expected(leaf)}" +
                (f", got {got[-1].strip()!r}" if got else ""))
    arg = re.match(r"argument (--[^/:]+)[^:]*: (.*)", message, re.S)
    if arg:   # (argparse's own: under the first flag)
        return f"{arg.group(1)}: {arg.group(2)}"
    if message.startswith("the following arguments are required: "):   # eval.checkpoint
        return re.sub(r"\b\w+\.(\w+)", lambda m: "--" + m.group(1).replace("_", "-"), message)
    if message.lower().startswith("unrecognized arguments: "):
        return "unrecognized arguments: " + message[24:] + closest_flag(message.split()[2:])
    return "; ".join(ln.strip() for ln in message.splitlines() if ln.strip())


def _spelled(arg):
    """--data.name, --model.name, --ssir.enabled (and --no-ssir.enabled) as --data, --model,
    --ssir: jsonargparse would read '.name' as a key inside the value of --data."""
    flag, eq, value = arg.partition("=")
    return _SAME.get(flag, flag) + eq + value


class _Help(argparse.RawDescriptionHelpFormatter):
    """Each option in the help under its flat flags (--fds-ks; --fds, --no-fds): the nested
    spelling of every option is said once, in the description."""

    def _format_action_invocation(self, action):
        shown = [o for o in action.option_strings if "." not in o]
        if shown and shown != action.option_strings:
            action = copy.copy(action)
            action.option_strings = shown
        return super()._format_action_invocation(action)


class Parser(jsonargparse.ArgumentParser):
    """jsonargparse's parser with its errors in one line (`ssir-fast train: error: ...`, exit
    code 2); --help shows the usage."""

    def __init__(self, *args, **kw):
        kw.setdefault("formatter_class", _Help)
        super().__init__(*args, **kw)
        self._prog_name = self.prog   # (jsonargparse changes the prog of a sub-command's parser)

    def parse_args(self, args=None, *rest, **kw):
        args = sys.argv[1:] if args is None else args
        return super().parse_args([_spelled(a) for a in args], *rest, **kw)

    def error(self, message, ex=None):
        prog = self._prog_name
        self.exit(2, f"{prog}: error: {_rephrase(str(message))} (see {prog} --help)\n")


class _Checker(jsonargparse.ArgumentParser):
    def error(self, message, ex=None):
        raise ConfigError(message)


@functools.lru_cache(maxsize=1)
def _checker():
    """A parser holding every option, its values checked against the fields' types (true/false
    options too, which on the command line are --x / --no-x)."""
    return add_arguments(_Checker(exit_on_error=False), None, checker=True)


def _lax(leaf, v):
    """What a plain reading keeps: 3.0 for an integer option, 0 / 1 for true / false."""
    kind = leaf.meta["kind"] or base_type(leaf.field.type)
    if kind is int and isinstance(v, float) and v.is_integer():
        return int(v)
    if kind == "bool" and type(v) is int and v in (0, 1):
        return bool(v)
    return v


def typed_values(flat, where="option"):
    """{flat name: value} checked and brought to each option's type by the library ('1e-3' ->
    0.001, '60,80' -> [60, 80], 'yes' -> True); a value it refuses is a ConfigError naming the
    option and what it must be. None leaves an option unset."""
    out = {k: _lax(FLAT[k], v) for k, v in flat.items()}
    given = {k: v for k, v in out.items() if v is not None}
    try:
        return {**out, **_parse(given)}
    except ConfigError as e:
        first = e
    for name, value in given.items():   # which one: the first refused alone
        try:
            _parse({name: value})
        except ConfigError:
            leaf = FLAT[name]
            reason = f"expected {expected(leaf)}, got {_short(value)} ({type(value).__name__})"
            if leaf.meta["kind"] in ("ints", "floats", "ranges", "kv"):
                try:   # our own syntax: its message names the item
                    PARSERS[leaf.meta["kind"]](value)
                except ValueError as e:
                    reason = str(e)
            raise ConfigError(f"{where} {name}: {reason}") from None
    raise ConfigError(f"{where}s: {_rephrase(str(first))}")   # (each alone passes: unseen)


def _parse(given):
    nested = {}
    for name, value in given.items():
        *head, key = FLAT[name].path
        d = nested
        for part in head:
            d = d.setdefault(part, {})
        d[key] = value
    try:
        ns = _checker().parse_object(nested, defaults=False)
    except argparse.ArgumentError as e:   # (the library's error, however it is raised)
        raise ConfigError(str(e)) from None
    return {name: ns[".".join(FLAT[name].path)] for name in given}
