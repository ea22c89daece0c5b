"""Sweeps: a grid of runs (datasets x seeds x students x methods x cases x --grid values), run or printed.

Runs go seed by seed (every method's seed 0 before any seed 1), so a long sweep fills a table evenly and
an interrupted one has the most complete comparison. `cases` lists settings that go together (an
ablation's rows), where `grid` takes every combination.

Every point of the grid is an ordinary `dfrd-bench run` with the same folder name it would get from the
command line, so a sweep finds its own finished runs (skipped), its interrupted ones (resumed from their
last epoch) and runs the rest one after another. For larger machines it prints the same runs as command
lines: plain, one queue per GPU, a SLURM job array (one GPU, or N GPUs of one data-parallel run per task),
or torchrun launches (each run data-parallel over N processes).
"""
from __future__ import annotations

import itertools
import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .config import ConfigError, check_seed, parse_overrides, resolve_config, setting_text
from .method import get_method, plugin_modules
from .runner import RESULT_FILE, STATE_FILE, RunFolderBusy, RunRequest, run, run_name_for

SWEEP_KEYS = ("preset", "datasets", "methods", "students", "seeds", "grid", "cases", "set", "out", "source",
              "data_root", "teacher", "device")
EMIT_MODES = ("local", "gpus:N", "slurm", "slurm:N", "torchrun", "torchrun:N")


@dataclass
class SweepSpec:
    methods: List[str]
    datasets: List[str]
    students: List[Optional[str]] = field(default_factory=lambda: [None])   # None: the preset's student
    seeds: List[int] = field(default_factory=lambda: [0])
    grid: Dict[str, List[str]] = field(default_factory=dict)                # every combination
    cases: List[Dict[str, str]] = field(default_factory=lambda: [{}])       # settings that go together, one point each
    fixed: Dict[str, str] = field(default_factory=dict)                     # applied to every run
    preset: str = "quick"
    out: str = "runs"
    source: Optional[str] = None
    data_root: Optional[str] = None
    teacher: Optional[str] = None
    device: str = "auto"


@dataclass
class PlannedRun:
    request: RunRequest
    run_dir: Path
    status: str          # 'done' | 'resume' | 'new'
    sets: Dict[str, str]  # the --set values of this point, as text
    merged: List[Dict[str, str]] = field(default_factory=list)  # --set values of equal points merged into this one


