#!/usr/bin/env bash
# results/gpu/make.sh: the GPU measurements of issue 28, for a lent GPU window; resumable.
#
# WHAT IT MEASURES, steps in priority order [estimated device time, from `dfrd-bench estimate`
# and `teacher estimate` at 10-35 % of an H100's bf16 peak, plus process start-up; ESTIMATES]:
#   doctor          [1 min] torch / CUDA / driver, the GPU and bf16, a tiny torch.compile on CUDA, data, assets
#   checks          [1 min] host syncs per student iteration and per generation stage of every method; on CUDA:
#                           bf16 runs keep fp32 pixels in the eps ball and fp32 class weights, evaluation without
#                           TF32, cuDNN autotune (results/gpu/sync_check.py)
#   smoke           [3 min] `run --preset smoke --device cuda` of FERD with compile off, then on (a compiler that
#                           fails must fall back to eager with one warning, recorded in the result)
#   bench           [4 min] `bench --device cuda` of every method on the paper's models (untrained WRN-34-10
#                           teacher, ResNet-18 student, batch 256, compile off): seconds per generator iteration,
#                           student iteration and evaluation batch beside their pass bounds
#   bench-compile   [3 min] the same for FERD with compile on (what compile=auto buys a paper run on a GPU)
#   teacher         [7 min] the `gpu` preset's teacher: ResNet-18, N-FGSM adversarial training (the CPU teacher's
#                           recipe), 30 epochs, bf16, on the CIFAR-10 JPEG copy (8 PFLOP: 0.5-1.5 min by `teacher
#                           estimate`, about 2 min if each of its 11,460 steps of 128 is launch-bound at ~10 ms);
#                           fp16 weights (22 MB); evaluated (clean, FGSM, PGD-20, CW on the 10,000 test images,
#                           AutoAttack on 500) and bundled with its card
#   ferd-gpu-s0   [5.7 min] `run --method ferd --preset gpu` (2,000 student steps, full test split, AA on 1,000;
#                           `estimate` says 3.5-8.1 min on an H100, much of it AutoAttack)
#   deepinv-gpu-s0 [5.7 min] the strongest baseline of the CPU benchmark (best PGD-20 worst class) at `gpu`
#   fast, cmi, zskt, dfhl at seed 0, then all six at seeds 1 and 2      [5.7 min each; later windows]
#
# OUTPUTS, per step: results/gpu/<step>/step.json (device, GPU, command, seconds, exit status, commit) and
# the step's files (doctor.json and .txt, sync_check.json, result JSONs without the student weights,
# bench JSONs, logs); the teacher as teachers/gpu-resnet18-cifar10.{pt,json}. On the device they are written
# under .gpu/results and packed into $OUT: gpu-results.tar.gz (every step finished on this machine) and the
# fp16 teacher in parts of 15 MiB (the device tool brings back 8 files of at most 16 MiB).
#
# USAGE (docs/speed.md, "On a GPU")
#   here, once:    bash results/gpu/make.sh --slim      # the committed students and figures (77 MB) stay here: out of
#                                                        # the index, ignored locally, so they do not travel
#                  bash results/gpu/make.sh --prepare   # .gpu/: the CIFAR-10 pack (19 MB), pyautoattack without its
#                                                        # 45 MB example model, the commit; checks what would travel
#   here:          bash results/gpu/make.sh --dry-run   # the steps not yet done and their estimated device minutes
#   device tool:   run(command="bash results/gpu/make.sh", carry=[".gpu"], timeout_s=600)
#                  each call starts the next unfinished steps while their estimates fit in BUDGET seconds (540 by
#                  default: a call must end inside the tool's 10 minutes); repeat the call while the window lasts
#   here, after each call:  bash results/gpu/make.sh --collect <files_at>   # then commit results/gpu and teachers/
#                           with paths: git commit -m "..." -- results/gpu teachers   (a hook refuses anything else)
#   here, after the window: bash results/gpu/make.sh --unslim
# Finished steps are skipped: those committed under results/gpu/ (a later window) and those finished earlier on
# the same warm machine (.gpu/results). An interrupted run resumes from its checkpoint on the same machine.
# To redo a step, delete its folder. ONLY="doctor smoke" runs just those steps; a plumbing check on a CPU
# (no measurement; 2026-12-06 here, every step's plumbing through --collect worked this way):
#   DEV=cpu BUDGET=5000 ONLY="doctor smoke teacher ferd-gpu-s0" EVAL_EXTRA="--limit 30" \
#   TEACHER_EXTRA="--epochs 1 --limit-train 300 --val-size 100 --batch-size 64" RUN_EXTRA="--set epochs=1 \
#   --set gen_iters=1 --set student_iters=1 --set batch_size=16 --set synthesis_batch_size=16 --set eval_limit=30 \
#   --set aa_limit=10" OUT=/tmp/out bash results/gpu/make.sh   # then --prepare wipes what it left in .gpu
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
G=.gpu
BUDGET=${BUDGET:-540}
DEV=${DEV:-cuda}
ONLY=${ONLY:-}
TEACHER_EXTRA=${TEACHER_EXTRA:---epochs 30}
EVAL_EXTRA=${EVAL_EXTRA:-}
RUN_EXTRA=${RUN_EXTRA:-}
TEACHER=gpu-resnet18-cifar10
LIMIT_MIB=64

