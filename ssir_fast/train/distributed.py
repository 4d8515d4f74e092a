"""Data-parallel helpers for `torchrun` (NCCL on GPU, gloo on CPU).

The training step runs the model wrapped in `torch.nn.parallel.DistributedDataParallel`: identical
initial weights (DDP broadcasts rank 0's), each rank forwards/backwards its shard of the global
batch, and DDP averages the gradients during the backward. An SSIR step calls the wrapped model
several times (clean and adversarial passes) before its one backward; the input-only gradients of
the perturbation passes never reach the parameters' accumulators, and both graphs' contributions
to a parameter are summed before its DDP hook fires, so the averaged gradient is the one of the
whole global batch. Parameters outside the model (Balanced MSE's learned noise sigma) are averaged
with `all_reduce_grads`. BatchNorm buffers are broadcast from rank 0 (DDP at each forward, and
`broadcast_module` at the end of each epoch, so evaluation and checkpoints see one model). FDS
statistics and the evaluation tables are summed across ranks by `ssir_fast.fds.FDS` and
`ssir_fast.metrics.BinnedMetrics` themselves.
"""
import os

import torch
import torch.distributed as dist

__all__ = ["DistEnv", "setup", "all_reduce_grads", "broadcast_module", "barrier"]


class DistEnv:
    def __init__(self, rank=0, world=1, local_rank=0, initialised_here=False):
        self.rank, self.world, self.local_rank = rank, world, local_rank
        self.initialised_here = initialised_here

    @property
    def main(self):
        return self.rank == 0

    @property
    def active(self):
        return self.world > 1

    def close(self, barrier=False):
        """Leave the process group. `barrier`: wait for every rank first (after a finished run):
        a rank that tears gloo down while another still has traffic in flight can abort at exit
        ("terminate called without an active exception", seen once in CI). Not after an error,
        where the other ranks may never arrive."""
        if self.initialised_here and dist.is_initialized():
            if barrier:
                dist.barrier()
            dist.destroy_process_group()


def setup(device_type):
    """Join the process group when started by torchrun (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistEnv()
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    here = False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
        here = True
    return DistEnv(rank, world, local, here)


def all_reduce_grads(params, world):
    """Average the gradients of `params` over ranks with one all_reduce of a flat buffer."""
    grads = [p.grad for p in params if p.grad is not None]
    if world <= 1 or not grads:
        return
    flat = torch._utils._flatten_dense_tensors(grads)
    dist.all_reduce(flat)
    flat.div_(world)
    for g, r in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
        g.copy_(r)


def broadcast_module(module, params=True, buffers=True):
    """Copy rank 0's parameters and/or buffers to every rank."""
    tensors = []
    if params:
        tensors += [p.data for p in module.parameters()]
    if buffers:
        tensors += [b for b in module.buffers()]
    for t in tensors:
        dist.broadcast(t, 0)


def barrier(env):
    if env.active:
        dist.barrier()
