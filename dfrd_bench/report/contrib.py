"""What plugins contribute to the report layer, and how it is loaded: the core renders, plugins declare.

The core draws the method tables (1, 2, 5: every method with runs), Table 4 (teachers), Table 8 (each
method on the RSLAD stage), the variants and runs lists and the generic figures for any method, from
the results alone. Anything that belongs to one method — its ablation tables, its figures, its
claims, the numbers its paper published — is declared by that method's plugin in a report module:

    class MyMethod(Method):
        report_module = "mypackage.report"      # imported when tables, figures or claims are drawn

and in `mypackage/report.py`:

    from dfrd_bench.report.tables import TABLES, RowSpec, TableSpec
    from dfrd_bench.report.plots import register_figure
    from dfrd_bench.report.claims import register_claims
    from dfrd_bench.report.contrib import register_published, register_history_keys

    TABLES.register("my-ablation", help="...")(TableSpec("my-ablation", ...))
    register_figure("my-fig")(plot_function)
    register_claims("mymethod")(claims_function)

A plugin that is not a method registers the same way from a module named in the entry-point group
`dfrd_bench.reports`. `load_contributions()` imports them all once; it is called before a table,
figure or claim is resolved by name.
"""
from __future__ import annotations

import importlib
import json
import logging
from importlib import metadata
from pathlib import Path
from typing import Any, Dict, List, Sequence, Union

from ..errors import DfrdError

log = logging.getLogger(__name__)
REPORT_ENTRY_POINT_GROUP = "dfrd_bench.reports"

_PUBLISHED: List[Path] = []       # published-numbers files, in registration order
_HISTORY_KEYS: List[str] = ["student/loss", "student/kl_adv", "gen/total"]  # training curves of Fig. 8
_LOADED = False


class ContributionError(DfrdError, ValueError):
    pass


def register_published(path: Union[str, Path]) -> None:
    """A JSON file of published numbers ({"tables": {number: {"rows": {...}}}, ...}, docs/reporting.md)
    that `--paper` puts beside ours; files registered later add tables, never replace one."""
    path = Path(path)
    if path not in _PUBLISHED:
        _PUBLISHED.append(path)


def published_files() -> List[Path]:
    return list(_PUBLISHED)


def load_published(paths: Sequence[Union[str, Path]] = ()) -> Dict[str, Any]:
    """The published numbers of every registered file (or of `paths`), merged by table number."""
    merged: Dict[str, Any] = {"tables": {}}
    for path in (paths or _PUBLISHED):
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ContributionError(f"cannot read the published numbers {path}: {exc}") from None
        for key, value in data.items():
            if key == "tables":
                for number, table in value.items():
                    merged["tables"].setdefault(number, table)
            else:
                merged.setdefault(key, value)
    return merged


def register_history_keys(*keys: str) -> None:
    """History keys (a method's own logs) that Fig. 8 draws as training curves, after the common ones."""
    for key in keys:
        if key not in _HISTORY_KEYS:
            _HISTORY_KEYS.append(key)


def history_keys() -> List[str]:
    return list(_HISTORY_KEYS)


def load_contributions(refresh: bool = False) -> None:
    """Import every method plugin, then every report module they name (`Method.report_module`) and
    those of the entry-point group `dfrd_bench.reports`, once per process."""
    global _LOADED
    if _LOADED and not refresh:
        return
    from ..method import METHODS, load_plugins

    load_plugins()
    _LOADED = True
    for name in METHODS.names():
        module = getattr(METHODS.get(name), "report_module", None)
        if module:
            importlib.import_module(module)
    for ep in metadata.entry_points(group=REPORT_ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as exc:  # a broken third-party report plugin must not break the tables
            log.warning("could not load report plugin %s (%s): %s", ep.name, ep.value, exc)
