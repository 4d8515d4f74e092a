#!/usr/bin/env bash
# A/B timing of the CPU kernels: this tree's build against another commit's, built in a temporary
# folder with the same torch, timed in alternating processes (tools/ab_cpu_kernels.py).
# Usage (in the venv that has this tree installed): bash tools/ab_cpu_kernels.sh [COMMIT] [ROUNDS]
# COMMIT defaults to 405ace5 (the last build before the stable-ABI port). Prints one JSON line per
# build and round, then the ratio new / old of the fastest time per case.
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${1:-405ace5}
ROUNDS=${2:-4}
PY=${PYTHON:-python}
OLD=$(mktemp -d)
trap 'rm -rf "$OLD"' EXIT
git archive "$BASE" | tar -x -C "$OLD"
( cd "$OLD" && MAX_JOBS=${MAX_JOBS:-2} SSIR_FAST_FORCE_CPU=1 "$PY" setup.py -q build_ext --inplace \
  >/dev/null )
NEW=$("$PY" -c 'import os, ssir_fast; print(os.path.dirname(os.path.dirname(ssir_fast.__file__)))')
LOG=$(mktemp)
for r in $(seq "$ROUNDS"); do
  for b in old new; do
    dir=$([ "$b" = old ] && echo "$OLD" || echo "$NEW")
    echo "$b $(cd /tmp && PYTHONPATH=$dir "$PY" "$NEW/tools/ab_cpu_kernels.py")" | tee -a "$LOG"
  done
done
"$PY" - "$LOG" <<'PYEOF'
import json, sys
best = {}
for line in open(sys.argv[1]):
    build, data = line.split(" ", 1)
    for case, t in json.loads(data).items():
        key = (build, case)
        best[key] = min(best.get(key, float("inf")), t)
for case in sorted({c for _, c in best}):
    o, n = best[("old", case)], best[("new", case)]
    print(f"{case:32s} old {o * 1e3:8.2f} ms  new {n * 1e3:8.2f} ms  new/old {n / o:.3f}")
PYEOF
rm -f "$LOG"
