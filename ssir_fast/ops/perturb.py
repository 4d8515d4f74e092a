"""The SSIR perturbation update (docs/algorithm.md, section 4).

    out_i = clip(x_i + eps_i * g_i / ||g_i||_2, clip_min, clip_max)

with the norm taken per sample i over all non-batch dims and eps_i = epsilon (a float) or
epsilon[i] (a tensor of per-sample radii, SSIRLoss's auto-epsilon). A row with ||g_i|| = 0 gets no
perturbation (out_i = clip(x_i)), never NaN. Math is fp32 for fp32/fp16/bf16 inputs (fp64 for
fp64). Kernels: csrc/cpu/perturb_cpu.cpp, csrc/cuda/perturb_cuda.cu.
"""
import math
import numbers

import torch

from .._extension import HAS_EXTENSION
from ._common import (_number, fake_check_float, fake_check_same, require_tensor, typed_error,
                      under_transform, use_kernel)

__all__ = ["perturb", "perturb_torch", "perturb_kernel", "clip_bound"]


def clip_bound(value, name, x=None, device=None):
    """A clip bound as None or a float32 tensor of shape [] or [C]: the one conversion of clip
    bounds (SSIRLoss uses it too). `value` is None, a float, a sequence of per-channel floats or
    a tensor. With `x` the bound is checked against x's channels (dim 1) and moved to x's device;
    without it, it goes to `device` (`perturb`: x's device, unchecked, as the kernels check it)
    or, when that is None too (SSIRLoss at construction), to the CPU. NaN is refused where it can
    be seen without a device sync (floats, sequences, CPU tensors). A host value reaches a CUDA
    device without a host sync: a float is filled on the device, a sequence or CPU tensor is
    copied asynchronously from pinned memory."""
    if value is None:
        return None
    target = torch.device(x.device if x is not None else device if device is not None else "cpu")
    if isinstance(value, numbers.Real):
        # Checked on the host and filled on the target device: no copy, no sync, and nothing
        # that torch.compile has to read back from a tensor.
        v = float(value)
        if math.isnan(v):
            raise ValueError(f"{name} is NaN")
        return torch.full((), v, dtype=torch.float32, device=target)
    if isinstance(value, torch.Tensor):
        t = value.detach()
    elif isinstance(value, (list, tuple)):
        t = torch.as_tensor(value, dtype=torch.float32)
    else:
        raise TypeError(f"{name} must be None, a float, a sequence of floats or a tensor, got "
                        f"{type(value).__name__}")
    channels = x.shape[1] if x is not None and x.dim() >= 2 else 0
    if t.dim() > 1 or (x is not None and t.numel() != 1 and t.numel() != channels):
        raise ValueError(f"{name} must be a float, a 1-element tensor or a per-channel tensor of "
                         f"shape [C]" + (f" = [{channels}] for x of shape {tuple(x.shape)}"
                                          if x is not None else "") +
                         f", got shape {tuple(t.shape)}")
    t = t.to(torch.float32)
    if torch.compiler.is_compiling():
        # a traced bound (torch.compile, torch.export) has no value to read: a check in the graph
        torch._assert_async(~torch.isnan(t).any(), f"{name} contains NaN")
    elif t.device.type == "cpu" and (math.isnan(t.item()) if t.numel() == 1
                                     else bool(torch.isnan(t).any())):
        # (item() of a one-element bound: a quarter of the cost of isnan().any() per call)
        raise ValueError(f"{name} is NaN" if t.dim() == 0 else f"{name} contains NaN")
    if t.device.type == "cpu" and target.type == "cuda":
        t = t.pin_memory().to(target, non_blocking=True)  # a blocking copy would sync per call
    else:
        t = t.to(target)
    return t.reshape(-1) if t.dim() else t


