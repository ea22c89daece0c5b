"""`dfrd-bench reproduce RESULT.json`: run a distillation result again from its recorded settings and
say, number by number, how the new one compares.

Before any training the teacher checkpoint (sha256 of its file) and the evaluation data (sha256 of
the decoded pixels and labels of the evaluated subset) must be the recorded ones. The re-run goes
into a fresh folder (never the original's) with the recorded method, variant, preset, dataset, seed,
`--set` values and every other setting of the recorded `config` the current code would resolve
differently. Each number (every attack's avg, worst, worst10, nsd and per-class accuracy) is then
`bit-identical`, `within the committed seed spread` (min..max of that number over the committed
seeds of the same setup: this result and the runs next to it that differ from it only in seed,
grouped as tables group them) or `outside it`. What can keep the re-run from being bit-identical
(another commit, a modified checkout, package versions, device, threads, processes, settings) is listed.
"""
from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .config import resolve_config, setting_text, with_added_settings
from .errors import DfrdError
from .evaluator import parse_attacks
from .method import get_method
from .provenance import provenance, sessions_of
from .report.collect import Run, group_key, load_runs
from .runner import RESULT_FILE, RunRequest, run, run_name_for
from .store import read_result

METRICS = ("avg", "worst", "worst10", "nsd")
IDENTICAL, WITHIN, OUTSIDE = "bit-identical", "within the committed seed spread", "outside it"
SCHEMA = "dfrd-bench-reproduce/1"
# settings the reproduction chooses itself (--attacks) or that resolve_config sets from the arguments
NOT_RESTORED = ("attacks", "preset", "dataset")


class ReproduceError(DfrdError, RuntimeError):
    pass


@dataclass
class Number:
    """One compared number: an attack's metric, or its accuracy on one class (`cls`)."""
    attack: str
    metric: str
    recorded: Optional[float]
    reproduced: Optional[float]
    spread: Optional[Tuple[float, float]]  # min..max over the committed seeds (None: no value)
    seeds: int                             # committed seeds the spread is over
    verdict: str
    cls: Optional[int] = None


@dataclass
class Plan:
    """What a reproduction runs, and what was checked before it."""
    result_path: Path
    result: Dict[str, Any]
    request: RunRequest
    attacks: List[str]
    checks: List[str] = field(default_factory=list)    # identity checks passed (one line each)
    reasons: List[str] = field(default_factory=list)   # why the re-run need not be bit-identical
    threads: Optional[int] = None                      # torch CPU threads of the re-run (None: torch's default)

    @property
    def run_dir(self) -> Path:
        return Path(self.request.out) / str(self.request.run_name)


# ------------------------------------------------------------------------------------ the original
def load_original(path: Path) -> Dict[str, Any]:
    """The result to reproduce; only distillation runs (kind 'run') can be."""
    result = read_result(path)
    if result.get("kind") != "run":
        raise ReproduceError(f"{path} is a {result.get('kind')!r} result: only runs (dfrd-bench run / sweep) can be "
                             "reproduced; re-run an evaluation with `dfrd-bench eval`")
    return result


def _jsonable(values: Dict[str, Any]) -> Dict[str, Any]:
    return json.loads(json.dumps(values, default=str))


def recorded_overrides(result: Dict[str, Any], attacks: Sequence[str]) -> Tuple[Dict[str, Any], List[str]]:
    """The `--set` values of the re-run: the recorded ones, `attacks`, and every setting of the recorded
    config that the current code resolves differently; and notes on settings that cannot be restored."""
    method_cls, dataset, preset = get_method(result["method"]), result["dataset"], result.get("preset") or "quick"
    overrides = {**(result.get("overrides") or {}), "attacks": ",".join(attacks)}
    stored = result.get("config") or {}
    # settings added after the run: the value it ran with (config.with_added_settings), restored like any other
    recorded = {k: v for k, v in (with_added_settings(stored, method_cls) if stored else {}).items()
                if k not in NOT_RESTORED}
    current = _jsonable(resolve_config(method_cls, dataset, preset, overrides).to_dict())
    notes = [f"setting {k} is newer than the result (now {current[k]!r})" for k in current
             if k not in recorded and k not in NOT_RESTORED and result.get("config")]
    for key, value in recorded.items():
        if key not in current:
            notes.append(f"setting {key} (recorded {value!r}) no longer exists")
        elif current[key] != value:
            overrides[key] = value
    resolved = _jsonable(resolve_config(method_cls, dataset, preset, overrides).to_dict())
    notes += [f"setting {k}: recorded {v!r}, resolves to {resolved[k]!r} here" for k, v in recorded.items()
              if k in resolved and resolved[k] != v]
    return overrides, notes


