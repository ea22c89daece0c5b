"""The paper's tables, rebuilt from the results store (never typed): specs as data, one builder, two renderers.

A table spec names the paper's rows (method + the settings that define the row), its attack columns and
metrics. `build_tables` selects matching runs per setup (dataset, teacher, preset) and per student,
averages seeds, marks best/second per column and attaches the published numbers when asked;
`render_markdown` / `render_latex` turn the result into text. Table 4 (teachers) reads model evaluations.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from ..errors import DfrdError
from ..attacks import ATTACK_LABELS, attack_order
from ..data.specs import get_dataset_spec
from ..method import method_info, table_order
from ..inference import ALPHA, RunEval, Test, compare as compare_groups, holm, interval
from ..metrics import bootstrap_worst
from ..provenance import describe_provenance
from ..registry import Registry
from .contrib import load_contributions, load_published as contrib_published
from .collect import (Folders, HIGHER_IS_BETTER, Cell, Run, Setup, describe_sources, group_by_setup, load_model_evals,
                      load_runs, matches, teacher_attacks)

METRIC_LABELS = {"avg": "Avg", "worst": "Worst", "worst10": "Worst-10%", "nsd": "NSD"}
# Method rows, labels and order come from each method's MethodInfo (dfrd_bench.method): a plugin's
# method appears in the method tables (1, 2, 5), Table 8 (with rslad_stage) and every figure as soon
# as it has runs, with no edit here. Tables of one method's own (ablations, its settings) are
# declared by its plugin's report module (dfrd_bench/report/contrib.py).
SIGNIFICANCE_LEVEL = 1 - ALPHA   # of every mark and claim (dfrd_bench.inference)


class TableError(DfrdError, ValueError):
    pass


@dataclass(frozen=True)
class RowSpec:
    id: str                                   # the row's id in the published-numbers file
    label: str
    method: str
    config: Dict[str, Any] = field(default_factory=dict)
    variant: str = "paper"
    delta_from: Optional[str] = None          # Table 8: show the change from this row's values


@dataclass(frozen=True)
class TableSpec:
    number: str
    caption: str
    dataset: Optional[str]                    # None: any dataset, one table per setup
    attacks: Optional[Tuple[str, ...]]        # None: every registered attack (dfrd_bench.attacks), in order
    metrics: Tuple[str, ...]                  # 'worst' becomes worst-10% on datasets with >= 100 classes
    rows: Union[Tuple[RowSpec, ...], Callable[[List[Run]], Tuple[RowSpec, ...]]]
    per_student: bool = True                  # one block of rows per student architecture
    mark_best: bool = True
    published_by_student: bool = True         # published ids are '<student family>/<row id>'
    # method tables: with --ci the proposed method's cells are tested against every baseline, and the
    # rows carry the CPU-minutes a run cost
    compare: bool = False
    # ablation tables: with --ci every other row is tested against the row with this id (the full method)
    test_against: Optional[str] = None
    in_all: bool = True                       # drawn by `--table all` (the paper's tables)


TABLES: Registry[TableSpec] = Registry("table")


def method_label(method: str) -> str:
    """The method's name in tables and figures (its MethodInfo.label)."""
    return method_info(method).label


@functools.lru_cache(maxsize=None)
def _paper_methods(number: str) -> Tuple[str, ...]:
    """The methods with a row in the paper's table `number` (ids '<student>/<method>[+rslad]' in the
    published-numbers file): they keep their row, dashed, when not run."""
    load_contributions()
    rows = load_published().get("tables", {}).get(number, {}).get("rows", {})
    return tuple(dict.fromkeys(rid.split("/")[-1].split("+")[0] for rid in rows))


def _method_rows(number: str) -> Callable[[List[Run]], Tuple[RowSpec, ...]]:
    """A method table's rows: the paper's methods and every other method with runs in the setup,
    in table order (baselines, then the proposed method), each with its row settings."""
    def rows(runs: List[Run]) -> Tuple[RowSpec, ...]:
        names = table_order([*_paper_methods(number), *(r.method for r in runs)])
        return tuple(RowSpec(m, method_label(m), m, dict(method_info(m).row_settings)) for m in names)

    return rows


