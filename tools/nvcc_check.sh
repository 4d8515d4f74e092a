#!/usr/bin/env bash
# Compile-check the CUDA sources (object files only) against a CUDA build of torch, without a GPU:
# .cu files with nvcc, .cpp host files under csrc/cuda with the C++ compiler, with the flags
# setup.py uses (no --use_fast_math; torch's COMMON_NVCC_FLAGS).
# Usage: PYTHON=/path/to/cuda-torch/python tools/nvcc_check.sh [files...]   (default: csrc/cuda/*)
set -euo pipefail
PY=${PYTHON:-python}
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
ARCH=${TORCH_CUDA_ARCH_LIST:-9.0}
CXX=${CXX:-c++}
inc=$("$PY" - <<'PYEOF'
import os, torch
from torch.utils.cpp_extension import include_paths
assert torch.version.cuda, f"torch {torch.__version__} is not a CUDA build"
paths = include_paths()
cu13 = os.path.join(os.path.dirname(torch.__file__), "..", "nvidia", "cu13", "include")
if os.path.isdir(cu13):
    paths.append(os.path.abspath(cu13))
print(" ".join("-I" + p for p in paths))
PYEOF
)
abi=$("$PY" -c "import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))")
sm=${ARCH//./}; sm=${sm%%+*}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
files=("$@")
[ ${#files[@]} -gt 0 ] || files=(csrc/cuda/*.cu csrc/cuda/*.cpp)
common=(-std=c++20 -O3 -Icsrc $inc -I"$CUDA_HOME/include" -DSSIR_FAST_WITH_CUDA -D_GLIBCXX_USE_CXX11_ABI=$abi
        -DTORCH_TARGET_VERSION=0x020a000000000000 -DUSE_CUDA)  # the stable-ABI target (setup.py)
for f in "${files[@]}"; do
  case "$f" in
    *.cu)
      echo "nvcc: $f (sm_$sm)"
      "$CUDA_HOME/bin/nvcc" -c "$f" -o "$out/$(basename "$f").o" "${common[@]}" \
        -gencode "arch=compute_$sm,code=sm_$sm" --expt-relaxed-constexpr -Xcompiler -fPIC \
        -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ \
        -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__ ;;
    *.cpp)
      echo "$CXX: $f"
      "$CXX" -c "$f" -o "$out/$(basename "$f").o" "${common[@]}" -fPIC ;;
    *) echo "not a CUDA source: $f"; exit 1 ;;
  esac
done
echo "nvcc_check: all sources compiled"
