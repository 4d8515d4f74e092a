#!/usr/bin/env bash
# The optional second GPU call: DALI's GPU pipeline, which benchmarks/gpu_check.sh (the first call:
# build, CUDA tests, sanitizers, kernels, SSIR step, torch-loader end to end, training) leaves out
# because DALI is not installed on the GPU machine. It installs DALI from carried pieces (the DALI
# wheels and their dependencies as one tar, split into `.dali1/part` ... `.daliN/part` at the
# repository root, ignored by git, each carried by its own device call), builds the extension,
# and runs:
#   - the DALI GPU tests (tests/test_dali.py: the "mixed" pipeline and its loader on CUDA);
#   - the DALI "mixed" loader against the torch DataLoader feeding the GPU, in the same run
#     (benchmarks/bench_loader.py);
#   - bench_e2e's DALI CUDA cases (ResNet-50 224 px, bf16, batch 256, 14 threads; feed efficiency
#     against the model-only step) on synthetic AgeDB JPEGs;
#   - a 2-epoch `ssir-fast train --backend dali --device cuda --ssir` on that data.
# Same stage runner, budget and outputs as gpu_check.sh ($OUT/summary.md after every stage,
# $OUT/gpu_e2e.log, $OUT/results.jsonl).
#
#   OUT=$OUT bash benchmarks/gpu_e2e.sh        (device: carry the .daliK pieces first, see above)
#   GPU_CHECK_DRY=1 bash benchmarks/gpu_e2e.sh (CPU: print the commands, collect the cases)
set -uo pipefail
cd "$(dirname "$0")/.."
GPU_LOG=gpu_e2e.log
GPU_PLAN="build dali_install dali_tests bench_loader_mixed data e2e_dali train_dali"
# shellcheck source=benchmarks/gpu_lib.sh
. benchmarks/gpu_lib.sh   # the machine header, data in the background, then the build stage

# ---- DALI from the carried pieces --------------------------------------------------------------
DALI_SITE=/tmp/dalisite
NO_DALI=""
if ! "$PY" -c "import nvidia.dali" 2>/dev/null; then
  if ls .dali[0-9]*/part > /dev/null 2>&1 || [ "$DRY" = 1 ]; then
    stage dali_install 90 bash -c "cat .dali[0-9]*/part > /tmp/dali.tar && mkdir -p /tmp/w && tar -C /tmp/w -xf /tmp/dali.tar && $PY -m pip install -q --no-index --no-deps --target $DALI_SITE /tmp/w/*.whl"
    export PYTHONPATH=$DALI_SITE${PYTHONPATH:+:$PYTHONPATH}
  else
    NO_DALI="no DALI and no carried .daliK pieces"
    say "$NO_DALI: the DALI stages are skipped"
  fi
fi
"$PY" -c "import nvidia.dali as d, nvidia.dali.plugin.pytorch; print('DALI', d.__version__)" 2>&1 \
  | tee -a "$LOG" || NO_DALI=${NO_DALI:-"nvidia.dali does not import"}

PYTEST=("$PY" -m pytest -q -rfEs -p no:cacheprovider)
BENCH=("${PYTEST[@]}" --benchmark-only)
COLLECT=("$PY" -m pytest -q -p no:cacheprovider --collect-only)

DRY_CMD=("${COLLECT[@]}" tests/test_dali.py); DRY_OK="0 5"   # 5: no DALI here, all skipped
NEEDS=${NO_BUILD:-$NO_DALI}
stage dali_tests 90 "${PYTEST[@]}" tests/test_dali.py

DRY_CMD=("${COLLECT[@]}" benchmarks/bench_loader.py -k "mixed and gpu")
NEEDS=${NO_BUILD:-$NO_DALI}
stage bench_loader_mixed 90 "${BENCH[@]}" -s benchmarks/bench_loader.py -k "mixed and gpu"

data_stage
DRY_CMD=("${COLLECT[@]}" benchmarks/bench_e2e.py -k "cuda and dali")
NEEDS=${NO_BUILD:-${NO_DALI:-$NO_DATA}}
stage e2e_dali 150 env SSIR_E2E_ROOT="$DATA" SSIR_E2E_N="$E2E_N" \
  "${BENCH[@]}" -s benchmarks/bench_e2e.py -k "cuda and dali"

TRAIN=("$PY" -m ssir_fast.cli train --data agedb --data-root "$DATA" --backend dali --device cuda
       --model resnet50 --batch-size 256 --workers 14 --epochs 2 --milestones 1 --ssir
       --no-progress --no-plots --out "$WORK/train_dali")
NEEDS=${NO_BUILD:-${NO_DALI:-$NO_DATA}}
stage train_dali 100 "${TRAIN[@]}"

"${HELP[@]}" summary "$WORK" "$OUT"
say ""; say "=== summary ($((SECONDS - START)) s) ==="
tee -a "$LOG" < "$OUT/summary.md"
say "gpu_e2e exit status: $status"
exit $status
