"""ssir_fast: self-supervised imbalanced regression (SSIR) and the deep-imbalanced-regression
toolkit for PyTorch, with fused C++/CUDA kernels."""
from ._extension import HAS_CUDA_KERNELS, HAS_EXTENSION
from . import ops, losses, reference
from . import metrics
from . import imbalance, fds, resample, rrt
from .ssir import SSIRLoss, SSIRResult

__version__ = "0.1.0"
__all__ = ["SSIRLoss", "SSIRResult", "ops", "losses", "reference", "metrics", "imbalance", "fds", "resample", "rrt", "HAS_EXTENSION",
           "HAS_CUDA_KERNELS", "__version__"]
