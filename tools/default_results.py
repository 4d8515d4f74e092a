"""The README results table on the embedded default data set: every method with the default
`ssir-fast train` settings, over several seeds; mean and std of the test MAE per shot group and
of the overall GM. Honest whatever it shows: each run is a plain `ssir-fast train` invocation.

    python tools/default_results.py --seeds 3 --out runs/default_results

Writes <out>/results.md (the table), <out>/results.json (every run) and one run folder per
method and seed (<out>/<method>-s<seed>/, with the per-bin plots). Existing finished runs are
reused, so an interrupted table can be completed by running the command again.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

METHODS = {
    "Vanilla": [],
    "SQINV": ["--reweight", "sqrt_inv"],
    "SQINV + LDS": ["--reweight", "sqrt_inv", "--lds"],
    "SQINV + LDS + FDS": ["--reweight", "sqrt_inv", "--lds", "--fds"],
    "Focal-R": ["--loss", "focal-l1"],
    "SSIR": ["--ssir"],
    "SQINV + SSIR": ["--reweight", "sqrt_inv", "--ssir"],
}
GROUPS = ("all", "many", "medium", "few")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--out", default="runs/default_results")
    p.add_argument("--methods", default=None, help="comma-separated subset of " + ", ".join(METHODS))
    p.add_argument("extra", nargs="*", help="extra `ssir-fast train` flags for every run (after --)")
    a = p.parse_args(argv)
    methods = METHODS if a.methods is None else {m: METHODS[m] for m in a.methods.split(",")}
    os.makedirs(a.out, exist_ok=True)
    runs = []
    # seed-major order: an interrupted table has every method at the first seeds
    for seed, (name, flags) in ((s, m) for s in range(a.seeds) for m in methods.items()):
        tag = name.lower().replace(" + ", "+").replace(" ", "") + f"-s{seed}"
        out = os.path.join(a.out, tag)
        summary = os.path.join(out, "test_metrics.json")
        if not os.path.isfile(summary):
            cmd = [sys.executable, "-m", "ssir_fast.cli", "train", *flags, "--seed", str(seed),
                   "--out", out, "--overwrite",   # an unfinished run: trained again
                   "--no-progress", *a.extra]
            print("$", " ".join(cmd[1:]), flush=True)
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True)
            print(f"  {time.perf_counter() - t0:.0f} s", flush=True)
        with open(summary) as f:
            res = json.load(f)
        runs.append({"method": name, "seed": seed,
                     **{f"{g}_mae": res[g]["mae"] for g in GROUPS},
                     "all_gm": res["all"]["gm"]})
    rows = []
    for name in methods:
        mine = [r for r in runs if r["method"] == name]
        row = {"method": name, "n": len(mine)}
        for k in [f"{g}_mae" for g in GROUPS] + ["all_gm"]:
            v = np.array([np.nan if r[k] is None else r[k] for r in mine], dtype=float)
            row[k] = (float(np.nanmean(v)), float(np.nanstd(v)))
        rows.append(row)
    head = ("| method | All MAE | Many MAE | Medium MAE | Few MAE | All GM |\n"
            "|---|---|---|---|---|---|")
    lines = [head] + ["| " + r["method"] + " | " + " | ".join(
        f"{r[k][0]:.2f} ± {r[k][1]:.2f}" for k in [f"{g}_mae" for g in GROUPS] + ["all_gm"])
        + " |" for r in rows]
    table = "\n".join(lines)
    with open(os.path.join(a.out, "results.md"), "w") as f:
        f.write(f"Default data set, `ssir-fast train` defaults, {a.seeds} seeds (mean ± std)\n\n"
                + table + "\n")
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump({"runs": runs, "rows": rows}, f, indent=1)
    print(table)
    return rows


if __name__ == "__main__":
    main()
