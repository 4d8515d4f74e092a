"""Loads the compiled operators (`ssir_fast._C`) and says clearly when they cannot be used.

- Built against another torch: ImportError telling how to rebuild (loading it could crash).
- Not built at all: a warning, and every op falls back to its pure-PyTorch path (slower).
- Set SSIR_FAST_DISABLE_EXTENSION=1 to force the pure-PyTorch path (debugging, comparisons).
"""
import os
import warnings

import torch

REBUILD = "rebuild it with `pip install --no-build-isolation -e .` in the ssir_fast source tree"

try:
    from . import _build_info
except ImportError:  # not built yet
    _build_info = None


def _load():
    if os.environ.get("SSIR_FAST_DISABLE_EXTENSION", "0") not in ("", "0"):
        return False
    if _build_info is not None and _build_info.TORCH_VERSION != torch.__version__:
        raise ImportError(
            f"ssir_fast's compiled extension was built against torch {_build_info.TORCH_VERSION} "
            f"but torch {torch.__version__} is installed; {REBUILD}.")
    try:
        from . import _C  # noqa: F401  (registers torch.ops.ssir_fast.*)
    except ImportError as e:
        if "undefined symbol" in str(e) or "cannot open shared object" in str(e):
            raise ImportError(f"ssir_fast._C does not match the installed torch "
                              f"{torch.__version__} ({e}); {REBUILD}.") from e
        warnings.warn(f"ssir_fast._C is not built ({e}); using the pure-PyTorch ops, which are "
                      f"slower. To build: {REBUILD}.", RuntimeWarning, stacklevel=3)
        return False
    built_cuda = torch.ops.ssir_fast.cuda_version()
    if built_cuda > 0 and torch.version.cuda is not None:
        built_major, torch_major = built_cuda // 1000, int(torch.version.cuda.split(".")[0])
        if built_major != torch_major:
            raise ImportError(f"ssir_fast._C was compiled with CUDA {built_cuda // 1000}."
                              f"{built_cuda % 1000 // 10} but torch uses CUDA {torch.version.cuda}; "
                              f"{REBUILD}.")
    return True


HAS_EXTENSION = _load()
#: True when the extension was compiled with CUDA kernels.
HAS_CUDA_KERNELS = HAS_EXTENSION and torch.ops.ssir_fast.cuda_version() > 0
