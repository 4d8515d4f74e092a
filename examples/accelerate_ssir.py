"""SSIR in a HuggingFace accelerate training loop, with the DIR shot metrics of the whole
validation set on every process.

    pip install ssir_fast accelerate
    python examples/accelerate_ssir.py                           # one process
    torchrun --nproc_per_node 2 examples/accelerate_ssir.py      # two CPU processes (gloo)
    accelerate launch --multi_gpu --num_processes 2 examples/accelerate_ssir.py   # two GPUs

(On GPUs drop `cpu=True` below; accelerate picks up torchrun's environment either way.)

Metrics with accelerate: `accelerator.prepare` shards the validation loader and pads the last
batch of an uneven split with repeated samples, so that every process gets a batch. Gather the
predictions with `accelerator.gather_for_metrics`, which drops that padding, and feed the
gathered batch to a `BinnedMetrics` on each process (every process then holds the same, complete
table: no all_reduce). Updating each process's metrics with its own shard instead would count
the padded samples twice.
"""
import argparse
import json
import os

import torch
from accelerate import Accelerator
from torch import nn

import ssir_fast
from ssir_fast.metrics import BinnedMetrics

NUM_BINS, BIN_WIDTH = 20, 2.0


def long_tailed_data(n, d=8, seed=0):
    """x [n, d] ~ N(0, 1), y = 8 exp(0.6 z) + noise with z a fixed projection of x: long-tailed."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    w = torch.linspace(-1.0, 1.0, d) / torch.linspace(-1.0, 1.0, d).norm()
    y = 8 * torch.exp(0.6 * (x @ w)) + 0.3 * torch.randn(n, generator=g)
    return x, y.clamp(0, NUM_BINS * BIN_WIDTH - 1e-3)


def evaluate(accelerator, model, loader, train_labels):
    """BinnedMetrics of the whole (sharded) loader: gathered predictions, padding dropped."""
    metrics = BinnedMetrics(y_min=0.0, bin_width=BIN_WIDTH, num_bins=NUM_BINS,
                            train_labels=train_labels)
    model.eval()
    with torch.no_grad():
        for x, y in loader:
            pred, y = accelerator.gather_for_metrics((model(x).squeeze(1), y))
            metrics.update(pred, y)
    model.train()
    return metrics


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32, help="per process")
    p.add_argument("--n-val", type=int, default=203)
    p.add_argument("--out", default=None, help="write this process's results as JSON here")
    args = p.parse_args(argv)

    accelerator = Accelerator(cpu=True)
    torch.manual_seed(0)   # the same initial weights on every process
    xtr, ytr = long_tailed_data(800, seed=0)
    xva, yva = long_tailed_data(args.n_val, seed=1)
    train = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(xtr, ytr),
                                        batch_size=args.batch_size, shuffle=True)
    val = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(xva, yva),
                                      batch_size=args.batch_size)
    model = nn.Sequential(nn.Linear(8, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.1),
                          nn.Linear(32, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model, opt, train, val = accelerator.prepare(model, opt, train, val)
    loss_fn = ssir_fast.SSIRLoss(bin_width=BIN_WIDTH, epsilon=1e-2, lam=0.1)

    for epoch in range(args.epochs):
        for x, y in train:
            res = loss_fn(model, x, y)
            accelerator.backward(res.loss)
            opt.step()
            opt.zero_grad()
        metrics = evaluate(accelerator, model, val, ytr)
        accelerator.print(f"epoch {epoch + 1}: loss {res.loss.item():.3f} val "
                          + " ".join(f"{g} {metrics.compute()[g]['mae']:.3f}"
                                     for g in ("all", "many", "medium", "few")))
    if args.out:
        result = metrics.compute()
        params = accelerator.unwrap_model(model).state_dict()
        record = {"rank": accelerator.process_index, "world": accelerator.num_processes,
                  "params": {k: v.double().reshape(-1).tolist() for k, v in params.items()},
                  "metrics": {g: result[g] for g in ("all", "many", "medium", "few")}}
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, f"rank{accelerator.process_index}.json"), "w") as f:
            json.dump(record, f)
    accelerator.end_training()


if __name__ == "__main__":
    main()
