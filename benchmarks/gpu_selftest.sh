#!/usr/bin/env bash
# GPU self-test for a machine with one CUDA GPU (about 5 minutes on an H100):
# build the extension with its CUDA kernels, run the CUDA tests, run the GPU benchmarks, and write
# results (JSON lines + a Markdown summary) under $OUT (default ./gpu-out).
#
#   OUT=/some/dir bash benchmarks/gpu_selftest.sh
#
# Copy the Markdown summary into BENCHMARKS.md with the card's name.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
export SSIR_BENCH_RESULTS="$OUT/results.jsonl"
: > "$SSIR_BENCH_RESULTS"
status=0
log() { printf '\n=== %s (%s) ===\n' "$1" "$(date +%H:%M:%S)" | tee -a "$OUT/selftest.log"; }

log "device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee -a "$OUT/selftest.log"
python3 -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())" \
  2>&1 | tee -a "$OUT/selftest.log"

log "build (CUDA kernels required)"
export SSIR_FAST_FORCE_CUDA=1 MAX_JOBS=${MAX_JOBS:-16}
if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
  TORCH_CUDA_ARCH_LIST=$(python3 -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
  export TORCH_CUDA_ARCH_LIST
fi
python3 -m pip install -q --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1 \
  || { echo "build failed: see build.log"; tail -50 "$OUT/build.log"; exit 1; }
python3 -c "import ssir_fast; assert ssir_fast.HAS_CUDA_KERNELS; print('CUDA kernels loaded')" \
  2>&1 | tee -a "$OUT/selftest.log" || exit 1

log "CUDA tests (every test that has a CUDA case, CPU cases included)"
timeout 240 python3 -m pytest -q -x tests/test_perturb.py tests/test_ssir_loss.py \
  tests/test_bin_reduce.py tests/test_fds.py -p no:cacheprovider \
  --junitxml="$OUT/tests.xml" 2>&1 | tail -25 | tee -a "$OUT/selftest.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

log "GPU benchmarks"
for b in bench_perturb.py bench_ssir_step.py bench_metrics.py bench_toolkit.py bench_train.py; do
  [ -f "benchmarks/$b" ] || continue
  timeout 150 python3 -m pytest -q "benchmarks/$b" --benchmark-only -k cuda -p no:cacheprovider \
    --benchmark-json="$OUT/${b%.py}.json" 2>&1 | tail -5 | tee -a "$OUT/selftest.log"
done

log "training CLI on the GPU (bf16 autocast, channels_last, SQINV + SSIR + FDS, 2 epochs)"
timeout 300 python3 -m ssir_fast.cli train --reweight sqrt_inv --ssir --fds --epochs 2 \
  --milestones 1 --no-progress --out "$OUT/train_smoke" 2>&1 | tail -12 | tee -a "$OUT/selftest.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

log "summary"
python3 - "$SSIR_BENCH_RESULTS" > "$OUT/summary.md" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print("| benchmark | device | key figures |\n|---|---|---|")
for r in rows:
    keys = {k: v for k, v in r.items() if k not in ("bench", "device", "torch", "time")}
    figs = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in keys.items())
    print(f"| {r['bench']} | {r.get('device', '')} | {figs} |")
EOF
cat "$OUT/summary.md" | tee -a "$OUT/selftest.log"
exit $status
