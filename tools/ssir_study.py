"""The SSIR study: does the perturbation help, and what do the fast modes cost in accuracy?

    python tools/ssir_study.py --out runs/ssir_study            # run (incremental) + tables
    python tools/ssir_study.py --out runs/ssir_study --report   # tables from finished runs only

Data sets (none downloaded at run time, none synthetic):
- default: the embedded default data set (rotated scikit-learn digits, target: the angle), with a
  short schedule (SETTINGS below) so the study fits a shared 2-core machine;
- fair: statsmodels' `fair` (Fair 1978, 6,366 women), target `affairs` (time spent in
  extramarital affairs; 82% zeros, a long right tail to 57.6), 8 survey features;
- randhie: statsmodels' `randhie` (RAND Health Insurance Experiment, 20,190 person-years),
  target `mdvis` (outpatient visits per year; median 1, a long tail to 77), 9 features.
Both tabular sets ship inside the statsmodels wheel (`pip install statsmodels`); they are written
to <out>/data/<name>.csv and trained with `--data tabular` (seeded 70/10/20 split, bins of
width 1 on the target, DIR shot groups many > 100, few < 20 training samples per bin).

Methods: vanilla, SQINV, and each SSIR variant alone and on top of SQINV (lam = 0.1, the paper's
SQINV + SSIR setting): the paper's eps = 1e-3, eps = 0 (the output-noise-only ablation),
eps = auto (rho = 0.5), and the fast modes n_steps = 1, subset = 0.5 and bf16 perturbation passes;
plus SQINV + auto-eps at rho = 0.25 and 1 (the choice of rho).
Every run is a plain `ssir_fast.train` job (the `ssir-fast train` code path) and appends one line
to <out>/results.jsonl; finished (data, method, seed) runs are skipped, so an interrupted study
continues where it stopped. The tables (mean ± std over seeds, and the paired difference of
each SSIR variant to its base method) go to <out>/results.md.
"""
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import study_runner  # noqa: E402  (tools/ is no package)
from study_runner import mean_std  # noqa: E402

SETTINGS = {
    # the default preset (cnn width 16, 16 px, batch 128, Adam 1e-3, L1), shorter: 2,500 training
    # images, 5 epochs, lr x0.1 at epoch 4
    "default": dict(data="default", data_options={"n_train": 2500}, epochs=5, milestones=[4]),
    # tabular preset (MLP width 128, standardised target, batch 256, Adam 1e-3, L1), fewer epochs
    "fair": dict(data="tabular", target="affairs", width=64, epochs=20,
                 data_options={"bin_width": 1.0}),
    "randhie": dict(data="tabular", target="mdvis", width=64, epochs=8,
                    data_options={"bin_width": 1.0}),
}
TABULAR = {"fair": "fair", "randhie": "randhie"}   # data set name -> statsmodels module

SSIR_VARIANTS = {
    "SSIR": dict(epsilon=1e-3),
    "SSIR eps=0": dict(epsilon=0.0),
    "SSIR auto": dict(epsilon="auto", ssir_rho=0.5),
    "SSIR 1-step": dict(epsilon=1e-3, n_steps=1),
    "SSIR subset=0.5": dict(epsilon=1e-3, ssir_subset=0.5),
    "SSIR bf16": dict(epsilon=1e-3, ssir_bf16=True),
}
METHODS = {"Vanilla": {}, "SQINV": dict(reweight="sqrt_inv")}
for _name, _kw in SSIR_VARIANTS.items():
    METHODS[_name] = dict(ssir=True, lam=0.1, **_kw)
for _name, _kw in SSIR_VARIANTS.items():
    METHODS["SQINV + " + _name] = dict(reweight="sqrt_inv", ssir=True, lam=0.1, **_kw)
# the choice of rho: similarity rate and accuracy at half and twice the default
for _rho in (0.25, 1.0):
    METHODS[f"SQINV + SSIR auto rho={_rho:g}"] = dict(reweight="sqrt_inv", ssir=True, lam=0.1,
                                                     epsilon="auto", ssir_rho=_rho)
GROUPS = ("all", "many", "medium", "few")


