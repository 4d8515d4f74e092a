"""The package's shape: each layer imports only the layers below it (ARCHITECTURE.md), no two
modules import each other (directly or through others), and no module is over 400 lines.

The imports are read from the source (every `import` statement, those inside functions too), so
a lazy import that would hide a dependency or a cycle counts like any other."""
import ast
import importlib.util
import os

import pytest

# the package under test: the source tree, or the installed wheel where the tests run alone
PKG = os.path.dirname(importlib.util.find_spec("ssir_fast").origin)
MAX_LINES = 400


def _modules():
    """{"ssir_fast.x.y": path} for every .py file of the package."""
    out = {}
    for folder, _, files in os.walk(PKG):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(folder, f)
                rel = os.path.relpath(path, os.path.dirname(PKG))[:-3].split(os.sep)
                if rel[-1] == "__init__":
                    rel = rel[:-1]
                out[".".join(rel)] = path
    return out


MODULES = _modules()


def _imports(name, path):
    """The package modules `name` imports (a name imported from a package that is one of its
    modules counts as that module)."""
    is_pkg = path.endswith("__init__.py")
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = name.split(".") if is_pkg else name.split(".")[:-1]
                parts = parts[:len(parts) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = node.module
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base
                       for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in MODULES and "." in t:   # ssir_fast.ops.perturb.perturb -> module
                t = t.rsplit(".", 1)[0]
            if t in MODULES and t != name:
                found.add(t)
    return found


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


def layer(module):
    """0 the ops, 1 the toolkit, 2 the data layer, 3 training (and the integrations built on the
    toolkit), 4 the command line; None for the package itself (it loads the others lazily)."""
    parts = module.split(".")
    if len(parts) == 1:
        return None
    top = parts[1]
    if top in ("ops", "_extension", "_build_info"):
        return 0
    if top == "data":
        return 2
    if top in ("train", "integrations"):
        return 3
    if top in ("cli", "info"):
        return 4
    return 1


def test_the_graph_sees_the_imports_it_should():
    # a check that reads nothing passes trivially: these imports exist today
    assert "ssir_fast.imbalance" in GRAPH["ssir_fast.data.registry"]
    assert "ssir_fast.nyud2" in GRAPH["ssir_fast.data.datasets"]        # `from .. import nyud2`
    assert "ssir_fast.train.runtime" in GRAPH["ssir_fast.train.trainer"]
    assert "ssir_fast.ops.binning" in GRAPH["ssir_fast.imbalance"]
    assert "ssir_fast.train.precision" in GRAPH["ssir_fast.info"]       # inside a function


def test_no_upward_import():
    bad = [f"{m} (layer {layer(m)}) imports {d} (layer {layer(d)})"
           for m, deps in GRAPH.items() for d in deps
           if layer(m) is not None and layer(d) is not None and layer(d) > layer(m)]
    assert bad == []


def test_the_data_layer_does_not_import_training():
    bad = [(m, d) for m, deps in GRAPH.items() if m.startswith("ssir_fast.data")
           for d in deps if d.startswith(("ssir_fast.train", "ssir_fast.cli"))]
    assert bad == []


def _cycles(graph):
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle():
    # a package imports its own modules (its __init__); those modules reaching back into the
    # package's __init__ for a sibling is the one loop Python resolves by design, so the package
    # nodes are left out
    graph = {m: {d for d in deps if MODULES[d].endswith("__init__.py") is False}
             for m, deps in GRAPH.items() if not MODULES[m].endswith("__init__.py")}
    assert _cycles(graph) == []


def _lines(module):
    with open(MODULES[module], encoding="utf-8") as f:
        return sum(1 for _ in f)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_is_at_most_400_lines(module):
    n = _lines(module)
    assert n <= MAX_LINES, f"{MODULES[module]} has {n} lines (limit {MAX_LINES})"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("ssir_fast.train.config")))
def test_configuration_module_is_at_most_300_lines(module):
    # the configuration's own code stays small: the generic machinery is jsonargparse's
    n = _lines(module)
    assert n <= 300, f"{MODULES[module]} has {n} lines (limit 300)"
