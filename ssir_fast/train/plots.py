"""End-of-run PNG plots (matplotlib, Agg backend).

- per_bin_test.png: per-bin test MAE over the training label histogram (`ssir_fast.metrics`);
  for a two-dimensional target a heat map of each (training count, test MAE) over the joint bins
  (`plot_per_bin_grid`).
- curves.png: training loss and validation MAE (all / many / medium / few) per epoch.
- similarity.png: the SSIR diagnostics per epoch: similarity rate (Definition 1: fraction of
  samples with D(f(x), f(x~)) < delta), mean ||x~ - x|| / ||x|| and mean |f(x~) - f(x)| / dy.
- `plot_perturbations`: a few inputs next to their SSIR-perturbed versions x~ for several epsilon
  (paper Figure 4); the perturbation r = x~ - x is shown amplified, since ||r||_2 <= epsilon.
- `plot_sweep`: the parameter-study heat map (epsilon x lambda -> test MAE, paper Figure 3a).
"""
import os

import numpy as np
import torch

from ..metrics_plot import grid_image, plot_per_bin, plot_per_bin_grid  # noqa: F401 (public here too)
from ..ssir import SSIRLoss

__all__ = ["plot_run", "plot_curves", "plot_similarity", "plot_perturbations", "plot_sweep",
           "plot_per_bin_grid"]


def _plt():
    # optional dependency (matplotlib): imported when a plot is drawn, so the package and the
    # CLI work without it (the trainer then skips its plots)
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    return plt


