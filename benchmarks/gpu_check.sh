#!/usr/bin/env bash
# The GPU acceptance run: everything a GPU must show, most important first, in one device call of
# at most 8 minutes on a 16-core H100/H200 machine with torch, nvcc, pytest and pytest-benchmark
# (no DALI, no test extras, no network). Stages, each with its own timeout, all inside one budget:
#   1. build the extension with its CUDA kernels (pip install --no-build-isolation -e .);
#   2. every CUDA test (-k cuda, no -x), the op-level NaN/inf/denormal/empty/misaligned/5000- and
#      100000-bin cases included (tests/test_op_edge_cases.py);
#   3. compute-sanitizer memcheck and racecheck over benchmarks/ops_sanitizer.py;
#   4. kernel benchmarks against the same-run copy probe: perturb for every bound kind and dtype,
#      bin_reduce depth/age with and without a mask, the FDS ops, bin_reduce_nd on 2-D and 3-D
#      grids (op vs torch vs numpy), perturb vs torch.compile and its backward;
#   5. the SSIR step table: ResNet-50 224 px bf16 batch 256, then the small CNN (vanilla, exact,
#      each fast mode, the pass floor);
#   6. bench_e2e CUDA cases of the torch backend on synthetic AgeDB JPEGs (feed efficiency against
#      the model-only step; the JPEGs are written in the background from the start);
#   7. a 2-epoch `ssir-fast train --device cuda --ssir` on that data.
# $OUT/summary.md is rewritten after every stage (which ran, their result, failures, benchmark
# rows), so a call cut short still returns what finished; raw output goes to $OUT/gpu_check.log,
# benchmark rows to $OUT/results.jsonl, the CUDA tests' JUnit XML to $OUT/cuda_tests.xml (4
# files: a device call returns at most 8). A stage that would start with less than
# GPU_CHECK_MIN_STAGE (20) seconds of GPU_CHECK_BUDGET (480) left is skipped, and one that starts
# gets at most what is left. Exit status: 0 when every stage passed, else 1.
#
#   OUT=$OUT bash benchmarks/gpu_check.sh               (device call, timeout_s ~540)
#   GPU_CHECK_DRY=1 bash benchmarks/gpu_check.sh        (CPU: build and print every command, run
#                                                        what a CPU can, fail if any is broken)
# DALI's GPU pipeline is not in here: benchmarks/gpu_e2e.sh is the optional second call for it.
set -uo pipefail
cd "$(dirname "$0")/.."
GPU_LOG=gpu_check.log
GPU_PLAN="build cuda_tests memcheck racecheck bench_perturb_kinds bench_bin_reduce bench_fds bench_bin_reduce_nd bench_perturb_compile ssir_step_resnet50 ssir_step_small_cnn data e2e_torch train_ssir"
# shellcheck source=benchmarks/gpu_lib.sh
. benchmarks/gpu_lib.sh   # the machine header, data in the background, then stage 1 (build)

