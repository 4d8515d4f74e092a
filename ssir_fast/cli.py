"""`ssir-fast`: train, evaluate and reproduce the paper's experiments.

    ssir-fast train                                   # default data set, CPU, a few minutes
    ssir-fast train --reweight sqrt_inv --ssir        # SQINV + SSIR
    ssir-fast train --config configs/agedb_sqinv_ssir.yaml --data-root data/agedb
    ssir-fast train --ssir --sweep epsilon=1e-4,5e-4,1e-3,5e-3 lam=0.1,0.5,1.0
    torchrun --nproc_per_node 8 -m ssir_fast.cli train --config ...     # multi-GPU
    ssir-fast eval --checkpoint runs/default-ssir-s0/best.pt
    ssir-fast motivation [--quick]
    ssir-fast perturbations --checkpoint runs/.../best.pt --epsilons 1e-3,1e-2,1e-1
    ssir-fast info                                    # versions, kernels, GPU: for bug reports
"""
import argparse
import csv
import itertools
import json
import os
import sys

import torch

from .data import DataError
from .info import collect, format_info
from .train.config import (ConfigError, TrainConfig, add_arguments, coerce_value,
                           load_config_file, make_config)
from .train.evaluation import evaluate_checkpoint, load_run
from .train.motivation import run_motivation
from .train.plots import plot_perturbations, plot_sweep
from .train.trainer import train

__all__ = ["main", "build_parser", "run_sweep", "parse_sweep"]


