"""Read the results store into what tables and figures need: runs grouped by setup, seeds aggregated.

A *setup* is what must be equal for two numbers to sit in one table: dataset, teacher (by checkpoint
sha256 when known) and preset. Within a setup, runs are told apart by student, method, variant and
the settings that change the method (`--set` values); the evaluation-only settings below do not.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from ..method_info import remember_recorded
from ..store import iter_results

# --set keys that change how a run is evaluated or logged, not what the method does.
NON_METHOD_KEYS = frozenset({
    "student", "teacher", "teacher_arch", "teacher_layout", "teacher_normalize", "attacks", "eval_limit", "aa_limit",
    "eval_batch_size", "channels_last", "generator_channels_last", "compile", "precision", "checkpoint_every_epochs",
    "log_every_epochs",
})
HIGHER_IS_BETTER = {"avg": True, "worst": True, "worst10": True, "nsd": False}


@dataclass
class Run:
    """One distillation result (kind 'run') with the fields tables select on."""
    result: Dict[str, Any]

    @property
    def method(self) -> str:
        return self.result["method"]

    @property
    def student(self) -> str:
        return self.result["student"]["arch"]

    @property
    def seed(self) -> int:
        return int(self.result.get("seed", 0))

    @property
    def variant(self) -> str:
        return self.result.get("variant") or "paper"

    @property
    def config(self) -> Dict[str, Any]:
        return self.result.get("config", {})

    @property
    def method_overrides(self) -> Dict[str, Any]:
        return {k: v for k, v in (self.result.get("overrides") or {}).items() if k not in NON_METHOD_KEYS}

    @property
    def setup(self) -> "Setup":
        t = self.result.get("teacher", {})
        return Setup(self.result["dataset"], teacher_label(t), t.get("checkpoint_sha256"),
                     self.result.get("preset") or "custom", self.core_defaults_version)

    @property
    def core_defaults_version(self) -> int:
        """The core's defaults version (runner, presets) the run was made with; runs share a setup by it.
        Results from before the core and method versions were told apart: their one version."""
        if "core_defaults_version" in self.result:
            return int(self.result["core_defaults_version"])
        return min(self.defaults_version, 2)

    @property
    def defaults_version(self) -> int:
        """The defaults the run was made with. Results from before the field existed: 2 when their
        config has `student_augment` (introduced with version 2's defaults), else 1."""
        if "defaults_version" in self.result:
            return int(self.result["defaults_version"])
        return 2 if "student_augment" in self.config else 1

    def cpu_minutes(self, kind: str) -> Optional[float]:
        """What the run's `kind` ('train' | 'eval') cost in CPU-minutes x processes: the process CPU
        time it recorded (all threads; unaffected by what else ran on the machine), else, for results
        made before it was recorded, wall-clock minutes x torch threads (GPU runs: one per process,
        so read them as device-minutes). None when neither is recorded."""
        prov = self.result.get("provenance") or {}
        processes = int(prov.get("world_size") or 1)
        cpu = (self.result.get("cpu_seconds") or {}).get(kind)
        if cpu is not None and prov.get("device", "cpu") == "cpu":
            return float(cpu) / 60.0 * processes
        wall = (self.result.get("wall_seconds") or {}).get(kind)
        if wall is None:
            return None
        threads = 1 if prov.get("device", "cpu") != "cpu" else int(prov.get("torch_threads") or 1)
        return float(wall) / 60.0 * threads * processes

    def metric(self, attack: str, metric: str) -> Optional[float]:
        entry = self.result["attacks"].get(attack)
        if entry is None:
            return None
        v = entry.get(metric)
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


@dataclass(frozen=True)
class Setup:
    dataset: str
    teacher: str
    teacher_sha256: Optional[str]
    preset: str
    defaults_version: int = 1   # dfrd_bench.config.DEFAULTS_VERSION of the code that made the runs


def teacher_label(teacher: Dict[str, Any]) -> str:
    """The teacher's spec, plus its normalisation where it is one that could not be chosen before
    `--teacher-normalize` existed (the checkpoint's own, or the dataset's for foreign checkpoints):
    the same file fed differently is another teacher, and its runs another setup."""
    label = teacher.get("spec", "?")
    norm = (teacher.get("normalize") or {}).get("spec")
    return f"{label} (normalize {norm})" if norm not in (None, "checkpoint", "dataset") else label


@dataclass
class Cell:
    """One number of a table: the mean over seeds, their sample std (ddof=1) and count."""
    mean: Optional[float]
    std: Optional[float] = None
    n: int = 0
    values: List[float] = field(default_factory=list)

    @classmethod
    def of(cls, values: Sequence[Optional[float]]) -> "Cell":
        vals = [float(v) for v in values if v is not None]
        if not vals:
            return cls(None, None, 0, [])
        mean = sum(vals) / len(vals)
        std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else None
        return cls(mean, std, len(vals), vals)


Folders = Union[str, Path, Sequence[Union[str, Path]]]


def _iter(folders: Folders) -> Iterable[Dict[str, Any]]:
    for folder in ([folders] if isinstance(folders, (str, Path)) else folders):
        yield from iter_results(folder)


def unreadable_results(folders: Folders) -> List[Tuple[str, str]]:
    """(path, reason) of every file under `folders` that should be a result and cannot be read."""
    from ..store import scan_results

    folders = [folders] if isinstance(folders, (str, Path)) else list(folders)
    return [problem for folder in folders for problem in scan_results(folder)[1]]


def load_runs(folders: Folders) -> List[Run]:
    """Every distillation result under `folders`; for a (setup, student, method, settings, seed)
    written twice, the newer result wins (re-runs replace, they do not double-count)."""
    latest: Dict[Tuple, Run] = {}
    for r in _iter(folders):
        if r.get("kind") != "run":
            continue
        run = Run(r)
        if r.get("method_info"):
            remember_recorded(run.method, r["method_info"])  # labels and order where its plugin is absent
        key = group_key(run) + (run.seed,)
        prev = latest.get(key)
        if prev is None or _created(r) >= _created(prev.result):
            latest[key] = run
    return newest_method_defaults(list(latest.values()))[0]


def newest_method_defaults(runs: List[Run]) -> Tuple[List[Run], List[Run]]:
    """(kept, superseded): of each method in each setup, only the runs made at its newest defaults
    version are kept, so that no table puts two readings of one method side by side (a method's
    defaults moved: `Method.defaults_version`; its older runs stay on disk, out of the tables)."""
    newest: Dict[Tuple, int] = {}
    for run in runs:
        key = (run.setup, run.method)
        newest[key] = max(newest.get(key, 0), run.defaults_version)
    kept = [r for r in runs if r.defaults_version == newest[(r.setup, r.method)]]
    return kept, [r for r in runs if r.defaults_version != newest[(r.setup, r.method)]]


def group_key(run: Run) -> Tuple:
    """What runs that are seeds of one another share: setup, student, method, variant and method settings."""
    return (run.setup, run.student, run.method, run.variant,
            tuple(sorted((k, repr(v)) for k, v in run.method_overrides.items())))


def _created(result: Dict[str, Any]) -> str:
    return str(result.get("provenance", {}).get("created", ""))


def load_model_evals(folders: Folders) -> List[Dict[str, Any]]:
    """Evaluations of single models (kinds 'eval' and 'teacher'), e.g. of the teachers."""
    return [r for r in _iter(folders) if r.get("kind") in ("eval", "teacher")]


def teacher_attacks(evals: Iterable[Dict[str, Any]], sha256: Optional[str], dataset: str) -> Dict[str, Dict[str, Any]]:
    """Per attack, the largest evaluation of the model with checkpoint `sha256` on `dataset`."""
    best: Dict[str, Dict[str, Any]] = {}
    if not sha256:
        return best
    for r in evals:
        if r["model"].get("checkpoint_sha256") != sha256 or r["dataset"] != dataset:
            continue
        for attack, entry in r["attacks"].items():
            if attack not in best or entry["n"] > best[attack]["n"]:
                best[attack] = {**entry, "_source": r.get("data_source", {})}
    return best


def group_by_setup(runs: Iterable[Run], dataset: Optional[str] = None) -> Dict[Setup, List[Run]]:
    out: Dict[Setup, List[Run]] = {}
    for run in runs:
        if dataset is None or run.result["dataset"] == dataset:
            out.setdefault(run.setup, []).append(run)
    return dict(sorted(out.items(), key=lambda kv: (kv[0].dataset, kv[0].teacher, kv[0].preset, kv[0].defaults_version)))


def matches(run: Run, method: str, config: Dict[str, Any], variant: str = "paper") -> bool:
    """True when `run` is `method` in `variant` with `config` values and no other method setting changed."""
    if run.method != method or run.variant != variant:
        return False
    for key, want in config.items():
        if run.config.get(key) != want:
            return False
    return set(run.method_overrides) - {"variant"} <= set(config)  # the variant is compared above


def describe_sources(runs: Sequence[Run]) -> List[str]:
    """One line per distinct evaluation data source and size among `runs`, for a table's footer."""
    lines = []
    seen = set()
    for run in runs:
        src = run.result.get("data_source", {})
        attacks = run.result.get("attacks", {})
        sizes = sorted({(a, e.get("n")) for a, e in attacks.items()}, key=lambda t: t[0])
        main = max((n for _, n in sizes if n), default=0)
        small = ", ".join(f"{a} on {n}" for a, n in sizes if n and n < main)
        key = (src.get("kind"), Path(str(src.get("path", ""))).name, src.get("split"), main, small)
        if key in seen:
            continue
        seen.add(key)
        line = f"{src.get('split', 'test')} split of {Path(str(src.get('path', '?'))).name} ({src.get('kind', '?')}), {main} images"
        if small:
            line += f"; {small} (class-stratified subset)"
        lines.append(line)
    return lines
