"""Which classes each method's synthetic pool holds, beside its student's per-class clean accuracy.

A diagnostic for the benchmark's collapsed students (worst class at or near 0 %): is the class missing
from what the student was trained on, or present and still not learnt? For every finished run whose
folder still has its `state.pt` (the benchmark's working copy keeps them; the repository does not), it
labels the final pool (every synthetic image the run made: the pool holds up to `pool_max` = 8,192,
more than the 5,120 a `standard` run makes) with the run's teacher and records per class:
- the hard share: the fraction of pool images the teacher assigns to the class (argmax);
- the soft share: the teacher's mean probability of the class over the pool;
- the student's clean accuracy on the class (from result.json, full test split), beside the teacher's
  (from its evaluation JSON, `--teacher-eval`), so a class the teacher itself gets wrong is told apart
  from one the pool lacks.
ZSKT keeps no pool (a fresh batch per pseudo-batch) and is skipped. No test data is touched: the pool
is synthetic, and the accuracies are the ones the run already reported.

    python3 results/standard/pool_coverage.py ../bench/results/standard/runs \
        --teacher-eval results/teachers/cpu-resnet20-cifar10.json \
        --out results/standard/pool-coverage.json --md results/standard/pool-coverage.md
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, List

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout's dfrd_bench
from dfrd_bench.data import get_dataset_spec  # noqa: E402
from dfrd_bench.modes import in_eval_mode  # noqa: E402
from dfrd_bench.teachers import load_teacher  # noqa: E402


def spearman(a: List[float], b: List[float]) -> float:
    """Spearman's rank correlation (average ranks for ties)."""
    def ranks(values: List[float]) -> torch.Tensor:
        t = torch.tensor(values, dtype=torch.float64)
        order = t.argsort()
        r = torch.empty_like(t)
        r[order] = torch.arange(len(t), dtype=torch.float64)
        for v in t.unique():  # ties share their mean rank
            same = t == v
            r[same] = r[same].mean()
        return r
    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


@torch.no_grad()
def coverage(run: Path, teachers: Dict[str, torch.nn.Module]) -> Dict[str, Any]:
    result = json.loads((run / "result.json").read_text())
    state = torch.load(run / "state.pt", map_location="cpu", weights_only=False)
    images = state["pool"]["images"]
    key = f"{result['teacher']['spec']}|{result['dataset']}"
    if key not in teachers:
        teachers[key] = load_teacher(result["teacher"]["spec"], result["dataset"])
    teacher = teachers[key]
    num_classes = get_dataset_spec(result["dataset"]).num_classes
    hard = torch.zeros(num_classes, dtype=torch.float64)
    soft = torch.zeros(num_classes, dtype=torch.float64)
    with in_eval_mode(teacher):
        for chunk in images.split(512):
            probs = teacher(chunk.float().div(255.0)).softmax(1).double()
            hard += torch.bincount(probs.argmax(1), minlength=num_classes).double()
            soft += probs.sum(0)
    hard, soft = (hard / len(images)).tolist(), (soft / len(images)).tolist()
    clean = result["attacks"]["clean"]["per_class"]
    return {
        "run": run.name, "method": result["method"], "student": result["student"]["arch"], "seed": result["seed"],
        "pool": len(images), "hard_share": hard, "soft_share": soft, "clean_per_class": clean,
        "rarest_class": min(range(num_classes), key=hard.__getitem__),
        "worst_class": min(range(num_classes), key=clean.__getitem__),
        "spearman_share_vs_clean": spearman(hard, clean),
    }


def markdown(rows: List[Dict[str, Any]], teacher_clean: List[float]) -> str:
    def cell(r: Dict[str, Any], c: int) -> str:
        teacher = f" / {teacher_clean[c]:.1f} %" if teacher_clean else ""
        return f"{c}: {100 * r['hard_share'][c]:.1f} % ({r['clean_per_class'][c]:.1f} %{teacher})"
    what = "student / teacher clean" if teacher_clean else "student clean"
    lines = [
        f"| run | pool | rarest class: pool share ({what}) | worst class: pool share ({what}) "
        "| largest pool share | Spearman (share, student clean) |",
        "|--|--:|--|--|--:|--:|",
    ]
    for r in rows:
        lines.append(f"| {r['method']} {r['student']} s{r['seed']} | {r['pool']} | {cell(r, r['rarest_class'])} "
                     f"| {cell(r, r['worst_class'])} | {100 * max(r['hard_share']):.1f} % "
                     f"| {r['spearman_share_vs_clean']:+.2f} |")
    lines.append("")
    lines.append("Pool share: fraction of the run's synthetic pool that the teacher labels as the class "
                 "(a uniform pool gives 10 %); clean: accuracy on the class over the full test split. Made by "
                 "`results/standard/pool_coverage.py` from each run's `state.pt`.")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="folders of run folders (with state.pt)")
    parser.add_argument("--out", type=Path, required=True, help="JSON to write")
    parser.add_argument("--md", type=Path, help="Markdown table to write")
    parser.add_argument("--teacher-eval", type=Path, help="the teacher's evaluation JSON (per-class clean accuracy)")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    teachers: Dict[str, torch.nn.Module] = {}
    # a finished run's pool never changes: rows already in --out are kept, only new runs are labelled
    known = {r["run"]: r for r in json.loads(args.out.read_text())} if args.out.exists() else {}
    rows = []
    for folder in args.runs:
        for run in sorted(p for p in folder.iterdir() if p.is_dir()):
            if not (run / "result.json").exists() or not (run / "state.pt").exists():
                continue  # unfinished, or its state was not kept
            if json.loads((run / "result.json").read_text())["method"] == "zskt":
                continue  # no pool to inspect
            if run.name in known:
                rows.append(known[run.name])
                continue
            rows.append(coverage(run, teachers))
            print(f"{run.name}: rarest class {rows[-1]['rarest_class']}, "
                  f"Spearman {rows[-1]['spearman_share_vs_clean']:+.2f}", flush=True)
    rows.sort(key=lambda r: (r["student"], r["method"], r["seed"]))
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(rows, indent=1) + "\n")
    tmp.replace(args.out)
    if args.md:
        teacher_clean = (json.loads(args.teacher_eval.read_text())["attacks"]["clean"]["per_class"]
                         if args.teacher_eval else [])
        args.md.write_text(markdown(rows, teacher_clean))


if __name__ == "__main__":
    main()