def build_parser():
    p = argparse.ArgumentParser(prog="ssir-fast", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command")
    t = sub.add_parser("train", help="train and test a model (default: the embedded data set)")
    add_arguments(t)
    t.add_argument("--sweep", nargs="+", default=None, metavar="KEY=V1,V2",
                   help="run the grid over these options (e.g. epsilon=1e-4,1e-3 lam=0.1,1.0) "
                        "and write the parameter-study table")
    e = sub.add_parser("eval", help="evaluate a checkpoint: print and save the shot table")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--split", default="test", choices=("train", "val", "test"))
    e.add_argument("--data-root", default=None)
    e.add_argument("--out", default=None, help="folder for the tables (default: the checkpoint's)")
    e.add_argument("--device", default="auto")
    e.add_argument("--batch-size", type=int, default=None)
    m = sub.add_parser("motivation", help="paper Figure 2a: supervised vs SSL + supervised")
    m.add_argument("--quick", action="store_true", help="reduced grid (seconds)")
    m.add_argument("--ratios", default=None, help="comma-separated R values")
    m.add_argument("--seeds", type=int, default=None, help="number of seeds")
    m.add_argument("--t1", type=int, default=None, help="self-supervised epochs")
    m.add_argument("--t2", type=int, default=None, help="supervised epochs")
    m.add_argument("--out", default="runs/motivation")
    m.add_argument("--lr-rep", type=float, default=1e-3,
                   help="learning rate of the representation-learning method (both phases)")
    m.add_argument("--lr-sup", type=float, default=1e-2,
                   help="learning rate of the supervised-only method")
    m.add_argument("--epsilon", type=float, default=1.0, help="perturbation radius (||x|| ~ 100)")
    v = sub.add_parser("perturbations", help="plot inputs next to their SSIR perturbations "
                                             "(paper Figure 4)")
    v.add_argument("--checkpoint", required=True)
    v.add_argument("--epsilons", default="1e-3,1e-2,1e-1,1")
    v.add_argument("--n", type=int, default=4)
    v.add_argument("--data-root", default=None)
    v.add_argument("--out", default=None, help="PNG path (default: next to the checkpoint)")
    i = sub.add_parser("info", help="print versions, compiled kernels, CUDA, DALI and GPUs (paste "
                                    "it into a bug report)")
    i.add_argument("--json", action="store_true", help="as JSON")
    return p


def parse_sweep(items):
    """['epsilon=1e-4,1e-3', 'lam=0.1,1'] -> {'epsilon': ['1e-4', '1e-3'], 'lam': ['0.1', '1']}."""
    grid = {}
    names = set(TrainConfig.__dataclass_fields__)
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--sweep takes KEY=V1,V2,... items, got {item!r}")
        k, vals = item.split("=", 1)
        k = k.strip().lstrip("-").replace("-", "_")
        if k not in names:
            raise ConfigError(f"--sweep: unknown option {k!r}")
        vs = [v for v in vals.split(",") if v.strip()]
        if not vs:
            raise ConfigError(f"--sweep: no values for {k!r}")
        grid[k] = [coerce_value(k, v.strip()) for v in vs]
    return grid


def run_sweep(base_values, file_values, grid, log=print):
    """Train every point of the grid (each its own run folder under <out>/sweep); write
    sweep.csv, sweep.md (the parameter-study table) and sweep.png (epsilon x lam heat map)."""
    keys = list(grid)
    out = base_values.get("out") or os.path.join("runs", "sweep")
    cfgs = []
    for combo in itertools.product(*(grid[k] for k in keys)):
        vals = {**base_values, **dict(zip(keys, combo))}
        tag = "-".join(f"{k}{v}" for k, v in zip(keys, combo))
        vals["out"] = os.path.join(out, tag)
        cfgs.append((dict(zip(keys, combo)), make_config(vals, file_values)))  # validate all first
    rows = []
    for point, cfg in cfgs:
        log(f"== sweep point {point}")
        res = train(cfg, log)
        row = {k: getattr(cfg, k) for k in keys}
        for g in ("all", "many", "medium", "few"):
            for m in ("mae", "gm"):
                row[f"{g}_{m}"] = res.get(g, {}).get(m) if isinstance(res, dict) else None
        rows.append(row)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "sweep.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    cols = keys + ["all_mae", "many_mae", "medium_mae", "few_mae", "all_gm"]
    md = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        md.append("| " + " | ".join(f"{r[c]:.3f}" if isinstance(r[c], float) and c not in keys
                                    else f"{r[c]:g}" if isinstance(r[c], float) else str(r[c])
                                    for c in cols) + " |")
    with open(os.path.join(out, "sweep.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    log("\n".join(md))
    if "epsilon" in keys and "lam" in keys:
        try:
            plot_sweep(rows, os.path.join(out, "sweep.png"))
        except ImportError:   # no matplotlib: the table is the result
            pass
    return rows


def _perturbations(args):
    out = os.path.dirname(os.path.abspath(args.checkpoint))
    with load_run(args.checkpoint, "perturbations --checkpoint", device="cpu", out=out,
                  data_root=args.data_root or None) as run:
        ds, model = run.data.ds, run.model
        x, y, _ = next(iter(run.data.loaders["test"]))
        idx = torch.linspace(0, x.shape[0] - 1, args.n).long()
        eps = [float(e) for e in args.epsilons.split(",")]
        path = args.out or os.path.join(out, "perturbations.png")
        lo, hi = (ds.clip_bounds() if hasattr(ds, "clip_bounds") and ds.clip_bounds() else
                  (None, None))
        mean = ds.mean[0] if isinstance(ds.mean, tuple) else 0.0
        std = ds.std[0] if isinstance(ds.std, tuple) else 1.0
        plot_perturbations(model, x[idx], y[idx], eps, path, bin_width=run.data.bins.bin_width,
                           n=args.n, mean=mean, std=std,
                           clip_min=None if lo is None else torch.tensor(lo),
                           clip_max=None if hi is None else torch.tensor(hi))
    print(path)
    return path


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if args.command == "train":
            values = {k: v for k, v in vars(args).items()
                      if k not in ("command", "config", "sweep")}
            file_values = load_config_file(args.config) if args.config else {}
            if args.sweep:
                grid = parse_sweep(args.sweep)
                run_sweep(values, file_values, grid)
                return 0
            train(make_config(values, file_values))
            return 0
        if args.command == "eval":
            evaluate_checkpoint(args.checkpoint, args.split, args.data_root, args.out, args.device,
                                args.batch_size)
            return 0
        if args.command == "motivation":
            ratios = None if args.ratios is None else [
                int(float(r)) if float(r).is_integer() else float(r) for r in args.ratios.split(",")]
            run_motivation(args.out, args.quick, ratios, args.seeds, args.t1, args.t2,
                           lr_rep=args.lr_rep, lr_sup=args.lr_sup, epsilon=args.epsilon)
            return 0
        if args.command == "perturbations":
            _perturbations(args)
            return 0
        if args.command == "info":
            facts = collect()
            print(json.dumps(facts, indent=1) if args.json else format_info(facts))
            return 0
    except (ConfigError, DataError) as e:
        print(f"ssir-fast {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 2


if __name__ == "__main__":
    sys.exit(main())
