# Shared by benchmarks/gpu_check.sh and benchmarks/gpu_e2e.sh (sourced, not run): the stage
# runner with its budget, the summary ($OUT/summary.md, via benchmarks/gpu_check.py), the machine
# header, the build stage and the synthetic AgeDB data written in the background.
# Before sourcing: cd to the repository root and set GPU_LOG (the raw log's name under $OUT) and
# GPU_PLAN (the stage names, in order, for the summary's header).
ROOT=$PWD
PY=${PYTHON:-python3}
DRY=${GPU_CHECK_DRY:-0}
OUT=${OUT:-$ROOT/gpu-out}
WORK=${GPU_CHECK_WORK:-$(mktemp -d /tmp/gpu_check.XXXXXX)}
BUDGET=${GPU_CHECK_BUDGET:-480}
MIN_STAGE=${GPU_CHECK_MIN_STAGE:-20}
E2E_N=${GPU_CHECK_E2E_N:-4096}
mkdir -p "$OUT" "$WORK"
LOG="$OUT/$GPU_LOG"
: > "$LOG"
export PYTHONUNBUFFERED=1 SSIR_BENCH_RESULTS="$OUT/results.jsonl"
: > "$SSIR_BENCH_RESULTS"
HELP=("$PY" "$ROOT/benchmarks/gpu_check.py")
START=$SECONDS
status=0

say() { printf '%s\n' "$*" | tee -a "$LOG"; }
# stage NAME LIMIT CMD...: run CMD under `timeout`, its output into $LOG and $WORK/NAME.log, and
# record the result in the summary. In a dry run CMD is printed and DRY_CMD (set just before,
# cleared after) runs instead; its exit status must be one of DRY_OK (default 0). A stage with
# NEEDS set (a reason: a missing module, a failed build) is recorded as skipped (not in a dry run,
# which runs every dry command). STAGE_MIN (set just before) raises MIN_STAGE for one stage that
# is no use cut short.
DRY_CMD=(); DRY_OK="0"; NEEDS=""; LAST=""; STAGE_MIN=""
stage() {
  local name=$1 limit=$2; shift 2
  local slog="$WORK/$name.log" t0=$SECONDS rc=0 st
  printf '\n=== %s (%s, +%ds) ===\n$ %s\n' "$name" "$(date +%H:%M:%S)" $((SECONDS - START)) \
    "$(printf '%q ' "$@")" | tee -a "$LOG"
  if [ -n "$NEEDS" ] && [ "$DRY" != 1 ]; then
    : > "$slog"; say "skipped: $NEEDS"
    "${HELP[@]}" stage "$WORK" "$OUT" "$name" "skipped" 0 0 "$limit" "$slog" "$NEEDS" | tee -a "$LOG"
    LAST="skipped"; DRY_CMD=(); DRY_OK="0"; NEEDS=""; STAGE_MIN=""; return 0
  fi
  if [ "$DRY" = 1 ]; then
    if [ ${#DRY_CMD[@]} -eq 0 ]; then
      : > "$slog"; st="dry ok"; say "(dry run: the command above is only printed)"
    else
      printf 'dry run: $ %s\n' "$(printf '%q ' "${DRY_CMD[@]}")" | tee -a "$LOG"
      timeout -k 10 300 "${DRY_CMD[@]}" 2>&1 | tee "$slog" >> "$LOG"
      rc=${PIPESTATUS[0]}
      st="dry failed (rc $rc)"
      for ok in $DRY_OK; do [ "$rc" -eq "$ok" ] && st="dry ok"; done
    fi
  else
    local left=$((BUDGET - (SECONDS - START)))
    if [ "$left" -lt "${STAGE_MIN:-$MIN_STAGE}" ]; then
      : > "$slog"; say "skipped: ${left} s of the ${BUDGET} s budget left"
      "${HELP[@]}" stage "$WORK" "$OUT" "$name" "skipped" 0 0 "$limit" "$slog" \
        "no time left (${left} s of ${BUDGET} s)" | tee -a "$LOG"
      LAST="skipped"; status=1; DRY_CMD=(); DRY_OK="0"; STAGE_MIN=""; NEEDS=""; return 0
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    timeout -k 10 "$limit" "$@" 2>&1 | tee "$slog" >> "$LOG"
    rc=${PIPESTATUS[0]}
    case $rc in
      0) st="passed" ;;
      124|137) st="timed out (${limit} s)" ;;
      *) st="failed (rc $rc)" ;;
    esac
  fi
  LAST=$st
  case $st in passed|"dry ok") ;; *) status=1 ;; esac
  "${HELP[@]}" stage "$WORK" "$OUT" "$name" "$st" "$rc" $((SECONDS - t0)) "$limit" "$slog" \
    | tee -a "$LOG"
  DRY_CMD=(); DRY_OK="0"; STAGE_MIN=""; NEEDS=""
  return 0
}

