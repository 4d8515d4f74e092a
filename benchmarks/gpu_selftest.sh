#!/usr/bin/env bash
# GPU self-test for a machine with one CUDA GPU, sized for one 10-minute device call (issue 10):
#   1. build the extension with its CUDA kernels (required);
#   2. every CUDA test (-k cuda), without -x, so that every failure is reported;
#   3. the rest of the test suite (together with 2: the whole suite), without -x;
#   4. compute-sanitizer memcheck over benchmarks/ops_sanitizer.py (every op, odd sizes, NaN);
#   5. GPU benchmarks (benchmarks/harness.py: one row per case): perturb for every bound kind and
#      dtype and its backward, bin_reduce (depth 2e8 pixels and age, through run_gpu_selftest in
#      bench_metrics.py), bin_feature_stats and fds_calibrate (and its backward) at N = 65,536,
#      C = 2,048, each against its baselines and a copy-bandwidth probe of the same run;
#   6. a table of every benchmark row (case = ssir_fast or a baseline), printed last.
# Each stage has its own timeout (sum 570 s; estimates: the script has not run on a GPU yet), so
# a hang cannot eat the others' time; benchmark rows are appended as each case finishes, so a
# stage cut by its timeout keeps what it measured.
# Results (logs, junit XML, JSON lines, summary.md) go under $OUT (default ./gpu-out).
#
#   OUT=/some/dir bash benchmarks/gpu_selftest.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
export SSIR_BENCH_RESULTS="$OUT/results.jsonl"
: > "$SSIR_BENCH_RESULTS"
status=0
PY=${PYTHON:-python3}
log() { printf '\n=== %s (%s) ===\n' "$1" "$(date +%H:%M:%S)" | tee -a "$OUT/selftest.log"; }
stage() {  # stage NAME TIMEOUT CMD...: run, keep the tail in the log, remember a failure
  local name=$1 limit=$2; shift 2
  log "$name"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  tail -30 "$OUT/$name.log" | tee -a "$OUT/selftest.log"
  echo "[$name] exit code $rc" | tee -a "$OUT/selftest.log"
  [ "$rc" -eq 0 ] || status=1
  return 0
}

log "device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee -a "$OUT/selftest.log"
"$PY" -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())" \
  2>&1 | tee -a "$OUT/selftest.log"

export SSIR_FAST_FORCE_CUDA=1 MAX_JOBS=${MAX_JOBS:-16}
if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
  TORCH_CUDA_ARCH_LIST=$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
  export TORCH_CUDA_ARCH_LIST
fi
stage build 160 "$PY" -m pip install -q --no-build-isolation --no-deps -e .
"$PY" -c "import ssir_fast; assert ssir_fast.HAS_CUDA_KERNELS; print('CUDA kernels loaded')" \
  2>&1 | tee -a "$OUT/selftest.log" || { echo "no CUDA kernels: stopping"; exit 1; }

PYTEST=("$PY" -m pytest -q -rfEs -p no:cacheprovider)
stage cuda_tests 80 "${PYTEST[@]}" tests -k cuda --junitxml="$OUT/cuda_tests.xml"
stage other_tests 160 "${PYTEST[@]}" tests -k "not cuda" --junitxml="$OUT/other_tests.xml"

if command -v compute-sanitizer > /dev/null; then
  stage memcheck 45 compute-sanitizer --tool memcheck --error-exitcode 1 --print-limit 20 \
    "$PY" benchmarks/ops_sanitizer.py --device cuda
else
  log "memcheck"; echo "compute-sanitizer not found on PATH" | tee -a "$OUT/selftest.log"; status=1
fi

BENCH=("$PY" -m pytest -q -p no:cacheprovider --benchmark-only)
stage bench_perturb 75 "${BENCH[@]}" benchmarks/bench_perturb.py -k cuda
stage bench_metrics 35 "$PY" benchmarks/bench_metrics.py
stage bench_toolkit 15 "${BENCH[@]}" benchmarks/bench_toolkit.py -k "cuda and 65536"

log "summary"
"$PY" - "$SSIR_BENCH_RESULTS" > "$OUT/summary.md" <<'PYEOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
keys = ("case", "mode", "median_ms", "shape", "dtype", "bounds", "elements", "n_rows", "ours_ms",
        "op_s", "speedup_vs_eager",
        "speedup_vs_compiled", "speedup_vs_bincount", "speedup_vs_loop", "gbps", "copy_gbps",
        "fraction_of_copy")
print("| benchmark | " + " | ".join(keys) + " |")
print("|---" * (len(keys) + 1) + "|")
for r in rows:
    cells = []
    for k in keys:
        v = r.get(k)
        cells.append("" if v is None else (f"{v:.3g}" if isinstance(v, float) else str(v)))
    print(f"| {r.get('bench', '')} | " + " | ".join(cells) + " |")
PYEOF
cat "$OUT/summary.md" | tee -a "$OUT/selftest.log"
echo "self-test exit status: $status" | tee -a "$OUT/selftest.log"
exit $status
