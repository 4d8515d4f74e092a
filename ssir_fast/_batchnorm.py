"""Training-mode BatchNorm in the SSIR passes: each layer computed once per pass.

`batchnorm_passes(layers, mode, stats)` runs the layers of one pass one of three ways:

- "record" (the clean forward, subset mode): the layer's own training-mode forward (running
  statistics updated as usual), as one `native_batch_norm` call, which also returns the batch mean
  and invstd = 1 / sqrt(var + eps) it computed. They are kept in `stats` with their graph: no second
  reduction over the input. `_BatchStats` gives them their gradient w.r.t. the layer input v
  (n values per channel):  d mean / dv = 1 / n,  d invstd / dv = -invstd^3 (v - mean) / n.
- "use" (the subset passes): y = v * a + b, a = invstd * weight, b = bias - mean * a, with the
  recorded whole-batch statistics; nothing else runs (no BatchNorm of the subset's own).
- "batch" (the perturbation passes of the other modes): the batch's own statistics, as training
  mode normalises, with no running statistics written (so no scratch copy of them is needed).

A layer whose class overrides `_BatchNorm.forward` (SyncBatchNorm, custom subclasses) keeps its
own forward: "record" then takes the statistics from its input in a pre-hook (one more
reduction), "use" replaces its output in a forward hook, "batch" leaves it to `scratch_buffers`.
The layers a pass leaves untouched are returned, so the caller need not copy their buffers.
"""
import contextlib

import torch
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["batchnorm_layers", "batchnorm_passes"]


def batchnorm_layers(model, modules=None):
    """The training-mode BatchNorm layers of `model` (`modules`: its modules, already listed)."""
    return [m for m in (model.modules() if modules is None else modules)
            if isinstance(m, _BatchNorm) and m.training]


class _BatchStats(torch.autograd.Function):
    """(mean, invstd) of v per channel (dim 1), values computed by BatchNorm, with their graph."""

    @staticmethod
    def forward(ctx, v, mean, invstd):
        ctx.save_for_backward(v, mean, invstd)
        return mean.clone(), invstd.clone()

    @staticmethod
    def backward(ctx, g_mean, g_invstd):
        v, mean, invstd = ctx.saved_tensors
        n = v.numel() // v.shape[1]
        shape = (1, -1) + (1,) * (v.dim() - 2)
        # (g_mean - g_invstd invstd^3 (v - mean)) / n = a v + c, one pass over v
        a = g_invstd * invstd.pow(3) / -n
        c = g_mean / n - a * mean
        return torch.addcmul(c.reshape(shape), v, a.reshape(shape)).to(v.dtype), None, None


def _own_forward(m):
    return type(m).forward is _BatchNorm.forward


def _record(m, v, stats):
    """_BatchNorm.forward in training mode, keeping the statistics it computes."""
    m._check_input_dim(v)
    F._verify_batch_size(v.size())
    momentum = 0.0 if m.momentum is None else m.momentum
    if m.track_running_stats and m.num_batches_tracked is not None:
        m.num_batches_tracked.add_(1)
        if m.momentum is None:  # cumulative average, as _BatchNorm.forward
            momentum = 1.0 / float(m.num_batches_tracked)
    track = m.track_running_stats
    out, mean, invstd = torch.native_batch_norm(
        v, m.weight, m.bias, m.running_mean if track else None, m.running_var if track else None,
        True, momentum, m.eps)
    stats[m] = _BatchStats.apply(v, mean, invstd)
    return out


def _normalise(m, v, mean, invstd):
    """(v - mean) * invstd * weight + bias with given statistics, as one pass over v."""
    shape = (1, -1) + (1,) * (v.dim() - 2)
    scale = invstd if m.weight is None else invstd * m.weight
    shift = -mean * scale if m.bias is None else torch.addcmul(m.bias, mean, scale, value=-1)
    return torch.addcmul(shift.reshape(shape), v, scale.reshape(shape)).to(v.dtype)


def _batch(m, v):
    """Training-mode normalisation with the batch's own statistics, no running statistics."""
    m._check_input_dim(v)
    return F.batch_norm(v, None, None, m.weight, m.bias, True, 0.0, m.eps)


def batchnorm_passes(layers, mode, stats):
    """Run `layers` (from `batchnorm_layers`) the `mode` way ("record", "use", "batch" or None for
    their own forward) inside the block; yields the set of layers that write no buffer there.
    No layers: nothing to enter (a step of a model without BatchNorm skips the generator)."""
    return _passes(layers, mode, stats) if layers else contextlib.nullcontext(set())


@contextlib.contextmanager
def _passes(layers, mode, stats):
    handles, replaced = [], []
    for m in layers if mode is not None else ():
        if _own_forward(m) and (mode != "use" or m in stats):
            if mode == "record":
                fn = lambda v, m=m: _record(m, v, stats)  # noqa: E731
            elif mode == "use":
                fn = lambda v, m=m: _normalise(m, v, *stats[m])  # noqa: E731
            else:
                fn = lambda v, m=m: _batch(m, v)  # noqa: E731
            replaced.append((m, m.__dict__.get("forward")))
            m.forward = fn
        elif mode == "record":
            handles.append(m.register_forward_pre_hook(
                lambda mod, args: stats.__setitem__(mod, _var_mean_stats(mod, args[0]))))
        elif mode == "use" and m in stats:
            handles.append(m.register_forward_hook(
                lambda mod, args, out: _normalise(mod, args[0], *stats[mod]).to(out.dtype)))
    try:
        yield {m for m, _ in replaced} if mode != "record" else set()
    finally:
        for h in handles:
            h.remove()
        for m, before in replaced:
            if before is None:
                del m.forward
            else:
                m.forward = before


def _var_mean_stats(m, v):
    """(mean, invstd) of a layer's input, computed here (layers with their own forward)."""
    v = v.to(torch.promote_types(v.dtype, torch.float32))
    var, mean = torch.var_mean(v, [0] + list(range(2, v.dim())), correction=0)
    return mean, torch.rsqrt(var + m.eps)