def _variant_rows(runs: List[Run]) -> Tuple[RowSpec, ...]:
    """One row per distinct (method, variant, settings changed with --set) among the runs: the
    comparison of readings and variants (results/ferd-reading/), seeds averaged."""
    seen: Dict[Tuple, RowSpec] = {}
    order = {m: i for i, m in enumerate(table_order(r.method for r in runs))}
    for r in sorted(runs, key=lambda r: (order[r.method], r.method, r.variant != "paper", r.variant,
                                         sorted(r.method_overrides.items(), key=str))):
        sets = {k: v for k, v in r.method_overrides.items() if k != "variant"}
        key = (r.method, r.variant, tuple(sorted((k, repr(v)) for k, v in sets.items())))
        if key in seen:
            continue
        text = method_label(r.method)
        extra = ([f"variant={r.variant}"] if r.variant != "paper" else []) + [f"{k}={v}" for k, v in sorted(sets.items())]
        text += f" ({', '.join(extra)})" if extra else ""
        seen[key] = RowSpec("/".join(map(str, key)), text, r.method, sets, r.variant)
    return tuple(seen.values())


def _rslad_rows(runs: List[Run]) -> Tuple[RowSpec, ...]:
    """Table 8: each method built on the RSLAD student stage (MethodInfo.rslad_stage) that the paper
    shows or the setup has runs of, without (rslad=false) and with the stage."""
    rows: List[RowSpec] = []
    for m in table_order([*_paper_methods("8"), *(r.method for r in runs)]):
        if method_info(m).rslad_stage:
            rows.append(RowSpec(m, method_label(m), m, {"rslad": False}))
            rows.append(RowSpec(f"{m}+rslad", f"{method_label(m)}+RSLAD", m, {"rslad": True}, delta_from=m))
    return tuple(rows)


_ALL = None   # every registered attack, a plugin's included (attack_order() when the table is built)
_AWN = ("avg", "worst", "nsd")
for _spec in (
    TableSpec("1", "Avg, Worst and NSD of each method's student on CIFAR-10", "cifar10", _ALL, _AWN, _method_rows("1"),
              compare=True),
    TableSpec("2", "Avg, Worst-10% and NSD of each method's student on CIFAR-100", "cifar100", _ALL, _AWN, _method_rows("2"),
              compare=True),
    TableSpec("5", "Avg, Worst-10% and NSD on Tiny-ImageNet", "tinyimagenet", _ALL, _AWN,
              _method_rows("5"), published_by_student=False, compare=True),
    TableSpec("8", "DFKD and the same method made robust with RSLAD (change in parentheses)", None, _ALL, ("avg",),
              _rslad_rows, mark_best=False),
    # not a paper table: every method / variant / --set combination found, side by side
    TableSpec("variants", "Each method, variant and changed setting found in the results", None, _ALL, _AWN,
              _variant_rows, published_by_student=False, in_all=False),
):
    TABLES.register(_spec.number, help=_spec.caption)(_spec)
TEACHER_TABLE = "4"   # drawn from the teachers' evaluations, not from a TableSpec
METHOD_TABLE_OF = {"cifar10": "1", "cifar100": "2", "tinyimagenet": "5"}   # the method comparison per dataset
EXTRA_TABLES = ("variants", "runs", "claims")  # not among the paper's tables (and not in `all`)


def _table_key(name: str) -> Tuple[int, Union[int, str]]:
    return (0, int(name)) if name.isdigit() else (1, name)


def table_numbers() -> Tuple[str, ...]:
    """The tables `--table all` draws: Table 4 and every registered table with `in_all` (the core's and
    those plugins contribute), numbers in numeric order, then named ones."""
    load_contributions()
    names = [TEACHER_TABLE] + [n for n in TABLES.names() if TABLES.get(n).in_all]
    return tuple(sorted(dict.fromkeys(names), key=_table_key))


def known_tables() -> Tuple[str, ...]:
    """Every table name `--table` accepts besides `all`."""
    load_contributions()
    return tuple(sorted(dict.fromkeys([TEACHER_TABLE, *TABLES.names(), *EXTRA_TABLES]), key=_table_key))


# ---------------------------------------------------------------------------------------------
@dataclass
class BuiltRow:
    label: str
    spec_id: str
    cells: Dict[Tuple[str, str], Cell]
    published: Dict[Tuple[str, str], float] = field(default_factory=dict)
    delta: Dict[Tuple[str, str], Optional[float]] = field(default_factory=dict)
    ci: Dict[Tuple[str, str], Tuple[float, float]] = field(default_factory=dict)
    marks: Dict[Tuple[str, str], str] = field(default_factory=dict)   # 'best' | 'second'
    seeds: int = 0
    method: str = ""
    # the proposed method's cells: 'better' (than every baseline) | 'worse' (than at least one), after
    # Holm over the table's family of marks; `tests` holds each comparison, `cell_p` the cell's p-value
    significance: Dict[Tuple[str, str], str] = field(default_factory=dict)
    tests: Dict[Tuple[str, str], Dict[str, Test]] = field(default_factory=dict, repr=False)
    cell_p: Dict[Tuple[str, str], float] = field(default_factory=dict)
    cost: Dict[str, "Cell"] = field(default_factory=dict)              # 'train' | 'eval': CPU-minutes per run
    evaluations: Dict[str, List[RunEval]] = field(default_factory=dict, repr=False)


