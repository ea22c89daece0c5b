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
from pathlib import Path
from typing import Any, Dict, Iterable, List, Tuple, Union

from .errors import DfrdError
from .utils import atomic_write_json

SCHEMA = "dfrd-bench-result/1"
REQUIRED = ("schema", "kind", "dataset", "data_source", "model", "attacks", "provenance")
ATTACK_KEYS = ("avg", "worst", "worst10", "nsd", "per_class", "n")


class ResultError(DfrdError, ValueError):
    pass


def validate(result: Dict[str, Any]) -> None:
    missing = [k for k in REQUIRED if k not in result]
    if missing:
        raise ResultError(f"result lacks {', '.join(missing)}")
    if result["schema"] != SCHEMA:
        raise ResultError(f"result schema {result['schema']!r} is not {SCHEMA!r}")
    for name, entry in result["attacks"].items():
        lacking = [k for k in ATTACK_KEYS if k not in entry]
        if lacking:
            raise ResultError(f"attack {name!r} lacks {', '.join(lacking)}")


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