def write_tabular(name, folder):
    """statsmodels data set -> CSV (features + target); returns the path."""
    path = os.path.join(folder, f"{name}.csv")
    if not os.path.isfile(path):
        import statsmodels.datasets as smd
        d = getattr(smd, TABULAR[name]).load_pandas()
        frame = d.exog.copy()
        frame[SETTINGS[name]["target"]] = d.endog
        os.makedirs(folder, exist_ok=True)
        frame.to_csv(path + ".tmp", index=False)
        os.replace(path + ".tmp", path)
    return path



def run_one(data, method, seed, out):
    values = dict(SETTINGS[data], **METHODS[method])
    if data in TABULAR:
        values["data_root"] = write_tabular(data, os.path.join(out, "data"))
    res, folder, seconds = study_runner.train_point(values, data, method, seed, out)
    hist = [json.loads(line) for line in open(os.path.join(folder, "metrics.jsonl"))]
    row = {"data": data, "method": method, "seed": seed, "seconds": seconds,
           "best_epoch": res.get("best_epoch"),
           **{f"{g}_{m}": res[g][m] for g in GROUPS for m in ("mae", "gm", "count")}}
    for k in ("similarity", "perturbation", "output_change", "images_per_s"):
        if k in hist[-1]:
            row[k] = float(np.mean([h[k] for h in hist]))
    return row


def base_of(method):
    """The method an SSIR variant is added to (None for the base methods)."""
    if method.startswith("SQINV + "):
        return "SQINV"
    return "Vanilla" if method.startswith("SSIR") else None


def report(rows, seeds):
    """Markdown tables: per data set, mean ± std over seeds, and each SSIR variant's paired
    difference to its base (same seed: same initialisation and batch order)."""
    out = []
    for data in SETTINGS:
        mine = [r for r in rows if r["data"] == data]
        if not mine:
            continue
        n = {m: len([r for r in mine if r["method"] == m]) for m in METHODS}
        counts = {g: mine[0][f"{g}_count"] for g in GROUPS}
        out.append(f"### {data} ({min(n.values())}-{max(n.values())} seeds; test samples: "
                   + ", ".join(f"{g} {counts[g]}" for g in GROUPS) + ")\n")
        out.append("| method | All MAE | Few MAE | All GM | Few GM | Few MAE vs base | "
                   "All MAE vs base | similarity | ‖x̃−x‖/‖x‖ | mean abs Δf / Δy | s/run |")
        out.append("|---|---|---|---|---|---|---|---|---|---|---|")
        by = {(r["method"], r["seed"]): r for r in mine}
        for m in METHODS:
            rs = [r for r in mine if r["method"] == m]
            if not rs:
                continue
            cells = [f"{a:.3f} ± {b:.3f}" for a, b in (mean_std([r[k] for r in rs]) for k in
                                                     ("all_mae", "few_mae", "all_gm", "few_gm"))]
            base = base_of(m)
            for k in ("few_mae", "all_mae"):
                pairs = [(by[(m, s)][k], by[(base, s)][k]) for s in range(seeds)
                         if base and (m, s) in by and (base, s) in by]
                if not pairs:
                    cells.append("")
                    continue
                d = np.array([a - b for a, b in pairs], float)
                spread = max(mean_std([r[k] for r in rs])[1],
                             mean_std([by[(base, s)][k] for s in range(seeds) if (base, s) in by])[1])
                mark = " **beyond std**" if abs(d.mean()) > spread else ""
                cells.append(f"{d.mean():+.3f} ± {d.std():.3f}{mark}")
            for k, fmt in (("similarity", "{:.3f}"), ("perturbation", "{:.1e}"),
                           ("output_change", "{:.3f}")):
                cells.append(fmt.format(mean_std([r.get(k) for r in rs])[0]) if k in rs[0] else "")
            cells.append(f"{mean_std([r['seconds'] for r in rs])[0]:.0f}")
            out.append(f"| {m} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def main(argv=None):
    return study_runner.main(argv, __doc__, "runs/ssir_study", 5, SETTINGS, METHODS,
                             run_one, report)


if __name__ == "__main__":
    sys.exit(main())