# ---- 2. CUDA tests ---------------------------------------------------------------------------
PYTEST=("$PY" -m pytest -q -rfEs -p no:cacheprovider)
mapfile -t IGNORES < <("${HELP[@]}" ignores tests 2>> "$LOG")
[ ${#IGNORES[@]} -eq 0 ] || "${HELP[@]}" header "$WORK" "test files not collected (missing modules)" "${IGNORES[*]}"
DRY_CMD=("${PYTEST[@]}" --collect-only tests -k cuda "${IGNORES[@]}")
NEEDS=$NO_BUILD
stage cuda_tests 120 "${PYTEST[@]}" tests -k cuda "${IGNORES[@]}" --junitxml="$OUT/cuda_tests.xml"

# ---- 3. compute-sanitizer --------------------------------------------------------------------
NO_SAN=""
SAN=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
[ -x "$SAN" ] || [ "$DRY" = 1 ] || NO_SAN="compute-sanitizer not found"
# PYTORCH_NO_CUDA_MEMORY_CACHING: each tensor its own cudaMalloc, so an access past a tensor's
# end is past an allocation's end (the caching allocator's pools would hide it).
DRY_CMD=("$PY" benchmarks/ops_sanitizer.py --device cpu --size small)
NEEDS=${NO_BUILD:-${NO_SAN:-}}
stage memcheck 75 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$SAN" --tool memcheck --error-exitcode 1 \
  --print-limit 20 "$PY" benchmarks/ops_sanitizer.py --device cuda --size full
NEEDS=${NO_BUILD:-${NO_SAN:-}}
stage racecheck 75 "$SAN" --tool racecheck --error-exitcode 1 --print-limit 20 \
  "$PY" benchmarks/ops_sanitizer.py --device cuda --size small

# ---- 4. kernel benchmarks (each against a copy probe of the same run) ------------------------
BENCH=("${PYTEST[@]}" --benchmark-only)
COLLECT=("$PY" -m pytest -q -p no:cacheprovider --collect-only)
# (a dry collection of CUDA cases finds none on a CPU where the device list is empty: exit 5)
DRY_CMD=(env SSIR_BENCH_COMPILE=0 "${COLLECT[@]}" benchmarks/bench_perturb.py -k "cuda and kinds"); DRY_OK="0 5"
NEEDS=$NO_BUILD
stage bench_perturb_kinds 75 env SSIR_BENCH_COMPILE=0 SSIR_BENCH_PERTURB_BATCH=256 \
  "${BENCH[@]}" benchmarks/bench_perturb.py -k "cuda and kinds"
DRY_CMD=("$PY" benchmarks/bench_bin_reduce.py --device cpu --pixels 614400)
NEEDS=$NO_BUILD
stage bench_bin_reduce 60 "$PY" benchmarks/bench_bin_reduce.py --device cuda --pixels 200000000
DRY_CMD=("${COLLECT[@]}" benchmarks/bench_fds.py -k "cuda and 65536"); DRY_OK="0 5"
NEEDS=$NO_BUILD
stage bench_fds 45 "${BENCH[@]}" benchmarks/bench_fds.py -k "cuda and 65536"
DRY_CMD=("${COLLECT[@]}" benchmarks/bench_bin_reduce.py -k "nd and cuda"); DRY_OK="0 5"
NEEDS=$NO_BUILD
stage bench_bin_reduce_nd 40 "${BENCH[@]}" benchmarks/bench_bin_reduce.py -k "nd and cuda"
DRY_CMD=("${COLLECT[@]}" benchmarks/bench_perturb.py -k "cuda and not kinds"); DRY_OK="0 5"
NEEDS=$NO_BUILD
stage bench_perturb_compile 75 env SSIR_BENCH_PERTURB_BATCH=256 \
  "${BENCH[@]}" benchmarks/bench_perturb.py -k "cuda and not kinds"

# ---- 5. the SSIR step table ------------------------------------------------------------------
DRY_CMD=("${COLLECT[@]}" benchmarks/bench_ssir_step.py -k cuda); DRY_OK="0 5"
NEEDS=${NO_BUILD:-$(has torchvision || echo "torchvision is not installed")}
STAGE_MIN=40
stage ssir_step_resnet50 100 env SSIR_BENCH_BATCH=256 \
  "${BENCH[@]}" -s benchmarks/bench_ssir_step.py -k cuda
DRY_CMD=("${COLLECT[@]}" benchmarks/bench_ssir_step.py -k "not cuda")
NEEDS=$NO_BUILD
stage ssir_step_small_cnn 60 "${BENCH[@]}" -s benchmarks/bench_ssir_step.py -k "not cuda"

# ---- 6. end to end: the torch loader feeding the GPU -----------------------------------------
data_stage
DRY_CMD=("${COLLECT[@]}" benchmarks/bench_e2e.py -k "cuda and torch")
NEEDS=${NO_BUILD:-$NO_DATA}
STAGE_MIN=60
stage e2e_torch 150 env SSIR_E2E_ROOT="$DATA" SSIR_E2E_N="$E2E_N" \
  "${BENCH[@]}" -s benchmarks/bench_e2e.py -k "cuda and torch"

# ---- 7. training run -------------------------------------------------------------------------
TRAIN=("$PY" -m ssir_fast.cli train --data agedb --data-root "$DATA" --backend torch --device cuda
       --model resnet50 --batch-size 256 --workers 14 --epochs 2 --milestones 1 --ssir
       --no-progress --no-plots --out "$WORK/train")
# the dry run trains the same command for one epoch of a small MLP on the CPU (argparse: the
# last occurrence of an option wins)
DRY_CMD=("${TRAIN[@]}" --device cpu --model mlp --width 16 --image-size 32 --batch-size 8
         --workers 0 --epochs 1)
NEEDS=${NO_BUILD:-$NO_DATA}
STAGE_MIN=45
stage train_ssir 120 "${TRAIN[@]}"

"${HELP[@]}" summary "$WORK" "$OUT"
say ""; say "=== summary ($((SECONDS - START)) s) ==="
cat "$OUT/summary.md" | tee -a "$LOG"
say "gpu_check exit status: $status"
exit $status
