"""The results store: one JSON file per run (schema below), written atomically, read back as a table.

Schema `dfrd-bench-result/1` (see docs/results-schema.md):
  schema, kind ('eval' | 'teacher' | 'run'), id, dataset, data_source {kind, path, split, n, sha256, subset?},
  model {spec, arch, num_classes, checkpoint_sha256?}, attacks {name: {avg, worst, worst10, nsd,
  per_class, per_class_n, n, confusion, target_entropy, target_entropy_norm, seconds, max_linf}},
  settings {...}, seed, provenance {created, command, packages, git, device}, and any extra keys a
  kind adds (e.g. 'method', 'history' for distillation runs).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple, Union

from .errors import DfrdError
from .utils import atomic_write_json

SCHEMA = "dfrd-bench-result/1"
REQUIRED = ("schema", "kind", "dataset", "data_source", "model", "attacks", "provenance")
ATTACK_KEYS = ("avg", "worst", "worst10", "nsd", "per_class", "n")


class ResultError(DfrdError, ValueError):
    pass


def validate(result: Dict[str, Any]) -> None:
    """Refuse, with a one-line reason, a result that tables, figures or load_results could misread:
    missing keys, wrong types, NaN or infinite numbers, accuracies outside [0, 100] and per-class
    lists whose length is not the class count. Every write and every read (scan_results) uses it."""
    missing = [k for k in REQUIRED if k not in result]
    if missing:
        raise ResultError(f"result lacks {', '.join(missing)}")
    if result["schema"] != SCHEMA:
        raise ResultError(f"result schema {result['schema']!r} is not {SCHEMA!r}")
    for key, kind in (("kind", str), ("dataset", str), ("data_source", dict), ("model", dict), ("attacks", dict),
                      ("provenance", dict)):
        if not isinstance(result[key], kind):
            raise ResultError(f"{key} is {_shown(result[key])}, not {'a text' if kind is str else 'a mapping'}")
    if result.get("seed") is not None and not _whole(result["seed"], 0):
        raise ResultError(f"seed is {_shown(result['seed'])}, not a whole number >= 0")
    if result["kind"] == "run":
        if not isinstance(result.get("method"), str):
            raise ResultError(f"method is {_shown(result.get('method'))}, not a text")
        if not isinstance(result.get("student"), dict) or not isinstance(result["student"].get("arch"), str):
            raise ResultError("student is not a mapping with an arch")
        for key in ("teacher", "config", "overrides"):
            if result.get(key) is not None and not isinstance(result[key], dict):
                raise ResultError(f"{key} is {_shown(result[key])}, not a mapping")
        if result.get("defaults_version") is not None and not _whole(result["defaults_version"], 1):
            raise ResultError(f"defaults_version is {_shown(result['defaults_version'])}, not a whole number >= 1")
    classes = _class_count(result)
    for name, entry in result["attacks"].items():
        if not isinstance(entry, dict):
            raise ResultError(f"attack {name!r} is {_shown(entry)}, not a mapping")
        lacking = [k for k in ATTACK_KEYS if k not in entry]
        if lacking:
            raise ResultError(f"attack {name!r} lacks {', '.join(lacking)}")
        for key in ("avg", "worst", "worst10"):
            if not _number(entry[key], 0, 100):
                raise ResultError(f"attack {name!r}: {key} is {_shown(entry[key])}, not an accuracy in [0, 100]")
        if entry["nsd"] is not None and not _number(entry["nsd"], 0):
            raise ResultError(f"attack {name!r}: nsd is {_shown(entry['nsd'])}, not null or a number >= 0")
        if not _whole(entry["n"], 0):
            raise ResultError(f"attack {name!r}: n is {_shown(entry['n'])}, not a whole number >= 0")
        for key, ok, what in (("per_class", lambda v: v is None or _number(v, 0, 100), "null or accuracies in [0, 100]"),
                              ("per_class_n", lambda v: _whole(v, 0), "whole numbers >= 0")):
            if key == "per_class_n" and key not in entry:
                continue
            values = entry[key]
            if not isinstance(values, list):
                raise ResultError(f"attack {name!r}: {key} is {_shown(values)}, not a list")
            if classes is not None and len(values) != classes:
                raise ResultError(f"attack {name!r}: {key} has {len(values)} entries, not one per class ({classes})")
            bad = next((v for v in values if not ok(v)), _NONE)
            if bad is not _NONE:
                raise ResultError(f"attack {name!r}: {key} holds {_shown(bad)}; it must hold {what}")


_NONE = object()


def _number(v: Any, low: float, high: float = math.inf) -> bool:
    """A real, finite number (not a bool, not a text) in [low, high]."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and low <= v <= high