def chosen_attacks(result: Dict[str, Any], attacks: Optional[str]) -> List[str]:
    """--attacks (default: the recorded ones); only attacks the result holds can be compared."""
    recorded = list(result["attacks"])
    if not attacks:
        return recorded
    wanted = parse_attacks(attacks)
    missing = [a for a in wanted if a not in recorded]
    if missing:
        raise ReproduceError(f"--attacks {attacks}: the result has no {', '.join(missing)} (it has "
                             f"{', '.join(recorded)}): nothing to compare")
    return wanted


# ------------------------------------------------------------------------------------ identity checks
def teacher_file_sha256(spec: str) -> Optional[str]:
    """sha256 of the teacher's checkpoint file here (a bundled teacher's file, or a path); None when
    the spec names no file here."""
    from .checkpoints import sha256_file
    from .teachers import bundled_teachers

    cards = bundled_teachers()
    if spec in cards:
        return sha256_file(Path(cards[spec]["_card"]).parent / cards[spec]["file"])
    path = Path(spec).expanduser()
    return sha256_file(path) if path.is_file() else None


def check_teacher(result: Dict[str, Any]) -> str:
    """Refuse (one line) when the teacher file here is not the recorded one; the check's line otherwise."""
    teacher = result.get("teacher") or {}
    spec, want = str(teacher.get("spec")), teacher.get("checkpoint_sha256")
    if not want:
        return f"teacher {spec}: no checkpoint sha256 recorded (not a file), not checked"
    have = teacher_file_sha256(spec)
    if have is None:
        raise ReproduceError(f"teacher {spec} (sha256 {want[:12]}…) is not here: run from the folder the result was "
                             "made in, or put the checkpoint at that path")
    if have != want:
        raise ReproduceError(f"teacher {spec} here has sha256 {have[:12]}…, the result was made with {want[:12]}…: "
                             "refusing to reproduce with another teacher")
    return f"teacher {spec}: sha256 {want[:12]}… matches"


def check_data(result: Dict[str, Any], source: Optional[str], data_root: Optional[str]) -> Tuple[Optional[str], str]:
    """Load the evaluation data as the run did (same source, split, subset) and refuse (one line) when
    its sha256 is not the recorded one; (the --source for the re-run, the check's line)."""
    from .data import load_split

    recorded = result["data_source"]
    if source is None and recorded.get("path") and Path(str(recorded["path"])).exists():
        source = str(recorded["path"])
    data = load_split(result["dataset"], recorded.get("split") or "test", source, data_root)
    data = data.subset((result.get("config") or {}).get("eval_limit"), seed=int(result.get("seed", 0)))
    have, want = data.source.get("sha256"), recorded.get("sha256")
    if have != want:
        raise ReproduceError(f"the evaluation data here ({data.source.get('path')}, n={data.source.get('n')}) has "
                             f"sha256 {str(have)[:12]}…, the result was evaluated on {str(want)[:12]}… "
                             f"({recorded.get('path')}, n={recorded.get('n')}): pass --source with the recorded data")
    where = f"{data.source.get('path')} (n={data.source.get('n')})"
    return source, f"evaluation data {where}: sha256 {want[:12]}… matches"


