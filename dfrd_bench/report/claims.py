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
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
from scipy import stats

from ..data.specs import get_dataset_spec
from ..inference import ALPHA, Test, compare as compare_groups, holm, seeds_needed
from ..attacks import attack_order
from .collect import HIGHER_IS_BETTER, Folders, Run, group_by_setup, load_runs, matches
from ..method import method_info
from .contrib import load_contributions
from .tables import (ATTACK_LABELS, METHOD_TABLE_OF, SIGNIFICANCE_LEVEL, TABLES, BuiltRow, cell_pvalue,
                     evaluations_of, build_table_for, method_label, student_family, table_order)

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
    a_label: str = ""         # the tested side's name (the proposed method's label unless set)
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


# A method's own claims (its mechanisms: FERD's reweighting, its UTAEs), declared by its plugin's report
# module: fn(runs of the setup, student, dataset) -> items (Claim or rendered line), after the
# comparison with the baselines, in registration order.
ClaimsFn = Callable[[Sequence[Run], str, str], List[Any]]
CLAIMS: Dict[str, List[ClaimsFn]] = {}


def register_claims(method: str) -> Callable[[ClaimsFn], ClaimsFn]:
    """Declare `fn` as claims of `method` (a proposed method's own questions, answered per student)."""
    def add(fn: ClaimsFn) -> ClaimsFn:
        CLAIMS.setdefault(method, [])
        if fn not in CLAIMS[method]:
            CLAIMS[method].append(fn)
        return fn

    return add


def too_few(a: Sequence[Run], b: Sequence[Run], what: str) -> str:
    return (f"- {what}: cannot be tested with {len(a)} and {len(b)} seeds (at least two a side: one run says nothing "
            f"about seed-to-seed spread).")


def method_rows(runs: Sequence[Run], student: str, method: str, **config: Any) -> List[Run]:
    """The runs of `method` as its table row defines it (MethodInfo.row_settings) with `config` on top."""
    return [r for r in runs if r.student == student
            and matches(r, method, {**method_info(method).row_settings, **config})]


def class_name(dataset: str, k: int) -> str:
    names = getattr(get_dataset_spec(dataset), "class_names", None)
    return names[k] if names and k < len(names) else f"class {k}"


Item = Any   # a rendered line (str) or a Claim waiting for its family's Holm step


def _head_to_head(runs: Sequence[Run], table_rows: Sequence[BuiltRow], student: str, worst: str,
                  method: str) -> List[Item]:
    """The proposed `method` against every baseline with runs: worst class and NSD under PGD-20 and AutoAttack."""
    items: List[Item] = []
    name = method_label(method)
    ours = method_rows(runs, student, method)
    if not ours:
        return [f"- {name} against the baselines: no run of {name}'s default for {student} in this setup."]
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
            question = (f"Does {name} beat every baseline on {ATTACK_LABELS[attack]} {METRIC_WORDS[metric]} accuracy?"
                        if metric != "nsd" else f"Does {name} have a lower {ATTACK_LABELS[attack]} NSD than every baseline?")
            if not present:
                items.append(f"- {question} No baseline run to compare with.")
                continue
            tests = {}
            for row in present:
                base = [r for r in runs if r.student == student and matches(r, row.method, {})]
                t = compare(ours, base, attack, metric)
                if t is None:
                    break
                tests[method_label(row.method)] = t
            else:
                items.append(Claim(question, tests, metric, HIGHER_IS_BETTER[metric], a_label=name))
                continue
            items.append(too_few(ours, base, question))
    return items


def one_sample(values: np.ndarray, reference: float) -> Test:
    """The t-test of a seed mean against a fixed reference, as a Test (b = the reference, no spread)."""
    mean, sd, n = float(values.mean()), float(values.std(ddof=1)), len(values)
    se = sd / np.sqrt(n)
    diff = mean - reference
    p = float(2 * stats.t.sf(abs(diff) / se, n - 1)) if se > 0 else (0.0 if diff else 1.0)
    q = float(stats.t.ppf(0.5 + SIGNIFICANCE_LEVEL / 2, n - 1))
    return Test(mean, reference, diff, se, n - 1, p, diff - q * se, diff + q * se, (n, 0), False, (sd, 0.0))


def _render(items: List[Item]) -> List[str]:
    """Holm over the claims among `items` (one family), then every item as its line."""
    claims = [it for it in items if isinstance(it, Claim)]
    for claim, adj in zip(claims, holm([c.p for c in claims])):
        claim.adjusted, claim.family = adj, len(claims)
    return [it.text() if isinstance(it, Claim) else it for it in items]


def claims_section(results: Folders) -> str:
    """Markdown: per setup and student, one answered sentence per claim of the paper."""
    load_contributions()
    runs = load_runs(results)
    out: List[str] = ["**Claims.** Each claim of the paper, answered from the runs: every comparison is a Welch t-test "
                      "on the seed means with the test-image variance folded in (95% intervals of the difference; "
                      "images paired where the results carry per-image outcomes); the claims of one setup are one "
                      "family, held at 5% by Holm (docs/reporting.md).", ""]
    any_setup = False
    for setup, setup_runs in group_by_setup(runs).items():
        proposed = table_order({r.method for r in setup_runs if method_info(r.method).proposed})
        if not proposed:
            continue
        any_setup = True
        worst = "worst10" if get_dataset_spec(setup.dataset).num_classes >= 100 else "worst"
        blocks = _method_table_blocks(setup_runs)
        moved = sorted({(method_label(r.method), r.defaults_version) for r in setup_runs
                        if r.defaults_version > setup.defaults_version})
        items: List[Item] = []
        for student in sorted({r.student for r in setup_runs}, key=lambda a: (student_family(a) != "resnet18", a)):
            items.append(f"*{setup.dataset}, teacher `{setup.teacher}`, preset `{setup.preset}`, defaults "
                         f"v{setup.defaults_version}" + "".join(f" ({m} at its defaults v{v})" for m, v in moved)
                         + f", student {student}:*")
            items.append("")
            for method in proposed:
                items += _head_to_head(setup_runs, blocks.get(student, []), student, worst, method)
                for own in CLAIMS.get(method, []):
                    items += own(setup_runs, student, setup.dataset)
            items.append("")
        out += _render(items)
    if not any_setup:
        out.append("No runs of a proposed method under these folders.")
    return "\n".join(out) + "\n"


def _method_table_blocks(runs: Sequence[Run]) -> Dict[str, List[BuiltRow]]:
    """The rows of the method table (1, 2 or 5) per student, built once from this setup's runs: which
    baselines have runs (the claims compare the proposed method with each of them)."""
    spec = TABLES.get(METHOD_TABLE_OF.get(runs[0].result["dataset"], "1"))
    table = build_table_for(spec, runs[0].setup, list(runs), attack_order())
    return dict(table.blocks)
