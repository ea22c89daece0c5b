#!/usr/bin/env bash
# One worker of the first CPU benchmark: every method for one student and seed, one after another,
# one thread each (two workers share the 2-core machine). Resumable: rerun the same line.
#   usage: results/benchmark/run_queue.sh <student> <seed> [methods...]
set -euo pipefail
cd "$(dirname "$0")/../.."
student=$1; seed=$2; shift 2
methods=${*:-ferd zskt deepinv fast cmi dfhl}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
for m in $methods; do
  dfrd-bench run --method "$m" --dataset cifar10 --preset quick --student "$student" --seed "$seed" \
    --out results/benchmark/runs --resume
done
