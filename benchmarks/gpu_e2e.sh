#!/usr/bin/env bash
# GPU training end to end, sized for one 10-minute device call (issue 9): install DALI from the
# carried pieces (../shared/gpu/DALI-ON-DEVICE.md), build the CUDA extension, time the trainer per
# loader backend and method (bench_e2e.py CUDA cases: ResNet-50 224 px, bf16, batch 256, 14
# workers), run the GPU loader/loop tests and a 2-epoch `ssir-fast train --backend dali`, and write
# results.jsonl, summary.md and e2e.log under $OUT.
#
#   OUT=/some/dir bash benchmarks/gpu_e2e.sh        (device: carry .daliK pieces, see the doc)
#
# Typical times on an H100/H200 with 16 cores: DALI install 20 s, build 60 s, benchmark 3-4 min,
# tests 1 min, training run 1 min (about 7 min in all). Each step has its own timeout; the worst
# case of all of them exceeds 600 s, and the files written so far under $OUT still come back.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
export SSIR_BENCH_RESULTS="$OUT/results.jsonl"
: > "$SSIR_BENCH_RESULTS"
LOG="$OUT/e2e.log"
status=0
log() { printf '\n=== %s (%s) ===\n' "$1" "$(date +%H:%M:%S)" | tee -a "$LOG"; }
step() {  # step SECONDS command...: run with a timeout, log the tail, remember a failure
  local t=$1; shift
  timeout "$t" "$@" > "$OUT/step.out" 2>&1
  local rc=$?
  tail -25 "$OUT/step.out" | tee -a "$LOG"
  cat "$OUT/step.out" >> "$OUT/full.log"
  [ $rc -eq 0 ] || { echo "step failed (rc=$rc): $*" | tee -a "$LOG"; status=1; }
  return $rc
}

log "device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee -a "$LOG"
python3 -c "import torch, os; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(), os.cpu_count(), 'CPUs')" 2>&1 | tee -a "$LOG"

log "DALI"
if ! python3 -c "import nvidia.dali" 2>/dev/null; then
  if ls .dali[0-9]*/part > /dev/null 2>&1; then
    step 90 bash -c 'cat .dali[0-9]*/part > /tmp/dali.tar && mkdir -p /tmp/w && tar -C /tmp/w -xf /tmp/dali.tar && python3 -m pip install -q --no-index --no-deps --target /tmp/dalisite /tmp/w/*.whl'
    export PYTHONPATH=/tmp/dalisite${PYTHONPATH:+:$PYTHONPATH}
  else
    echo "no DALI and no carried .daliK pieces: the DALI cases will skip" | tee -a "$LOG"
  fi
fi
python3 -c "import nvidia.dali as d, nvidia.dali.plugin.pytorch; print('DALI', d.__version__)" 2>&1 | tee -a "$LOG"

log "build (CUDA kernels)"
export SSIR_FAST_FORCE_CUDA=1 MAX_JOBS=${MAX_JOBS:-16}
if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
  TORCH_CUDA_ARCH_LIST=$(python3 -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
  export TORCH_CUDA_ARCH_LIST
fi
step 150 python3 -m pip install -q --no-build-isolation --no-deps -e . || exit 1
python3 -c "import ssir_fast; assert ssir_fast.HAS_CUDA_KERNELS; print('CUDA kernels loaded')" \
  2>&1 | tee -a "$LOG" || exit 1

log "data: AgeDB-layout folder of synthetic 256 px JPEGs"
export SSIR_E2E_ROOT=/tmp/e2e_agedb SSIR_E2E_N=${SSIR_E2E_N:-4096}
step 60 python3 benchmarks/bench_e2e.py "$SSIR_E2E_ROOT" "$SSIR_E2E_N"

log "end-to-end benchmark (CUDA cases)"
step 240 python3 -m pytest -q benchmarks/bench_e2e.py -k cuda --benchmark-only -s \
  -p no:cacheprovider --benchmark-json="$OUT/bench_e2e.json"

log "GPU tests: DALI mixed pipeline, torch loader on CUDA, loop without per-step syncs"
step 100 python3 -m pytest -q -p no:cacheprovider tests/test_dali.py tests/test_train_loop.py \
  tests/test_data.py -k "gpu or cuda or mixed" --junitxml="$OUT/tests.xml"

log "ssir-fast train --backend dali, 2 epochs, ResNet-50, batch 256"
step 100 python3 -m ssir_fast.cli train --data agedb --data-root "$SSIR_E2E_ROOT" --backend dali \
  --model resnet50 --batch-size 256 --workers 14 --epochs 2 --milestones 1 --no-progress \
  --no-plots --out "$OUT/train_dali"

log "summary"
python3 - "$SSIR_BENCH_RESULTS" > "$OUT/summary.md" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print("| backend | method | device | first batch s (epochs) | steady img/s | model-only img/s "
      "| feed efficiency | loader-only img/s |\n|---|---|---|---|---|---|---|---|")
for r in rows:
    if r["bench"].startswith("e2e"):
        print(f"| {r['backend']} | {r['method']} | {r['device']} | {r['first_batch_s']} | "
              f"{r['steady_img_s']} | {r['model_img_s']} | {r['feed_efficiency']} | "
              f"{r.get('loader_img_s')} |")
EOF
cat "$OUT/summary.md" | tee -a "$LOG"
exit $status
