"""Build script for the ssir_fast kernels: `ssir_fast._C` (CPU kernels and the op schemas) and,
with a CUDA torch and nvcc, `ssir_fast._C_cuda` (the CUDA kernels, loaded only under a CUDA torch
of the same CUDA major version).

Both libraries use only the LibTorch stable ABI (torch/csrc/stable, torch/headeronly) with
TORCH_TARGET_VERSION 2.10, and Python's limited API (abi3, 3.10+): one binary serves every torch
from 2.10 on and every Python from 3.10 on. Build in place with the torch you have:

    pip install --no-build-isolation -e .

or the redistributable wheel with `bash tools/build_wheel.sh`.

Environment switches
--------------------
SSIR_FAST_FORCE_CPU=1   build the CPU kernels only, even with a CUDA torch and nvcc present.
SSIR_FAST_FORCE_CUDA=1  require the CUDA kernels; fail with a clear message if torch is a CPU build
                        or nvcc cannot be found.
CUDA_HOME               CUDA toolkit root; falls back to the directory of `nvcc` on PATH, then
                        /usr/local/cuda.
TORCH_CUDA_ARCH_LIST    GPU architectures to compile for. When no GPU is visible (a build machine),
                        defaults to "8.0;9.0+PTX" instead of torch's detection, which needs a GPU
                        (tools/build_wheel.sh sets the release list).
SSIR_FAST_DEBUG=1       -O0 -g builds.

The CPU kernels are always built. CUDA sources are added when torch is a CUDA build and nvcc is found,
whether or not a GPU is visible.
"""
import glob
import os
import re
import shutil
import subprocess
import sys

from setuptools import setup

import torch
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

HERE = os.path.dirname(os.path.abspath(__file__))


def _flag(name):
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def _find_cuda_home():
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home and os.path.exists(os.path.join(home, "bin", "nvcc")):
        return home
    nvcc = shutil.which("nvcc")
    if nvcc:
        return os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
    if os.path.exists("/usr/local/cuda/bin/nvcc"):
        return "/usr/local/cuda"
    return None


def _nvcc_version(cuda_home):
    out = subprocess.check_output([os.path.join(cuda_home, "bin", "nvcc"), "--version"], text=True)
    m = re.search(r"release (\d+)\.(\d+)", out)
    return (int(m.group(1)), int(m.group(2))) if m else None


def _want_cuda():
    force_cpu, force_cuda = _flag("SSIR_FAST_FORCE_CPU"), _flag("SSIR_FAST_FORCE_CUDA")
    if force_cpu and force_cuda:
        raise RuntimeError("SSIR_FAST_FORCE_CPU and SSIR_FAST_FORCE_CUDA are both set; choose one.")
    if force_cpu:
        return False
    cuda_home = _find_cuda_home()
    problem = None
    if torch.version.cuda is None:
        problem = f"torch {torch.__version__} is a CPU build (torch.version.cuda is None)"
    elif cuda_home is None:
        problem = "nvcc was not found (set CUDA_HOME or put nvcc on PATH)"
    if problem:
        if force_cuda:
            raise RuntimeError(f"SSIR_FAST_FORCE_CUDA=1 but {problem}.")
        print(f"ssir_fast: building CPU kernels only: {problem}.")
        return False
    nv = _nvcc_version(cuda_home)
    torch_major = int(torch.version.cuda.split(".")[0])
    if nv is not None and nv[0] != torch_major:
        raise RuntimeError(
            f"nvcc in {cuda_home} is CUDA {nv[0]}.{nv[1]} but torch {torch.__version__} was built "
            f"with CUDA {torch.version.cuda}; the major versions must match. Point CUDA_HOME at a "
            f"CUDA {torch_major}.x toolkit or set SSIR_FAST_FORCE_CPU=1.")
    os.environ["CUDA_HOME"] = cuda_home
    import torch.utils.cpp_extension as cpp_ext
    cpp_ext.CUDA_HOME = cuda_home  # the module read CUDA_HOME at import time
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0+PTX"
    return True


# The oldest torch whose stable ABI the kernels use: [major][minor][patch][abi tag] bytes.
TORCH_TARGET = "2.10"
TORCH_TARGET_FLAG = "-DTORCH_TARGET_VERSION=0x020a000000000000"


def _write_build_info(with_cuda):
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "") if with_cuda else ""
    with open(os.path.join(HERE, "ssir_fast", "_build_info.py"), "w") as f:
        f.write("# Written by setup.py: what the compiled kernels were built with.\n")
        f.write(f"TORCH_VERSION = {torch.__version__!r}  # the torch they were compiled against\n")
        f.write(f"TORCH_TARGET = {TORCH_TARGET!r}  # stable-ABI target: runs with torch >= this\n")
        f.write(f"TORCH_CUDA = {torch.version.cuda!r}\n")
        f.write(f"WITH_CUDA = {with_cuda!r}\n")
        f.write(f"CUDA_ARCHS = {archs!r}\n")


def _extensions():
    with_cuda = _want_cuda()
    _write_build_info(with_cuda)
    debug = _flag("SSIR_FAST_DEBUG")
    opt = ["-O0", "-g"] if debug else ["-O3"]
    # Only the empty PyInit stubs touch Python's C API: abi3, one binary for Python 3.10+.
    macros = [("Py_LIMITED_API", "0x030A0000")]
    common = dict(include_dirs=[os.path.join(HERE, "csrc")], py_limited_api=True)
    # manylinux_2_28: no symbol newer than glibc 2.28, whatever system builds it (the header says why).
    compat = os.path.join(HERE, "csrc", "glibc_compat.h")
    cxx_compat = ["-include", compat] if sys.platform.startswith("linux") else []
    nvcc_compat = [f"-Xcompiler=-include,{compat}"] if cxx_compat else []
    # The CPU kernels use torch's own thread pool (stable parallel_for): no OpenMP runtime.
    cpu_sources = ["csrc/ssir_fast.cpp", "csrc/python_module.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
    exts = [CppExtension(name="ssir_fast._C", sources=cpu_sources, define_macros=macros,
                         extra_compile_args={"cxx": opt + [TORCH_TARGET_FLAG] + cxx_compat},
                         **common)]
    if with_cuda:
        # Kernels (.cu, nvcc) and their host entry points (.cpp, the C++ compiler).
        sources = (sorted(glob.glob("csrc/cuda/*.cu")) + sorted(glob.glob("csrc/cuda/*.cpp"))
                   + ["csrc/python_module_cuda.cpp"])
        # No --use_fast_math: it swaps logf and division for approximations, and bin_reduce's
        # CUDA sums must agree with the CPU kernel's; the kernels are memory-bound, so the
        # precise versions cost no time that matters. USE_CUDA declares the shim's CUDA stream.
        nvcc = opt + ["-lineinfo", TORCH_TARGET_FLAG, "-DUSE_CUDA"] + nvcc_compat
        exts.append(CUDAExtension(
            name="ssir_fast._C_cuda", sources=sources, define_macros=macros,
            extra_compile_args={"cxx": opt + [TORCH_TARGET_FLAG, "-DUSE_CUDA"] + cxx_compat,
                                "nvcc": nvcc},
            **common))
    return exts


setup(
    ext_modules=_extensions(),
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
