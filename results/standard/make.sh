#!/usr/bin/env bash
# The CPU benchmark of issue 12, end to end and resumable: re-running skips finished runs, resumes an
# interrupted one from its last checkpoint (evaluation included) and runs the rest, so it spans sessions.
# Run from anywhere with ../shared/assets beside the repository:
#   nohup results/standard/make.sh > results/standard/logs/make.log 2>&1 &
# WORKERS=N (default 1) runs N sweep workers side by side, each taking the next point no one holds;
# THREADS=T (default 1) torch threads per run. On the 2-core machine: WORKERS=2 when nothing else
# runs, WORKERS=1 to keep a core free. Costs are reported in CPU-minutes (wall x threads).
# To keep developing while it runs, run it from a worktree pinned at a commit, so that every run of the
# benchmark uses (and records in its provenance) that commit's code:
#   git worktree add ../bench HEAD && cd ../bench && PYTHONPATH=$PWD WORKERS=2 nohup results/standard/make.sh \
#     > results/standard/logs/make.log 2>&1 &
# and copy results/standard/runs/ back when runs finish (they are ordinary run folders).
set -euo pipefail
cd "$(dirname "$0")/../.."
export DFRD_DATA=${DFRD_DATA:-../shared/assets}
export OMP_NUM_THREADS=${THREADS:-1} MKL_NUM_THREADS=${THREADS:-1}
S=results/standard
mkdir -p $S/logs

# In the order that answers the most first: ResNet-8 Table 1 (all seeds), FERD's ablations (Table 3,
# the reweighting and UTAE claims), the quick-scale tables, then the MobileNet student.
dfrd() { python3 -m dfrd_bench.cli "$@"; }   # the dfrd_bench on PYTHONPATH (a pinned worktree) or installed
worker() {
  dfrd sweep $S/table1.yaml --student resnet8
  dfrd sweep $S/table3.yaml
  dfrd sweep $S/quick-ablations.yaml
  dfrd sweep $S/table8.yaml
  dfrd sweep $S/table1.yaml --student mobilenetv2-x0.25-s2
}
pids=()
for w in $(seq "${WORKERS:-1}"); do
  # appended, so a resumed benchmark keeps every session's log
  { echo "=== $(date -u +%FT%TZ) worker $w, commit $(git rev-parse --short HEAD 2>/dev/null)"; worker; } >> "$S/logs/worker-$w.log" 2>&1 &
  pids+=($!)
  sleep 20   # the next worker then finds the first point's folder locked and takes the one after
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=1; done
$S/render.sh
exit $status