# ------------------------------------------------------------------------------------ expected differences
def _differences(recorded: Sequence[Dict[str, Any]], now: Dict[str, Any]) -> List[str]:
    """What differs between the processes that made the result and this one."""
    reasons = []
    commits = sorted({str((s.get("git") or {}).get("commit")) for s in recorded})
    if commits != [str((now.get("git") or {}).get("commit"))]:
        reasons.append(f"commit: recorded {', '.join(c[:12] for c in commits)}, "
                       f"now {str((now.get('git') or {}).get('commit'))[:12]}")
    if any((s.get("git") or {}).get("dirty") for s in recorded) or (now.get("git") or {}).get("dirty"):
        reasons.append("a modified checkout (git dirty) made the result or makes this re-run: its code is not "
                       "recorded")
    for name, version in (now.get("packages") or {}).items():
        old = sorted({str((s.get("packages") or {}).get(name)) for s in recorded})
        if old != [str(version)]:
            reasons.append(f"package {name}: recorded {', '.join(old)}, now {version}")
    for key, what in (("device", "device"), ("gpu", "GPU"), ("torch_threads", "torch CPU threads")):
        old = sorted({str(s.get(key)) for s in recorded})
        if old != [str(now.get(key))]:
            reasons.append(f"{what}: recorded {', '.join(old)}, now {now.get(key)}")
    return reasons


def why_not_identical(result: Dict[str, Any], now: Dict[str, Any]) -> List[str]:
    """Why the re-run (whose provenance is `now`) need not be bit-identical; empty when nothing recorded differs."""
    prov = result.get("provenance") or {}
    reasons = _differences(sessions_of(result) + [prov], now)
    processes = int(prov.get("world_size") or 1)
    if processes != 1:
        reasons.append(f"processes: recorded a data-parallel run over {processes}, this re-run is one process")
    return reasons


# ------------------------------------------------------------------------------------ plan
def default_device(result: Dict[str, Any]) -> str:
    """The recorded device's type (cpu, cuda), so a re-run does not move to a GPU unasked."""
    return str((result.get("provenance") or {}).get("device") or "auto").split(":")[0]


def recorded_threads(result: Dict[str, Any], device: str) -> Optional[int]:
    """The torch CPU threads the re-run uses: the recorded ones on a CPU (a reduction split over
    another number of threads can round differently), else torch's default (None)."""
    from .utils import pick_device

    threads = (result.get("provenance") or {}).get("torch_threads")
    return int(threads) if threads and pick_device(device).type == "cpu" else None


def current_provenance(device: str, threads: Optional[int]) -> Dict[str, Any]:
    """This process's provenance as the re-run will record it (on `device`, with `threads`)."""
    from .utils import pick_device

    now = provenance(pick_device(device))
    return {**now, "torch_threads": threads} if threads else now


def plan(result_path: Path, out: Optional[str] = None, device: Optional[str] = None, attacks: Optional[str] = None,
         source: Optional[str] = None, data_root: Optional[str] = None, model_dir: Optional[str] = None) -> Plan:
    """Check the teacher and the evaluation data, and build the re-run's request (nothing is trained,
    nothing is written). Without `out` the re-run goes into a new temporary folder, made when it runs."""
    result = load_original(result_path)
    wanted = chosen_attacks(result, attacks)
    overrides, notes = recorded_overrides(result, wanted)
    checks = [check_teacher(result)]
    source, data_line = check_data(result, source, data_root)
    checks.append(data_line)
    device = device or default_device(result)
    threads = recorded_threads(result, device)
    name = Path(str(result["run_dir"])).name if result.get("run_dir") else None
    req = RunRequest(method=result["method"], dataset=result["dataset"], preset=result.get("preset") or "quick",
                     seed=int(result.get("seed", 0)), overrides=overrides, source=source, data_root=data_root,
                     out=out or "", run_name=name, device=device, model_dir=model_dir)
    if req.run_name is None:
        req.run_name = run_name_for(req, resolve_config(get_method(req.method), req.dataset, req.preset, overrides))
    made = Plan(result_path, result, req, wanted, checks,
                why_not_identical(result, current_provenance(device, threads)) + notes, threads)
    refuse_original(made)
    return made


