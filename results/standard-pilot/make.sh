#!/usr/bin/env bash
# Issue 12 pilot (in progress): does FERD's default gain robustness with 5x the quick student budget?
# quick = 8 epochs x 40 student iterations (320 steps); here 40 epochs (1,600 steps), everything else quick.
# Evaluation on a stratified 2,000 of the test split (AutoAttack on 500) to keep the pilot short;
# the budget is chosen on these pilot numbers, never on the final benchmark's.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=results/standard-pilot/runs
for m in ferd; do
  dfrd-bench run --method "$m" --dataset cifar10 --preset quick --seed 0 --out "$OUT" --name "$m-e40-s0" \
    --set epochs=40 --set eval_limit=2000 --set aa_limit=500 --resume \
    > "results/standard-pilot/logs/$m-e40-s0.log" 2>&1
done
