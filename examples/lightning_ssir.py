"""SSIR in PyTorch Lightning: a LightningModule to copy, with the DIR shot metrics logged through
torchmetrics (synced over processes and reset by Lightning's loop).

    pip install "ssir_fast[torchmetrics]" lightning
    python examples/lightning_ssir.py                              # CPU, fp32
    python examples/lightning_ssir.py --precision bf16-mixed       # autocast: labels stay fp32
    python examples/lightning_ssir.py --devices 2 --strategy ddp_spawn
    python examples/lightning_ssir.py --compile                    # torch.compile'd network

The data are a long-tailed regression table (a log-normal target, most labels small): the
few-shot bins are the large labels.
"""
import argparse

import lightning as L
import torch
from torch import nn

import ssir_fast
from ssir_fast.integrations.torchmetrics import ShotMetrics

NUM_BINS, BIN_WIDTH = 20, 2.0


def long_tailed_data(n, d=8, seed=0):
    """x [n, d] ~ N(0, 1), y = 8 exp(0.6 z) + noise with z a fixed projection of x: long-tailed."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    w = torch.linspace(-1.0, 1.0, d) / torch.linspace(-1.0, 1.0, d).norm()
    y = 8 * torch.exp(0.6 * (x @ w)) + 0.3 * torch.randn(n, generator=g)
    return x, y.clamp(0, NUM_BINS * BIN_WIDTH - 1e-3)


class SSIRRegressor(L.LightningModule):
    """An MLP (BatchNorm, Dropout) trained with supervised L1 + lam * SSIR consistency.

    `train_labels` give the shot groups of the validation metrics; `compile` runs the network
    through torch.compile (SSIRLoss handles the recompiles a new batch size triggers)."""

    def __init__(self, num_features, train_labels, lam=0.1, epsilon=1e-2, lr=1e-2, width=32,
                 compile=False, dropout=0.1):
        super().__init__()
        self.save_hyperparameters(ignore=["train_labels"])
        self.net = nn.Sequential(nn.Linear(num_features, width), nn.BatchNorm1d(width), nn.ReLU(),
                                 nn.Dropout(dropout), nn.Linear(width, 1))
        self.ssir = ssir_fast.SSIRLoss(bin_width=BIN_WIDTH, epsilon=epsilon, lam=lam)
        self.val_metrics = ShotMetrics(y_min=0.0, bin_width=BIN_WIDTH, num_bins=NUM_BINS,
                                       train_labels=train_labels)
        self._compiled = None

    def network(self):
        """The network the passes call: `net`, or its compiled wrapper (built once, kept out of
        the module's children so the state dict has no second copy of the weights)."""
        if not self.hparams.compile:
            return self.net
        if self._compiled is None:   # compile=True, or the name of a torch.compile backend
            backend = self.hparams.compile if isinstance(self.hparams.compile, str) else "inductor"
            self._compiled = torch.compile(self.net, backend=backend)
        return self._compiled

    def forward(self, x):
        return self.network()(x).squeeze(1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        res = self.ssir(self.network(), x, y)
        self.log_dict({"train_loss": res.loss, "supervised": res.supervised,
                       "similarity": res.similarity}, prog_bar=True, batch_size=x.shape[0])
        return res.loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.val_metrics.update(self(x), y)

    def on_validation_epoch_end(self):
        # compute() sums the per-bin tables of all processes; reset() empties them
        values = self.val_metrics.compute()
        self.log_dict({f"val_{k}": v.float() for k, v in values.items()})
        self.val_metrics.reset()

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


def loaders(n_train=1000, n_val=200, batch_size=64, seed=0):
    xtr, ytr = long_tailed_data(n_train, seed=seed)
    xva, yva = long_tailed_data(n_val, seed=seed + 1)
    train = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(xtr, ytr),
                                        batch_size=batch_size, shuffle=False)
    val = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(xva, yva),
                                      batch_size=batch_size)
    return train, val, ytr


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--precision", default="32-true")
    p.add_argument("--devices", type=int, default=1)
    p.add_argument("--strategy", default="auto")
    p.add_argument("--compile", action="store_true")
    args = p.parse_args(argv)
    L.seed_everything(0)
    train, val, ytr = loaders()
    model = SSIRRegressor(num_features=8, train_labels=ytr, compile=args.compile)
    trainer = L.Trainer(max_epochs=args.epochs, accelerator="cpu", devices=args.devices,
                        strategy=args.strategy, precision=args.precision, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(model, train, val)
    print({k: round(float(v), 4) for k, v in trainer.callback_metrics.items()
           if k.startswith("val_") and k.endswith("_mae")})


if __name__ == "__main__":
    main()
