"""The paper's motivation experiment (Section 3, Figure 2a; appendix settings: paper Appendix 8.5).

Data: x1 ~ N(10 * 1_d, 25 I), x2 ~ N(-10 * 1_d, 25 I), d = 100, y = w^T x, N1 / N2 = R, balanced
test set (`ssir_fast.data.two_gaussians`). Model: 2-layer MLP, 128 hidden units. Two schedules:

- supervised:              T1 + T2 epochs of MSE training, lr 1e-2 (`lr_sup`);
- representation learning: T1 epochs self-supervised, then T2 epochs of MSE training, lr 1e-3
  (`lr_rep`, both phases): the paper's appendix 8.5 gives one learning rate per method.

The self-supervised phase is the SSIR consistency objective alone (Algorithm 1 with the
supervised term removed): no labels are used,

    L_ssl = mean_i D(f(x~_i), stopgrad f(x_i) + z_i),   z ~ U(-dy, dy),  ||x~ - x||_2 <= epsilon,

so the network learns to give similar outputs to similar inputs before it sees the labels
(dy = the label bin width, epsilon relative to ||x|| ~ 100 here). Weight decay 5e-5, Adam,
mini-batches of 256. Reported: test MSE (balanced test set), mean and std over seeds, per R.
`quick=True` runs a reduced grid (R in {1, 4, 100}, 1 seed, 50 + 100 epochs, 300 majority
samples) that the tests use.
"""
import csv
import json
import os
import time

import numpy as np
import torch

from ..data import two_gaussians
from ..losses import weighted_mse
from ..ssir import SSIRLoss
from .models import MLP

__all__ = ["run_motivation", "FULL", "QUICK"]

FULL = dict(ratios=(1, 2, 4, 6, 8, 10, 100), seeds=(0, 1, 2, 3, 4), t1=1000, t2=500,
            n_major=1000, n_test=500)
QUICK = dict(ratios=(1, 4, 100), seeds=(0,), t1=50, t2=100, n_major=300, n_test=200)


def _train(model, x, y, epochs, lr, wd, batch, ssl, rng, epsilon, bin_width):
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=wd)
    n = x.shape[0]
    zero = lambda p, t, w=None: p.sum() * 0.0  # noqa: E731  (no supervised term)
    ssir = SSIRLoss(bin_width, epsilon, 1.0, "mse", base_loss=zero, validate=False)
    for _ in range(epochs):
        perm = torch.from_numpy(rng.permutation(n))
        for s in range(0, n, batch):
            b = perm[s:s + batch]
            if ssl:
                loss = ssir(model, x[b], y[b]).loss   # y only fixes the shape: not used
            else:
                loss = weighted_mse(model(x[b]), y[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


def run_once(ratio, seed, t1, t2, n_major, n_test, ssl, lr_sup=1e-2, lr_rep=1e-3, wd=5e-5,
             batch=256, epsilon=1.0, hidden=128, d=100):
    """Test MSE of one (ratio, seed, schedule) run."""
    ds = two_gaussians(ratio=ratio, d=d, n_major=n_major, n_test=n_test, seed=seed)
    tr, te = ds.splits["train"], ds.splits["test"]
    x, y = torch.from_numpy(tr.X), torch.from_numpy(tr.targets).view(-1, 1)
    xt, yt = torch.from_numpy(te.X), torch.from_numpy(te.targets).view(-1, 1)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = torch.nn.Sequential(MLP(d, hidden), torch.nn.Linear(hidden, 1))
    if ssl:
        _train(model, x, y, t1, lr_rep, wd, batch, True, rng, epsilon, ds.bins.bin_width)
        _train(model, x, y, t2, lr_rep, wd, batch, False, rng, epsilon, ds.bins.bin_width)
    else:
        _train(model, x, y, t1 + t2, lr_sup, wd, batch, False, rng, epsilon, ds.bins.bin_width)
    with torch.no_grad():
        return float(((model(xt) - yt) ** 2).mean())


def run_motivation(out="runs/motivation", quick=False, ratios=None, seeds=None, t1=None, t2=None,
                   log=print, plot=True, **kwargs):
    """Run the grid; write motivation.csv / .json / .md and motivation.png into `out`. Returns
    rows {ratio, supervised_mean, supervised_std, ssl_mean, ssl_std, n_seeds}."""
    p = dict(QUICK if quick else FULL)
    if ratios is not None:
        p["ratios"] = tuple(ratios)
    if seeds is not None:
        p["seeds"] = tuple(range(seeds)) if isinstance(seeds, int) else tuple(seeds)
    if t1 is not None:
        p["t1"] = int(t1)
    if t2 is not None:
        p["t2"] = int(t2)
    os.makedirs(out, exist_ok=True)
    rows = []
    t0 = time.perf_counter()
    for r in p["ratios"]:
        sup = [run_once(r, s, p["t1"], p["t2"], p["n_major"], p["n_test"], False, **kwargs)
               for s in p["seeds"]]
        ssl = [run_once(r, s, p["t1"], p["t2"], p["n_major"], p["n_test"], True, **kwargs)
               for s in p["seeds"]]
        row = {"ratio": r, "supervised_mean": float(np.mean(sup)),
               "supervised_std": float(np.std(sup)), "ssl_mean": float(np.mean(ssl)),
               "ssl_std": float(np.std(ssl)), "n_seeds": len(p["seeds"])}
        rows.append(row)
        log(f"R={r:>4}: supervised {row['supervised_mean']:.3f} +- {row['supervised_std']:.3f}"
            f" | SSL + supervised {row['ssl_mean']:.3f} +- {row['ssl_std']:.3f}"
            f"  ({time.perf_counter() - t0:.0f} s)")
    with open(os.path.join(out, "motivation.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with open(os.path.join(out, "motivation.json"), "w") as f:
        json.dump({"settings": {k: list(v) if isinstance(v, tuple) else v for k, v in p.items()},
                   "rows": rows}, f, indent=1)
    md = ["| R | supervised test MSE | SSL + supervised test MSE |", "|---|---|---|"]
    md += [f"| {r['ratio']} | {r['supervised_mean']:.3f} ± {r['supervised_std']:.3f} | "
           f"{r['ssl_mean']:.3f} ± {r['ssl_std']:.3f} |" for r in rows]
    with open(os.path.join(out, "motivation.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    log("\n".join(md))
    if plot:
        try:
            _plot(rows, os.path.join(out, "motivation.png"))
        except ImportError as e:
            log(f"plot skipped ({e})")
    return rows


def _plot(rows, path):
    import matplotlib   # optional dependency: the figure only; the CSV/JSON results do without
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    r = [row["ratio"] for row in rows]
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=110)
    for key, label in (("supervised", "supervised"), ("ssl", "SSL + supervised")):
        m = np.array([row[f"{key}_mean"] for row in rows])
        s = np.array([row[f"{key}_std"] for row in rows])
        ax.errorbar(r, m, yerr=s, marker="o", capsize=3, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("imbalance ratio R = N1 / N2")
    ax.set_ylabel("test MSE (balanced)")
    ax.set_title("motivation (paper Figure 2a)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
