"""The SSIR perturbation update (SPEC 3.1).

    out_i = clip(x_i + eps_i * g_i / ||g_i||_2, clip_min, clip_max)

with the norm taken per sample i over all non-batch dims and eps_i = epsilon (a float) or
epsilon[i] (a tensor of per-sample radii, issue 12's auto-epsilon). A row with ||g_i|| = 0 gets no
perturbation (out_i = clip(x_i)), never NaN. Math is fp32 for fp32/fp16/bf16 inputs (fp64 for
fp64). Kernels: csrc/cpu/perturb_cpu.cpp, csrc/cuda/perturb_cuda.cu.
"""
import math
import numbers

import torch

from .._extension import HAS_EXTENSION
from ._common import fake_check_float, fake_check_same, require_tensor, use_kernel

__all__ = ["perturb", "perturb_torch"]


def _bound(value, name, x=None, device=None):
    """A clip bound as None or a float32 tensor of shape [] or [C]: the one conversion of clip
    bounds (SSIRLoss uses it too). `value` is None, a float, a sequence of per-channel floats or
    a tensor. With `x` the bound is checked against x's channels (dim 1) and moved to x's device;
    without it, it goes to `device` (`perturb`: x's device, unchecked, as the kernels check it)
    or, when that is None too (SSIRLoss at construction), to the CPU. NaN is refused where it can
    be seen without a device sync (floats, sequences, CPU tensors)."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        t = value.detach()
    elif isinstance(value, (numbers.Real, list, tuple)):
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
    if t.device.type == "cpu" and bool(torch.isnan(t).any()):
        raise ValueError(f"{name} is NaN" if t.dim() == 0 else f"{name} contains NaN")
    t = t.to(x.device if x is not None else device if device is not None else "cpu")
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

    Returns the perturbed tensor (contiguous, or `out`). Differentiable w.r.t. x and g.

    Argument checks live in one place per path: the C++ kernels (csrc/perturb_common.h), or, on
    the PyTorch fallback, `_check_args` (also run by the fake kernels under torch.compile). This
    wrapper only converts: tensors are required by name, floats and sequences become bounds.
    """
    require_tensor(x, "x")
    require_tensor(g, "g")
    if isinstance(epsilon, torch.Tensor):
        epsilon, eps_rows = 1.0, epsilon.detach()  # radius_i = 1.0 * epsilon[i]
    else:
        epsilon, eps_rows = float(epsilon), None
    lo, hi = (_bound(b, name, device=x.device)
              for b, name in ((clip_min, "clip_min"), (clip_max, "clip_max")))
    if out is not None:
        require_tensor(out, "out")
    if not use_kernel(x.device):
        _check_args(x, g, epsilon, lo, hi, eps_rows, out)
        if eps_rows is not None:
            _check_eps_values(eps_rows)
        if lo is not None and hi is not None and lo.device.type == "cpu":
            torch._check_value(bool((lo <= hi).all()), lambda: f"perturb: clip_min must be <= "
                               f"clip_max, got clip_min={lo.tolist()} and clip_max={hi.tolist()}")
        result = perturb_torch(x, g, epsilon, lo, hi, eps_rows)
        return result if out is None else out.copy_(result)
    if out is None:
        return torch.ops.ssir_fast.perturb.default(x, g, epsilon, lo, hi, eps_rows)
    if out is x:
        torch.ops.ssir_fast.perturb_.default(x, g, epsilon, lo, hi, eps_rows)
    else:
        torch.ops.ssir_fast.perturb_out.default(x, g, epsilon, lo, hi, out, eps_rows)
    return out


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

    Takes bounds already converted by `_bound` (None or float32 tensors); the radius of row i is
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
    """The clip mask m: 1 where lo <= v <= hi (the output follows x and g there)."""
    lo, hi = _channel_view(clip_min, x), _channel_view(clip_max, x)
    inside = torch.ones_like(v, dtype=torch.bool)
    if lo is not None:
        inside &= v >= lo
    if hi is not None:
        inside &= v <= hi
    return inside


def _grad_direction(w, gf, norm, scale, n):
    """(eps_i / ||g||) (I - u u^T) w per row, u = g / ||g||: the gradient w.r.t. g."""
    u = gf / norm
    proj = (u * w).reshape(n, -1).sum(dim=1).reshape(norm.shape)
    return scale * (w - u * proj)


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
        clipped = clip_min is not None or clip_max is not None
        if not need_g and not clipped:
            return grad if need_x else None, None, None, None, None, None
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        n = x.shape[0]
        shape = (-1,) + (1,) * (x.dim() - 1)
        gf = g.to(acc)
        norm = gf.reshape(n, -1).norm(dim=1)
        safe = torch.where(norm > 0, norm, torch.ones_like(norm))
        radius = _radius(ctx.epsilon, eps_rows, acc)
        scale = torch.where(norm > 0, radius / safe, torch.zeros_like(norm)).reshape(shape)
        w = grad.to(acc)
        if clipped:
            w = w * _inside(x.to(acc) + scale * gf, clip_min, clip_max, x)
        grad_g = _grad_direction(w, gf, safe.reshape(shape), scale, n).to(g.dtype) if need_g else None
        return w.to(x.dtype) if need_x else None, grad_g, None, None, None, None

    torch.library.register_autograd("ssir_fast::perturb", _backward, setup_context=_setup_context)
