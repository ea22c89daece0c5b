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
from typing import Any, Dict, List, Optional

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout's dfrd_bench
from dfrd_bench.data import get_dataset_spec  # noqa: E402
from dfrd_bench.modes import in_eval_mode  # noqa: E402
from dfrd_bench.teachers import load_teacher  # noqa: E402


def spearman(a: List[float], b: List[float]) -> float:
    """Spearman's rank correlation (average ranks for ties)."""
    return float(pd.Series(a).corr(pd.Series(b), method="spearman"))


@torch.no_grad()
def coverage(run: Path, result: Dict[str, Any], teachers: Dict[str, torch.nn.Module]) -> Dict[str, Any]:
    state = torch.load(run / "state.pt", map_location="cpu", weights_only=False)
    images = state["pool"]["images"]
    key = f"{result['teacher']['spec']}|{result['dataset']}"
    if key not in teachers:
        teachers[key] = load_teacher(result["teacher"]["spec"], result["dataset"])
    teacher = teachers[key]
    num_classes = get_dataset_spec(result["dataset"]).num_classes
    labels = state["pool"]["labels"]
    soft = torch.zeros(num_classes, dtype=torch.float64)
    predicted = []
    with in_eval_mode(teacher):
        for chunk in images.split(512):
            probs = teacher(chunk.float().div(255.0)).softmax(1).double()
            predicted.append(probs.argmax(1))
            soft += probs.sum(0)
    predicted = torch.cat(predicted)
    hard = (torch.bincount(predicted, minlength=num_classes).double() / len(images)).tolist()
    soft = (soft / len(images)).tolist()
    # the generator's own labels (the class it was asked for; -1 where a method keeps none): how often
    # does the teacher agree with them, per asked-for class?
    agreement, overall = None, None
    if bool((labels >= 0).all()):
        overall = float((predicted == labels).double().mean())
        asked = torch.bincount(labels, minlength=num_classes).double()
        agreed = torch.bincount(labels[predicted == labels], minlength=num_classes).double()
        agreement = torch.where(asked > 0, agreed / asked.clamp_min(1), torch.full_like(asked, float("nan"))).tolist()
    weights = next((e["gen/p"] for e in reversed(result["history"]) if "gen/p" in e), None)  # FERD's class weights
    clean = result["attacks"]["clean"]["per_class"]
    return {
        "run": run.name, "method": result["method"],
        "settings": ", ".join(f"{k}={v}" for k, v in result.get("overrides", {}).items() if k not in ("student", "teacher")), "student": result["student"]["arch"], "seed": result["seed"],
        "pool": len(images), "hard_share": hard, "soft_share": soft, "clean_per_class": clean,
        "label_agreement": agreement, "overall_agreement": overall, "last_class_weights": weights,
        "rarest_class": min(range(num_classes), key=hard.__getitem__),
        "worst_class": min(range(num_classes), key=clean.__getitem__),
        "spearman_share_vs_clean": spearman(hard, clean),
    }


def percent(value: Optional[float]) -> str:
    return "–" if value is None else f"{100 * value:.0f} %"


def run_label(r: Dict[str, Any]) -> str:
    settings = f" ({r['settings']})" if r.get("settings") else ""
    return f"{r['method']}{settings} {r['student']} s{r['seed']}"


def markdown(rows: List[Dict[str, Any]], teacher_clean: List[float]) -> str:
    def cell(r: Dict[str, Any], c: int) -> str:
        teacher = f" / {teacher_clean[c]:.1f} %" if teacher_clean else ""
        return f"{c}: {100 * r['hard_share'][c]:.1f} % ({r['clean_per_class'][c]:.1f} %{teacher})"
    what = "student / teacher clean" if teacher_clean else "student clean"
    lines = [
        f"| run | pool | rarest class: pool share ({what}) | worst class: pool share ({what}) "
        "| largest pool share | Spearman (share, student clean) | teacher agrees with the asked-for label |",
        "|--|--:|--|--|--:|--:|--:|",
    ]
    for r in rows:
        lines.append(f"| {run_label(r)} | {r['pool']} | {cell(r, r['rarest_class'])} "
                     f"| {cell(r, r['worst_class'])} | {100 * max(r['hard_share']):.1f} % "
                     f"| {r['spearman_share_vs_clean']:+.2f} "
                     f"| {percent(r['overall_agreement'])} |")
    lines.append("")
    lines.append("Pool share: fraction of the run's synthetic pool that the teacher labels as the class "
                 "(a uniform pool gives 10 %); clean: accuracy on the class over the full test split; agreement: the fraction of the pool whose teacher label is the class the method generated it for (DFHL's labels are the teacher's own; – where a method keeps no labels). Made by "
                 "`results/standard/pool_coverage.py` from each run's `state.pt`.")
    return "\n".join(lines) + "\n"


