"""Config files: reading YAML / TOML / JSON with jsonargparse's loaders (line-numbered syntax
errors; the YAML and JSON loaders registered here refuse aliases and a key given twice),
bringing a flat or sectioned document to {flat name: value}, and writing a run's
configuration in sections.

A document may be flat (``fds_ks: 5``, the flags' names), sectioned in the shape of
`TrainConfig` (``method: {fds: {enabled: true, ks: 5}}``) or a mix; inside a section an option
may also be written by its flat name (``method: {fds_ks: 5}``, ``ssir: {ssir: true}``). An
unknown or misplaced key is a ConfigError naming its section and the closest valid key.
"""
import dataclasses
import difflib
import functools
import json
import os

from jsonargparse import get_loader, set_loader

from ..atomic import atomic_write
from .errors import ConfigError
from .sections import FLAT, LEAVES, SECTIONS
from .adapter import typed_values

__all__ = ["load_config_file", "flatten_sections", "sectioned", "write_config",
           "MAX_CONFIG_BYTES"]

MAX_CONFIG_BYTES = 1 << 20   # a configuration is a few kB; more is not a config file
_TOP = tuple(s for s in SECTIONS if "." not in s)


def _norm_key(k):
    return str(k).replace("-", "_")


def _nearest(key, candidates):
    """The candidate nearest to key (difflib's ratio >= 0.6), or None."""
    near = difflib.get_close_matches(key, sorted(set(candidates)), n=1, cutoff=0.6)
    return near[0] if near else None


def _closest(key, candidates):
    """'; closest valid key: ...' naming the candidate nearest to key, or ''."""
    near = _nearest(key, candidates)
    return f"; closest valid key: {near!r}" if near else ""


def _under(section):
    """The leaves inside section (its sub-sections included)."""
    return [leaf for leaf in LEAVES if (leaf.section + ".").startswith(section + ".")]


def _find(section, key):
    """The leaf that `key` names inside `section`: its key there, or its flat name."""
    for leaf in _under(section):
        if (leaf.section == section and leaf.key == key) or leaf.flat == key:
            return leaf
    return None


def _misplaced(section, key, where):
    """The error for a key that section does not hold: misplaced (it belongs elsewhere) or
    unknown (with the closest valid key of the section)."""
    elsewhere = FLAT.get(key) or next((leaf for leaf in LEAVES if leaf.key == key), None)
    if elsewhere is not None:
        return ConfigError(f"{where}: option {key!r} belongs in section [{elsewhere.section}], "
                           f"not [{section}]")
    subs = [s.rsplit(".", 1)[1] for s in SECTIONS if s.startswith(section + ".")]
    own = [leaf.key for leaf in LEAVES if leaf.section == section] + subs
    names = own + [leaf.flat for leaf in _under(section)]
    return ConfigError(f"{where}: unknown option {key!r} in section [{section}]"
                       f"{_closest(key, names)}; its options: {', '.join(own)}")


def flatten_sections(doc, where="config"):
    """{flat name: value} from a flat or sectioned mapping (both forms may be mixed). An unknown
    section or key, an option in the wrong section or an option given twice is a ConfigError
    naming it (and the closest valid key)."""
    flat = {}

    def put(name, value):
        if name in flat:
            raise ConfigError(f"{where}: option {name!r} is given twice")
        flat[name] = value

    def walk(section, table):
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: section [{section}] must be a table of option: value, "
                              f"got {table!r}")
        for k, v in table.items():
            key = _norm_key(k)
            sub = f"{section}.{key}"
            if sub in SECTIONS and isinstance(v, dict):
                walk(sub, v)
                continue
            leaf = _find(section, key)   # (fds: true in [method] is the flat option)
            if leaf is None and sub in SECTIONS:
                raise ConfigError(f"{where}: section [{sub}] must be a table of option: value, "
                                  f"got {v!r}")
            if leaf is None:
                raise _misplaced(section, key, where)
            put(leaf.flat, v)

    for k, v in doc.items():
        key = _norm_key(k)
        if key in _TOP and (isinstance(v, dict) or key not in FLAT):
            walk(key, v)
        elif key in FLAT:
            put(key, v)
        elif isinstance(v, dict):
            raise ConfigError(f"{where}: unknown section {key!r}{_closest(key, _TOP)}; the "
                              f"sections are {', '.join(_TOP)}")
        else:
            homes = [leaf.section for leaf in LEAVES if leaf.key == key]
            near = _nearest(key, FLAT)
            hint = (f"; it is a key of section {' or '.join(f'[{h}]' for h in homes)}" if homes
                    else f"; closest valid key: {near!r} (section [{FLAT[near].section}])" if near
                    else "")
            raise ConfigError(f"{where}: unknown option {key!r}{hint}")
    return flat


def sectioned(cfg):
    """The configuration as nested {section: {option: value}}: the shape of `TrainConfig`, the
    form `write_config` saves and `load_config_file` reads back."""
    return dataclasses.asdict(cfg)


def write_config(cfg, path):
    """Save the merged configuration as sectioned JSON (atomically): ``--config path`` gives the
    same configuration back. ``resume`` is saved as false: the file describes the run, and
    replaying it starts the run afresh."""
    doc = sectioned(cfg)
    doc["output"]["resume"] = False
    atomic_write(path, lambda f: f.write(json.dumps(doc, indent=1) + "\n"))
    return path


