"""What the four op wrappers share: the dispatch rule and argument conversions with readable
errors."""
import math

import torch
from torch.autograd import forward_ad

from .. import _extension

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def require_tensor(value, name):
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")


def _number(value, name):
    """float(value), or a TypeError naming `name` (None, a string, a bool, a sequence, ...)."""
    if isinstance(value, (bool, str)) or value is None:
        raise TypeError(f"{name} must be a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} "
                        f"{value!r:.60}") from None


def require_finite_nonneg(value, name):
    v = _number(value, name)
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"{name} must be finite and >= 0, got {value}")
    return v


def require_positive(value, name):
    v = _number(value, name)
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be finite and > 0, got {value}")
    return v


def use_kernel(device):
    """The one dispatch rule of every op: True when the compiled kernel serves tensors on
    `device`, False when the op must take its pure-PyTorch fallback.

    CPU tensors need the extension; CUDA tensors also need its CUDA kernels (a `_C` built where
    nvcc was missing has CPU kernels only); other devices always fall back. Read at call time, so
    SSIR_FAST_DISABLE_EXTENSION and tests that patch `_extension` take effect."""
    if not _extension.HAS_EXTENSION:
        return False
    kind = torch.device(device).type
    return kind == "cpu" or (kind == "cuda" and _extension.HAS_CUDA_KERNELS)


def under_transform(*tensors):
    """True inside a torch.func transform (grad, jacrev, jvp, vmap, ...) or when a tensor carries
    a forward-mode tangent (torch.autograd.forward_ad). The differentiable ops then take their
    pure-PyTorch path, which every transform supports (vmap batches it: no per-sample loop): the
    compiled kernels have a reverse-mode formula only, and a kernel under jvp would return a zero
    tangent without a word."""
    if torch.compiler.is_compiling():   # traced code: the transforms are the compiler's
        return False
    if torch._C._are_functorch_transforms_active():
        return True
    if getattr(forward_ad, "_current_level", 0) < 0:   # no dual level open: no tangent anywhere
        return False
    return any(t is not None and forward_ad.unpack_dual(t).tangent is not None for t in tensors)


def refuse_differentiation(op, *tensors):
    """A clear error when `op`, a statistic with no derivative, is differentiated by a torch.func
    transform (grad, jacrev, jvp, ...: a tensor wrapped for gradient tracking) or forward-mode AD:
    the kernel would give a zero tangent without a word. vmap alone is fine (exact, per sample)."""
    if torch.compiler.is_compiling():
        return
    functorch = torch._C._functorch
    for t in tensors:
        if not isinstance(t, torch.Tensor):
            continue
        differentiated = forward_ad.unpack_dual(t).tangent is not None
        inner = t
        while not differentiated and t.requires_grad and \
                functorch.is_functorch_wrapped_tensor(inner):
            differentiated = functorch.is_gradtrackingtensor(inner)
            inner = functorch.get_unwrapped(inner)
        if differentiated:
            raise RuntimeError(f"{op} is not differentiable (a per-bin statistic): call it on "
                               f"detached tensors, outside torch.func.grad/jacrev/jvp and "
                               f"forward-mode AD")


def typed_error(error, recheck):
    """The error a kernel raised, with its Python type restored.

    A stable-ABI kernel can only raise ValueError for a bad argument (C++ std::invalid_argument);
    `recheck` runs the torch._check version of the same rules, which raises TypeError where the
    problem is a dtype. Called only after a kernel refused: no cost on the success path."""
    recheck()
    return error


def fake_check_float(t, op, name):
    """torch._check of a fake kernel: `t` has one of the kernels' float dtypes."""
    torch._check_type(t.dtype in FLOAT_DTYPES,
                      lambda: f"{op}: {name} must be float32, float16, bfloat16 or float64, got {t.dtype}")


def fake_check_same(a, b, op, name_a, name_b):
    """torch._check of a fake kernel: a and b agree in shape, dtype and device (as in C++)."""
    torch._check_value(a.shape == b.shape, lambda: f"{op}: {name_a} and {name_b} must have the same "
                       f"shape, got {name_a} {tuple(a.shape)} and {name_b} {tuple(b.shape)}")
    torch._check_type(a.dtype == b.dtype, lambda: f"{op}: {name_a} and {name_b} must have the same "
                      f"dtype, got {name_a} {a.dtype} and {name_b} {b.dtype}")
    torch._check_value(a.device == b.device, lambda: f"{op}: {name_a} and {name_b} must be on the "
                       f"same device, got {name_a} on {a.device} and {name_b} on {b.device}")
