"""One optimisation step of the training loop, called once per batch:

    stats = step(x, y, w, epoch)        # StepStats of 0-d device tensors: no host sync

    out  = model(x, labels=y, epoch, features=...)     # RegressionOutput(pred, features)
           (with SSIR: SSIRLoss runs the clean pass and its perturbation passes through `_call`)
    L    = mean_i w_i D_R(pred_i, y_i)  (+ lam * SSIR consistency)  (+ RankSim(features, y))
    L.backward()  (DDP averages the gradients; the loss module's are all-reduced)  optimiser step
    FDS: fds.update(features of the clean pass, y)     (the epoch's statistics, folded at its end)

What each pass asks of the model is said here, explicitly: every pass gives FDS the labels of its
rows (calibration with the current statistics), only the clean pass returns its features, and
only those feed the FDS statistics. In RRT (`rrt=True`) the step is the plain supervised one.
"""
import contextlib
from typing import NamedTuple

import torch
import torch._functorch.config as functorch_config

from ..losses import ranksim
from . import distributed as D

__all__ = ["TrainStep", "StepStats"]


class StepStats(NamedTuple):
    """What one step measured, as 0-d tensors on the device (read once per epoch)."""
    loss: torch.Tensor
    supervised: torch.Tensor
    consistency: torch.Tensor    # SSIR terms: 0 without SSIR
    similarity: torch.Tensor
    perturbation: torch.Tensor   # mean ||x~ - x|| / ||x||
    output_change: torch.Tensor  # mean |f(x~) - f(x)| / dy

    def as_tensor(self):
        """The six values as one float64 tensor [6] (the loop's epoch accumulator)."""
        return torch.stack(list(self)).double()


class TrainStep:
    """The per-batch step of a run.

    Args:
        model: the Regressor (its FDS, if any, gets the statistics).
        forward_model: what the passes call: `model`, or its DDP / torch.compile wrapper.
        base_loss: the supervised loss(pred, y, weight).
        optimizer, precision: the optimiser and the mixed-precision policy (autocast, scaler).
        env: the distributed environment (the loss module's gradients are all-reduced).
        ssir: an SSIRLoss or None. loss_module: the base loss's parameters or None.
        fds, ranksim: whether FDS statistics are collected and RankSim added (cfg.fds / ranksim).
        ranksim_gamma, ranksim_lam: RankSim's interpolation strength and weight.
        compiled: forward_model is torch.compile'd.
        rrt: the RRT stage: supervised loss only, no FDS, RankSim or SSIR.
        skip_nonfinite: a batch whose loss is NaN or inf changes nothing (no update, no FDS
            statistics) and the call returns None; `skipped` counts them. Costs one host sync per
            step (and an all-reduce under DDP, so every rank skips the same batches).
    """

    def __init__(self, model, forward_model, base_loss, optimizer, precision, env, *, ssir=None,
                 loss_module=None, fds=False, ranksim=False, ranksim_gamma=None,
                 ranksim_lam=None, compiled=False, rrt=False, skip_nonfinite=False):
        self.model, self.forward_model = model, forward_model
        self.base_loss, self.optimizer, self.precision, self.env = base_loss, optimizer, \
            precision, env
        self.rrt = rrt
        self.ssir = None if rrt else ssir
        self.loss_module = loss_module
        self.fds = fds and not rrt
        self.ranksim = ranksim and not rrt
        self.ranksim_gamma, self.ranksim_lam = ranksim_gamma, ranksim_lam
        self.features = self.fds or self.ranksim
        self.skip_nonfinite, self.skipped = skip_nonfinite, 0
        # SSIR's step 1 backpropagates through the clean graph with retain_graph=True, which
        # compiled backwards with donated buffers refuse: the setting is scoped to the step's
        # compiled calls (compilation happens inside them), not changed for the process.
        self._compile_scope = ((lambda: functorch_config.patch(donated_buffer=False))
                               if compiled and self.ssir is not None else contextlib.nullcontext)

    def _call(self, x, labels, epoch, features):
        """One pass of the model: (prediction, features or None)."""
        out = self.forward_model(x, labels=labels if self.fds else None, epoch=epoch,
                                 features=features)
        return (out.pred, out.features) if features else (out, None)

    def _trained(self):
        """The parameters the optimiser updates (those that require grad)."""
        return [p for group in self.optimizer.param_groups for p in group["params"]
                if p.requires_grad]

    def _finite(self, loss):
        bad = (~torch.isfinite(loss.detach())).float()
        if self.env.active:
            torch.distributed.all_reduce(bad)
        return not bool(bad.item())

    def __call__(self, x, y, w, epoch) -> StepStats:
        """One step on batch (x, y, w) of `epoch` (0-based); the parameters are updated."""
        with self._compile_scope():
            with self.precision.autocast():
                if self.ssir is not None:
                    def call(inputs, rows, clean):
                        return self._call(inputs, y if rows is None else y[rows], epoch,
                                          clean and self.features)
                    res = self.ssir(self.forward_model, x, y, weight=w, call=call)
                    loss, sup, feats = res.loss, res.supervised, res.features
                    extra = (res.consistency, res.similarity, res.perturbation,
                             res.output_change)
                else:
                    pred, feats = self._call(x, y, epoch, self.features)
                    sup = loss = self.base_loss(pred.float(), y.reshape(pred.shape), w)
                    extra = None
                if self.ranksim:
                    loss = loss + ranksim(feats.float(), y, self.ranksim_gamma, self.ranksim_lam)
            self.optimizer.zero_grad(set_to_none=True)
            if self.skip_nonfinite and not self._finite(loss):
                self.skipped += 1
                return None
            # Gradients of the trained parameters only: with SSIR, the clean pass's input is a
            # leaf that requires grad (for step 1), and a plain backward would form its gradient
            # too, a full input-gradient pass through the first layer that nothing reads.
            # DDP averages the gradients over the ranks here.
            self.precision.backward(loss, inputs=self._trained() if self.ssir is not None else None)
        if self.loss_module is not None:
            D.all_reduce_grads(list(self.loss_module.parameters()), self.env.world)
        self.precision.step(self.optimizer)   # fp16: unscaled, skipped on inf/NaN grads
        if self.fds:
            self.model.fds.update(feats.detach().float(), y)
        if extra is None:
            zero = torch.zeros((), device=loss.device)
            extra = (zero, zero, zero, zero)
        return StepStats(loss.detach(), sup.detach(), *(t.detach() for t in extra))
