#!/usr/bin/env bash
# Copy the finished runs (result.json, student.pt, samples.png) and the worker logs of a benchmark that
# runs in a pinned worktree (see make.sh) into this checkout:  results/standard/sync.sh ../bench
set -euo pipefail
cd "$(dirname "$0")/../.."
SRC=${1:?usage: results/standard/sync.sh PATH_OF_THE_WORKTREE}
for sub in runs quick/runs; do
  [ -d "$SRC/results/standard/$sub" ] || continue
  for run in "$SRC"/results/standard/$sub/*/; do
    [ -f "$run/result.json" ] || continue            # unfinished runs stay where they are
    dest="results/standard/$sub/$(basename "$run")"
    mkdir -p "$dest"
    cp "$run"/result.json "$run"/student.pt "$run"/samples.png "$dest"/ 2>/dev/null || cp "$run"/result.json "$dest"/
  done
done
mkdir -p results/standard/logs
cp "$SRC"/results/standard/logs/*.log results/standard/logs/ 2>/dev/null || true
# Which classes each run's synthetic pool holds (needs the state.pt files, which only the worktree keeps)
python3 results/standard/pool_coverage.py "$SRC"/results/standard/runs \
  --teacher-eval results/teachers/cpu-resnet20-cifar10.json \
  --out results/standard/pool-coverage.json --md results/standard/pool-coverage.md