@dataclass
class BuiltTable:
    number: str
    caption: str
    columns: List[Tuple[str, str]]                   # (attack, metric)
    blocks: List[Tuple[str, List[BuiltRow]]]          # (block label, rows)
    notes: List[str]
    block_title: str = "Student"
    row_title: str = "Method"
    cost: bool = False                                # show the CPU-minutes columns

    @property
    def missing(self) -> int:
        """Cells of rows without any run (a row with runs can still have an undefined NSD: `undefined`)."""
        return sum(1 for _, rows in self.blocks for r in rows for c in self.columns if r.cells[c].mean is None and not r.seeds)

    @property
    def undefined(self) -> int:
        """Cells whose runs exist but whose metric is undefined (NSD of a student at 0 % accuracy)."""
        return sum(1 for _, rows in self.blocks for r in rows for c in self.columns if r.cells[c].mean is None and r.seeds)


def load_published(path: Union[str, Path, None] = None) -> Dict[str, Any]:
    """The published numbers the plugins registered (contrib.register_published), or one file's."""
    load_contributions()
    return contrib_published([path] if path else [])


def student_family(arch: str) -> str:
    """The paper's student a CPU-sized one stands in for when published numbers are put beside ours."""
    return "mobilenetv2" if arch.startswith("mobilenet") else "resnet18"


def _worst_key(dataset: str) -> str:
    return "worst10" if get_dataset_spec(dataset).num_classes >= 100 else "worst"


def _columns(spec: TableSpec, dataset: str, attacks: Sequence[str]) -> List[Tuple[str, str]]:
    metrics = [(_worst_key(dataset) if m == "worst" else m) for m in spec.metrics]
    return [(a, m) for a in (spec.attacks or attack_order()) if a in attacks for m in metrics]


def build_tables(number: str, results: Folders, attacks: Optional[Sequence[str]] = None, paper: bool = False,
                 ci: bool = False, published: Optional[Dict[str, Any]] = None) -> List[BuiltTable]:
    """The tables for paper table `number` from the results under `results` (one per setup found)."""
    attacks = attack_order() if attacks is None else attacks
    if number == TEACHER_TABLE:
        return [_build_teacher_table(results, attacks, paper, published)]
    load_contributions()
    spec = TABLES.get(number)
    published = (published or load_published()) if paper else None
    runs = load_runs(results)
    out = []
    for setup, setup_runs in group_by_setup(runs, spec.dataset).items():
        rows_spec = spec.rows(setup_runs) if callable(spec.rows) else spec.rows
        if not any(matches(r, rs.method, rs.config, rs.variant) for r in setup_runs for rs in rows_spec):
            continue
        out.append(build_table_for(spec, setup, setup_runs, attacks, published, ci))
    if not out and paper:  # nothing of ours: still show the published numbers
        dataset = spec.dataset or "cifar10"
        rows_spec = spec.rows([]) if callable(spec.rows) else spec.rows
        out.append(_build(spec, Setup(dataset, "-", None, "-"), [], rows_spec, attacks, published, ci))
    return out


def build_table_for(spec: TableSpec, setup: Setup, runs: List[Run], attacks: Sequence[str],
                    published: Optional[Dict[str, Any]] = None, ci: bool = False) -> BuiltTable:
    """One table of `spec` from the runs of one setup."""
    rows_spec = spec.rows(runs) if callable(spec.rows) else spec.rows
    return _build(spec, setup, runs, rows_spec, attacks, published, ci)


