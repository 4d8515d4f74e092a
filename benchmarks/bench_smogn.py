"""ssir_fast.resample.smogn vs the PyPI `smogn` package, in the same run.

    pytest benchmarks/bench_smogn.py --benchmark-only -s

5,000 x 10 rows (9 features + a skewed target); the PyPI package (O(n^2) Python loops) is timed
once, ours best-of 3 through `harness.Bench` (one row in benchmarks/results.jsonl).
SSIR_BENCH_SMOGN_ROWS (default 5000) sets the rows, e.g. for a short smoke run;
SSIR_BENCH_SKIP_PYPI_SMOGN=1 leaves the PyPI package out.
"""
import os
import random
import sys

import numpy as np

from harness import Bench
from ssir_fast.resample import smogn


def _smogn_data(n=int(os.environ.get("SSIR_BENCH_SMOGN_ROWS", "5000")), d=9, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    y = np.exp(0.6 * X[:, 0] + 0.3 * X[:, 1] + 0.2 * rng.normal(size=n)) * 10  # skewed, high tail
    return X, y


def test_smogn_speed(benchmark):
    X, y = _smogn_data()
    b = Bench(benchmark, "smogn", "cpu", rows=len(y), cols=X.shape[1] + 1)
    t_ours = b.case("ssir_fast", lambda: smogn(X, y, seed=0), repeats=3, warmup=1).min
    Xn, yn, info = smogn(X, y, seed=0, return_info=True)
    row = dict(t_ours_s=t_ours, synthetic=int(info["synthetic"].sum()), out_rows=len(yn))
    if os.environ.get("SSIR_BENCH_SKIP_PYPI_SMOGN", "0") == "0":
        sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
        from _smogn_compat import patch_smogn
        patch_smogn()
        import pandas as pd
        import smogn as pypi
        df = pd.DataFrame(np.column_stack([X, y]), columns=[f"x{i}" for i in range(X.shape[1])] + ["y"])
        np.random.seed(0)
        random.seed(0)
        out = []
        t_ref = b.case("pypi_smogn", lambda: out.append(pypi.smoter(data=df, y="y")),
                       repeats=1, warmup=0).min  # once: minutes
        row.update(t_pypi_s=t_ref, pypi_out_rows=len(out[0]), speedup_vs_pypi=t_ref / t_ours)
    b.finish(**row)
