"""The paper's claims, answered from the runs: one sentence per claim with its test, whichever way it falls.

One rule for every claim (docs/reporting.md, "Significance"): each comparison is the test of
`inference.compare` (Welch t on the seed means with the test-image variance folded in, images paired
when the results carry per-image outcomes), the same test as the marks of Table 1. A claim against
"the baselines" compares with every baseline that has runs, not with one chosen on the same numbers:
"yes" needs every comparison significant (intersection-union), "no" one significant the other way.
The claims of one setup are one family, held at 5% by Holm. Beside a claim that is not decided, the
seeds per method that would decide it (a power calculation at the observed difference and spread).
A claim whose runs are missing says which runs would answer it instead of guessing.
`dfrd-bench table --table claims` renders this section.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
from scipy import stats

from ..data.specs import get_dataset_spec
from ..inference import ALPHA, Test, compare as compare_groups, holm, seeds_needed, welch_test
from ..attacks import ATTACK_ORDER
from .collect import HIGHER_IS_BETTER, Folders, Run, group_by_setup, load_runs, matches
from ..method import method_info
from .tables import (ATTACK_LABELS, FERD_READING, METHOD_TABLE_OF, SIGNIFICANCE_LEVEL, TABLES, BuiltRow, cell_pvalue,
                     evaluations_of, build_table_for, method_label, student_family)

METRIC_WORDS = {"worst": "worst-class", "worst10": "worst-10%", "nsd": "NSD", "avg": "average"}


@dataclass
class Claim:
    """One question of the paper with its tests; `p` (and the direction) before the family's Holm step.

    `tests` maps the other side's label to the test of a - b; `higher_is_better` says which sign favours
    a. A one-sample claim (a value against a fixed reference) has one test and `reference` set."""
    question: str
    tests: Dict[str, Test]
    metric: str
    higher_is_better: bool
    a_label: str = "FERD"
    detail: str = ""
    p: float = 1.0
    direction: str = "better"
    adjusted: float = 1.0
    family: int = 1

    def __post_init__(self) -> None:
        self.p, self.direction = cell_pvalue(self.tests, self.higher_is_better)

    @property
    def answer(self) -> str:
        if self.adjusted < ALPHA:
            return "yes" if self.direction == "better" else "no"
        return "not significantly"

    def text(self) -> str:
        """The answer line, then one indented line per comparison."""
        line = f"- {self.question} **{self.answer}**"
        if self.detail:
            line += f" — {self.detail}"
        line += f". Holm-adjusted p = {self.adjusted:.3f} in a family of {self.family}"
        if self.answer == "not significantly":
            line += f"; {self.seeds_text()}"
        return "\n".join([line + "."] + [f"  - {self._comparison(label, t)}" for label, t in self.tests.items()])

    def _comparison(self, label: str, t: Test) -> str:
        f = (lambda v: f"{v:.3f}") if self.metric in ("nsd", "entropy", "weight") else (lambda v: f"{v:.1f}")
        seeds = f"{t.n[0]} and {t.n[1]} seeds" if t.n[1] else f"{t.n[0]} seeds"
        return (f"{self.a_label} {f(t.a_mean)} against {label} {f(t.b_mean)}: {'+' if t.diff >= 0 else ''}{f(t.diff)} "
                f"[{f(t.low)}, {f(t.high)}], p = {t.p:.3f} ({seeds}{', images paired' if t.paired else ''})")

    def seeds_text(self) -> str:
        """Seeds per method that would decide the claim at its observed differences (a power calculation at
        the strictest Holm step, alpha / family: an upper bound). 'Better than all' is decided by its
        hardest comparison; 'worse than one' by its easiest."""
        alpha = ALPHA / self.family
        if self.direction == "better":
            wanted = dict(self.tests)
        else:
            wanted = {k: t for k, t in self.tests.items() if (t.diff > 0) != self.higher_is_better}
        needs = {k: seeds_needed(t, alpha=alpha) for k, t in wanted.items()}
        if self.direction == "better":
            label, n = max(needs.items(), key=lambda kv: float("inf") if kv[1] is None else kv[1])
        else:
            label, n = min(needs.items(), key=lambda kv: float("inf") if kv[1] is None else kv[1])
        t = self.tests[label]
        ahead = (t.diff > 0) == self.higher_is_better
        what = (f"the comparison with {label} ({self.a_label} {'ahead' if ahead else 'behind'})" if len(self.tests) > 1
                else "it")
        if n is None:
            return f"more than 100 seeds per method would be needed to decide {what} at the observed difference"
        return (f"about {n} seeds per method would decide {what} (a power calculation: 80% power at the observed "
                f"difference and seed spread, two-sided at {alpha:.4f})")


def compare(a: Sequence[Run], b: Sequence[Run], attack: str, metric: str,
            class_index: Optional[int] = None) -> Optional[Test]:
    """The test of two groups of runs on one attack and metric (or one class's accuracy)."""
    ea, eb = evaluations_of(a, attack), evaluations_of(b, attack)
    if class_index is not None:
        ea = [e.only_class(class_index) for e in ea]
        eb = [e.only_class(class_index) for e in eb]
    if not ea or not eb:
        return None
    return compare_groups(ea, eb, metric, SIGNIFICANCE_LEVEL)


def _too_few(a: Sequence[Run], b: Sequence[Run], what: str) -> str:
    return (f"- {what}: cannot be tested with {len(a)} and {len(b)} seeds (at least two a side: one run says nothing "
            f"about seed-to-seed spread).")


def _ferd_rows(runs: Sequence[Run], student: str, **config: Any) -> List[Run]:
    return [r for r in runs if r.student == student and matches(r, "ferd", {**FERD_READING, **config})]


def _class_name(dataset: str, k: int) -> str:
    names = getattr(get_dataset_spec(dataset), "class_names", None)
    return names[k] if names and k < len(names) else f"class {k}"


Item = Any   # a rendered line (str) or a Claim waiting for its family's Holm step


def _head_to_head(runs: Sequence[Run], table_rows: Sequence[BuiltRow], student: str, worst: str) -> List[Item]:
    """FERD against every baseline with runs: worst class and NSD under PGD-20 and AutoAttack."""
    items: List[Item] = []
    ferd = _ferd_rows(runs, student)
    if not ferd:
        return [f"- FERD against the baselines: no run of FERD's default for {student} in this setup."]
    baselines = [r for r in table_rows if not method_info(r.method).proposed]
    absent = [method_label(r.method) for r in baselines if r.seeds == 0]
    present = [r for r in baselines if r.seeds]
    if absent and present:
        verb = "has" if len(absent) == 1 else "have"
        items.append(f"- *Partial*: {len(present)} of {len(baselines)} baselines have runs; {', '.join(absent)} {verb} "
                     f"none yet, so a 'yes' below can change when they land.")
    for attack in ("pgd20", "aa"):
        for metric in (worst, "nsd"):
            if not any((attack, metric) in r.cells for r in table_rows):
                continue
            question = (f"Does FERD beat every baseline on {ATTACK_LABELS[attack]} {METRIC_WORDS[metric]} accuracy?"
                        if metric != "nsd" else f"Does FERD have a lower {ATTACK_LABELS[attack]} NSD than every baseline?")
            if not present:
                items.append(f"- {question} No baseline run to compare with.")
                continue
            tests = {}
            for row in present:
                base = [r for r in runs if r.student == student and matches(r, row.method, {})]
                t = compare(ferd, base, attack, metric)
                if t is None:
                    break
                tests[method_label(row.method)] = t
            else:
                items.append(Claim(question, tests, metric, HIGHER_IS_BETTER[metric]))
                continue
            items.append(_too_few(ferd, base, question))
    return items


def _reweighting(runs: Sequence[Run], student: str, dataset: str) -> List[Item]:
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
    items: List[Item] = []
    if weights:
        w = np.asarray(weights, dtype=float)
        uniform = 1.0 / w.shape[1]
        question = "Does reweighting raise the weakest class's weight above uniform (Fig. 4)?"
        rank = int((w.mean(0) > w.mean(0)[k]).sum()) + 1
        detail = (f"{name}, the weakest class under PGD-20 without reweighting, its weight p in FERD's last "
                  f"epoch, uniform {uniform:.3f}, rank {rank} of {w.shape[1]}")
        if len(w) >= 2:
            t = _one_sample(w[:, k], uniform)
            items.append(Claim(question, {"uniform": t}, "weight", True, a_label="p", detail=detail))
        else:
            items.append(f"- {question} {detail}: p = {w[0, k]:.3f} in one seed, cannot be tested.")
    c = compare(ferd, plain, "pgd20", "avg", class_index=k)
    question = f"Does reweighting raise the robustness of {name} (PGD-20)?"
    items.append(Claim(question, {"without": c}, "avg", True, a_label="with reweighting") if c is not None
                 else _too_few(ferd, plain, question))
    worst = "worst10" if get_dataset_spec(dataset).num_classes >= 100 else "worst"
    c = compare(ferd, plain, "pgd20", worst)
    question = f"Does reweighting raise the {METRIC_WORDS[worst]} PGD-20 accuracy?"
    items.append(Claim(question, {"without": c}, worst, True, a_label="with reweighting") if c is not None
                 else _too_few(ferd, plain, question))
    return items


def _one_sample(values: np.ndarray, reference: float) -> Test:
    """The t-test of a seed mean against a fixed reference, as a Test (b = the reference, no spread)."""
    mean, sd, n = float(values.mean()), float(values.std(ddof=1)), len(values)
    se = sd / np.sqrt(n)
    diff = mean - reference
    p = float(2 * stats.t.sf(abs(diff) / se, n - 1)) if se > 0 else (0.0 if diff else 1.0)
    q = float(stats.t.ppf(0.5 + SIGNIFICANCE_LEVEL / 2, n - 1))
    return Test(mean, reference, diff, se, n - 1, p, diff - q * se, diff + q * se, (n, 0), False, (sd, 0.0))


def _utae_spread(runs: Sequence[Run], student: str) -> List[Item]:
    """Fig. 9: do UTAEs spread the attack's targets? Target entropy of the student's PGD-20 errors (a
    per-run number: the test has the seed term only, the outcomes do not record the predicted class)."""
    ferd = _ferd_rows(runs, student)
    plain = _ferd_rows(runs, student, utae=False)
    if not ferd or not plain:
        return [f"- UTAEs (Fig. 9): no {'FERD' if not ferd else 'FERD without UTAEs (`utae=false`, Table 3)'} run for "
                f"{student} in this setup."]

    def entropies(group: Sequence[Run]) -> List[float]:
        return [float(r.result["attacks"]["pgd20"]["target_entropy_norm"]) for r in group
                if r.result["attacks"].get("pgd20", {}).get("target_entropy_norm") is not None]

    question = "Do UTAEs spread the attack's targets (Fig. 9)?"
    t = welch_test(entropies(ferd), entropies(plain), level=SIGNIFICANCE_LEVEL)
    if t is None:
        return [_too_few(ferd, plain, question)]
    return [Claim(question, {"without": t}, "entropy", True, a_label="with UTAEs",
                  detail="normalised target entropy of the student's PGD-20 errors, 1 = spread evenly")]


def _render(items: List[Item]) -> List[str]:
    """Holm over the claims among `items` (one family), then every item as its line."""
    claims = [it for it in items if isinstance(it, Claim)]
    for claim, adj in zip(claims, holm([c.p for c in claims])):
        claim.adjusted, claim.family = adj, len(claims)
    return [it.text() if isinstance(it, Claim) else it for it in items]


def claims_section(results: Folders) -> str:
    """Markdown: per setup and student, one answered sentence per claim of the paper."""
    runs = load_runs(results)
    out: List[str] = ["**Claims.** Each claim of the paper, answered from the runs: every comparison is a Welch t-test "
                      "on the seed means with the test-image variance folded in (95% intervals of the difference; "
                      "images paired where the results carry per-image outcomes); the claims of one setup are one "
                      "family, held at 5% by Holm (docs/reporting.md).", ""]
    any_setup = False
    for setup, setup_runs in group_by_setup(runs).items():
        if not any(method_info(r.method).proposed for r in setup_runs):
            continue
        any_setup = True
        worst = "worst10" if get_dataset_spec(setup.dataset).num_classes >= 100 else "worst"
        blocks = _method_table_blocks(setup_runs)
        items: List[Item] = []
        for student in sorted({r.student for r in setup_runs}, key=lambda a: (student_family(a) != "resnet18", a)):
            items.append(f"*{setup.dataset}, teacher `{setup.teacher}`, preset `{setup.preset}`, defaults "
                         f"v{setup.defaults_version}, student {student}:*")
            items.append("")
            items += _head_to_head(setup_runs, blocks.get(student, []), student, worst)
            items += _reweighting(setup_runs, student, setup.dataset)
            items += _utae_spread(setup_runs, student)
            items.append("")
        out += _render(items)
    if not any_setup:
        out.append("No FERD runs under these folders.")
    return "\n".join(out) + "\n"


def _method_table_blocks(runs: Sequence[Run]) -> Dict[str, List[BuiltRow]]:
    """The rows of the method table (1, 2 or 5) per student, built once from this setup's runs: which
    baselines have runs (the claims compare FERD with each of them)."""
    spec = TABLES.get(METHOD_TABLE_OF.get(runs[0].result["dataset"], "1"))
    table = build_table_for(spec, runs[0].setup, list(runs), ATTACK_ORDER)
    return dict(table.blocks)
