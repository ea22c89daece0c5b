"""What produced a number: package versions, git commit, device, command line, time."""
from __future__ import annotations

import datetime as _dt
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

PACKAGES = ("dfrd-bench", "torch", "torchvision", "timm", "robustbench", "pyautoattack", "numpy")
REPO_ROOT = Path(__file__).resolve().parents[1]


def _version(name: str) -> Optional[str]:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def git_commit() -> Dict[str, Any]:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                                timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=5).stdout.strip() != ""
        return {"commit": commit or None, "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def device_info(device: Any = None) -> Dict[str, Any]:
    import torch

    info: Dict[str, Any] = {"device": str(device) if device is not None else "cpu",
                            "torch_threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine()}
    if device is not None and str(device).startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def provenance(device: Any = None) -> Dict[str, Any]:
    return {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "python": platform.python_version(),
        "packages": {p: _version(p) for p in PACKAGES},
        "git": git_commit(),
        **device_info(device),
    }


# ------------------------------------------------------------------ sessions of a run (start, resumes)
def session_record(event: str, device: Any = None, **extra: Any) -> Dict[str, Any]:
    """One session of a run, recorded when it starts (`event` 'start') or resumes ('resume'): the
    provenance of the process that ran that part of it, plus `extra` (the epoch it began at, ...)."""
    return {"event": event, **provenance(device), **extra}


def sessions_of(result: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The sessions a result records (`provenance.sessions`); [] for results made before they were kept."""
    return list((result.get("provenance") or {}).get("sessions") or [])


def made_dirty(result: Dict[str, Any]) -> bool:
    """Whether any part of the result came from a modified checkout: a session's git.dirty, or the
    provenance block's (all that results made before sessions were kept have)."""
    prov = result.get("provenance") or {}
    return bool((prov.get("git") or {}).get("dirty")) or any((s.get("git") or {}).get("dirty")
                                                             for s in sessions_of(result))


def spans_versions(result: Dict[str, Any]) -> bool:
    """Whether the result's sessions ran different commits or package versions."""
    sessions = sessions_of(result)
    commits = {(s.get("git") or {}).get("commit") for s in sessions}
    packages = {repr(sorted((s.get("packages") or {}).items())) for s in sessions}
    return len(commits) > 1 or len(packages) > 1


def _names(names: Sequence[str], limit: int) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def describe_provenance(results: Sequence[Dict[str, Any]], limit: int = 6) -> List[str]:
    """Footer lines for a table: the runs made (in part) from a modified checkout, and those whose
    sessions span several commits or package versions; nothing when neither applies."""
    def name(r: Dict[str, Any]) -> str:
        return Path(str(r["run_dir"])).name if r.get("run_dir") else f"{r.get('method', '?')} seed {r.get('seed', 0)}"

    dirty = sorted(name(r) for r in results if made_dirty(r))
    mixed = sorted(name(r) for r in results if spans_versions(r))
    parts = []
    if dirty:
        parts.append(f"{len(dirty)} run{'s' if len(dirty) != 1 else ''} made from a modified checkout (dirty): "
                     f"{_names(dirty, limit)}")
    if mixed:
        parts.append(f"{len(mixed)} run{'s span' if len(mixed) != 1 else ' spans'} several commits or package versions "
                     f"(resumed on other code): {_names(mixed, limit)}")
    return ["; ".join(parts)] if parts else []