def load_config_file(path):
    """A YAML (.yaml/.yml), TOML (.toml) or JSON (.json) file of option: value pairs, flat or in
    sections (``data: {name: agedb}``, ``[optim] lr = 1e-4``; a legacy ``train:`` table is also
    accepted), read by jsonargparse's loaders (its TOML loader; strict YAML and JSON loaders
    registered with it) and its values checked by the library (`typed_values`). Unknown
    sections and keys are an error naming them and the closest valid key."""
    if os.path.isdir(path):
        raise ConfigError(f"--config: {path} is a folder, not a config file")
    if not os.path.isfile(path):
        raise ConfigError(f"--config: file not found: {path}")
    mode = _MODES.get(os.path.splitext(path)[1].lower())
    if mode is None:
        raise ConfigError(f"--config must be a .yaml, .yml, .toml or .json file, got {path}")
    yaml_error = _register()
    text = _config_text(path)
    try:
        doc = get_loader(mode)(text)
    except ImportError:   # the library's TOML loader: tomllib (Python >= 3.11), else toml
        raise ConfigError(f"reading {path} needs Python >= 3.11 or `pip install toml`") \
            from None
    except ConfigError as e:   # (a key given twice in JSON)
        raise ConfigError(f"{path}: {e}") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: line {e.lineno}, column {e.colno}: JSON syntax error: "
                          f"{e.msg}") from None
    except (yaml_error, ValueError) as e:   # (tomllib's error is a ValueError)
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}:" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}:{where} {'TOML' if mode == 'toml' else 'YAML'} syntax "
                          f"error: {problem}") from None
    if doc is None and mode != "toml":
        doc = {}
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a mapping of option: value")
    if "train" in doc and isinstance(doc["train"], dict):
        doc = {**{k: v for k, v in doc.items() if k != "train"}, **doc["train"]}
    doc = flatten_sections({k: v for k, v in doc.items() if _norm_key(k) != "description"},
                           path)
    return typed_values(doc, f"{path}: option")


# config files by extension -> jsonargparse loader: its TOML loader, and strict YAML and JSON
# loaders that refuse what the plain ones read silently (a key given twice, ...)
_MODES = {".yaml": "yaml_strict", ".yml": "yaml_strict", ".json": "json_strict",
          ".toml": "toml"}


@functools.lru_cache(maxsize=1)
def _register():
    """Register the strict YAML and JSON loaders with jsonargparse (on first use: PyYAML is
    imported when a config file is read); returns PyYAML's error class."""
    import yaml
    loader = _no_alias_loader(yaml)
    set_loader("yaml_strict", lambda text: yaml.load(text, Loader=loader),
               exceptions=(yaml.YAMLError,))
    set_loader("json_strict", lambda text: json.loads(text, object_pairs_hook=_json_object),
               exceptions=(json.JSONDecodeError, ConfigError))
    return yaml.YAMLError


def _config_text(path):
    """The text of a config file: UTF-8 (a byte-order mark dropped), at most MAX_CONFIG_BYTES;
    otherwise a ConfigError naming the file (and the line of a byte that is not UTF-8)."""
    size = os.path.getsize(path)
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: {size} bytes is no config file (at most {MAX_CONFIG_BYTES})")
    with open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise ConfigError(f"{path} line {line}: not UTF-8 text (byte 0x{data[e.start]:02x}); "
                          f"save the file as UTF-8") from None


def _no_alias_loader(yaml):
    """yaml.SafeLoader for config files, stricter where YAML would read something else than was
    meant: no aliases (*name; a few nested ones expand into gigabytes, a 'billion laughs'
    file), no key given twice in a mapping (YAML keeps the last silently), no integer with a
    leading zero (YAML 1.1 reads 010 as octal 8)."""
    def error(problem, mark):
        return yaml.constructor.ConstructorError(None, None, problem, mark)

    class StrictLoader(yaml.SafeLoader):
        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                raise error("aliases (*name) are not accepted in a config file; write the value "
                            "out", self.peek_event().start_mark)
            return super().compose_node(parent, index)

        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                if key in seen:
                    raise error(f"option {key!r} is given twice", key_node.start_mark)
                seen.add(key)
            return super().construct_mapping(node, deep)

        def construct_yaml_int(self, node):
            text = str(node.value).replace("_", "").lstrip("+-")
            if len(text) > 1 and text.startswith("0") and text.isdigit():
                raise error(f"{node.value} has a leading zero, which YAML reads as an octal "
                            f"number; write it without the zero (or quoted)", node.start_mark)
            return super().construct_yaml_int(node)

    StrictLoader.add_constructor("tag:yaml.org,2002:int", StrictLoader.construct_yaml_int)
    StrictLoader.add_constructor("tag:yaml.org,2002:map", StrictLoader.construct_yaml_map)
    return StrictLoader


def _json_object(pairs):
    """A JSON object, refusing a key given twice (json keeps the last silently)."""
    out = {}
    for k, v in pairs:
        if k in out:
            raise ConfigError(f"option {k!r} is given twice")
        out[k] = v
    return out
