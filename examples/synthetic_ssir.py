"""Train a small MLP on synthetic long-tailed regression data, with and without SSIR.

    python examples/synthetic_ssir.py [--epochs 60] [--seed 0]

Labels y in [0, 100) follow a long-tailed (exponential) distribution in training and are uniform
in the test set; inputs are noisy nonlinear features of y. Prints test MAE overall and per shot
group (bins of width 1 by number of training samples: many > 100, medium 20-100, few < 20).
"""
import argparse
import time

import numpy as np
import torch
from torch import nn

from ssir_fast import SSIRLoss
from ssir_fast.imbalance import LabelBins
from ssir_fast.losses import weighted_l1


def make_data(n, long_tailed, gen):
    if long_tailed:
        y = torch.distributions.Exponential(1 / 15.0).sample((n,)).clamp(max=99.9)
    else:
        y = torch.rand(n, generator=gen) * 100
    k = torch.arange(1, 9, dtype=torch.float32)
    feats = torch.cat([torch.sin(y[:, None] / 100 * k * 3.1416), torch.cos(y[:, None] / 100 * k * 3.1416),
                       (y[:, None] / 100) ** k[:4]], dim=1)
    x = feats + 0.05 * torch.randn(feats.shape, generator=gen)
    return x, y


def shot_mae(pred, y, train_counts, bins):
    idx = bins.index(y.numpy())
    err = np.abs(pred.numpy() - y.numpy())
    counts = train_counts[idx]
    groups = {"all": np.ones_like(err, bool), "many": counts > 100,
              "medium": (counts >= 20) & (counts <= 100), "few": counts < 20}
    return {k: float(err[m].mean()) if m.any() else float("nan") for k, m in groups.items()}


def train(use_ssir, x, y, epochs, seed):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(x.shape[1], 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
                          nn.Linear(128, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = SSIRLoss(bin_width=1.0, epsilon=1e-2, lam=1.0)
    sim = []
    for _ in range(epochs):
        perm = torch.randperm(len(y))
        for i in range(0, len(y), 256):
            b = perm[i:i + 256]
            opt.zero_grad()
            if use_ssir:
                res = loss_fn(model, x[b], y[b])
                res.backward()
                sim.append(float(res.similarity))
            else:
                weighted_l1(model(x[b]).squeeze(1), y[b]).backward()
            opt.step()
    return model, (float(np.mean(sim[-20:])) if sim else None)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    gen = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    x_tr, y_tr = make_data(6000, True, gen)
    x_te, y_te = make_data(2000, False, gen)
    bins = LabelBins(0.0, 1.0, 100)
    counts = bins.counts(y_tr.numpy())
    print(f"train: {len(y_tr)} samples, bins with >100 / 20-100 / <20 samples: "
          f"{(counts > 100).sum()} / {((counts >= 20) & (counts <= 100)).sum()} / {(counts < 20).sum()}")
    print(f"{'method':<10}{'All':>8}{'Many':>8}{'Medium':>8}{'Few':>8}  similarity  time")
    for name, use in (("vanilla", False), ("SSIR", True)):
        t0 = time.time()
        model, sim = train(use, x_tr, y_tr, args.epochs, args.seed)
        with torch.no_grad():
            pred = model(x_te).squeeze(1)
        m = shot_mae(pred, y_te, counts, bins)
        sim_s = f"{sim:10.3f}" if sim is not None else f"{'-':>10}"
        print(f"{name:<10}{m['all']:8.2f}{m['many']:8.2f}{m['medium']:8.2f}{m['few']:8.2f}  "
              f"{sim_s}  {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