# name|estimated seconds|what
STEPS=(
  "doctor|60|environment report"
  "checks|60|host syncs and precision rules on CUDA"
  "smoke|180|smoke run, compile off and on"
  "bench|240|bench of every method, paper models"
  "bench-compile|180|bench of FERD with compile on"
  "teacher|420|gpu preset teacher (train, fp16, evaluate, bundle)"
)
for seed in 0 1 2; do
  for m in ferd deepinv fast cmi zskt dfhl; do STEPS+=("$m-gpu-s$seed|340|run --method $m --preset gpu --seed $seed"); done
done

die() { echo "make.sh: $*" >&2; exit 1; }
step_done() {  # finished with exit status 0 on a GPU, in the tree (committed) or on this machine
  local f
  for f in "results/gpu/$1/step.json" "$G/results/$1/step.json"; do
    [ -f "$f" ] && grep -q '"rc": 0' "$f" && ! grep -q '"gpu": null' "$f" && return 0
  done
  [ "$1" = teacher ] && [ -f "teachers/$TEACHER.json" ] && return 0
  return 1
}

# ---------------------------------------------------------------------------------------------- --dry-run
if [ "${1:-}" = "--dry-run" ]; then
  # Plan the steps left into calls of BUDGET seconds and 15-minute windows (WINDOW seconds of calls after the
  # machine's start). A window's first call pays SETUP seconds (rebuilding the zip, decoding CIFAR-10 on a fresh
  # machine), a later call on the warm machine WARM seconds.
  SETUP=${SETUP:-60} WARM=${WARM:-10} WINDOW=${WINDOW:-780}
  echo "step              est. min  status  window/call  what"
  window=1 call=1 used=$SETUP win_used=0 total=0
  for s in "${STEPS[@]}"; do
    IFS='|' read -r name est what <<<"$s"
    if step_done "$name"; then
      printf '%-17s %8s  %-6s  %-11s  %s\n' "$name" "-" done "-" "$what"; continue
    fi
    if [ $((used + est)) -gt "$BUDGET" ]; then  # the next call
      win_used=$((win_used + used)); call=$((call + 1)); used=$WARM
      if [ $((win_used + used + est)) -gt "$WINDOW" ]; then window=$((window + 1)); call=1; win_used=0; used=$SETUP; fi
    fi
    used=$((used + est)); total=$((total + est))
    printf '%-17s %8s  %-6s  %-11s  %s\n' "$name" "$(awk -v e="$est" 'BEGIN {printf "%.1f", e / 60}')" todo \
      "$window/$call" "$what"
  done
  awk -v t="$total" -v w="$window" -v b="$BUDGET" 'BEGIN {printf "left: %.0f device minutes of steps (ESTIMATES) in %d window(s) of 15 minutes, calls of at most %d s\n", t / 60, w, b}'
  exit 0
fi

