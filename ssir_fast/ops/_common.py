"""What the four op wrappers share: the dispatch rule and argument conversions with readable
errors."""
import math

import torch

from .. import _extension

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def require_tensor(value, name):
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")


def require_finite_nonneg(value, name):
    v = float(value)
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"{name} must be finite and >= 0, got {value}")
    return v


def require_positive(value, name):
    v = float(value)
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
