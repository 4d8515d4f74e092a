#!/usr/bin/env bash
# Compile-check CUDA sources (object files only) against a CUDA build of torch, without a GPU.
# Usage: PYTHON=/path/to/cuda-torch/python tools/nvcc_check.sh csrc/cuda/perturb_cuda.cu [...]
set -euo pipefail
PY=${PYTHON:-python}
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
ARCH=${TORCH_CUDA_ARCH_LIST:-9.0}
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
for f in "$@"; do
  echo "nvcc: $f (sm_$sm)"
  "$CUDA_HOME/bin/nvcc" -c "$f" -o "$out/$(basename "$f").o" -std=c++20 -O3 --use_fast_math \
    -gencode "arch=compute_$sm,code=sm_$sm" -Icsrc $inc -DSSIR_FAST_WITH_CUDA \
    -D_GLIBCXX_USE_CXX11_ABI=$abi --expt-relaxed-constexpr -Xcompiler -fPIC
done
rm -rf "$out"
echo "nvcc: all sources compiled"
