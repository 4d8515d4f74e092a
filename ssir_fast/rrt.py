"""RRT (Yang et al. 2021): after normal training, re-initialise the last linear layer and re-train
only it with a re-weighting scheme, keeping every other parameter and BatchNorm state frozen.

    head = rrt_prepare(model)                       # last nn.Linear, re-initialised, trainable
    opt = torch.optim.Adam(head.parameters(), lr)
    for x, y in loader:
        w = ssir_fast.imbalance.lookup_weights(y, weights_per_bin, bins)   # INV / SQINV / LDS
        with rrt_mode(model):                       # BN in eval mode: running stats untouched
            loss = weighted_l1(model(x), y, w)
        loss.backward(); opt.step(); opt.zero_grad()

or `rrt_train(model, loader, weights_fn, epochs, lr)` for the whole loop.
"""
import contextlib

import torch

from .losses import weighted_l1

__all__ = ["last_linear", "rrt_prepare", "rrt_mode", "rrt_train"]

_BN = (torch.nn.modules.batchnorm._BatchNorm, torch.nn.SyncBatchNorm)


def last_linear(model, name=None):
    """The module named `name`, or the last nn.Linear registered in `model`."""
    if name is not None:
        mod = dict(model.named_modules()).get(name)
        if not isinstance(mod, torch.nn.Linear):
            raise ValueError(f"{name!r} is not an nn.Linear of the model")
        return mod
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    if not linears:
        raise ValueError("the model has no nn.Linear layer to re-train")
    return linears[-1]


def rrt_prepare(model, name=None, reinit=True):
    """Freeze every parameter, then re-initialise (reset_parameters) and unfreeze the last linear
    layer. Returns that layer."""
    head = last_linear(model, name)
    for p in model.parameters():
        p.requires_grad_(False)
    if reinit:
        head.reset_parameters()
    for p in head.parameters():
        p.requires_grad_(True)
    return head


@contextlib.contextmanager
def rrt_mode(model):
    """model.train() with every BatchNorm in eval mode (running statistics used, not updated)
    and the previous modes restored on exit."""
    modes = {m: m.training for m in model.modules()}
    model.train()
    for m in model.modules():
        if isinstance(m, _BN):
            m.eval()
    try:
        yield model
    finally:
        for m, mode in modes.items():
            m.training = mode


def rrt_train(model, loader, weights_fn, epochs=1, lr=1e-3, loss_fn=None, name=None, device=None,
              optimizer_cls=torch.optim.Adam):
    """Re-train the last linear layer for `epochs` over `loader` ((x, y, ...) batches) with
    per-sample weights `weights_fn(y)` (e.g. a partial of imbalance.lookup_weights) and
    `loss_fn(pred, y, weight)` (default weighted L1). Returns the layer."""
    loss_fn = loss_fn or weighted_l1
    head = rrt_prepare(model, name)
    opt = optimizer_cls(head.parameters(), lr=lr)
    for _ in range(int(epochs)):
        for batch in loader:
            x, y = batch[0], batch[1]
            if device is not None:
                x, y = x.to(device), y.to(device)
            with rrt_mode(model):
                pred = model(x)
                loss = loss_fn(pred, y.reshape(pred.shape).to(pred.dtype), weights_fn(y))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return head