def _build(spec: TableSpec, setup: Setup, runs: List[Run], rows_spec: Sequence[RowSpec], attacks: Sequence[str],
           published: Optional[Dict[str, Any]], ci: bool) -> BuiltTable:
    columns = _columns(spec, setup.dataset, attacks)
    # the paper's order: ResNet students first, then MobileNets
    students = sorted({r.student for r in runs}, key=lambda a: (student_family(a) != "resnet18", a)) if spec.per_student else [""]
    if spec.per_student and not students:
        students = ["resnet18", "mobilenetv2"] if spec.published_by_student else ["-"]
    pub_rows = (published or {}).get("tables", {}).get(spec.number, {}).get("rows", {})
    blocks = []
    for student in students:
        rows: List[BuiltRow] = []
        for rs in rows_spec:
            picked = [r for r in runs if matches(r, rs.method, rs.config, rs.variant) and (not student or r.student == student)]
            cells = {(a, m): Cell.of([r.metric(a, m) for r in picked]) for a, m in columns}
            row = BuiltRow(rs.label, rs.id, cells, seeds=len(picked), method=rs.method,
                           evaluations={a: evaluations_of(picked, a) for a in dict.fromkeys(a for a, _ in columns)})
            if spec.compare:
                row.cost = {kind: Cell.of([r.cpu_minutes(kind) for r in picked]) for kind in ("train", "eval")}
            if published is not None:
                pid = f"{student_family(student)}/{rs.id}" if spec.published_by_student else rs.id
                for a, m in columns:
                    v = pub_rows.get(pid, {}).get(a, {}).get(m)
                    if v is not None:
                        row.published[(a, m)] = float(v)
            if ci:
                for a, m in columns:
                    if m in ("worst", "worst10") and row.evaluations[a]:
                        row.ci[(a, m)] = _interval(row.evaluations[a], m)
            rows.append(row)
        _deltas(rows, rows_spec, columns)
        if spec.mark_best:
            _mark(rows, columns)
        if spec.compare and ci:
            _test_against_every_baseline(rows, columns)
        if spec.test_against and ci:
            _test_against_reference(rows, rows_spec, columns, spec.test_against)
        blocks.append((student, rows))
    if (spec.compare or spec.test_against) and ci:
        mark_family([r for _, rows in blocks for r in rows], columns)
    table = BuiltTable(spec.number, spec.caption, columns, blocks, [],
                       block_title="Student" if spec.per_student else "", cost=spec.compare)
    table.notes = _notes(table, setup, runs, published is not None, ci, published)
    return table


def evaluations_of(runs: Sequence[Run], attack: str) -> List[RunEval]:
    """Each run's evaluation under `attack` (per-class numbers and, when recorded, per-image outcomes):
    what the significance test and the intervals read."""
    out = []
    for r in runs:
        entry = r.result["attacks"].get(attack)
        if entry and entry.get("per_class") and entry.get("per_class_n"):
            out.append(RunEval.from_entry(entry))
    return out


def _interval(evaluations: Sequence[RunEval], metric: str) -> Tuple[float, float]:
    """The interval of a worst cell: the t-interval over seeds with the image-level variance
    (inference.interval); with one seed, the image-only percentile bootstrap of the old path."""
    if len(evaluations) >= 2:
        found = interval(evaluations, metric, SIGNIFICANCE_LEVEL)
        if found is not None:
            return found
    b = bootstrap_worst([(e.per_class, e.per_class_n) for e in evaluations], fraction=0.1 if metric == "worst10" else None)
    return b["low"], b["high"]


def best_baseline(rows: Sequence[BuiltRow], column: Tuple[str, str]) -> Optional[BuiltRow]:
    """The baseline row (not the proposed method, MethodInfo.proposed) with the best mean in `column`, or
    None. Descriptive only (the claims name it): no test is made against it alone."""
    base = [r for r in rows if not method_info(r.method).proposed and r.cells[column].mean is not None]
    if not base:
        return None
    sign = 1.0 if HIGHER_IS_BETTER[column[1]] else -1.0
    return max(base, key=lambda r: sign * r.cells[column].mean)


def _test_against_every_baseline(rows: List[BuiltRow], columns) -> None:
    """Test each cell of a proposed method (MethodInfo.proposed) against every baseline row of its block
    with runs (inference.compare); baselines with fewer than two seeds cannot be tested, and a cell is
    only tested when every baseline with runs can be."""
    baselines = [r for r in rows if not method_info(r.method).proposed and r.seeds]
    for row in rows:
        if not method_info(row.method).proposed or row.seeds < 2 or not baselines:
            continue
        for c in columns:
            tests = {}
            for base in baselines:
                t = compare_groups(row.evaluations.get(c[0], []), base.evaluations.get(c[0], []), c[1], SIGNIFICANCE_LEVEL)
                if t is None:
                    break
                tests[base.label] = t
            else:
                row.tests[c] = tests


