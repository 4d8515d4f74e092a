"""Running a module without leaving a trace: scratch buffers and RNG snapshots.

Both the SSIR loss (its perturbation passes) and FDS (`FDS.collect`) run a model forward that
must not change what a normal training step would leave behind:

    with scratch_buffers(model):      # BatchNorm running statistics, num_batches_tracked, ...
        model(x)                      # ... are updated on clones; the originals are put back
    snap = RngSnapshot(x.device)      # CPU (and CUDA) generator states now
    ...; snap.restore()               # replay the same random draws (dropout masks)

This module sits below both (ssir.py and fds.py import it; it imports only torch), so FDS does
not depend on the loss module.
"""
import contextlib

import torch

__all__ = ["scratch_buffers", "RngSnapshot"]


@contextlib.contextmanager
def scratch_buffers(model, modules=None):
    """Run `model` on clones of its buffers; the originals are put back untouched on exit.
    `modules`: the modules whose buffers get clones (default: all of model's; a caller that knows
    which modules write none leaves them out and saves their copies).

    Swapping the tensors (not copying values back in place) keeps the clean forward's autograd
    graph valid: BatchNorm saves its running statistics for backward."""
    saved = []
    for module in model.modules() if modules is None else modules:
        for name, buf in module._buffers.items():
            if buf is not None:
                saved.append((module, name, buf))
    for module, name, buf in saved:
        module._buffers[name] = buf.clone()
    try:
        yield
    finally:
        for module, name, buf in saved:
            module._buffers[name] = buf


class RngSnapshot:
    """CPU and (when `device` is CUDA) device RNG states, to replay one forward's random draws."""

    def __init__(self, device):
        self.cpu = torch.get_rng_state()
        self.cuda = (device, torch.cuda.get_rng_state(device)) if device.type == "cuda" else None

    def restore(self):
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda[1], self.cuda[0])
