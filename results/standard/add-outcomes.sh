#!/usr/bin/env bash
# Per-image outcomes for the committed standard runs (issue 26): re-evaluates each run's committed
# student.pt with its recorded settings and adds which test images it got right (`dfrd-bench outcomes`,
# docs/reporting.md). Resumable: attacks that already hold outcomes are skipped, an interrupted
# evaluation continues from its progress file. AutoAttack (~6 CPU-minutes a run) is left out by default:
# its cells keep the unpaired test.
#   ATTACKS=clean,fgsm,pgd20 WORKERS=2 nohup results/standard/add-outcomes.sh > results/standard/logs/outcomes.log 2>&1 &
# To keep developing while it runs, pin the code: git worktree add ../bench-outcomes HEAD and set
# DFRD_CODE=../bench-outcomes (its commit is what each result's outcomes_added[].provenance records).
set -euo pipefail
cd "$(dirname "$0")/../.."
export DFRD_DATA=${DFRD_DATA:-../shared/assets}
export OMP_NUM_THREADS=${THREADS:-1} MKL_NUM_THREADS=${THREADS:-1}
CODE=${DFRD_CODE:-$PWD}
ATTACKS=${ATTACKS:-clean,fgsm,pgd20,cw}
mapfile -t files < <(ls results/standard/runs/*/result.json)
W=${WORKERS:-1}
pids=()
for w in $(seq 0 $((W - 1))); do
  mine=()
  for i in "${!files[@]}"; do (( i % W == w )) && mine+=("${files[$i]}"); done
  ( cd "$CODE" && PYTHONPATH="$CODE" python3 -m dfrd_bench.cli outcomes --attacks "$ATTACKS" \
      "${mine[@]/#/$OLDPWD/}" ) > "results/standard/logs/outcomes-$w.log" 2>&1 &
  pids+=($!)
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=1; done
exit $status
