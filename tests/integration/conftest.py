"""The integration suite: ssir_fast inside the tools users train with (Lightning, accelerate,
torchmetrics, torch.compile, torch.func, torch.export). It needs the `integration` extra; CI
installs it and runs `python -m pytest -q tests/integration`. Without the extra the directory
is left out of collection (the README's `python -m pytest -q tests` stays green), and the
regressions it guards have unit tests in tests/ too."""
import importlib.util
import os
import sys

import pytest

MISSING = [m for m in ("lightning", "accelerate", "torchmetrics")
           if importlib.util.find_spec(m) is None]
if MISSING:
    collect_ignore_glob = ["test_*.py"]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLES = os.path.join(ROOT, "examples")


@pytest.fixture
def examples_path(monkeypatch):
    """examples/ importable (the examples are scripts a user copies, not a package)."""
    monkeypatch.syspath_prepend(EXAMPLES)
    yield EXAMPLES
    for name in ("lightning_ssir", "accelerate_ssir"):
        sys.modules.pop(name, None)