def _test_against_reference(rows: List[BuiltRow], rows_spec: Sequence[RowSpec], columns, ref_id: str) -> None:
    """Ablation tables: test every row with runs against the reference row (the full method), one
    comparison per cell; the marks then say the ablated row is significantly better / worse than it."""
    ref = next((row for rs, row in zip(rows_spec, rows) if rs.id == ref_id), None)
    if ref is None or ref.seeds < 2:
        return
    for row in rows:
        if row is ref or row.seeds < 2:
            continue
        for c in columns:
            t = compare_groups(row.evaluations.get(c[0], []), ref.evaluations.get(c[0], []), c[1], SIGNIFICANCE_LEVEL)
            if t is not None:
                row.tests[c] = {ref.label: t}


def cell_pvalue(tests: Dict[str, Test], higher_is_better: bool) -> Tuple[float, str]:
    """(p, direction) of one cell against K baselines: 'better' than every baseline is an intersection-union
    test (p = the largest p, every difference in the proposed method's favour); 'worse' than at least one
    is a union, Bonferroni within the cell (p = K x the smallest p of the unfavourable differences)."""
    favourable = {k: (t.diff > 0) == higher_is_better and t.diff != 0 for k, t in tests.items()}
    if all(favourable.values()):
        return max(t.p for t in tests.values()), "better"
    worst_p = min(t.p for k, t in tests.items() if not favourable[k])
    return min(1.0, len(tests) * worst_p), "worse"


def mark_family(rows: Sequence[BuiltRow], columns, alpha: float = ALPHA) -> None:
    """Holm over the family of every tested cell in one table (the proposed method's in a method table,
    the ablated rows' in an ablation table): a mark is set
    where the cell's Holm-adjusted p-value is below alpha, so the chance of any false mark in the table
    is at most alpha."""
    cells = [(row, c) for row in rows for c in columns if c in row.tests]
    pd = [cell_pvalue(row.tests[c], HIGHER_IS_BETTER[c[1]]) for row, c in cells]
    adjusted = holm([p for p, _ in pd])
    for (row, c), (p, direction), adj in zip(cells, pd, adjusted):
        row.cell_p[c] = adj
        if adj < alpha:
            row.significance[c] = direction


def _deltas(rows: List[BuiltRow], rows_spec: Sequence[RowSpec], columns) -> None:
    by_id = {rs.id: row for rs, row in zip(rows_spec, rows)}
    for rs, row in zip(rows_spec, rows):
        if rs.delta_from and rs.delta_from in by_id:
            base = by_id[rs.delta_from]
            for c in columns:
                a, b = row.cells[c].mean, base.cells[c].mean
                row.delta[c] = None if a is None or b is None else a - b


def _display(metric: str, value: float) -> str:
    return f"{value:.3f}" if metric == "nsd" else f"{value:.2f}"


def _mark(rows: List[BuiltRow], columns) -> None:
    """Bold the best and underline the second-best value of each column (ties share a mark)."""
    for c in columns:
        shown = sorted({float(_display(c[1], r.cells[c].mean)) for r in rows if r.cells[c].mean is not None},
                       reverse=HIGHER_IS_BETTER[c[1]])
        if len(shown) < 2:  # one value, or all tied: nothing to single out
            continue
        for r in rows:
            if r.cells[c].mean is None:
                continue
            v = float(_display(c[1], r.cells[c].mean))
            if v == shown[0]:
                r.marks[c] = "best"
            elif len(shown) > 1 and v == shown[1]:
                r.marks[c] = "second"


