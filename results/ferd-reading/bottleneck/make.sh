#!/usr/bin/env bash
# Issue 29's measurement: FERD's information bottleneck read as Eq. 5 prints it (defaults v2, now
# `variant=ib-printed`) against the authors' IFP.py (defaults v3, the default), at `quick` (bundled CPU
# teacher, ResNet-8, CIFAR-10 JPEG copy), seeds 0-2, evaluated on the full test split (clean, PGD-20).
# Resumable; one CPU thread per run. Then `python3 results/ferd-reading/bottleneck/analyse.py`.
#   bash results/ferd-reading/bottleneck/make.sh            # all six, one after another
# The committed "before" runs were made at commit b7c1389, whose default is exactly `variant=ib-printed`
# (weights and every logged number equal on a smoke run); the "after" runs at 953b69e (their provenance).
set -euo pipefail
cd "$(dirname "$0")/../../.."
export DFRD_DATA=${DFRD_DATA:-../shared/assets} OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
B=results/ferd-reading/bottleneck
mkdir -p $B/runs $B/logs
for s in 0 1 2; do
  for reading in before after; do
    extra=(); [ $reading = before ] && extra=(--set variant=ib-printed)
    python3 -m dfrd_bench.cli run --method ferd --dataset cifar10 --preset quick --seed $s --attacks clean,pgd20 \
      "${extra[@]}" --out $B/runs --name ib-$reading-s$s --resume > $B/logs/ib-$reading-s$s.log 2>&1
  done
done
python3 $B/analyse.py > /dev/null
