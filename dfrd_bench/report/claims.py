"""The paper's claims, answered from the runs: one sentence per claim with its interval, whichever way it falls.

Every comparison is the two-level bootstrap of `metrics.bootstrap_difference` (seeds, then test images
per class), the same test as the marks of Table 1. A claim whose runs are missing says which runs would
answer it instead of guessing. `dfrd-bench table --table claims` renders this section.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..data.specs import get_dataset_spec
from ..metrics import bootstrap_difference
from ..attacks import ATTACK_ORDER
from .collect import HIGHER_IS_BETTER, Folders, Run, group_by_setup, load_runs, matches
from ..method import method_info
from .tables import (ATTACK_LABELS, FERD_READING, METHOD_TABLE_OF, SIGNIFICANCE_LEVEL, TABLES, BuiltRow, evaluations_of,
                     best_baseline, build_table_for, method_label, student_family)

ONE_SEED = "; with one seed the interval holds test-image noise only, not seed-to-seed spread"
METRIC_WORDS = {"worst": "worst-class", "worst10": "worst-10%", "nsd": "NSD", "avg": "average"}


@dataclass
class Comparison:
    """metric(a) - metric(b) with its bootstrap interval, and what that means for a claim."""
    a_label: str
    b_label: str
    a_mean: float
    b_mean: float
    test: Dict[str, Any]
    higher_is_better: bool
    n: Tuple[int, int]

    @property
    def answer(self) -> str:
        """yes / no / not significantly: the answer to 'is a better than b?'"""
        return {"significantly better": "yes", "significantly worse": "no"}.get(self.verdict, "not significantly")

    @property
    def verdict(self) -> str:
        if not self.test["significant"]:
            return "no significant difference"
        better = (self.test["diff"] > 0) == self.higher_is_better
        return "significantly better" if better else "significantly worse"

    def text(self, metric: str) -> str:
        f = (lambda v: f"{v:.3f}") if metric == "nsd" else (lambda v: f"{v:.1f}")
        t = self.test
        return (f"{self.a_label} {f(self.a_mean)} against {self.b_label} {f(self.b_mean)}: "
                f"{'+' if t['diff'] >= 0 else ''}{f(t['diff'])} [{f(t['low'])}, {f(t['high'])}] "
                f"({self.n[0]} and {self.n[1]} seeds{ONE_SEED if 1 in self.n else ''}) — {self.verdict}")


def compare(a: Sequence[Run], b: Sequence[Run], attack: str, metric: str, a_label: str, b_label: str,
            class_index: Optional[int] = None) -> Optional[Comparison]:
    """The bootstrap comparison of two groups of runs on one attack and metric (or one class's accuracy)."""
    ea, eb = evaluations_of(a, attack), evaluations_of(b, attack)
    if class_index is not None:
        ea = [([pc[class_index]], [pn[class_index]]) for pc, pn in ea]
        eb = [([pc[class_index]], [pn[class_index]]) for pc, pn in eb]
    if not ea or not eb:
        return None
    test = bootstrap_difference(ea, eb, metric, level=SIGNIFICANCE_LEVEL)
    if test["draws"] == 0:
        return None
    return Comparison(a_label, b_label, test["a"], test["b"], test, HIGHER_IS_BETTER[metric], (len(ea), len(eb)))


def _ferd_rows(runs: Sequence[Run], student: str, **config: Any) -> List[Run]:
    return [r for r in runs if r.student == student and matches(r, "ferd", {**FERD_READING, **config})]


def _class_name(dataset: str, k: int) -> str:
    names = getattr(get_dataset_spec(dataset), "class_names", None)
    return names[k] if names and k < len(names) else f"class {k}"


def _head_to_head(runs: Sequence[Run], table_rows: Sequence[BuiltRow], student: str, worst: str) -> List[str]:
    """FERD against the best baseline of each column: worst class and NSD under PGD-20 and AutoAttack."""
    lines = []
    ferd = _ferd_rows(runs, student)
    if not ferd:
        return [f"- FERD against the baselines: no run of FERD's default for {student} in this setup."]
    baselines = [r for r in table_rows if not method_info(r.method).proposed]
    absent = [method_label(r.method) for r in baselines if r.seeds == 0]
    if absent and len(absent) < len(baselines):
        # 'the best baseline' of a partial table is the best of those that ran: a 'yes' can turn into a
        # 'no' when the others land, so say so beside the answers rather than let them read as final
        verb = "has" if len(absent) == 1 else "have"
        lines.append(f"- *Partial*: the best baseline below is the best of the {len(baselines) - len(absent)} of "
                     f"{len(baselines)} baselines with runs; {', '.join(absent)} {verb} none yet, so these answers "
                     f"can change when they land.")
    for attack in ("pgd20", "aa"):
        for metric in (worst, "nsd"):
            column = (attack, metric)
            if not any(column in r.cells for r in table_rows):
                continue
            ref = best_baseline(table_rows, column)
            if ref is None:
                lines.append(f"- {ATTACK_LABELS[attack]} {METRIC_WORDS[metric]}: no baseline run to compare with.")
                continue
            base = [r for r in runs if r.student == student and r.method == ref.method and matches(r, ref.method, {})]
            c = compare(ferd, base, attack, metric, "FERD", method_label(ref.method))
            if c is None:
                continue
            question = "beat" if metric != "nsd" else "have a lower NSD than"
            what = f"{METRIC_WORDS[metric]} accuracy" if metric != "nsd" else ""
            lines.append(f"- Does FERD {question} the best baseline on {ATTACK_LABELS[attack]}{' ' + what if what else ''}? "
                         f"**{c.answer}**: {c.text(metric)}.")
    return lines


def _reweighting(runs: Sequence[Run], student: str, dataset: str) -> List[str]:
    """Fig. 4: does robustness-guided reweighting give the weakest class more weight, and more robustness?"""
    ferd = _ferd_rows(runs, student)
    plain = _ferd_rows(runs, student, reweight=False)
    if not ferd or not plain:
        missing = "FERD" if not ferd else "FERD without reweighting (`reweight=false`, Table 3)"
        return [f"- Reweighting (Fig. 4): no {missing} run for {student} in this setup."]
    # the weakest class of the student trained WITHOUT reweighting: the class reweighting should help
    per_class = np.nanmean([[np.nan if v is None else v for v in r.result["attacks"]["pgd20"]["per_class"]]
                            for r in plain if "pgd20" in r.result["attacks"]], axis=0)
    k = int(np.nanargmin(per_class))
    name = _class_name(dataset, k)
    weights = [h["gen/p"] for r in ferd for h in r.result.get("history", [])[-1:] if h.get("gen/p") is not None]
    lines = []
    if weights:
        w = np.mean(weights, axis=0)
        rank = int((w > w[k]).sum()) + 1
        lines.append(f"- Does reweighting raise the weakest class's weight (Fig. 4)? **{'yes' if w[k] > 1 / len(w) else 'no'}**: "
                     f"{name}, the weakest class under PGD-20 without reweighting, gets p = {w[k]:.3f} in FERD's last "
                     f"epoch (uniform {1 / len(w):.3f}; rank {rank} of {len(w)}; mean over {len(weights)} seeds).")
    c = compare(ferd, plain, "pgd20", "avg", "with reweighting", "without", class_index=k)
    if c is not None:
        lines.append(f"- Does it raise that class's robustness? **{c.answer}**: "
                     f"{name} under PGD-20, {c.text('avg')}.")
    worst = "worst10" if get_dataset_spec(dataset).num_classes >= 100 else "worst"
    c = compare(ferd, plain, "pgd20", worst, "with reweighting", "without")
    if c is not None:
        lines.append(f"- And the {METRIC_WORDS[worst]} PGD-20 accuracy? {c.text(worst)}.")
    return lines


def _utae_spread(runs: Sequence[Run], student: str) -> List[str]:
    """Fig. 9: do UTAEs spread the attack's targets? Target entropy of the student's PGD-20 errors."""
    ferd = _ferd_rows(runs, student)
    plain = _ferd_rows(runs, student, utae=False)
    if not ferd or not plain:
        return [f"- UTAEs (Fig. 9): no {'FERD' if not ferd else 'FERD without UTAEs (`utae=false`, Table 3)'} run for "
                f"{student} in this setup."]

    def entropies(group: Sequence[Run]) -> List[float]:
        return [float(r.result["attacks"]["pgd20"]["target_entropy_norm"]) for r in group
                if r.result["attacks"].get("pgd20", {}).get("target_entropy_norm") is not None]

    a, b = entropies(ferd), entropies(plain)
    if not a or not b:
        return []
    diff = np.mean(a) - np.mean(b)
    spread = ""
    if len(a) > 1 and len(b) > 1:
        se = float(np.sqrt(np.var(a, ddof=1) / len(a) + np.var(b, ddof=1) / len(b)))
        spread = f", standard error of the difference {se:.3f} over seeds ({len(a)} and {len(b)})"
        verdict = "yes" if diff > 2 * se else "no"
    else:
        verdict = "cannot tell (one seed)"
    return [f"- Do UTAEs spread the attack's targets (Fig. 9)? **{verdict}**: normalised target entropy of the student's "
            f"PGD-20 errors (1 = spread evenly over the classes) {np.mean(a):.3f} with UTAEs against {np.mean(b):.3f} "
            f"without: {diff:+.3f}{spread}."]


def claims_section(results: Folders) -> str:
    """Markdown: per setup and student, one answered sentence per claim of the paper."""
    runs = load_runs(results)
    out: List[str] = ["**Claims.** Each claim of the paper, answered from the runs (95% two-level bootstrap "
                      "intervals of the difference: seeds, then test images per class).", ""]
    any_setup = False
    for setup, setup_runs in group_by_setup(runs).items():
        if not any(method_info(r.method).proposed for r in setup_runs):
            continue
        any_setup = True
        worst = "worst10" if get_dataset_spec(setup.dataset).num_classes >= 100 else "worst"
        blocks = _method_table_blocks(setup_runs)
        for student in sorted({r.student for r in setup_runs}, key=lambda a: (student_family(a) != "resnet18", a)):
            rows = blocks.get(student, [])
            out.append(f"*{setup.dataset}, teacher `{setup.teacher}`, preset `{setup.preset}`, defaults "
                       f"v{setup.defaults_version}, student {student}:*")
            out.append("")
            out += _head_to_head(setup_runs, rows, student, worst)
            out += _reweighting(setup_runs, student, setup.dataset)
            out += _utae_spread(setup_runs, student)
            out.append("")
    if not any_setup:
        out.append("No FERD runs under these folders.")
    return "\n".join(out) + "\n"


def _method_table_blocks(runs: Sequence[Run]) -> Dict[str, List[BuiltRow]]:
    """The rows of the method table (1, 2 or 5) per student, built once from this setup's runs: what
    'the best baseline' of a column is, the same as in the table."""
    spec = TABLES.get(METHOD_TABLE_OF.get(runs[0].result["dataset"], "1"))
    table = build_table_for(spec, runs[0].setup, list(runs), ATTACK_ORDER)
    return dict(table.blocks)
