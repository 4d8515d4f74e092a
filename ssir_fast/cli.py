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
import difflib
import itertools
import json
import logging
import math
import os
import sys
import warnings

import torch

from .data import DataError, registry
from .info import collect, format_info
from .train.checkpoint import CheckpointError
from .train.config import (FLAT, LEAVES, ConfigError, ConfigWarning, Parser, add_arguments,
                           load_config_file, make_config, typed_values)
from .train.evaluation import evaluate_checkpoint, load_run
from .train.motivation import run_motivation
from .train.plots import plot_perturbations, plot_sweep
from .train.precision import PrecisionError
from .train.runfolder import fresh_folder
from .train.trainer import TrainingError, train

__all__ = ["main", "build_parser", "run_sweep", "parse_sweep", "train_values"]


def build_parser(data=None):
    """The `ssir-fast` parser; `data` (the --data given, if any) picks the data set whose
    loader options the train help lists."""
    p = Parser(prog="ssir-fast", description=__doc__.split("\n")[0])
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="on an error, show the Python traceback (default: a one-line message)")
    sub = p.add_subcommands(dest="command", required=False)

    def add(name, help, **kw):   # a sub-command with its own parser
        parser = Parser(prog=f"ssir-fast {name}", **kw)
        sub.add_subcommand(name, parser, help=help)
        return parser

    t = add("train", help="train and test a model (default: the embedded data set)",
            usage="ssir-fast train [--config FILE] [--OPTION VALUE ...] [--sweep ...]",
            description="Options by section; each is also written --SECTION.KEY "
            "(--method.fds.ks 5 is --fds-ks 5) and, in a config file, KEY under its "
            "section (method: {fds: {ks: 5}}) or under its flag's name (fds_ks: 5).")
    add_arguments(t, data)
    t.add_argument("--sweep", nargs="+", default=None, metavar="KEY=V1,V2",
                   help="run the grid over these options (e.g. epsilon=1e-4,1e-3 lam=0.1,1.0) "
                        "and write the parameter-study table")
    e = add("eval", help="evaluate a checkpoint: print and save the shot table")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--split", default="test", choices=("train", "val", "test"))
    e.add_argument("--data-root", default=None)
    e.add_argument("--out", default=None, help="folder for the tables eval_<checkpoint>_<split>_"
                   "metrics.json / _per_bin.csv (default: the checkpoint's; the run's own "
                   "test_metrics.json is never overwritten)")
    e.add_argument("--device", default="auto")
    e.add_argument("--batch-size", type=int, default=None)
    m = add("motivation", help="paper Figure 2a: supervised vs SSL + supervised")
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
    v = add("perturbations", help="plot inputs next to their SSIR perturbations "
                                  "(paper Figure 4)")
    v.add_argument("--checkpoint", required=True)
    v.add_argument("--epsilons", default="1e-3,1e-2,1e-1,1")
    v.add_argument("--n", type=int, default=4)
    v.add_argument("--data-root", default=None)
    v.add_argument("--out", default=None, help="PNG path (default: next to the checkpoint)")
    i = add("info", help="print versions, compiled kernels, CUDA, DALI and GPUs (paste "
                         "it into a bug report)")
    i.add_argument("--json", action="store_true", help="as JSON")
    return p


def train_values(args):
    """{flat name: value} of the options given to `train` (its parsed arguments)."""
    return {k: v for k, v in vars(args).items() if k not in ("config", "sweep")}


def parse_sweep(items):
    """['epsilon=1e-4,1e-3', 'lam=0.1,1'] -> {'epsilon': ['1e-4', '1e-3'], 'lam': ['0.1', '1']}."""
    grid = {}
    names = set(FLAT)
    paths = {".".join(leaf.path): leaf.flat for leaf in LEAVES}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--sweep takes KEY=V1,V2,... items, got {item!r}")
        k, vals = item.split("=", 1)
        k = k.strip().lstrip("-").replace("-", "_")
        k = paths.get(k, k)   # a nested key: method.fds.ks -> fds_ks
        if k not in names:
            near = difflib.get_close_matches(k, sorted(names), n=1)
            raise ConfigError(f"--sweep: unknown option {k!r}" + (
                f"; closest valid key: {near[0]!r} (section [{FLAT[near[0]].section}])"
                if near else ""))
        vs = [v for v in vals.split(",") if v.strip()]
        if not vs:
            raise ConfigError(f"--sweep: no values for {k!r}")
        grid[k] = [typed_values({k: v.strip()}, "--sweep: option")[k] for v in vs]
    return grid


def run_sweep(base_values, file_values, grid, log=print):
    """Train every point of the grid (each its own run folder under <out>/sweep); write
    sweep.csv, sweep.md (the parameter-study table) and sweep.png (epsilon x lam heat map)."""
    keys = list(grid)
    # as a run's default folder: a fresh one (runs/sweep-v2, ...) when runs/sweep is taken
    out = base_values.get("out") or fresh_folder(os.path.join("runs", "sweep"))
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
        row = {k: cfg.to_dict()[k] for k in keys}
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