# ---------------------------------------------------------------------------------------------- --slim / --unslim
# The device tool sends the tracked and the untracked-but-not-ignored files, at most 64 MiB with what is
# carried; the committed result files (students, sample grids, figures) alone exceed that. --slim takes
# the tracked *.pt, *.png and *.pdf under results/ out of the index and ignores them locally
# (.git/info/exclude), so they stay on disk but do not travel; --unslim puts them back in the index
# exactly as HEAD has them. While slim, commit with paths (`git commit -m ... -- results/gpu teachers`):
# a pre-commit hook refuses any commit that would delete a slimmed file.
GITDIR=$(git rev-parse --git-dir 2>/dev/null || echo .git)
SLIM_LIST=$GITDIR/dfrd-slim.list
SLIM_BEGIN="# dfrd-slim: begin (results/gpu/make.sh --unslim removes this block)"
SLIM_END="# dfrd-slim: end"
if [ "${1:-}" = "--slim" ]; then
  [ -f "$SLIM_LIST" ] && die "already slim ($SLIM_LIST): --unslim first"
  git diff --cached --quiet || die "the index has staged changes: commit or unstage them before --slim"
  git ls-files -z -- 'results/*.pt' 'results/*.png' 'results/*.pdf' > "$SLIM_LIST"  # fnmatch: * crosses /
  [ -s "$SLIM_LIST" ] || { rm -f "$SLIM_LIST"; die "no tracked *.pt, *.png or *.pdf under results/: nothing to slim"; }
  n=$(tr -cd '\0' < "$SLIM_LIST" | wc -c)
  git rm -q --cached --pathspec-from-file="$SLIM_LIST" --pathspec-file-nul || die "git rm --cached failed"
  { echo "$SLIM_BEGIN"; tr '\0' '\n' < "$SLIM_LIST" | sed 's,^,/,'; echo "$SLIM_END"; } >> "$GITDIR/info/exclude"
  mkdir -p "$GITDIR/hooks"
  cat > "$GITDIR/hooks/pre-commit" <<'HOOK'
#!/usr/bin/env bash
# installed by results/gpu/make.sh --slim: refuse a commit that would delete a slimmed result file
list=$(git rev-parse --git-dir)/dfrd-slim.list
[ -f "$list" ] || exit 0
deleted=$(git diff --cached --name-only -z --diff-filter=D | tr '\0' '\n' | grep -Fxf <(tr '\0' '\n' < "$list") | head -3)
if [ -n "$deleted" ]; then
  echo "pre-commit: the checkout is slim (results/gpu/make.sh --slim) and this commit would delete committed results," >&2
  echo "e.g. $(echo "$deleted" | head -1); commit with paths (git commit -m ... -- results/gpu teachers) or --unslim first" >&2
  exit 1
fi
HOOK
  chmod +x "$GITDIR/hooks/pre-commit"
  echo "slim: $n result files out of the index and ignored here (still on disk); --unslim restores them"
  exit 0
fi
if [ "${1:-}" = "--unslim" ]; then
  [ -f "$SLIM_LIST" ] || die "not slim (no $SLIM_LIST)"
  git reset -q --pathspec-from-file="$SLIM_LIST" --pathspec-file-nul -- || die "git reset failed"
  awk -v b="$SLIM_BEGIN" -v e="$SLIM_END" '$0 == b {skip = 1} !skip {print} $0 == e {skip = 0}' \
    "$GITDIR/info/exclude" > "$GITDIR/info/exclude.tmp" && mv "$GITDIR/info/exclude.tmp" "$GITDIR/info/exclude"
  rm -f "$GITDIR/hooks/pre-commit" "$SLIM_LIST"
  echo "unslim: the result files are back in the index as HEAD has them"
  exit 0
fi