def _whole(v: Any, low: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def _shown(v: Any) -> str:
    if isinstance(v, float) and not math.isfinite(v):
        return "NaN" if math.isnan(v) else "infinite"
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def _class_count(result: Dict[str, Any]) -> Optional[int]:
    """The dataset's class count (else the model's; None when neither is known). A model whose class
    count is not its dataset's is refused (the evaluator never writes one)."""
    from .data.specs import DATASETS

    spec = DATASETS.get(result["dataset"])
    n = result["model"].get("num_classes")
    if n is not None and not _whole(n, 1):
        raise ResultError(f"model.num_classes is {_shown(n)}, not a whole number >= 1")
    if spec is not None and n is not None and n != spec.num_classes:
        raise ResultError(f"model.num_classes is {n}, but {result['dataset']} has {spec.num_classes} classes")
    return spec.num_classes if spec is not None else n


def write_result(result: Dict[str, Any], path: Union[str, Path]) -> Path:
    """Validate and write atomically. NaN or infinite numbers are refused (they are not JSON and mean
    a number could not be computed): nothing is written then."""
    result = {"schema": SCHEMA, **result}
    validate(result)
    path = Path(path)
    try:
        atomic_write_json(path, result, allow_nan=False)
    except ValueError as exc:
        raise ResultError(f"refusing to write {path}: the result holds a NaN or infinite number ({exc})") from None
    return path


def check_writable(path: Union[str, Path]) -> None:
    """Fail now, before any computing, if `path` cannot be written (a read-only --out loses no work)."""
    import tempfile

    folder = Path(path).expanduser().parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check.", delete=True):
            pass
    except OSError as exc:
        raise ResultError(f"cannot write {path} ({exc.strerror or exc}): pass an --out you can write to") from None


def read_result(path: Union[str, Path]) -> Dict[str, Any]:
    try:
        result = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ResultError(f"cannot read result {path}: {exc}") from None
    if not isinstance(result, dict):
        raise ResultError(f"cannot read result {path}: not a JSON object")
    validate(result)
    return result


def scan_results(folder: Union[str, Path]) -> Tuple[List[Dict[str, Any]], List[Tuple[str, str]]]:
    """(results, problems) under `folder`: every readable dfrd-bench result, and (path, reason) for
    every file that should be one and is not: a .json that does not parse (truncated, empty), a
    result.json of another format, or a result that fails validation. Other JSON files are ignored."""
    results: List[Dict[str, Any]] = []
    problems: List[Tuple[str, str]] = []
    for path in sorted(Path(folder).rglob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            problems.append((str(path), f"{type(exc).__name__}: {exc}"))
            continue
        is_result = isinstance(data, dict) and data.get("schema") == SCHEMA
        if not is_result:
            if path.name == "result.json":
                problems.append((str(path), "not a dfrd-bench result (no schema dfrd-bench-result/1)"))
            continue
        try:
            validate(data)
        except ResultError as exc:
            problems.append((str(path), str(exc)))
            continue
        data["_path"] = str(path)
        results.append(data)
    return results, problems


def iter_results(folder: Union[str, Path]) -> Iterable[Dict[str, Any]]:
    """Every readable result under `folder` (use scan_results to also learn which files were not)."""
    yield from scan_results(folder)[0]


def results_frame(folder: Union[str, Path]):
    """One row per (result, attack) with the summary metrics and the data source, as a DataFrame."""
    import pandas as pd

    rows: List[Dict[str, Any]] = []
    for r in iter_results(folder):
        for attack, m in r["attacks"].items():
            rows.append({
                "path": r["_path"], "kind": r["kind"], "dataset": r["dataset"],
                "model": r["model"].get("spec"), "arch": r["model"].get("arch"),
                "method": r.get("method"), "seed": r.get("seed"), "attack": attack,
                "avg": m["avg"], "worst": m["worst"], "worst10": m["worst10"], "nsd": m["nsd"], "n": m["n"],
                "source_kind": r["data_source"].get("kind"), "source_sha256": r["data_source"].get("sha256"),
            })
    return pd.DataFrame(rows)
