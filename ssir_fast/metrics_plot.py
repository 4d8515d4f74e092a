"""The per-bin figure of the DIR metrics: test error per bin over the training label histogram;
for a two-dimensional target, heat maps over the joint bins."""
import numpy as np

__all__ = ["plot_per_bin", "plot_per_bin_grid", "grid_image"]


def plot_per_bin(result, path, title=None, metric="mae"):
    """Bars: training samples per bin (left axis, the label histogram); line: test `metric` per
    bin (right axis), shot groups shaded. Written as PNG with matplotlib's Agg backend."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    pb = result["per_bin"]
    centers = (np.asarray(pb["bin_lo"]) + np.asarray(pb["bin_hi"])) / 2
    width = float(pb["bin_hi"][0] - pb["bin_lo"][0])
    fig, ax = plt.subplots(figsize=(9, 4), dpi=120)
    train = np.asarray(pb["train_count"], dtype=float)
    colours = {"many": "#9ecae1", "medium": "#fdd0a2", "few": "#fcbba1", "": "#cccccc"}
    ax.bar(centers, np.where(train >= 0, train, 0), width=width,
           color=[colours[str(g)] for g in pb["group"]], label="training samples")
    ax.set_xlabel("target")
    ax.set_ylabel("# training samples")
    ax2 = ax.twinx()
    ax2.plot(centers, pb[metric], "o-", color="#d62728", ms=2.5, lw=1.2, label=f"test {metric}")
    ax2.set_ylabel(f"test {metric.upper()} per bin")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[g]) for g in ("many", "medium", "few")]
    ax.legend(handles + ax2.get_lines(), ["many-shot", "medium-shot", "few-shot", f"test {metric}"],
              loc="upper right", fontsize=8)
    ax.set_title(title or f"per-bin {metric.upper()} over the training label distribution")
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return path


def grid_image(per_bin, column):
    """A per-bin column of a two-dimensional grid as a [n0, n1] array (flat bins row-major),
    with the per-dimension edges: (values, edges_0, edges_1)."""
    lo0, hi0 = np.asarray(per_bin["bin_lo_0"]), np.asarray(per_bin["bin_hi_0"])
    lo1, hi1 = np.asarray(per_bin["bin_lo_1"]), np.asarray(per_bin["bin_hi_1"])
    e0 = np.unique(np.concatenate([lo0, hi0]))
    e1 = np.unique(np.concatenate([lo1, hi1]))
    values = np.asarray(per_bin[column], dtype=np.float64).reshape(len(e0) - 1, len(e1) - 1)
    return values, e0, e1


def plot_per_bin_grid(result, path, title=None, metric="mae", names=None):
    """Heat maps over the joint bins of a two-dimensional target: training samples per bin (log
    colour scale) and the test `metric` per bin (empty test bins blank)."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm
    pb = result["per_bin"]
    names = names or ("dimension 0", "dimension 1")
    train, e0, e1 = grid_image(pb, "train_count")
    err, _, _ = grid_image(pb, metric)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    panels = ((np.where(train > 0, train, np.nan), "# training samples", LogNorm()),
              (err, f"test {metric.upper()}", None))
    for ax, (values, label, norm) in zip(axes, panels):
        mesh = ax.pcolormesh(e1, e0, np.ma.masked_invalid(values), cmap="viridis", norm=norm)
        fig.colorbar(mesh, ax=ax, label=label)
        ax.set_xlabel(names[1])
        ax.set_ylabel(names[0])
        ax.set_title(label + " per joint bin")
    fig.suptitle(title or f"per-bin {metric.upper()} over the joint bins")
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return path