# ---------------------------------------------------------------------------------------------- --prepare
if [ "${1:-}" = "--prepare" ]; then
  ASSETS=${DFRD_ASSETS:-$ROOT/../shared/assets}
  [ -f "$ASSETS/cifar10-jpeg-pack.npz" ] || die "no cifar10-jpeg-pack.npz in $ASSETS: set DFRD_ASSETS"
  grep -qx '/.gpu/' .gitignore 2>/dev/null || die "/.gpu/ is not in .gitignore: the carried folder must be ignored"
  # what a plumbing check on this CPU left (DEV=cpu) must not travel: it is no GPU measurement
  rm -rf "$G/results" "$G/work" "$G/teachers" "$G/out" "$G/cache" "$G/data"
  mkdir -p "$G/site"
  cp -u "$ASSETS/cifar10-jpeg-pack.npz" "$G/"
  SITE=$(python3 -c "import pyautoattack, os; print(os.path.dirname(os.path.dirname(pyautoattack.__file__)))") \
    || die "pyautoattack is not installed here: pip install pyautoattack"
  rm -rf "$G/site/pyautoattack" "$G"/site/pyautoattack-*.dist-info
  # pure Python; its wheel holds a 45 MB example checkpoint that the suite never reads
  (cd "$SITE" && tar --exclude='pyautoattack/examples' --exclude='__pycache__' -cf - pyautoattack pyautoattack-*.dist-info) \
    | tar -C "$G/site" -xf -
  git rev-parse HEAD > "$G/commit.txt" 2>/dev/null || echo unknown > "$G/commit.txt"
  [ -z "$(git status --porcelain --untracked-files=no 2>/dev/null)" ] || echo "dirty" >> "$G/commit.txt"
  travel=$( { git ls-files -z --cached --others --exclude-standard; find "$G" -type f -print0; } \
            | xargs -0 stat -c %s 2>/dev/null | awk '{s+=$1} END {print s}')
  echo "prepared $G ($(du -sh $G | cut -f1)); what would travel: $((travel / 1048576)) MiB of $LIMIT_MIB"
  if [ "$travel" -gt $((LIMIT_MIB * 1048576)) ]; then
    echo "the largest folders that travel:" >&2
    git ls-files -z --cached --others --exclude-standard | xargs -0 du -b 2>/dev/null \
      | awk '{n=split($2,p,"/"); d=p[1]; for (i=2; i<n && i<=3; i++) d=d"/"p[i]; s[d]+=$1} END {for (d in s) printf "%8.1f MiB  %s\n", s[d]/1048576, d}' \
      | sort -rn | head -8 >&2
    die "the checkout and $G come to $((travel / 1048576)) MiB, over the device tool's $LIMIT_MIB MiB: the tool refuses the call. Run bash results/gpu/make.sh --slim (and --unslim after the window)"
  fi
  echo "now: run(command=\"bash results/gpu/make.sh\", carry=[\".gpu\"], timeout_s=600)"
  exit 0
fi

# ---------------------------------------------------------------------------------------------- --collect
if [ "${1:-}" = "--collect" ]; then
  IN=${2:?--collect needs the folder the device tool put the files in}
  [ -f "$IN/gpu-results.tar.gz" ] || die "no gpu-results.tar.gz in $IN"
  tar -xzf "$IN/gpu-results.tar.gz" -C "$ROOT" || die "could not unpack $IN/gpu-results.tar.gz"
  echo "unpacked $(tar -tzf "$IN/gpu-results.tar.gz" | grep -c step.json) step(s) into results/gpu"
  if ls "$IN/$TEACHER".pt.part-* >/dev/null 2>&1; then
    card="results/gpu/teacher/$TEACHER.json"
    [ -f "$card" ] || die "the teacher's parts came back without its card $card"
    cat "$IN/$TEACHER".pt.part-* > "teachers/$TEACHER.pt"
    want=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['sha256'])" "$card")
    got=$(sha256sum "teachers/$TEACHER.pt" | cut -d' ' -f1)
    [ "$want" = "$got" ] || { rm -f "teachers/$TEACHER.pt"; die "the joined teacher's sha256 $got is not its card's $want"; }
    cp "$card" "teachers/$TEACHER.json"
    python3 -c "from pathlib import Path; from dfrd_bench.teachers import render_cards; render_cards(Path('teachers'))" \
      || die "could not render the cards table in teachers/README.md"
    echo "teachers/$TEACHER.pt joined (sha256 matches its card), card and teachers/README.md table updated"
  fi
  exit 0
