#!/usr/bin/env bash
# Tables, claims and figures of the CPU benchmark from whatever runs have finished (results/standard/make.sh
# calls it at the end; run it any time to refresh). Cells without runs show as "–".
set -euo pipefail
cd "$(dirname "$0")/../.."
dfrd-bench() { python3 -m dfrd_bench.cli "$@"; }
S=results/standard
T=results/teachers
dfrd-bench table --table 1,claims --attacks all --ci --results $S/runs --results $T --into results/README.md
dfrd-bench table --table 3 --attacks clean,pgd20 --ci --results $S/runs --out $S/table3.md
if [ -d $S/quick/runs ]; then    # the quick-scale tables exist once their first run has finished
  dfrd-bench table --table 6,7,8,9 --attacks all --results $S/quick/runs --out $S/quick/tables.md
fi
dfrd-bench table --table 1,3,runs --attacks all --ci --format latex --results $S/runs --results $T --out $S/tables.tex
dfrd-bench table --table runs --results $S/runs $( [ -d $S/quick/runs ] && echo --results $S/quick/runs ) --out $S/runs.md
dfrd-bench table --table 1 --attacks all --paper --results $S/runs --results $T --out $S/table1-vs-paper.md
dfrd-bench plot --results $S/runs --results $T --out $S/figures || true      # a figure without its runs is skipped
[ -d $S/quick/runs ] && dfrd-bench plot --figure 5 --results $S/quick/runs --out $S/quick/figures || true
# How far the benchmark is: finished runs per sweep file (from the result JSONs present here)
{
  echo "| sweep file | students | runs | finished |"
  echo "|--|--|--:|--:|"
  for spec in "table1.yaml --student resnet8" "table1.yaml --student mobilenetv2-x0.25-s2" table3.yaml \
              quick-ablations.yaml table8.yaml; do
    set -- $spec
    plan=$(dfrd-bench sweep $S/$1 "${@:2}" --dry-run)   # first line: "sweep: N runs (F finished, ...)"
    line=${plan%%$'\n'*}    # (no `| head`: under pipefail its early exit would fail the script)
    total=$(sed -E 's/^sweep: ([0-9]+) runs.*/\1/' <<<"$line")
    done_=$(sed -E 's/.*\(([0-9]+) finished.*/\1/' <<<"$line")
    echo "| [$1]($1) | ${3:-resnet8} | $total | $done_ |"
  done
} > $S/progress.md