def perturb(x, g, epsilon, clip_min=None, clip_max=None, out=None):
    """clip(x + eps_i * g / ||g||_2, clip_min, clip_max), norm per sample (dim 0 is the batch).

    Args:
        x: inputs [N, ...], float32/float16/bfloat16/float64.
        g: gradient direction, same shape, dtype and device as x.
        epsilon: perturbation radius eps_i, finite and >= 0 (||out_i - x_i||_2 <= eps_i before
            clipping): a float for all samples, or a float tensor of shape [N] on x's device, one
            radius per sample. A tensor is checked for negative/NaN/inf values (on CUDA that reads
            one flag back, a device sync) and is treated as a constant: no gradient flows to it.
        clip_min, clip_max: None, a float, or a per-channel tensor of shape [C] for x [N, C, ...].
        out: optional output tensor; may be `x` itself (in-place update).

    Returns the perturbed tensor (contiguous, or `out`). Differentiable w.r.t. x and g. Under
    torch.func transforms (grad, jacrev, jvp, vmap) and forward-mode AD it runs `perturb_torch`,
    which they all support (vmap batches it, no per-sample loop); the value checks of epsilon and
    the bounds that need a read of the data are skipped there.

    Argument checks live in one place per path: the C++ kernels (csrc/perturb_common.h), or, on
    the PyTorch fallback, `_check_args` (also run by the fake kernels under torch.compile). This
    wrapper only converts: tensors are required by name, floats and sequences become bounds.
    """
    require_tensor(x, "x")
    require_tensor(g, "g")
    if isinstance(epsilon, torch.Tensor):
        epsilon, eps_rows = 1.0, epsilon.detach()  # radius_i = 1.0 * epsilon[i]
    else:
        epsilon, eps_rows = _number(epsilon, "perturb: epsilon"), None
    lo, hi = (clip_bound(b, name, device=x.device)
              for b, name in ((clip_min, "clip_min"), (clip_max, "clip_max")))
    if out is not None:
        require_tensor(out, "out")
    transformed = under_transform(x, g, eps_rows, lo, hi)
    if transformed or not use_kernel(x.device):
        _check_args(x, g, epsilon, lo, hi, eps_rows, out)
        if eps_rows is not None and not transformed:   # (no value to read under vmap)
            _check_eps_values(eps_rows)
        if lo is not None and hi is not None and lo.device.type == "cpu" and not transformed:
            torch._check_value(bool((lo <= hi).all()), lambda: f"perturb: clip_min must be <= "
                               f"clip_max, got clip_min={lo.tolist()} and clip_max={hi.tolist()}")
        result = perturb_torch(x, g, epsilon, lo, hi, eps_rows)
        return result if out is None else out.copy_(result)
    try:
        if out is None:
            if torch.is_grad_enabled() and (x.requires_grad or g.requires_grad) or \
                    torch.compiler.is_compiling():
                return torch.ops.ssir_fast.perturb.default(x, g, epsilon, lo, hi, eps_rows)
            return perturb_kernel(x, g, epsilon, lo, hi, eps_rows)
        if _writes_into_graph(out, x, g):
            # The kernels write behind autograd's back: compute out of place (from copies of
            # inputs that out overwrites: the backward needs them), then copy_, which records the
            # write (a later backward through the old value of out is refused, as after add_) and
            # refuses a leaf that requires grad.
            xs, gs = (t.clone() if _shares_storage(t, out) else t for t in (x, g))
            return out.copy_(torch.ops.ssir_fast.perturb.default(xs, gs, epsilon, lo, hi,
                                                                 eps_rows))
        if out is x:
            torch.ops.ssir_fast.perturb_.default(x, g, epsilon, lo, hi, eps_rows)
        else:
            torch.ops.ssir_fast.perturb_out.default(x, g, epsilon, lo, hi, out, eps_rows)
    except ValueError as e:
        raise typed_error(e, lambda: _check_args(x, g, epsilon, lo, hi, eps_rows, out)) from None
    if not torch.compiler.is_compiling():
        torch.autograd.graph.increment_version(out)   # as any in-place op: saved copies go stale
    return out


def perturb_kernel(x, g, epsilon, lo, hi, eps_rows=None):
    """The compiled kernel called below autograd, for inputs that need no gradient: no pass
    through the op's Python autograd layer (8 us a call). Arguments as the op takes them (bounds
    from `clip_bound`), checked by the kernel; CPU or CUDA tensors of an extension that serves
    them (`use_kernel`), outside torch.compile and torch.func transforms."""
    with torch._C._AutoDispatchBelowAutograd():
        return torch.ops.ssir_fast.perturb.default(x, g, epsilon, lo, hi, eps_rows)


