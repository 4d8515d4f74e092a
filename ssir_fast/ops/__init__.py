"""Fused operators. Each op has a module named after it holding its Python wrapper, its fake
(meta) kernel for torch.compile, its autograd formula and its pure-PyTorch fallback; the C++
schema is in csrc/ssir_fast.cpp, the kernels in csrc/cpu/<op>_cpu.cpp and csrc/cuda/<op>_cuda.cu,
the float64 reference in ssir_fast/reference.py."""
from .perturb import perturb
from .bin_reduce import bin_reduce
from .bin_reduce_nd import bin_reduce_nd
from .bin_feature_stats import bin_feature_stats
from .fds_calibrate import fds_calibrate

__all__ = ["perturb", "bin_reduce", "bin_reduce_nd", "bin_feature_stats", "fds_calibrate"]
