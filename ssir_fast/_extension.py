"""Loads the compiled kernels and says clearly when they cannot be used.

Two libraries, both on the LibTorch stable ABI (one binary for every torch >= TORCH_TARGET):
`ssir_fast._C` holds the op schemas and the CPU kernels; `ssir_fast._C_cuda` the CUDA kernels,
loaded only when torch is a CUDA build of the CUDA major version they were compiled with (a
CPU-only torch never asks for CUDA libraries).

- torch older than the stable-ABI target, or a CUDA major mismatch: one warning, and the ops
  affected use their pure-PyTorch path (never an import error).
- Not built at all (a source tree without `pip install -e .`): a warning, pure-PyTorch ops.
- Set SSIR_FAST_DISABLE_EXTENSION=1 to force the pure-PyTorch path (debugging, comparisons).
"""
import os
import warnings

import torch

REBUILD = "rebuild it with `pip install --no-build-isolation -e .` in the ssir_fast source tree"
MIN_TORCH = (2, 10)  # TORCH_TARGET_VERSION of the kernels (setup.py)

try:
    from . import _build_info
except ImportError:  # not built yet
    _build_info = None


def _version_tuple(version):
    parts = []
    for p in version.split("+")[0].split(".")[:2]:
        digits = "".join(ch for ch in p if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def _warn(msg):
    warnings.warn(f"ssir_fast: {msg}", RuntimeWarning, stacklevel=3)


def _load_cuda():
    """True when the CUDA kernels were built and this torch can load them."""
    built = _build_info is not None and getattr(_build_info, "WITH_CUDA", False)
    if not built or torch.version.cuda is None:
        return False  # a CPU-only torch or CPU-only build: nothing to load, nothing to say
    built_major = str(_build_info.TORCH_CUDA).split(".")[0]
    torch_major = torch.version.cuda.split(".")[0]
    if built_major != torch_major:
        _warn(f"the CUDA kernels were compiled for CUDA {built_major}.x but torch "
              f"{torch.__version__} uses CUDA {torch.version.cuda}; CUDA tensors use the "
              f"pure-PyTorch ops (the CPU kernels are used as usual).")
        return False
    try:
        from . import _C_cuda  # noqa: F401  (registers the CUDA kernels)
    except ImportError as e:
        _warn(f"the CUDA kernels could not be loaded ({e}); CUDA tensors use the pure-PyTorch "
              f"ops.")
        return False
    return True


def _load():
    """(CPU kernels loaded, CUDA kernels loaded)."""
    if os.environ.get("SSIR_FAST_DISABLE_EXTENSION", "0") not in ("", "0"):
        return False, False
    if _version_tuple(torch.__version__) < MIN_TORCH:
        _warn(f"the compiled kernels need torch >= {MIN_TORCH[0]}.{MIN_TORCH[1]} (LibTorch "
              f"stable ABI) but torch {torch.__version__} is installed; using the pure-PyTorch "
              f"ops, which are slower.")
        return False, False
    try:
        from . import _C  # noqa: F401  (registers torch.ops.ssir_fast.*)
    except ImportError as e:
        _warn(f"ssir_fast._C could not be loaded ({e}); using the pure-PyTorch ops, which are "
              f"slower. To build: {REBUILD}.")
        return False, False
    return True, _load_cuda()


def cuda_version():
    """CUDA runtime version the loaded CUDA kernels were compiled with (e.g. 13000), -1 when
    no CUDA kernels are loaded."""
    return int(torch.ops.ssir_fast.cuda_version()) if HAS_CUDA_KERNELS else -1


def kernel_report():
    """What `ssir-fast info` prints about the kernels: build and load state."""
    info = _build_info
    return {
        "stable_abi_target": f"torch >= {getattr(info, 'TORCH_TARGET', '?')}" if info else None,
        "built_with_torch": getattr(info, "TORCH_VERSION", None),
        "built_with_cuda": getattr(info, "TORCH_CUDA", None) if getattr(info, "WITH_CUDA", False) else None,
        "cuda_archs": getattr(info, "CUDA_ARCHS", "") or None,
        "cpu_kernels_loaded": HAS_EXTENSION,
        "cuda_kernels_loaded": HAS_CUDA_KERNELS,
    }


HAS_EXTENSION, HAS_CUDA_KERNELS = _load()