def _writes_into_graph(out, x, g):
    """True when writing `out` in place must be seen by autograd: grad mode is on and out, x or g
    requires grad (a leaf out that requires grad is then refused by copy_, like torch's in-place
    ops; otherwise out takes the op's history)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in (out, x, g))


def _shares_storage(a, b):
    return a.device == b.device and a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def _check_args(x, g, epsilon, clip_min, clip_max, epsilon_rows, out=None):
    """The shape/dtype/device rules of csrc/perturb_common.h with torch._check (ValueError /
    TypeError as the C++ TORCH_CHECK_VALUE / _TYPE): for the fake kernels and the fallback."""
    torch._check_value(x.dim() >= 1,
                       lambda: "perturb: x must have a batch dimension, got a 0-dim tensor")
    fake_check_same(x, g, "perturb", "x", "g")
    fake_check_float(x, "perturb", "x")
    torch._check_value(math.isfinite(epsilon) and epsilon >= 0,
                       lambda: f"perturb: epsilon must be finite and >= 0, got {epsilon}")
    if epsilon_rows is not None:
        n = x.shape[0]
        torch._check_value(epsilon_rows.dim() == 1 and epsilon_rows.shape[0] == n,
                           lambda: f"perturb: per-sample epsilon must have shape [N] = [{n}] for x "
                                   f"of shape {tuple(x.shape)}, got shape {tuple(epsilon_rows.shape)}")
        torch._check_value(epsilon_rows.device == x.device, lambda: f"perturb: per-sample epsilon "
                           f"must be on x's device {x.device}, got {epsilon_rows.device}")
        torch._check_type(epsilon_rows.is_floating_point(), lambda: f"perturb: per-sample epsilon "
                          f"must be a floating-point tensor, got {epsilon_rows.dtype}")
    channels = x.shape[1] if x.dim() >= 2 else 0
    for b, name in ((clip_min, "clip_min"), (clip_max, "clip_max")):
        if b is not None:
            torch._check_value(b.device == x.device, lambda: f"perturb: {name} must be on x's "
                               f"device {x.device}, got {b.device}")
            torch._check_value(b.dim() <= 1 and (b.numel() == 1 or b.numel() == channels),
                               lambda: f"perturb: {name} must be a scalar or a per-channel [C] "
                                       f"tensor with C = {channels} for x of shape {tuple(x.shape)}, "
                                       f"got shape {tuple(b.shape)}")
    if out is not None:
        torch._check_value(out.shape == x.shape and out.dtype == x.dtype and out.device == x.device,
                           lambda: f"perturb: out must match x in shape, dtype and device, got out "
                                   f"{tuple(out.shape)} {out.dtype} on {out.device} for x "
                                   f"{tuple(x.shape)} {x.dtype} on {x.device}")


def _check_eps_values(eps_rows):
    torch._check_value(bool((torch.isfinite(eps_rows) & (eps_rows >= 0)).all()),
                       lambda: "perturb: per-sample epsilon must be finite and >= 0 everywhere, got "
                               "a negative, NaN or inf value")


def _channel_view(bound, x):
    """Reshape a [] or [C] bound so it broadcasts against x [N, C, ...]."""
    if bound is None or bound.numel() == 1:
        return bound.reshape(()) if bound is not None else None
    return bound.reshape((1, -1) + (1,) * (x.dim() - 2))


def _radius(epsilon, eps_rows, acc):
    """eps_i as the kernels form it: epsilon, or epsilon * eps_rows[i] (in float64, then acc)."""
    return epsilon if eps_rows is None else (epsilon * eps_rows.double()).to(acc)


def perturb_torch(x, g, epsilon, clip_min=None, clip_max=None, epsilon_rows=None):
    """Eager PyTorch version of `perturb` (the fallback and the benchmark baseline).

    Takes bounds already converted by `clip_bound` (None or float32 tensors); the radius of row i is
    epsilon, times epsilon_rows[i] when that [N] tensor is given (as the op)."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    n = x.shape[0]
    norm = g.reshape(n, -1).to(acc).norm(dim=1) if n else g.new_zeros(0, dtype=acc)
    scale = torch.where(norm > 0, _radius(epsilon, epsilon_rows, acc) / norm, torch.zeros_like(norm))
    v = x.to(acc) + scale.reshape((-1,) + (1,) * (x.dim() - 1)) * g.to(acc)
    lo, hi = _channel_view(clip_min, x), _channel_view(clip_max, x)
    if lo is not None or hi is not None:
        v = torch.clamp(v, lo, hi)
    return v.to(x.dtype).contiguous()