fi
[ $# -eq 0 ] || die "unknown option $1 (use --slim, --prepare, --dry-run, --collect DIR, --unslim, or none on the GPU machine)"

# ---------------------------------------------------------------------------------------------- on the GPU
START=$(date +%s)
OUT=${OUT:-$G/out}
mkdir -p "$OUT" "$G/results" "$G/work" "$G/cache" "$G/teachers"
[ -d "$G/site/pyautoattack" ] && [ -f "$G/cifar10-jpeg-pack.npz" ] || die "$G is not prepared: run --prepare here and carry .gpu"
export PYTHONPATH=$ROOT:$ROOT/$G/site${PYTHONPATH:+:$PYTHONPATH}
export DFRD_DATA=$ROOT/$G/data DFRD_OFFLINE=1 DFRD_CACHE=$ROOT/$G/cache DFRD_TEACHERS=$ROOT/$G/teachers
export DFRD_PROGRESS=0 PYTHONUNBUFFERED=1
DFRD="python3 -m dfrd_bench.cli"
elapsed() { echo $(( $(date +%s) - START )); }
log() { echo "[$(date +%H:%M:%S) +$(elapsed)s] $*"; }

# setup: the zip the data root reads, the decoded splits, the teachers folder (kept on a warm machine)
[ -f "$G/data/cifar10-jpeg.zip" ] || python3 results/gpu/unpack_cifar10.py "$G/cifar10-jpeg-pack.npz" "$G/data" >/dev/null \
  || die "could not rebuild cifar10-jpeg.zip from the pack"
cp teachers/*.json teachers/*.pt teachers/README.md "$G/teachers/" 2>/dev/null  # + a teacher bundled on this machine
python3 -c "from dfrd_bench.data import load_split; [load_split('cifar10', s) for s in ('train', 'test')]" \
  || die "CIFAR-10 does not load from $DFRD_DATA"
log "setup done: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1)"

run_step() {  # name, estimated seconds, then the command (a shell function) to run with the step folder as $R
  local name=$1 est=$2 fn=$3 rc t0
  R=$G/results/$name
  rm -rf "$R"; mkdir -p "$R"
  t0=$(date +%s)
  log "step $name (estimate ${est}s)"
  timeout $(( BUDGET + 20 - $(elapsed) )) bash -c "$(declare -f "$fn"); $(declare -p R DFRD G TEACHER DEV TEACHER_EXTRA EVAL_EXTRA RUN_EXTRA); $fn" > "$R/log.txt" 2>&1
  rc=$?
  { declare -p DEV TEACHER_EXTRA EVAL_EXTRA RUN_EXTRA; [ "$fn" = step_run ] && echo "RUN_METHOD=$RUN_METHOD RUN_SEED=$RUN_SEED"
    declare -f "$fn"; } > "$R/command.sh"
  python3 - "$R/step.json" "$name" "$rc" "$(( $(date +%s) - t0 ))" "$R/command.sh" <<'PY'
import json, os, subprocess, sys
import torch
path, name, rc, seconds, command = sys.argv[1:]
try:
    driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                            capture_output=True, text=True, timeout=20).stdout.strip().splitlines()[0]
except Exception:
    driver = None
commit = open(".gpu/commit.txt").read().split() if os.path.exists(".gpu/commit.txt") else []
json.dump({"step": name, "rc": int(rc), "seconds": int(seconds),
           "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "driver": driver,
           "torch": torch.__version__, "torch_cuda": torch.version.cuda,
           "commit": commit[0] if commit else None, "dirty": "dirty" in commit,
           "command": open(command).read().splitlines()}, open(path, "w"), indent=2)
PY
  log "step $name: exit $rc after $(( $(date +%s) - t0 ))s"
}

# ---- the steps (each runs in its own bash with $R its results folder)
step_doctor() {
  $DFRD doctor --device $DEV --out "$R/doctor.json" > "$R/doctor.txt"
}
step_checks() {
  python3 results/gpu/sync_check.py "$R/sync_check.json" $DEV
}
step_smoke() {
  for mode in off on; do
    $DFRD run --method ferd --dataset cifar10 --preset smoke --device $DEV --set compile=$mode --attacks clean,pgd20,aa \
      --out "$G/work/smoke" --name ferd-compile-$mode --resume || exit 1
    cp "$G/work/smoke/ferd-compile-$mode/result.json" "$R/ferd-compile-$mode.json"
  done
}
step_bench() {
  for m in ferd cmi deepinv fast zskt dfhl; do
    $DFRD bench --method $m --device $DEV --preset paper --teacher random:wrn-34-10 --student resnet18 \
      --batch-size 256 --repeats 3 --warmup 1 --eval-images 512 --attacks clean,pgd20 --set compile=off \
      --out "$R/$m.json" || exit 1
  done
}
step_bench_compile() {
  $DFRD bench --method ferd --device $DEV --preset paper --teacher random:wrn-34-10 --student resnet18 \
    --batch-size 256 --repeats 3 --warmup 2 --eval-images 512 --attacks clean,pgd20 --set compile=on \
    --out "$R/ferd-compile-on.json"
}
step_teacher() {
  $DFRD teacher train --arch resnet18 --dataset cifar10 --method n-fgsm $TEACHER_EXTRA --device $DEV \
    --out "$G/work/teacher" --eval-attacks '' || exit 1
  python3 results/gpu/halve.py "$G/work/teacher/teacher.pt" "$G/work/$TEACHER-fp16.pt" || exit 1
  $DFRD eval --model "$G/work/$TEACHER-fp16.pt" --dataset cifar10 --attacks clean,fgsm,pgd20,cw,aa --aa-limit 500 \
    --device $DEV $EVAL_EXTRA --out "$R/eval.json" --resume-file "$G/work/teacher-eval-progress.pt" || exit 1
  $DFRD teacher bundle --checkpoint "$G/work/$TEACHER-fp16.pt" --name $TEACHER --eval "$R/eval.json" --max-mb 24 \
    --dest "$G/teachers" --command "dfrd-bench teacher train --arch resnet18 --dataset cifar10 --method n-fgsm $TEACHER_EXTRA --device $DEV (bf16 on CUDA); python3 results/gpu/halve.py teacher.pt $TEACHER.pt" || exit 1
  cp "$G/teachers/$TEACHER.json" "$G/work/teacher/history.json" "$R/"
}
step_run() {  # $RUN_METHOD $RUN_SEED
  $DFRD run --method "$RUN_METHOD" --dataset cifar10 --preset gpu --seed "$RUN_SEED" --device $DEV $RUN_EXTRA \
    --out "$G/work/runs" --name "$RUN_METHOD-gpu-s$RUN_SEED" --resume || exit 1
  cp "$G/work/runs/$RUN_METHOD-gpu-s$RUN_SEED/result.json" "$R/result.json"
}

for s in "${STEPS[@]}"; do
  IFS='|' read -r name est what <<<"$s"
  step_done "$name" && continue
  [ -n "$ONLY" ] && [[ " $ONLY " != *" $name "* ]] && continue
  if [ "$name" != teacher ] && [[ "$name" == *-gpu-s* ]] && ! step_done teacher && [ ! -f "$G/teachers/$TEACHER.json" ]; then
    log "skip $name: the gpu preset's teacher is not trained yet"; continue
  fi
  if [ $(( $(elapsed) + est )) -gt "$BUDGET" ]; then
    log "stop before $name: ${est}s estimated, $(( BUDGET - $(elapsed) ))s left of this call's budget"; break
  fi
  case $name in
    *-gpu-s*) export RUN_METHOD=${name%%-gpu-s*} RUN_SEED=${name##*-gpu-s}
              run_step "$name" "$est" step_run ;;
    *) run_step "$name" "$est" "step_${name//-/_}" ;;
  esac
done

# ---- pack what this machine finished for the trip back (at most 8 files of 16 MiB)
if [ -f "$G/teachers/$TEACHER.json" ] && [ ! -f "teachers/$TEACHER.json" ]; then
  split -b 15M -d -a 2 "$G/teachers/$TEACHER.pt" "$OUT/$TEACHER.pt.part-"  # joined by --collect, checked by sha256
fi
tar -czf "$OUT/gpu-results.tar.gz" --transform "s,^$G/results,results/gpu," "$G/results"
log "packed into $OUT: $(ls "$OUT" | tr '\n' ' ')"
for f in "$G"/results/*/step.json; do
  [ -f "$f" ] && python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(f\"{d['step']}: exit {d['rc']}, {d['seconds']} s on {d['gpu']}\")" "$f"
done