def weights_markdown(rows: List[Dict[str, Any]], teacher_pgd: List[float]) -> str:
    """FERD's last-epoch class weights p against what they could be tracking: the generator's failure
    to make the class (1 - the teacher's agreement with the asked-for label, on the synthetic pool) and
    the teacher's real robustness on the class (its PGD-20 error on the test split)."""
    ferd = [r for r in rows if r["last_class_weights"] and r["label_agreement"]
            and max(r["last_class_weights"]) > min(r["last_class_weights"])]  # reweight=false keeps p uniform
    if not ferd:
        return ""
    lines = [
        "| run | largest weights p (class: p, teacher agrees with the asked-for label) | smallest weight "
        "| Spearman (p, generator failure) | Spearman (p, teacher PGD-20 error) |",
        "|--|--|--|--:|--:|",
    ]
    for r in ferd:
        p, agree = r["last_class_weights"], r["label_agreement"]
        order = sorted(range(len(p)), key=p.__getitem__, reverse=True)
        cell = lambda c: f"{c}: {p[c]:.3f}, {100 * agree[c]:.0f} %"  # noqa: E731
        failure = [1 - a for a in agree]
        vs_teacher = (f"{spearman(p, [100 - a for a in teacher_pgd]):+.2f}" if teacher_pgd else "–")
        lines.append(f"| {run_label(r)} | {'; '.join(cell(c) for c in order[:3])} "
                     f"| {cell(order[-1])} | {spearman(p, failure):+.2f} | {vs_teacher} |")
    lines.append("")
    lines.append("p: FERD's class sampling weights after its last epoch (uniform 0.100), from the run's history. "
                 "Agreement: the fraction of the pool's images generated for the class that the teacher labels as "
                 "the class. Teacher PGD-20 error: 100 - the teacher's PGD-20 accuracy on the class (test split).")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="folders of run folders (with state.pt)")
    parser.add_argument("--out", type=Path, required=True, help="JSON to write")
    parser.add_argument("--md", type=Path, help="Markdown table to write")
    parser.add_argument("--teacher-eval", type=Path, help="the teacher's evaluation JSON (per-class clean accuracy)")
    args = parser.parse_args()
    # one thread unless asked: it runs beside the benchmark's workers
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    teachers: Dict[str, torch.nn.Module] = {}
    # a finished run's pool never changes: rows already in --out are kept, only new runs are labelled
    known = {r["run"]: r for r in json.loads(args.out.read_text())} if args.out.exists() else {}
    rows = []
    for folder in args.runs:
        for run in sorted(p for p in folder.iterdir() if p.is_dir()):
            if not (run / "result.json").exists():
                continue  # unfinished
            if run.name in known:   # checked first: a row outlives the state.pt it was made from
                rows.append(known[run.name])
                continue
            if not (run / "state.pt").exists():
                continue  # its state was not kept
            result = json.loads((run / "result.json").read_text())
            if result["method"] == "zskt":
                continue  # no pool to inspect
            rows.append(coverage(run, result, teachers))
            print(f"{run.name}: rarest class {rows[-1]['rarest_class']}, "
                  f"Spearman {rows[-1]['spearman_share_vs_clean']:+.2f}", flush=True)
    rows.sort(key=lambda r: (r["student"], r["method"], r.get("settings", ""), r["seed"]))
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(rows, indent=1) + "\n")
    tmp.replace(args.out)
    if args.md:
        teacher = json.loads(args.teacher_eval.read_text())["attacks"] if args.teacher_eval else {}
        teacher_clean = teacher.get("clean", {}).get("per_class", [])
        teacher_pgd = teacher.get("pgd20", {}).get("per_class", [])
        weights = weights_markdown(rows, teacher_pgd)
        args.md.write_text(markdown(rows, teacher_clean)
                           + (f"\n### FERD's class weights\n\n{weights}" if weights else ""))


if __name__ == "__main__":
    main()
