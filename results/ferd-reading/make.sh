#!/usr/bin/env bash
# Issue 9's evidence: which reading of FERD transfers robustness at CPU scale (quick preset, ResNet-8,
# CIFAR-10 JPEG copy, the bundled teacher cpu-resnet20-cifar10). Run from the repository root with
# ../shared/assets beside it. Resumable: finished runs are skipped, interrupted ones continue.
#   bash results/ferd-reading/make.sh          # every run, one after another (one CPU thread each)
#   bash results/ferd-reading/make.sh queue A  # half of them (run queue A and queue B side by side on 2 cores)
set -euo pipefail
export DFRD_DATA=${DFRD_DATA:-../shared/assets} OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
OUT=results/ferd-reading/runs
LOGS=results/ferd-reading/logs
mkdir -p "$OUT" "$LOGS"

run() {  # run NAME ARGS...: one `dfrd-bench run`, its log in $LOGS/NAME.log
  local name=$1; shift
  dfrd-bench run --dataset cifar10 --preset quick --out "$OUT" --name "$name" --resume "$@" \
    >"$LOGS/$name.log" 2>&1 || { echo "FAILED: $name (see $LOGS/$name.log)"; return 1; }
  echo "done: $name"
}

queue_a() {
  run ferd-default-s0 --method ferd --seed 0
  run ferd-paper-literal-s0 --method ferd --seed 0 --set variant=paper-literal
  run ferd-default-s1 --method ferd --seed 1
  run ferd-rslad-weights-s0 --method ferd --seed 0 --set variant=rslad-weights
  run cmi-s0 --method cmi --seed 0
}
queue_b() {
  run ferd-released-s0 --method ferd --seed 0 --set variant=released
  run ferd-no-student-augment-s0 --method ferd --seed 0 --set student_augment=false
  run ferd-default-s2 --method ferd --seed 2
  run fast-s0 --method fast --seed 0
}

case "${1:-all}" in
  queue) if [ "${2:-}" = A ]; then queue_a; else queue_b; fi ;;
  all) queue_a; queue_b ;;
  tables) ;;
  *) echo "usage: $0 [all | queue A | queue B | tables]"; exit 2 ;;
esac

# the table (results/ferd-reading/README.md between the markers) from the result JSONs
if [ "${1:-all}" = all ] || [ "${1:-all}" = tables ]; then
  dfrd-bench table --table variants,runs --attacks all --ci --results "$OUT" --results results/teachers \
    --into results/ferd-reading/README.md
fi