def refuse_original(p: Plan) -> None:
    """Never write into the original's folder, nor over any finished result."""
    if not p.request.out:  # a new temporary folder
        return
    if p.run_dir.resolve() == p.result_path.resolve().parent or (p.run_dir / RESULT_FILE).exists():
        raise ReproduceError(f"{p.run_dir} already holds a result (the original, or an earlier reproduction): "
                             "pass another --out")


def command_line(req: RunRequest, threads: Optional[int] = None) -> str:
    """The `dfrd-bench run` command the reproduction amounts to."""
    parts = [f"OMP_NUM_THREADS={threads}"] if threads else []
    parts += ["dfrd-bench run", f"--method {req.method}", f"--dataset {req.dataset}", f"--preset {req.preset}",
              f"--seed {req.seed}", f"--device {req.device}", f"--out {req.out or 'TEMPORARY-FOLDER'}",
              f"--name {req.run_name}"]
    parts += [f"--source {req.source}"] if req.source else []
    parts += [f"--set {k}={setting_text(v)}" for k, v in sorted(req.overrides.items())]
    return " ".join(parts)


# ------------------------------------------------------------------------------------ comparison
def seed_spread_runs(result_path: Path, result: Dict[str, Any]) -> List[Run]:
    """The committed seeds of the result's setup: runs in the results folder above the result's run
    folder with the same grouping key as the result (tables' seeds), the result's own seed included."""
    key = group_key(Run(result))
    siblings = [r for r in load_runs(result_path.resolve().parent.parent) if group_key(r) == key]
    own = [r for r in siblings if r.seed == int(result.get("seed", 0))]
    return siblings if own else siblings + [Run(result)]


def _value(result: Dict[str, Any], attack: str, metric: str, cls: Optional[int]) -> Optional[float]:
    entry = (result.get("attacks") or {}).get(attack) or {}
    value = entry.get(metric) if cls is None else (entry.get("per_class") or [None] * (cls + 1))[cls]
    return None if value is None else float(value)


def verdict(recorded: Optional[float], reproduced: Optional[float], spread: Optional[Tuple[float, float]]) -> str:
    if recorded == reproduced:  # floats read back from JSON: equal only when bit-identical
        return IDENTICAL
    if reproduced is None or spread is None:
        return OUTSIDE
    return WITHIN if spread[0] <= reproduced <= spread[1] else OUTSIDE


def compare_number(recorded: Dict[str, Any], reproduced: Dict[str, Any], seeds: Sequence[Dict[str, Any]],
                   attack: str, metric: str, cls: Optional[int] = None) -> Number:
    values = [v for v in (_value(s, attack, metric, cls) for s in seeds) if v is not None]
    spread = (min(values), max(values)) if values else None
    a, b = _value(recorded, attack, metric, cls), _value(reproduced, attack, metric, cls)
    return Number(attack, metric, a, b, spread, len(values), verdict(a, b, spread), cls)


def compare(recorded: Dict[str, Any], reproduced: Dict[str, Any], seeds: Sequence[Dict[str, Any]],
            attacks: Sequence[str]) -> List[Number]:
    """Every number of `attacks`: avg, worst, worst10, nsd, then the accuracy of each class."""
    numbers = []
    for attack in attacks:
        numbers += [compare_number(recorded, reproduced, seeds, attack, m) for m in METRICS]
        classes = len((recorded["attacks"].get(attack) or {}).get("per_class") or [])
        numbers += [compare_number(recorded, reproduced, seeds, attack, "per_class", c) for c in range(classes)]
    return numbers


# ------------------------------------------------------------------------------------ report
def _num(value: Optional[float]) -> str:
    return "–" if value is None else f"{value:.6g}"


def _spread(n: Number) -> str:
    if n.spread is None:
        return "–"
    return f"{_num(n.spread[0])}..{_num(n.spread[1])} ({n.seeds} seed{'s' * (n.seeds != 1)})"


