#!/usr/bin/env bash
# A refactor's behaviour check: runs six CLI scenarios (default, --ssir, two_gaussians with
# fds+ranksim+ssir+sqrt_inv+lds, --rrt from a checkpoint, eval, --compile --ssir) into $1 (a fresh
# folder) with the ssir-fast of the active venv. Run it before and after a change (e.g. in a
# worktree of the old commit), then compare the results files byte for byte:
#   bash tools/same_outputs.sh /tmp/before   # at the old commit
#   bash tools/same_outputs.sh /tmp/after    # at the new one
#   bash tools/same_outputs.sh --compare /tmp/before /tmp/after   # exit 1 on any difference
set -euo pipefail
if [ "${1:-}" = "--compare" ]; then
  fail=0
  for f in $(cd "$2" && find . -name summary.json -o -name test_metrics.json -o -name test_per_bin.csv -o -name 'eval_*' -type f | sort); do
    case "$f" in *.png|*.pt) continue;; esac
    if ! cmp -s "$2/$f" "$3/$f"; then echo "DIFFERS: $f"; fail=1; else echo "same: $f"; fi
  done
  exit $fail
fi
D=$1; mkdir -p "$D"; export OMP_NUM_THREADS=1 PYTHONHASHSEED=0
C="--no-progress --no-plots --device cpu"
ssir-fast train --epochs 2 $C --out $D/default > $D/default.log 2>&1
ssir-fast train --epochs 2 --ssir $C --out $D/ssir > $D/ssir.log 2>&1
ssir-fast train --data two_gaussians --epochs 4 --fds --ranksim --ssir --reweight sqrt_inv --lds $C --out $D/gauss_all > $D/gauss_all.log 2>&1
ssir-fast train --data two_gaussians --epochs 3 $C --out $D/gauss_first > $D/gauss_first.log 2>&1
ssir-fast train --data two_gaussians --rrt --reweight sqrt_inv --checkpoint $D/gauss_first/best.pt --rrt-epochs 1 $C --out $D/rrt > $D/rrt.log 2>&1
ssir-fast eval --checkpoint $D/default/best.pt --out $D/eval > $D/eval.log 2>&1
ssir-fast train --data two_gaussians --epochs 2 --compile --ssir $C --out $D/compile_ssir > $D/compile_ssir.log 2>&1
echo "done: $D"