# ---- the machine ----------------------------------------------------------------------------
say "=== ${GPU_LOG%.log} $( [ "$DRY" = 1 ] && echo '(dry run)') $(date -u '+%Y-%m-%d %H:%M:%S') UTC, commit $(git rev-parse --short HEAD 2>/dev/null || echo '?') ==="
"${HELP[@]}" header "$WORK" commit "$(git rev-parse --short HEAD 2>/dev/null || echo '?')$( [ "$DRY" = 1 ] && echo ' (dry run on a CPU)')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee -a "$LOG"
"${HELP[@]}" preflight "$WORK" 2>&1 | tee -a "$LOG"
# the stages a full run has, in order (a call cut short shows which did not run)
[ -z "${GPU_PLAN:-}" ] || "${HELP[@]}" header "$WORK" "stages planned" "$GPU_PLAN"
MISSING=$("${HELP[@]}" missing)
has() { case " $MISSING " in *" $1 "*) return 1 ;; *) return 0 ;; esac; }

# The synthetic AgeDB folder of the end-to-end stages, written in the background (CPU only)
# while the GPU stages run.
DATA="$WORK/agedb"
if [ "$DRY" = 1 ]; then E2E_N=16; export SSIR_E2E_SIZE=64; fi
DATA_PID=""
if has PIL; then
  ( timeout 240 "$PY" benchmarks/bench_e2e.py "$DATA" "$E2E_N" > "$WORK/data.log" 2>&1
    echo $? > "$WORK/data.rc" ) &
  DATA_PID=$!
fi

# ---- build (a stage: its failure skips the stages that set NEEDS=$NO_BUILD) --------------------
export SSIR_FAST_FORCE_CUDA=1 MAX_JOBS=${MAX_JOBS:-16} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
[ -z "${CUDA_HOME:-}" ] && [ -d /usr/local/cuda ] && export CUDA_HOME=/usr/local/cuda
CHECK_KERNELS="import ssir_fast; print('extension', ssir_fast.HAS_EXTENSION, 'CUDA kernels', ssir_fast.HAS_CUDA_KERNELS); assert ssir_fast.HAS_CUDA_KERNELS, 'no CUDA kernels'"
DRY_CMD=("$PY" -c "import ssir_fast; print('extension', ssir_fast.HAS_EXTENSION, 'CUDA kernels', ssir_fast.HAS_CUDA_KERNELS); assert ssir_fast.HAS_EXTENSION")
stage build 200 bash -c "$PY -m pip install -q --no-index --no-deps --no-build-isolation -e . && $PY -c \"$CHECK_KERNELS\""
NO_BUILD=""; case $LAST in passed|"dry ok") ;; *) NO_BUILD="the build failed" ;; esac


# data_stage: wait for the background data and record it as a stage
data_stage() {
  data_t0=$SECONDS
  [ -n "$DATA_PID" ] && wait "$DATA_PID"
  cp "$WORK/data.log" "$WORK/data_stage.log" 2>/dev/null || : > "$WORK/data_stage.log"
  cat "$WORK/data_stage.log" >> "$LOG"
  if [ -z "$DATA_PID" ]; then
    data_st="skipped"; data_note="PIL is not installed"; data_rc=0
  elif [ "$(cat "$WORK/data.rc" 2>/dev/null)" = 0 ]; then
    data_st=$([ "$DRY" = 1 ] && echo "dry ok" || echo passed); data_rc=0; data_note=""
  else
    data_rc=$(cat "$WORK/data.rc" 2>/dev/null || echo 1); data_st="failed (rc $data_rc)"; data_note=""; status=1
  fi
  "${HELP[@]}" stage "$WORK" "$OUT" data "$data_st" "$data_rc" $((SECONDS - data_t0)) 240 \
    "$WORK/data_stage.log" "${data_note:-$E2E_N training JPEGs in $DATA (written in the background; waited $((SECONDS - data_t0)) s)}" | tee -a "$LOG"
  NO_DATA=""; [ -f "$DATA/agedb.csv" ] || NO_DATA="no synthetic data (see the data stage)"
}
