"""What the study scripts (`ssir_study.py`, `vector_study.py`) share: the incremental run loop
over (data set, method, seed), one training run per point, and the table arithmetic helpers.

Each finished point appends one JSON line to <out>/results.jsonl; a point already there is
skipped, so an interrupted study continues where it stopped. The order is seed-major: an
interrupted study has every method at its first seeds."""
import argparse
import contextlib
import io
import json
import os
import time

import numpy as np


def done_keys(path):
    """((data, method, seed) of the finished rows, the rows) of a results.jsonl."""
    if not os.path.isfile(path):
        return set(), []
    rows = [json.loads(line) for line in open(path) if line.strip()]
    return {(r["data"], r["method"], r["seed"]) for r in rows}, rows


def mean_std(values):
    """(mean, std) over the finite values; (nan, nan) when there is none (None counts as NaN:
    a shot group with no test sample)."""
    v = np.asarray([np.nan if x is None else x for x in values], float)
    if np.isnan(v).all():
        return float("nan"), float("nan")
    return float(np.nanmean(v)), float(np.nanstd(v))


def train_point(values, data, method, seed, out):
    """One `ssir-fast train` job (its Python entry) for a study point, output silenced; its run
    folder <out>/runs/<data>/<method>-s<seed> is trained afresh if a run left it unfinished.
    Returns (results, run folder, seconds)."""
    from ssir_fast.train.config import make_config
    from ssir_fast.train.trainer import train
    values = dict(values, seed=seed, progress=False, plots=False, threads=1, overwrite=True,
                  out=os.path.join(out, "runs", data, method.replace(" ", "").replace("+", "_")
                                   + f"-s{seed}"))
    cfg = make_config(values)
    log = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(log):
        res = train(cfg, log=lambda *a: print(*a, file=log))
    return res, cfg.out, time.perf_counter() - t0


def main(argv, doc, out, seeds, settings, methods, run_one, report):
    """The command line of a study: run what is missing (unless --report), then write
    <out>/results.md from every finished row. `run_one(data, method, seed, out)` -> row;
    `report(rows, seeds)` -> Markdown."""
    p = argparse.ArgumentParser(description=doc.split("\n")[0])
    p.add_argument("--out", default=out)
    p.add_argument("--seeds", type=int, default=seeds)
    p.add_argument("--data", default=",".join(settings), help="comma-separated data sets")
    p.add_argument("--methods", default=None, help="comma-separated subset of the methods")
    p.add_argument("--report", action="store_true", help="only write the tables")
    a = p.parse_args(argv)
    datas = [d for d in a.data.split(",") if d]
    for d in datas:
        if d not in settings:
            p.error(f"unknown data set {d!r} (have {list(settings)})")
    chosen = list(methods) if a.methods is None else a.methods.split(",")
    for m in chosen:
        if m not in methods:
            p.error(f"unknown method {m!r} (have {list(methods)})")
    os.makedirs(a.out, exist_ok=True)
    path = os.path.join(a.out, "results.jsonl")
    if not a.report:
        os.environ.setdefault("SSIR_FAST_DATA", os.path.join(a.out, "data"))
        done, _ = done_keys(path)
        todo = [(d, m, s) for s in range(a.seeds) for d in datas for m in chosen
                if (d, m, s) not in done]
        t_start = time.perf_counter()
        for i, (d, m, s) in enumerate(todo):
            row = run_one(d, m, s, a.out)
            with open(path, "a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"[{i + 1}/{len(todo)} {time.perf_counter() - t_start:.0f} s] {d} {m} seed {s}: "
                  f"all MAE {row['all_mae']:.3f} few MAE {row['few_mae']:.3f} "
                  f"({row['seconds']:.1f} s)", flush=True)
    _, rows = done_keys(path)
    table = report(rows, a.seeds)
    with open(os.path.join(a.out, "results.md"), "w") as f:
        f.write(table + "\n")
    print(table)
    return 0