def _floats(text, flag):
    """'1e-3,1e-2' -> [0.001, 0.01], or a ConfigError naming the flag."""
    try:
        vals = [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{flag} takes comma-separated numbers, got {text!r}") from None
    if not vals or not all(math.isfinite(v) and v >= 0 for v in vals):
        raise ConfigError(f"{flag} takes comma-separated finite numbers >= 0, got {text!r}")
    return vals


def _perturbations(args):
    eps = _floats(args.epsilons, "--epsilons")   # checked before any work
    out = os.path.dirname(os.path.abspath(args.checkpoint))
    with load_run(args.checkpoint, "perturbations --checkpoint", device="cpu", out=out,
                  data_root=args.data_root or None) as run:
        kind = registry.get(run.cfg.data.name).kind
        if kind != "image":
            raise ConfigError(f"perturbations plots input images next to their perturbations; "
                              f"the run of {args.checkpoint} trained on --data {run.cfg.data.name} "
                              f"({kind} data)")
        ds, model = run.data.ds, run.model
        x, y, _ = next(iter(run.data.loaders["test"]))
        idx = torch.linspace(0, x.shape[0] - 1, args.n).long()
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


def _one_line(e):
    """An exception as one line: its message's lines joined (a list of problems stays readable)."""
    text = str(e).strip() or type(e).__name__
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    lines = [ln[2:] if ln.startswith("- ") else ln for ln in lines]   # a list's bullets
    first, rest = lines[0], lines[1:]
    return first + (" " if first.endswith(":") else "; ") + "; ".join(rest) if rest else first


def main(argv=None):
    """The `ssir-fast` command. Every error ends in one line on stderr and a non-zero exit code
    (2: invalid options or input; 1: the run failed; 130: interrupted); `--debug` shows the
    traceback instead."""
    argv = sys.argv[1:] if argv is None else list(argv)
    data = [a.split("=", 1)[1] if "=" in a else argv[i + 1] if i + 1 < len(argv) else None
            for i, a in enumerate(argv) if a.split("=", 1)[0] in ("--data", "--data.name")]
    parser = build_parser(data[-1] if data else None)
    args = parser.parse_args(argv)   # (an error: one line and exit code 2)
    if args.command is None:
        parser.print_help()
        return 2
    with warnings.catch_warnings():
        show = warnings.showwarning

        def one_line(message, category, *rest, **kw):
            if issubclass(category, ConfigWarning):
                print(f"ssir-fast {args.command}: warning: {message}", file=sys.stderr)
            else:
                show(message, category, *rest, **kw)

        warnings.showwarning = one_line
        return _guarded(args)


def _guarded(args):
    if getattr(args, "debug", False):   # (set only when given: the namespace stays the options)
        return _run(args)
    try:
        return _run(args)
    except (ConfigError, DataError, CheckpointError, PrecisionError) as e:
        print(f"ssir-fast {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ssir-fast {args.command}: interrupted", file=sys.stderr)
        return 130
    except TrainingError as e:
        print(f"ssir-fast {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 1
    except OSError as e:   # a full disk, a folder that cannot be written, ...
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        print(f"ssir-fast {args.command}: error: {e.strerror or _one_line(e)}{where} "
              f"(--debug shows the traceback)", file=sys.stderr)
        return 1
    except Exception as e:   # a bug or an unforeseen input: said in one line, details on --debug
        print(f"ssir-fast {args.command}: error: {type(e).__name__}: {_one_line(e)} (--debug "
              f"shows the traceback)", file=sys.stderr)
        return 1


def _run(args):
    command, args = args.command, args[args.command]   # (the sub-command's options)
    if command == "train":
        values = train_values(args)
        file_values = load_config_file(args.config) if args.config else {}
        if args.sweep:
            grid = parse_sweep(args.sweep)
            run_sweep(values, file_values, grid)
            return 0
        train(make_config(values, file_values))
        return 0
    if command == "eval":
        evaluate_checkpoint(args.checkpoint, args.split, args.data_root, args.out, args.device,
                            args.batch_size)
        return 0
    if command == "motivation":
        ratios = None if args.ratios is None else [
            int(r) if r.is_integer() else r for r in _floats(args.ratios, "--ratios")]
        run_motivation(args.out, args.quick, ratios, args.seeds, args.t1, args.t2,
                       lr_rep=args.lr_rep, lr_sup=args.lr_sup, epsilon=args.epsilon)
        return 0
    if command == "perturbations":
        _perturbations(args)
        return 0
    if command == "info":
        facts = collect()
        print(json.dumps(facts, indent=1) if args.json else format_info(facts))
        return 0
    return 2


def entry():
    """The console script: `main`, then, in a rank started by torchrun, an exit that skips the
    interpreter's teardown. A gloo process group's C++ threads can outlive
    `destroy_process_group` (the DDP wrapper still holds the group) and abort the process while
    Python finalises ("terminate called without an active exception"), failing a finished run.
    Every file is closed and the group left before this point; only buffers remain to flush."""
    code = main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(entry())