def load_sweep_file(path: str) -> Dict[str, Any]:
    """A sweep file (YAML or JSON) with the keys of SWEEP_KEYS; unknown keys fail with the list."""
    text = Path(path).read_text()
    try:
        if path.endswith((".yaml", ".yml")):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
    except Exception as exc:  # yaml.YAMLError / json.JSONDecodeError, with the line and column
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
        detail = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: not valid {'YAML' if path.endswith(('.yaml', '.yml')) else 'JSON'}{at} ({detail})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a sweep file is a mapping of {', '.join(SWEEP_KEYS)}")
    unknown = sorted(set(data) - set(SWEEP_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown sweep keys {', '.join(unknown)}; known: {', '.join(SWEEP_KEYS)}")
    return data


def spec_from(data: Dict[str, Any]) -> SweepSpec:
    """A SweepSpec from a sweep file's mapping (lists may also be given as comma strings)."""
    def listed(key: str, default: List[Any]) -> List[Any]:
        v = data.get(key)
        if v is None:
            return default
        return [s.strip() for s in v.split(",") if s.strip()] if isinstance(v, str) else list(v)

    if not data.get("methods") or not data.get("datasets"):
        raise ConfigError("a sweep needs methods and datasets (e.g. --method ferd,zskt --dataset cifar10)")
    grid = {str(k): [setting_text(x) for x in (v if isinstance(v, list) else [v])] for k, v in (data.get("grid") or {}).items()}
    empty = [k for k, v in grid.items() if not v] + [k for k in ("seeds", "students")
                                                     if data.get(k) is not None and not listed(k, [])]
    if empty:
        raise ConfigError(f"{', '.join(empty)}: an empty list of values (a sweep over nothing); give at least one "
                          "value, or leave the key out")
    fixed = {str(k): setting_text(v) for k, v in (data.get("set") or {}).items()}
    cases = data.get("cases") or [{}]
    if not isinstance(cases, list) or not all(isinstance(c, dict) for c in cases):
        raise ConfigError("cases: a list of mappings of settings, e.g. [{fae: false}, {utae: false}]")
    cases = [{str(k): setting_text(v) for k, v in c.items()} for c in cases]
    return SweepSpec(methods=listed("methods", []), datasets=listed("datasets", []),
                     students=listed("students", [None]), seeds=[check_seed(s, "seeds") for s in listed("seeds", [0])],
                     grid=grid, cases=cases, fixed=fixed, preset=data.get("preset", "quick"), out=data.get("out", "runs"),
                     source=data.get("source"), data_root=data.get("data_root"), teacher=data.get("teacher"),
                     device=data.get("device", "auto"))


def plan(spec: SweepSpec) -> List[PlannedRun]:
    """Every grid point as a run request, with its folder and whether it is done, resumable or new."""
    keys = sorted(spec.grid)
    combos = list(itertools.product(*(spec.grid[k] for k in keys))) or [()]
    planned: List[PlannedRun] = []
    seen: Dict[Tuple, int] = {}  # resolved settings -> index in `planned`: equal points are one run
    for dataset, seed, student, method, case, combo in itertools.product(spec.datasets, spec.seeds, spec.students,
                                                                        spec.methods, spec.cases, combos):
        sets = {**spec.fixed, **case, **dict(zip(keys, combo))}
        overrides = parse_overrides([f"{k}={v}" for k, v in sets.items()])
        # the same overrides `dfrd-bench run` builds, so the folder name is the same as from the CLI
        for key, value in (("teacher", spec.teacher), ("student", student)):
            if value is not None:
                overrides[key] = value
        req = RunRequest(method=method, dataset=dataset, preset=spec.preset, seed=int(seed), overrides=overrides,
                         source=spec.source, data_root=spec.data_root, out=spec.out, device=spec.device)
        cfg = resolve_config(get_method(method), dataset, spec.preset, overrides)  # fails early on bad names and keys
        run_dir = Path(spec.out) / run_name_for(req, cfg)
        status = "done" if (run_dir / RESULT_FILE).exists() else "resume" if (run_dir / STATE_FILE).exists() else "new"
        point = PlannedRun(req, run_dir, status, {**sets, **({"student": student} if student else {})})
        key = (dataset, int(seed), method, json.dumps(cfg.to_dict(), sort_keys=True, default=str))
        if key not in seen:
            seen[key] = len(planned)
            planned.append(point)
            continue
        # e.g. gamma=0.1 and gamma=1/10: one run; the one already started or finished keeps its folder
        kept = planned[seen[key]]
        if STATUS_RANK[point.status] > STATUS_RANK[kept.status]:
            point, kept = kept, point
            planned[seen[key]] = kept
        kept.merged += [point.sets] + point.merged
    return planned


STATUS_RANK = {"new": 0, "resume": 1, "done": 2}


def run_sweep(planned: Sequence[PlannedRun], log: Callable[[str], None] = print) -> Tuple[int, int, List[str]]:
    """Run every unfinished point one after another; returns (ran, skipped, failures).

    Several workers may run the same sweep side by side (e.g. one per core): each point's state is
    read again just before it starts, and a point whose folder another worker holds is left to it."""
    ran, skipped, failures = 0, 0, []
    todo = [p for p in planned if p.status != "done"]
    for p in planned:
        if p.status == "done":
            skipped += 1
            log(f"skip (finished): {p.run_dir}")
    for i, p in enumerate(todo, 1):
        if (p.run_dir / RESULT_FILE).exists():   # finished by another worker since the plan was made
            skipped += 1
            log(f"[{i}/{len(todo)}] skip (finished meanwhile): {p.run_dir}")
            continue
        p.request.resume = (p.run_dir / STATE_FILE).exists()
        log(f"[{i}/{len(todo)}] {'resume' if p.request.resume else 'start'}: {p.run_dir}")
        try:
            run(p.request, log=log)
            ran += 1
        except RunFolderBusy:
            skipped += 1
            log(f"[{i}/{len(todo)}] skip (another worker is running it): {p.run_dir}")
        except Exception as exc:  # one failed point must not stop the others; reported at the end
            log_path = _write_error_log(p.run_dir, exc)
            failures.append(f"{p.run_dir}: {type(exc).__name__}: {exc} (traceback: {log_path})")
            log(f"FAILED {p.run_dir}: {exc} (traceback: {log_path})")
    return ran, skipped, failures


def _write_error_log(run_dir: Path, exc: BaseException) -> Path:
    """The failing point's full traceback, in <run dir>/error.log (the sweep's own output keeps one line)."""
    import traceback

    path = Path(run_dir) / "error.log"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    except OSError:
        pass
    return path


def command_line(p: PlannedRun, program: str = "dfrd-bench") -> str:
    """The `dfrd-bench run` command of one grid point (resumable, so safe to re-run)."""
    req = p.request
    plugins = [arg for module in plugin_modules() for arg in ("--plugin", module)]  # a method loaded with --plugin
    args = [*shlex.split(program), *plugins, "run", "--method", req.method, "--dataset", req.dataset, "--preset", req.preset,
            "--seed", str(req.seed), "--out", req.out, "--resume"]
    sets = dict(p.sets)
    for flag in ("student", "teacher"):
        if flag in req.overrides:
            args += [f"--{flag}", str(req.overrides[flag])]
            sets.pop(flag, None)
    if req.source:
        args += ["--source", req.source]
    if req.data_root:
        args += ["--data-root", req.data_root]
    for k, v in sets.items():
        args += ["--set", f"{k}={v}"]
    return " ".join(shlex.quote(a) for a in args)


def _count(mode: str, default: Optional[int] = None) -> int:
    """N of 'gpus:N', 'slurm:N', 'torchrun:N' (a whole number >= 1); `default` when there is no ':N'."""
    kind, _, text = mode.partition(":")
    if not text and default is not None:
        return default
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise ConfigError(f"--emit {mode}: write {kind}:N with N a number of GPUs >= 1, e.g. {kind}:4")
    return n


def torchrun_program(n: int) -> str:
    """The launcher of one run data-parallel over n processes on this node (a free port per launch)."""
    return f"torchrun --standalone --nproc_per_node={n} -m dfrd_bench.cli"


def emit(planned: Sequence[PlannedRun], mode: str = "local", include_done: bool = False) -> str:
    """The unfinished runs as command lines for `mode` (see EMIT_MODES)."""
    todo = [p for p in planned if include_done or p.status != "done"]
    if mode == "local":
        return "\n".join(command_line(p) for p in todo)
    if mode.startswith("gpus:"):
        n = _count(mode)
        queues: List[List[str]] = [[] for _ in range(max(1, n))]
        for i, p in enumerate(todo):
            queues[i % len(queues)].append(command_line(p))
        lines = ["# one queue per GPU; each run is resumable, so re-running this block continues where it stopped"]
        for gpu, cmds in enumerate(queues):
            if cmds:
                lines.append(f"(export CUDA_VISIBLE_DEVICES={gpu}; " + " ; ".join(cmds) + ") &")
        return "\n".join(lines + ["wait"])
    if mode == "slurm" or mode.startswith("slurm:"):
        return _slurm(todo, _count(mode) if ":" in mode else None)
    if mode == "torchrun" or mode.startswith("torchrun:"):
        n = _count(mode, default=1)
        head = (f"# one run at a time, each data-parallel over {n} processes (GPUs); resumable, so re-running continues"
                if n > 1 else "# one run at a time, one process each (torchrun:N makes each run data-parallel over N)")
        return "\n".join([head] + [command_line(p, program=torchrun_program(n)) for p in todo])
    raise ConfigError(f"unknown --emit {mode!r}: use one of {', '.join(EMIT_MODES)}")


def _slurm(todo: Sequence[PlannedRun], gpus: Optional[int]) -> str:
    """A job array, one run per task: on one GPU (`slurm`), or data-parallel over N GPUs of one node
    with torchrun (`slurm:N`)."""
    n = gpus or 1
    program = "dfrd-bench" if gpus is None else torchrun_program(n)
    body = "\n".join(f"  {shlex.quote(command_line(p, program=program))}" for p in todo)
    what = "one run per array task" + (f", data-parallel over {n} GPUs (torchrun)" if gpus else "")
    return "\n".join([
        "#!/bin/bash",
        f"#SBATCH --job-name=dfrd-sweep --array=0-{max(0, len(todo) - 1)} {'--nodes=1 ' if gpus else ''}"
        f"--gres=gpu:{n} --cpus-per-task={8 * n}",
        "#SBATCH --output=logs/%x-%A_%a.out --requeue",
        f"# {what}; a requeued task resumes from its last checkpoint",
        "RUNS=(", body, ")",
        'eval "${RUNS[$SLURM_ARRAY_TASK_ID]}"',
    ])