def _notes(table: BuiltTable, setup: Setup, runs: List[Run], paper: bool, ci: bool,
           published: Optional[Dict[str, Any]]) -> List[str]:
    notes = []
    if runs:
        sha = f" (sha256 {setup.teacher_sha256[:12]}…)" if setup.teacher_sha256 else ""
        made = (f", defaults v{setup.defaults_version}" if setup.defaults_version > 1 else "")
        moved = sorted({(r.method, r.defaults_version) for r in runs if r.defaults_version > setup.defaults_version})
        made += "".join(f" ({method_label(m)} at its defaults v{v})" for m, v in moved)
        notes.append(f"Setup: {setup.dataset}, teacher `{setup.teacher}`{sha}, preset `{setup.preset}`{made}; "
                     f"{len(runs)} run{'s' if len(runs) != 1 else ''} in this setup.")
        for line in describe_sources(runs):
            notes.append(f"Data: {line}.")
        for line in describe_provenance([r.result for r in runs]):
            notes.append(f"Provenance: {line}.")
    else:
        notes.append("No runs of ours in the results folder for this table.")
    if table.columns and any(m == "nsd" for _, m in table.columns):
        notes.append("Avg, Worst: higher is better; NSD (std / mean of per-class accuracy): lower is better.")
    if any(m == "worst10" for _, m in table.columns):
        notes.append("Worst-10%: mean accuracy of the lowest 10% of classes.")
    seeds = sorted({r.seeds for _, rows in table.blocks for r in rows if r.seeds})
    if seeds and seeds != [1]:
        notes.append("Cells over several seeds show mean ± sample std; n = number of seeds.")
    if ci:
        notes.append("Worst cells: [95% interval]: over several seeds the t-interval of the seed mean with the "
                     "test-image variance folded in (`inference.interval`); with one seed the percentile bootstrap "
                     "of the test images only (2,000 draws), which says nothing about seed-to-seed spread.")
        proposed_rows = [r for _, rows in table.blocks for r in rows if method_info(r.method).proposed]
        tested = sum(len(r.tests) for r in proposed_rows)
        ablation_tests = [t for _, rows in table.blocks for r in rows for ts in r.tests.values() for t in ts.values()]
        if ablation_tests and not table.cost:
            ref = next(iter(next(ts for _, rows in table.blocks for r in rows for ts in r.tests.values())))
            notes.append(f"▲ / ▼ the row significantly better / worse than {ref} (docs/reporting.md): Welch t-test on "
                         f"the seed means with the test-image variance folded in; the family is the "
                         f"{len(ablation_tests)} tested cells of this table, held at 5% by Holm.")
        elif tested:
            proposed = " and ".join(dict.fromkeys(r.label for r in proposed_rows))
            paired = all(t.paired for r in proposed_rows for ts in r.tests.values() for t in ts.values())
            notes.append(f"▲ {proposed} significantly better than every baseline with runs; ▼ significantly worse than "
                         f"at least one (docs/reporting.md). Each comparison: Welch t-test on the seed means with the "
                         f"test-image variance folded in ({'paired on per-image outcomes' if paired else 'images paired where the results carry per-image outcomes, else unpaired'}); "
                         f"▲ needs every comparison (intersection-union), ▼ one (Bonferroni within the cell); the family "
                         f"is the {tested} tested cells of this table, held at 5% by Holm.")
        elif proposed_rows:
            notes.append("No marks: a cell is tested only when the proposed method and every baseline with runs have "
                         "at least two seeds (a single run says nothing about seed-to-seed spread).")
    if table.cost:
        notes.append("CPU-min: training and evaluation cost of one run (process CPU time over all threads; wall-clock "
                     "x threads for results that do not record it), mean over seeds, so robustness per unit of compute "
                     "can be read beside robustness.")
    if paper:
        src = (published or {}).get("source", "the paper")
        notes.append(f"[published; ours − published] from {src}. The paper used a WRN-34-10 teacher, ResNet-18 / "
                     f"MobileNet-V2 students and 220 epochs; a CPU-scale row is put beside the paper's row of the "
                     f"same student family, so only orderings, not values, are comparable.")
    if table.undefined:
        notes.append(f"–: {table.undefined} NSD cell{'s' if table.undefined != 1 else ''} undefined "
                     f"(the student's mean accuracy is 0, so std / mean has no value).")
    missing = table.missing
    if missing:
        notes.append(f"–: {missing} cell{'s' if missing != 1 else ''} without a result (run them with "
                     f"`dfrd-bench run` or `dfrd-bench sweep`).")
    return notes


