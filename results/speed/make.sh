#!/usr/bin/env bash
# The committed speed tables: `dfrd-bench bench` for every method on the CPU-sized setups and on the
# paper's setup, then results/speed/README.md rendered from the JSONs (render.py).
# Run on a quiet machine (nothing else running): the numbers are medians of interleaved repeats.
#   bash results/speed/make.sh            # everything (about half an hour on 2 CPU cores)
#   bash results/speed/make.sh issue      # only the issue's setup
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=results/speed/json
mkdir -p "$OUT"
METHODS="ferd cmi deepinv fast zskt dfhl"
what="${1:-all}"

if [[ "$what" == all || "$what" == issue ]]; then
  # The issue's setup: random WRN-16-2 teacher, WRN-16-1 student, batch 64, the paper's per-iteration
  # settings, 2 threads; compile off (the quick/smoke default) for every method, and on (the paper
  # runs' default) for FERD and CMI (their warm-up repeat holds the compilation).
  for m in $METHODS; do
    dfrd-bench bench --method "$m" --threads 2 --repeats 3 --warmup 1 --eval-images 128 \
      --attacks clean,fgsm,pgd20 --set compile=off --out "$OUT/issue-$m-compile-off.json"
  done
  for m in ferd cmi; do
    dfrd-bench bench --method "$m" --threads 2 --repeats 3 --warmup 1 --eval-images 128 \
      --attacks clean,fgsm,pgd20 --set compile=on --out "$OUT/issue-$m-compile-on.json"
  done
fi
if [[ "$what" == all || "$what" == quick ]]; then
  # What a `quick` run executes: the bundled CPU teacher, the ResNet-8 student, quick settings.
  for m in $METHODS; do
    dfrd-bench bench --method "$m" --preset quick --teacher cpu-resnet20-cifar10 --student resnet8 --threads 2 \
      --repeats 3 --warmup 1 --eval-images 128 --attacks clean,pgd20 --out "$OUT/quick-$m.json"
  done
fi
if [[ "$what" == all || "$what" == paper ]]; then
  # The paper's models at one repeat: WRN-34-10 teacher (untrained: timing only), ResNet-18 student,
  # the paper's per-iteration settings, batch 64 (the paper's 256 takes 4x as long per iteration on a
  # CPU: scale the seconds, not the samples/s); compile off (compiling WRN-34-10 alone takes minutes here).
  for m in ferd cmi; do
    dfrd-bench bench --method "$m" --teacher random:wrn-34-10 --student resnet18 --batch-size 64 --threads 2 \
      --repeats 1 --warmup 0 --gen-extra-iters 1 --eval-images 128 --attacks clean,pgd20 --set compile=off \
      --out "$OUT/paper-$m.json"
  done
fi
if [[ "$what" == all || "$what" == paper-ferd-generator ]]; then
  # FERD's generation stage at this scale is dominated by its 20-step reweighting PGD on WRN-34-10
  # (~200 s), which swamps the 1 + R iteration difference at one repeat: time the generator iteration
  # with reweighting off (the reweighting itself is the `generation overhead` row above).
  dfrd-bench bench --method ferd --teacher random:wrn-34-10 --student resnet18 --batch-size 64 --threads 2 \
    --repeats 1 --warmup 0 --gen-extra-iters 2 --eval-images 128 --attacks clean --set compile=off --set reweight=false \
    --out "$OUT/paper-ferd-noreweight.json"
fi
python3 results/speed/render.py "$OUT" > results/speed/README.md
# The comparison with the authors' loops (needs the git mirrors of their code; each row in its own process):
#   python3 results/speed/compare_reference.py --compile --repeats 7 --warmup 1 --out results/speed/reference.json
