"""ssir_fast: self-supervised imbalanced regression (SSIR) and the deep-imbalanced-regression
toolkit for PyTorch, with fused C++/CUDA kernels."""
from ._extension import HAS_CUDA_KERNELS, HAS_EXTENSION
from . import ops, losses, reference
from . import metrics
from . import imbalance, fds, resample, rrt
from .ssir import SSIRLoss, SSIRResult

__version__ = "0.1.0"
__all__ = ["SSIRLoss", "SSIRResult", "ops", "losses", "reference", "metrics", "imbalance", "fds",
           "resample", "rrt", "data", "train", "HAS_EXTENSION", "HAS_CUDA_KERNELS", "__version__"]

_LAZY = ("data", "train", "cli")   # PIL and the training stack are imported only when used


def __getattr__(name):
    # `import ssir_fast; ssir_fast.data.load_dataset(...)` works like the eager sub-modules
    if name in _LAZY:
        import importlib
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
