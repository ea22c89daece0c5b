"""Per-image outcomes for results made before the evaluator recorded them (`dfrd-bench outcomes`).

A result's attack entries carry, since issue 26, which test images the model got right
(`metrics.encode_outcomes`), so two methods evaluated on the same images can be compared paired.
Older results lack them. This module re-evaluates a finished run's committed student with the run's
recorded evaluation settings (same data, seed, eps, batch sizes, subset rule) and adds the outcomes:

- when the re-evaluation's confusion matrix equals the recorded one, the outcomes are added to the
  recorded entry and every recorded number stays as it was (`outcomes_added[].matched`);
- when it differs (another torch build can round a few attacked images the other way), the entry is
  replaced by the re-evaluation, so the numbers and the outcomes in the file always agree, and the
  recorded entry is kept under `attacks_before_reevaluation` with the count of images that changed.

Nothing else of the result changes; the file is rewritten atomically. The re-evaluation is resumable
(a progress file beside the result, removed when the result is written).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from .errors import DfrdError

PROGRESS_FILE = "outcomes-progress.pt"


class OutcomesError(DfrdError, ValueError):
    pass


def _read(path: Path) -> Dict[str, Any]:
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise OutcomesError(f"{path} cannot be read as a result ({exc.__class__.__name__}): pass a result.json") from None
    if result.get("kind") != "run":
        raise OutcomesError(f"{path} is a result of kind {result.get('kind')!r}: outcomes are added to distillation "
                            "runs (kind 'run'); re-evaluate other models with `dfrd-bench eval`")
    return result


def missing_attacks(result: Dict[str, Any], attacks: Sequence[str]) -> List[str]:
    """The attacks of `attacks` that the result evaluated and holds no outcomes for."""
    return [a for a in attacks if a in result["attacks"] and "outcomes" not in result["attacks"][a]]


def add_outcomes(result_path: str | Path, attacks: Sequence[str], device: Optional[str] = None,
                 data_root: Optional[str] = None, log: Optional[Callable[[str], None]] = None) -> Dict[str, Any]:
    """Re-evaluate the run of `result_path` under `attacks` and write their per-image outcomes into it.

    Returns {attack: {'matched': bool, 'images_changed': int}} for the attacks evaluated now (attacks
    that already hold outcomes, or that the run did not evaluate, are skipped)."""
    from .attacks import AttackSettings
    from .checkpoints import sha256_file
    from .data import load_split
    from .evaluator import evaluate
    from .provenance import provenance
    from .store import write_result
    from .teachers import load_teacher
    from .utils import pick_device

    path = Path(result_path)
    result = _read(path)
    todo = missing_attacks(result, attacks)
    if not todo:
        return {}
    run_dir = path.parent
    student = run_dir / "student.pt"
    want = result["model"].get("checkpoint_sha256")
    if not student.is_file() or sha256_file(student) != want:
        raise OutcomesError(f"{student} is missing or is not the student this result evaluated (sha256 "
                            f"{str(want)[:12]}...): outcomes need the run's own checkpoint")
    cfg, seed = result["config"], int(result["seed"])
    test = load_split(result["dataset"], "test", None, data_root)
    if test.source.get("sha256") != result["data_source"].get("sha256"):
        raise OutcomesError(f"the {result['dataset']} test split found ({test.source.get('path')}) is not the one the "
                            "result evaluated (sha256 differs): point --data-root at the data the run used")
    data = test.subset(cfg.get("eval_limit"), seed=seed)
    settings = AttackSettings(eps=cfg["eps"], seed=seed, batch_size=cfg["eval_batch_size"],
                              channels_last=cfg.get("channels_last", True))
    recorded = {k: v for k, v in result["settings"].items() if k in settings.resolved()}
    if json.loads(json.dumps(settings.resolved())) != recorded:
        raise OutcomesError(f"{path}: the recorded attack settings differ from what this code would run; "
                            "outcomes from other settings would not belong to the recorded numbers")
    aa_limit = cfg.get("aa_limit")
    limits = {"aa": aa_limit} if aa_limit and aa_limit < len(data) else {}
    model = load_teacher(str(student), result["dataset"])
    dev = pick_device(device)
    progress_path = run_dir / PROGRESS_FILE
    out = evaluate(model, data, todo, settings, device=str(dev), batch_size=cfg["eval_batch_size"],
                   attack_limits=limits, log=log, progress_path=progress_path)
    report = {}
    for name in todo:
        new, old = out["attacks"][name], result["attacks"][name]
        changed = int(np.abs(np.asarray(new["confusion"]) - np.asarray(old["confusion"])).sum() // 2)
        if changed == 0:
            old["outcomes"] = new["outcomes"]
        else:
            result.setdefault("attacks_before_reevaluation", {})[name] = old
            result["attacks"][name] = new
        report[name] = {"matched": changed == 0, "images_changed": changed}
    result.setdefault("outcomes_added", []).append({"attacks": report, "provenance": provenance(dev)})
    result.pop("schema", None)
    write_result(result, path)
    progress_path.unlink(missing_ok=True)
    return report
