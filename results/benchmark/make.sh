#!/usr/bin/env bash
# The first CPU-scale benchmark (issue 5), end to end. Run from the repository root with
# ../shared/assets beside it. Every step is resumable: re-running skips finished runs.
set -euo pipefail
export DFRD_DATA=${DFRD_DATA:-../shared/assets} OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

# 1. the runs: 6 methods x 2 students x 2 seeds, quick preset, one thread each. On the 2-core machine
#    two queues ran side by side, one per student (seed 0 via run_queue.sh, seed 1 via the sweep);
#    both produce the same folders as this single sweep, which skips what exists.
dfrd-bench sweep results/benchmark/sweep.yaml --seed 0,1

# 2. tables (results/benchmark/README.md) and figures, from the result JSONs and the teacher's evaluation
dfrd-bench table --table 1,4,runs --attacks all --ci --results results/benchmark --results results/teachers \
  --into results/benchmark/README.md
dfrd-bench table --table 1 --attacks all --paper --results results/benchmark --results results/teachers \
  --out results/benchmark/table1-vs-paper.md
dfrd-bench table --table 1,4 --attacks all --format latex --results results/benchmark --results results/teachers \
  --out results/benchmark/tables.tex
dfrd-bench plot --results results/benchmark --results results/teachers --out results/benchmark/figures
