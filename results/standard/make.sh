#!/usr/bin/env bash
# The CPU benchmark of issue 12, end to end and resumable: re-running skips finished runs, resumes an
# interrupted one from its last checkpoint (evaluation included) and runs the rest, so it spans sessions.
# Run from anywhere with ../shared/assets beside the repository:
#   nohup results/standard/make.sh > results/standard/logs/make.log 2>&1 &
# THREADS=N (default 1) sets the torch threads of each run; with 1 the second core stays free for
# other work. Costs are reported in CPU-minutes (wall x threads), so they compare across settings.
set -euo pipefail
cd "$(dirname "$0")/../.."
export DFRD_DATA=${DFRD_DATA:-../shared/assets}
export OMP_NUM_THREADS=${THREADS:-1} MKL_NUM_THREADS=${THREADS:-1}
S=results/standard

# In the order that answers the most first: ResNet-8 Table 1 (all seeds), FERD's ablations (Table 3,
# the reweighting and UTAE claims), the quick-scale tables, then the MobileNet student.
dfrd-bench sweep $S/table1.yaml --student resnet8
dfrd-bench sweep $S/table3.yaml
dfrd-bench sweep $S/quick-ablations.yaml
dfrd-bench sweep $S/table8.yaml
dfrd-bench sweep $S/table1.yaml --student mobilenetv2-x0.25-s2
$S/render.sh