def _build_teacher_table(results, attacks, paper, published) -> BuiltTable:
    """Table 4: each teacher used by the runs, from evaluations of its checkpoint (matched by sha256)."""
    published = (published or load_published()) if paper else None
    runs = load_runs(results)
    evals = load_model_evals(results)
    columns = [(a, "avg") for a in attack_order() if a in attacks]
    teachers = {}
    for r in runs:
        s = r.setup
        teachers.setdefault((s.dataset, s.teacher, s.teacher_sha256), None)
    rows = []
    pub_rows = (published or {}).get("tables", {}).get("4", {}).get("rows", {})
    sources: Dict[str, List[str]] = {}
    for dataset, name, sha in sorted(teachers, key=lambda t: (t[0], t[1])):
        found = teacher_attacks(evals, sha, dataset)
        cells = {(a, m): Cell.of([found[a][m]] if a in found and found[a].get(m) is not None else []) for a, m in columns}
        row = BuiltRow(f"{name} ({dataset})", dataset, cells, seeds=1 if found else 0)
        for a, m in columns:
            if a in found:
                src = found[a]["_source"]
                where = (f"{name}: {{}} on {found[a]['n']} {src.get('split', 'test')} images of "
                         f"{Path(str(src.get('path', '?'))).name}")
                sources.setdefault(where, []).append(ATTACK_LABELS.get(a, a))
            v = pub_rows.get(dataset, {}).get(a, {}).get(m)
            if published is not None and v is not None:
                row.published[(a, m)] = float(v)
        rows.append(row)
    table = BuiltTable("4", "Robust accuracy of the teachers", columns, [("", rows)], [], block_title="",
                       row_title="Teacher")
    notes = ["Teachers are the ones the runs used, evaluated by `dfrd-bench eval` (results matched by checkpoint sha256)."]
    notes += [f"Data: {where.format(', '.join(names))}." for where, names in sources.items()]
    if paper:
        notes.append("[published; ours − published] from the paper's Table 4 (WRN-34-10 / PreActResNet-34 teachers).")
    if table.missing:
        notes.append(f"–: {table.missing} cells without an evaluation (run `dfrd-bench eval` on the teacher "
                     f"with --out into the results folder).")
    if not rows:
        notes.append("No runs in the results folder, so no teachers to show.")
    table.notes = notes
    return table


# ---------------------------------------------------------------------------------------------
def _cell_text(row: BuiltRow, c: Tuple[str, str], fmt: str) -> str:
    cell = row.cells[c]
    if cell.mean is None:
        text = "–" if fmt == "markdown" else "--"
    else:
        text = _display(c[1], cell.mean)
        if cell.std is not None:
            pm = " ± " if fmt == "markdown" else r" $\pm$ "
            text += pm + _display(c[1], cell.std)
        if c in row.ci:
            lo, hi = row.ci[c]
            text += f" [{lo:.1f}, {hi:.1f}]"
        if c in row.delta and row.delta[c] is not None:
            text += f" ({row.delta[c]:+.2f})"
        sig = row.significance.get(c)
        if sig:
            text += {"better": " ▲", "worse": " ▼"}[sig] if fmt == "markdown" else \
                {"better": r" $\blacktriangle$", "worse": r" $\blacktriangledown$"}[sig]
        mark = row.marks.get(c)
        if mark == "best":
            text = f"**{text}**" if fmt == "markdown" else rf"\textbf{{{text}}}"
        elif mark == "second":
            text = f"<ins>{text}</ins>" if fmt == "markdown" else rf"\underline{{{text}}}"
    if c in row.published:
        pub = row.published[c]
        diff = "" if cell.mean is None else f"; {cell.mean - pub:+.2f}" if c[1] != "nsd" else f"; {cell.mean - pub:+.3f}"
        text += f" [{_display(c[1], pub)}{diff}]"
    return text


def _header(c: Tuple[str, str]) -> str:
    return f"{ATTACK_LABELS.get(c[0], c[0])} {METRIC_LABELS[c[1]]}"


COST_HEADERS = ("train CPU-min", "eval CPU-min")


def _cost_cells(table: BuiltTable, row: BuiltRow) -> List[str]:
    if not table.cost:
        return []
    return ["–" if row.cost.get(k) is None or row.cost[k].mean is None else f"{row.cost[k].mean:.0f}"
            for k in ("train", "eval")]


def render_markdown(table: BuiltTable) -> str:
    lead = [t for t in (table.block_title, table.row_title) if t] + ["n"]
    cost = list(COST_HEADERS) if table.cost else []
    lines = [f"**Table {table.number}.** {table.caption}.", ""]
    lines.append("| " + " | ".join(lead + [_header(c) for c in table.columns] + cost) + " |")
    lines.append("|" + "|".join([":--"] * len(lead) + ["--:"] * (len(table.columns) + len(cost))) + "|")
    for block, rows in table.blocks:
        for i, row in enumerate(rows):
            first = ([block if i == 0 else ""] if table.block_title else [])
            cells = [_cell_text(row, c, "markdown") for c in table.columns] + _cost_cells(table, row)
            lines.append("| " + " | ".join(first + [row.label, str(row.seeds)] + cells) + " |")
    lines.append("")
    lines += [f"- {n}" for n in table.notes]
    return "\n".join(lines) + "\n"


def _tex(text: str) -> str:
    return (text.replace("_", r"\_").replace("%", r"\%").replace("&", r"\&").replace("#", r"\#")
            .replace("−", "-").replace("…", r"\ldots{}").replace("–", "--"))