def _per_class_row(attack: str, numbers: Sequence[Number]) -> List[str]:
    """One row for an attack's per-class accuracies: how many got each verdict (and which classes not identical)."""
    counts = {v: [n.cls for n in numbers if n.verdict == v] for v in (IDENTICAL, WITHIN, OUTSIDE)}
    text = ", ".join(f"{len(c)} {v}" + (f" (class {', '.join(map(str, c[:8]))}{' …' * (len(c) > 8)})"
                                         if v != IDENTICAL else "") for v, c in counts.items() if c)
    return [attack, f"per class ({len(numbers)})", "", "", "", text]


def markdown(p: Plan, numbers: Sequence[Number]) -> str:
    """The comparison as a Markdown table, with the identity checks and the expected differences."""
    rows = ["| attack | number | recorded | reproduced | seed spread | verdict |", "|:--|:--|--:|--:|--:|:--|"]
    for attack in p.attacks:
        mine = [n for n in numbers if n.attack == attack]
        for n in (n for n in mine if n.cls is None):
            rows.append(f"| {attack} | {n.metric} | {_num(n.recorded)} | {_num(n.reproduced)} | {_spread(n)} | "
                        f"{n.verdict} |")
        per_class = [n for n in mine if n.cls is not None]
        if per_class:
            rows.append("| " + " | ".join(_per_class_row(attack, per_class)) + " |")
    return "\n".join([f"Reproduction of {p.result_path} -> {p.run_dir / RESULT_FILE}", ""] + rows + [""]
                     + summary_lines(p, numbers))


def summary_lines(p: Plan, numbers: Sequence[Number]) -> List[str]:
    counts = {v: sum(n.verdict == v for n in numbers) for v in (IDENTICAL, WITHIN, OUTSIDE)}
    lines = [f"{len(numbers)} numbers: " + ", ".join(f"{c} {v}" for v, c in counts.items()) + "."]
    if max((n.seeds for n in numbers), default=0) <= 1:
        lines.append("No other seeds of this setup were found next to the result: a number that is not "
                     "bit-identical cannot be judged against seed noise.")
    lines += [f"- checked: {c}" for c in p.checks]
    return lines + _reason_lines(p)


def _reason_lines(p: Plan) -> List[str]:
    if not p.reasons:
        return ["- nothing recorded differs from this re-run: every number should be bit-identical"]
    return [f"- need not be bit-identical: {r}" for r in p.reasons]


def report(p: Plan, numbers: Sequence[Number], reproduction: Optional[Path]) -> Dict[str, Any]:
    """The comparison as JSON (--report)."""
    return {"schema": SCHEMA, "result": str(p.result_path), "reproduction": str(reproduction) if reproduction else None,
            "command": command_line(p.request, p.threads), "checks": p.checks, "why_not_bit_identical": p.reasons,
            "summary": {v: sum(n.verdict == v for n in numbers) for v in (IDENTICAL, WITHIN, OUTSIDE)},
            "numbers": [asdict(n) for n in numbers]}


def dry_run_text(p: Plan) -> str:
    where = p.run_dir if p.request.out else f"{p.run_dir.name} in a new temporary folder"
    lines = [f"would run: {command_line(p.request, p.threads)}", f"into {where} (the original: {p.result_path})"]
    lines += [f"- checked: {c}" for c in p.checks]
    return "\n".join(lines + _reason_lines(p))


def reproduce(p: Plan, log: Callable[[str], None] = print) -> Tuple[List[Number], Path]:
    """Run the plan and compare every number; (the numbers, the reproduction's result.json)."""
    import torch

    seeds = [r.result for r in seed_spread_runs(p.result_path, p.result)]  # before the re-run adds a result
    if not p.request.out:
        p.request.out = tempfile.mkdtemp(prefix="dfrd-reproduce-")
    threads = torch.get_num_threads()
    try:
        if p.threads:
            torch.set_num_threads(p.threads)
        run(p.request, log=log)
    finally:
        torch.set_num_threads(threads)
    path = p.run_dir / RESULT_FILE
    return compare(p.result, read_result(path), seeds, p.attacks), path
