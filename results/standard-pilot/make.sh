#!/usr/bin/env bash
# Issue 12 pilot (in progress): does FERD's default gain robustness with 5x the quick student budget?
# quick = 8 epochs x 40 student iterations (320 steps); here 40 epochs (1,600 steps), everything else quick.
# Evaluation on a stratified 2,000 of the test split (AutoAttack on 500) to keep the pilot short;
# the budget is chosen on these pilot numbers, never on the final benchmark's.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=results/standard-pilot/runs
# Equal student steps: 40 student epochs x 40 iterations = 1,600 for every method (Fast's 2 warm-up
# epochs of quick come in front, so it runs 42).
for spec in ferd:40 fast:42 cmi:40; do
  m="${spec%%:*}"; epochs="${spec##*:}"
  dfrd-bench run --method "$m" --dataset cifar10 --preset quick --seed 0 --out "$OUT" --name "$m-e40-s0" \
    --set epochs="$epochs" --set eval_limit=2000 --set aa_limit=500 --resume \
    > "results/standard-pilot/logs/$m-e40-s0.log" 2>&1
done

# Pool size: Fast again with 128 synthetic images per epoch instead of 64 (a 5,376-image pool, its two
# warm-up epochs included, instead of 2,688), everything else the same.
dfrd-bench run --method fast --dataset cifar10 --preset quick --seed 0 --out "$OUT" --name fast-e40-p128-s0 \
  --set epochs=42 --set synthesis_batch_size=128 --set pool_max=8192 --set eval_limit=2000 --set aa_limit=500 --resume \
  > results/standard-pilot/logs/fast-e40-p128-s0.log 2>&1
