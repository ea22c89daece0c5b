#!/usr/bin/env bash
# Issue 31: what bf16 training costs in accuracy on a CPU with native bf16 (avx512_bf16): FERD and Fast at
# `quick`, seeds 0-2, trained with --set precision=bf16 and =fp32 (FERD's fp32 arm: the runs of
# results/ferd-reading/bottleneck/, "after"), evaluated in fp32 (clean, PGD-20, full test split).
# Resumable, one thread per run; then `python3 results/cpu-bf16/analyse.py`.
# Made at commit 00ed428 (the runs' provenance): quick then trained in fp32 under auto and evaluated AA on 2,000.
set -euo pipefail
cd "$(dirname "$0")/../.."
export DFRD_DATA=${DFRD_DATA:-../shared/assets} OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
O=results/cpu-bf16
for s in 0 1 2; do
  for m in ferd fast; do
    for p in bf16 fp32; do
      [ $m = ferd ] && [ $p = fp32 ] && continue
      python3 -m dfrd_bench.cli run --method $m --dataset cifar10 --preset quick --seed $s --attacks clean,pgd20 \
        --set precision=$p --out $O/runs --name $m-$p-s$s --resume > $O/logs/$m-$p-s$s.log 2>&1
    done
  done
done
python3 $O/analyse.py > /dev/null