def render_latex(table: BuiltTable) -> str:
    lead = [t for t in (table.block_title, table.row_title) if t] + ["n"]
    attacks = list(dict.fromkeys(a for a, _ in table.columns))
    per = {a: [c for c in table.columns if c[0] == a] for a in attacks}
    cost = list(COST_HEADERS) if table.cost else []
    colspec = "l" * len(lead) + "".join("r" * len(per[a]) for a in attacks) + "r" * len(cost)
    out = [r"\begin{table}[t]", r"\centering", r"\small",
           rf"\caption{{Table {table.number}: {_tex(table.caption)}.}}", rf"\begin{{tabular}}{{{colspec}}}", r"\toprule"]
    out.append(" & ".join([""] * len(lead) + [rf"\multicolumn{{{len(per[a])}}}{{c}}{{{ATTACK_LABELS.get(a, a)}}}"
                                                for a in attacks] + [""] * len(cost)) + r" \\")
    rules, col = [], len(lead) + 1
    for a in attacks:
        rules.append(rf"\cmidrule(lr){{{col}-{col + len(per[a]) - 1}}}")
        col += len(per[a])
    out.append(" ".join(rules))
    out.append(" & ".join(lead + [_tex(METRIC_LABELS[m]) for _, m in table.columns] + cost) + r" \\")
    out.append(r"\midrule")
    for bi, (block, rows) in enumerate(table.blocks):
        if bi:
            out.append(r"\midrule")
        for i, row in enumerate(rows):
            first = ([_tex(block) if i == 0 else ""] if table.block_title else [])
            cells = [_tex(_cell_text(row, c, "latex")) for c in table.columns] + _cost_cells(table, row)
            out.append(" & ".join(first + [_tex(row.label), str(row.seeds)] + cells) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}"]
    out += [rf"\par\footnotesize {_tex(n).replace('`', '')}" for n in table.notes]
    out.append(r"\end{table}")
    return "\n".join(out) + "\n"


def _avg_text(run: Run, attack: str) -> str:
    v = run.metric(attack, "avg")
    return "–" if v is None else f"{v:.2f}"


def run_list(results: Folders, fmt: str = "markdown") -> str:
    """Not a paper table: every run with its seed, wall-clock times and evaluation sizes (what a run costs)."""
    runs = load_runs(results)
    order = {m: i for i, m in enumerate(table_order(r.method for r in runs))}
    runs = sorted(runs, key=lambda r: (r.setup.dataset, r.setup.teacher, r.setup.preset,
                                                      student_family(r.student) != "resnet18", r.student,
                                                      order[r.method], r.seed))
    head = ["setup", "student", "method", "settings", "seed", "clean", "PGD-20", "AA", "train s", "eval s",
            "images (AA)", "threads", "device"]
    rows = []
    for r in runs:
        wall = r.result.get("wall_seconds", {})
        attacks = r.result.get("attacks", {})
        main_n = max((e.get("n", 0) for a, e in attacks.items() if a != "aa"), default=0)
        aa = f" ({attacks['aa']['n']})" if "aa" in attacks else ""
        prov = r.result.get("provenance", {})
        sets = ", ".join(f"{k}={v}" for k, v in sorted(r.method_overrides.items())) or "default"
        rows.append([f"{r.setup.dataset}/{r.setup.teacher}/{r.setup.preset}", r.student, method_label(r.method),
                     sets, str(r.seed), *(_avg_text(r, a) for a in ("clean", "pgd20", "aa")), f"{wall.get('train', 0):.0f}", f"{wall.get('eval', 0):.0f}", f"{main_n}{aa}",
                     str(prov.get("torch_threads", "?")), str(prov.get("device", "?"))])
    if fmt == "latex":
        lines = [r"\begin{tabular}{" + "l" * len(head) + "}", r"\toprule", " & ".join(head) + r" \\", r"\midrule"]
        lines += [" & ".join(_tex(c) for c in row) + r" \\" for row in rows]
        return "\n".join(lines + [r"\bottomrule", r"\end{tabular}"]) + "\n"
    lines = ["**Runs.** Every run in the results folder with its cost.", "",
             "| " + " | ".join(head) + " |", "|" + "|".join(["--"] * len(head)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def render(tables: Sequence[BuiltTable], fmt: str = "markdown") -> str:
    if fmt not in ("markdown", "latex"):
        raise TableError(f"unknown format {fmt!r}: use markdown or latex")
    fn = render_markdown if fmt == "markdown" else render_latex
    return "\n".join(fn(t) for t in tables)