def plot_curves(history, path):
    plt = _plt()
    ep = [r["epoch"] for r in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5), dpi=110)
    a.plot(ep, [r["train_loss"] for r in history], "o-", ms=3, label="train loss")
    if "train_consistency" in history[0]:
        a.plot(ep, [r["train_supervised"] for r in history], "s--", ms=3, label="supervised")
        a.plot(ep, [r["train_consistency"] for r in history], "^--", ms=3, label="consistency")
    a.set_xlabel("epoch")
    a.set_title("training loss")
    a.legend(fontsize=8)
    for g in ("all", "many", "medium", "few"):
        vals = [r.get(f"val_{g}_mae") for r in history]
        if any(v is not None for v in vals):
            b.plot(ep, [np.nan if v is None else v for v in vals], "o-", ms=3, label=g)
    b.set_xlabel("epoch")
    b.set_title("validation MAE")
    if b.lines:
        b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_similarity(history, path):
    """SSIR diagnostics per epoch: similarity rate, mean ||x~ - x|| / ||x|| (log scale) and mean
    |f(x~) - f(x)| / dy (older histories without the last two show the rate alone)."""
    plt = _plt()
    ep = [r["epoch"] for r in history]
    panels = [("similarity", "similarity rate", "D(f(x), f(x~)) < delta")]
    if "perturbation" in history[0]:
        panels += [("perturbation", "||x~ - x|| / ||x||", "relative input change"),
                   ("output_change", "|f(x~) - f(x)| / dy", "output change in bins")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), dpi=110,
                             squeeze=False)
    for ax, (key, label, title) in zip(axes[0], panels):
        vals = [r[key] for r in history]
        ax.plot(ep, vals, "o-", ms=3)
        if key == "similarity":
            ax.set_ylim(0, 1.02)
        elif key == "perturbation" and all(v > 0 for v in vals):
            ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.set_title(f"SSIR: {title}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_run(out, result, history, names=None):
    """The end-of-run plots of a training run into folder `out`; returns the paths. A target of
    two dimensions gets heat maps over the joint bins (`plot_per_bin_grid`; `names` label the
    axes)."""
    pb = result["per_bin"]
    if "bin_lo_1" in pb and "bin_lo_2" not in pb:
        first = plot_per_bin_grid(result, os.path.join(out, "per_bin_test.png"),
                                  title="test MAE per joint bin, training counts", names=names)
    elif "bin_lo" in pb:
        first = plot_per_bin(result, os.path.join(out, "per_bin_test.png"),
                             title="test MAE per bin over the training label histogram")
    else:   # three or more dimensions: the per-bin table is in the CSV
        first = None
    paths = [first] if first else []
    if history:
        paths.append(plot_curves(history, os.path.join(out, "curves.png")))
        if "similarity" in history[0]:
            paths.append(plot_similarity(history, os.path.join(out, "similarity.png")))
    return paths


def plot_perturbations(model, x, y, epsilons, path, bin_width=1.0, n=4, mean=0.5, std=0.5,
                       amplify=None, seed=0, **ssir_kwargs):
    """Inputs x[:n] (images [N, C, H, W], normalised with mean/std) next to x~ for each epsilon in
    `epsilons`, and the perturbation r = x~ - x scaled to the full grey range (or by `amplify`).
    x~ comes from `ssir_fast.SSIRLoss` with the given options, so it is exactly what training
    uses. The model is left unchanged (SSIR runs its passes on scratch buffers)."""
    plt = _plt()
    x, y = x[:n], y[:n]
    was = model.training
    rows = []
    for eps in epsilons:
        torch.manual_seed(seed)
        res = SSIRLoss(bin_width, eps, 1.0, **ssir_kwargs)(model, x, y)
        rows.append(res.x_adv.detach().float().cpu())
    model.train(was)

    def show(t):
        img = (t * std + mean).clamp(0, 1)
        return img.permute(1, 2, 0).numpy() if img.shape[0] == 3 else img[0].numpy()

    cols = 1 + 2 * len(epsilons)
    fig, axes = plt.subplots(len(x), cols, figsize=(1.6 * cols, 1.6 * len(x)), dpi=110,
                             squeeze=False)
    for i in range(len(x)):
        axes[i, 0].imshow(show(x[i].float().cpu()), cmap="gray")
        label = ",".join(f"{float(v):.1f}" for v in y[i].reshape(-1))   # a vector target too
        axes[i, 0].set_title(f"x (y={label})" if i == 0 else f"y={label}", fontsize=7)
        for j, (eps, xa) in enumerate(zip(epsilons, rows)):
            r = (xa[i] - x[i].float().cpu())
            axes[i, 1 + 2 * j].imshow(show(xa[i]), cmap="gray")
            scale = amplify or (0.5 / max(float(r.abs().max()), 1e-12))
            axes[i, 2 + 2 * j].imshow(((r * scale) + 0.5).clamp(0, 1).mean(0).numpy(),
                                      cmap="coolwarm", vmin=0, vmax=1)
            if i == 0:
                axes[i, 1 + 2 * j].set_title(f"x~ eps={eps:g}", fontsize=7)
                axes[i, 2 + 2 * j].set_title(f"r x{scale:.0f}", fontsize=7)
    for a in axes.ravel():
        a.axis("off")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_sweep(rows, path, metric="all_mae"):
    """Heat map of `metric` over the epsilon x lam grid of a sweep (rows of dicts)."""
    plt = _plt()
    eps = sorted({r["epsilon"] for r in rows})
    lams = sorted({r["lam"] for r in rows})
    grid = np.full((len(lams), len(eps)), np.nan)
    for r in rows:
        v = r.get(metric)
        grid[lams.index(r["lam"]), eps.index(r["epsilon"])] = np.nan if v is None else v
    fig, ax = plt.subplots(figsize=(1.2 * len(eps) + 2, 0.8 * len(lams) + 1.5), dpi=110)
    im = ax.imshow(grid, cmap="viridis_r", aspect="auto")
    ax.set_xticks(range(len(eps)), [f"{e:g}" for e in eps])
    ax.set_yticks(range(len(lams)), [f"{v:g}" for v in lams])
    ax.set_xlabel("epsilon")
    ax.set_ylabel("lambda")
    for i in range(len(lams)):
        for j in range(len(eps)):
            if grid[i, j] == grid[i, j]:
                ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white")
    fig.colorbar(im, ax=ax, label=metric)
    ax.set_title(f"parameter study: test {metric}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