def _inside(v, clip_min, clip_max, x):
    """The clip mask m: True where lo <= v <= hi (the output follows x and g there), as
    clamp(v) == v: two passes (NaN: False, as the comparisons)."""
    lo, hi = _channel_view(clip_min, x), _channel_view(clip_max, x)
    if lo is None and hi is None:
        return torch.ones_like(v, dtype=torch.bool)
    return torch.clamp(v, lo, hi) == v


def _grad_direction(w, gf, norm, scale, n):
    """(eps_i / ||g||) (I - u u^T) w per row, u = g / ||g||: the gradient w.r.t. g.

    Formed as scale_i w_i - (scale_i <g_i, w_i> / ||g_i||^2) g_i: the row dot products in one
    batched matrix product (no product tensor), then one tensor written (no u, no w - u proj)."""
    dot = torch.bmm(gf.reshape(n, 1, -1), w.reshape(n, -1, 1)).reshape(norm.shape)
    return torch.mul(w, scale).addcmul_(gf, -scale * dot / (norm * norm))


# ---- torch.compile support and autograd ---------------------------------------------------
if HAS_EXTENSION:

    @torch.library.register_fake("ssir_fast::perturb")
    def _perturb_fake(x, g, epsilon, clip_min, clip_max, epsilon_rows=None):
        _check_args(x, g, epsilon, clip_min, clip_max, epsilon_rows)
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    @torch.library.register_fake("ssir_fast::perturb_")
    def _perturb_inplace_fake(x, g, epsilon, clip_min, clip_max, epsilon_rows=None):
        _check_args(x, g, epsilon, clip_min, clip_max, epsilon_rows)
        return None

    @torch.library.register_fake("ssir_fast::perturb_out")
    def _perturb_out_fake(x, g, epsilon, clip_min, clip_max, out, epsilon_rows=None):
        _check_args(x, g, epsilon, clip_min, clip_max, epsilon_rows, out)
        return None

    def _setup_context(ctx, inputs, output):
        x, g, epsilon, clip_min, clip_max, *rest = inputs
        eps_rows = rest[0] if rest else None
        ctx.save_for_backward(x, g, clip_min, clip_max, eps_rows)
        ctx.epsilon = epsilon

    def _backward(ctx, grad):
        """d out / d x = m (the clip mask); d out / d g = m * (eps_i/||g||) (I - u u^T), u = g/||g||.
        The radii (float epsilon or the per-sample tensor) are constants: no gradient. Only the
        gradients autograd asks for are formed (without clipping, the x gradient is `grad`)."""
        x, g, clip_min, clip_max, eps_rows = ctx.saved_tensors
        need_x, need_g = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if x.numel() == 0:   # an empty batch (or sample): nothing to reshape per row
            return (grad.to(x.dtype) if need_x else None, torch.zeros_like(g) if need_g else None,
                    None, None, None, None)
        clipped = clip_min is not None or clip_max is not None
        if not need_g and not clipped:
            return grad if need_x else None, None, None, None, None, None
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        n = x.shape[0]
        shape = (-1,) + (1,) * (x.dim() - 1)
        gf = g.to(acc)
        norm = torch.linalg.vector_norm(gf.reshape(n, -1), dim=1)
        safe = torch.where(norm > 0, norm, torch.ones_like(norm))
        radius = _radius(ctx.epsilon, eps_rows, acc)
        scale = torch.where(norm > 0, radius / safe, torch.zeros_like(norm)).reshape(shape)
        w = grad.to(acc)
        if clipped:
            # the unclipped point x + scale g, then the masked gradient written over it: one
            # temporary of x's size (and the mask) instead of one per elementwise step
            v = torch.addcmul(x.to(acc), scale, gf)
            w = torch.where(_inside(v, clip_min, clip_max, x), w, w.new_zeros(()), out=v)
        grad_g = _grad_direction(w, gf, safe.reshape(shape), scale, n).to(g.dtype) if need_g else None
        return w.to(x.dtype) if need_x else None, grad_g, None, None, None, None

    torch.library.register_autograd("ssir_fast::perturb", _backward, setup_context=_setup_context)
