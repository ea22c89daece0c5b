"""What tables, figures and `list methods` say about a method: its `MethodInfo`.

A method declares `info = MethodInfo(...)` on its class (label, paper, family, whether it uses the
RSLAD student stage, whether it is the proposed method, its place and colour in tables and figures);
nothing in it changes how the method runs. `dfrd_bench.plugins.register_method` checks it when the
class is defined (`dfrd_bench.plugins.checked_info`). The report reads it through `method_info(name)`
and orders rows and legends with `table_order(names)`.

This module imports nothing of the suite at import time: `dfrd_bench.method` (the interface) builds on
it, and the two look-ups below reach the registry (`dfrd_bench.plugins`) only when called.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

FAMILIES: Dict[str, str] = {
    "generator": "a generator network synthesises the samples",
    "inversion": "the pixels themselves are optimised against the teacher",
    "hard-label": "the teacher answers with its top-1 label only",
    "other": "none of these (what a plugin that does not say gets)",
}


@dataclass(frozen=True)
class MethodInfo:
    """What tables, figures and `list methods` say about a method, declared on its class as `info`.

    Nothing here changes how a method runs; `register_method` checks it."""

    label: str = ""                # its name in tables and figure legends ("" = the registered name)
    paper: str = ""                # the paper it comes from ("" = the class's `paper`)
    family: str = "other"          # a key of FAMILIES
    # made robust with the shared RSLAD student stage (dfrd_bench.robust_kd; needs the `rslad`
    # setting): Table 8 gets its rslad=false / rslad=true rows
    rslad_stage: bool = False
    # the method the paper proposes: listed last, and never "the best baseline" a cell is tested against
    proposed: bool = False
    order: int = 100               # position among the baselines in tables and figures (lower first, then name)
    color: Optional[str] = None    # its matplotlib colour in figures (None: the next of the colour cycle)
    # settings a run must have to fill the method's row of the method tables (1, 2, 5), e.g. FERD's reading
    row_settings: Mapping[str, Any] = field(default_factory=dict)
    url: str = ""                  # where the paper or the reference code is


# What results say about methods whose plugin is not installed here (`method_info` in result.json,
# written by the runner): tables and figures then still show their labels, order and rows.
_RECORDED: Dict[str, MethodInfo] = {}


def info_as_dict(info: MethodInfo) -> Dict[str, Any]:
    """The JSON a result records for its method (result.json `method_info`)."""
    out = dataclasses.asdict(info)
    out["row_settings"] = dict(info.row_settings)
    return out


def remember_recorded(name: str, recorded: Mapping[str, Any]) -> None:
    """Keep the MethodInfo a result recorded for `name` (the first one seen), for when no plugin has it."""
    if name not in _RECORDED and isinstance(recorded, Mapping):
        known = {f.name for f in dataclasses.fields(MethodInfo)}
        _RECORDED[name] = MethodInfo(**{k: v for k, v in recorded.items() if k in known})


def method_info(name: str) -> MethodInfo:
    """A registered method's metadata; a method not installed here (a result made elsewhere) gets what
    its results recorded (`remember_recorded`), else its name as label and the defaults."""
    from .plugins import METHODS, load_plugins  # the registry builds on this module: imported when called

    load_plugins()
    if name in METHODS:
        return METHODS.get(name).info
    return _RECORDED.get(name) or MethodInfo(label=name)


def table_order(names: Iterable[str]) -> List[str]:
    """`names` in the order tables and figures list methods: the baselines by their `order` (then
    name), the proposed method(s) last, as in the paper."""
    def key(name: str) -> Tuple[bool, int, str]:
        info = method_info(name)
        return info.proposed, info.order, name

    return sorted(dict.fromkeys(names), key=key)
