"""Resumable evaluation: the progress of `evaluate()` in one file, rewritten atomically after every batch.

The file holds the finished attacks' entries and, for the attack in progress, the predictions of its
finished batches, its largest perturbation so far and its generator's state before the next batch.
A killed evaluation therefore continues at the first unfinished batch and, on a CPU, ends with the
numbers of an uninterrupted one bit for bit. The file carries the identity of its evaluation (model
weights, data, attack settings, batch sizes, attack list, device type): a file of another
evaluation is refused with one line, never mixed in.

AutoAttack is resumed at the same granularity, one batch of our loop (`AttackSettings.batch_size`
images). pyautoattack's own `state_path` is not used: in pyautoattack 0.2.0 a saved state cannot be
restored (the attack set is written as its `str`, so every restore raises), its restore path fails
on an unbound `y_adv`, it keeps no adversarial examples (points broken before the kill would come
back as clean images and count as robust), and it writes its file in place, not atomically.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch

from .errors import DfrdError, first_line
from .utils import atomic_torch_save

FORMAT = "dfrd-bench-eval-progress/1"


class EvalProgressError(DfrdError, RuntimeError):
    pass


def evaluation_identity(model: torch.nn.Module, data: Any, attacks: Sequence[str], settings: Any, batch_size: int,
                        attack_limits: Dict[str, int], device: torch.device) -> Dict[str, Any]:
    """What must match for stored progress to be reused: everything a prediction depends on."""
    from .checkpoints import weights_sha256
    from .data.sources import content_sha256

    identity = {
        "model_weights_sha256": weights_sha256(model),
        "num_classes": data.num_classes,
        "data_sha256": content_sha256(data.x, data.y),  # the decoded pixels and labels actually evaluated
        "data_subset": data.source.get("subset"),
        "attacks": list(attacks),
        "attack_limits": dict(sorted(attack_limits.items())),
        "settings": settings.resolved(),
        "seed": settings.seed,
        "batch_size": batch_size,
        "aa_batch_size": settings.batch_size,
        "channels_last": settings.channels_last,  # float rounding differs with the layout
        "device": device.type,                    # so do CPU and GPU kernels
    }
    norm = getattr(model, "origin", {}).get("normalize")
    if norm and norm.get("source") != "the checkpoint":
        # mean/std are not in the weights: a checkpoint fed differently (--normalize, --layout) is
        # another model. Absent for dfrd-bench checkpoints, so their older progress files still match.
        identity["model_normalize"] = {"mean": norm["mean"], "std": norm["std"]}
    return json.loads(json.dumps(identity, default=str))  # as it reads back from the file


@dataclass
class AttackCursor:
    """Where one attack stands: predictions so far (-1: not yet), which points are attacked, the next
    batch of the attacked points, the largest perturbation so far, the attack's generator state
    before the next batch (None: fresh) and the seconds spent so far."""

    pred: torch.Tensor
    attacked: torch.Tensor
    next_batch: int
    n_batches: int
    max_linf: float = 0.0
    gen_state: Optional[torch.Tensor] = None
    seconds: float = 0.0

    def to_dict(self) -> Dict[str, Any]:
        return {"pred": self.pred, "attacked": self.attacked, "next_batch": self.next_batch,
                "n_batches": self.n_batches, "max_linf": self.max_linf, "gen_state": self.gen_state,
                "seconds": self.seconds}

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "AttackCursor":
        return cls(d["pred"], d["attacked"], int(d["next_batch"]), int(d["n_batches"]), float(d["max_linf"]),
                   d["gen_state"], float(d["seconds"]))


class EvalProgress:
    """The finished attacks, the attack in progress and the clean predictions of one evaluation.

    With no path it only keeps them in memory, so the evaluator's loop is the same either way. A
    data-parallel evaluation (distributed.EvalShard) keeps this one file: every rank reads it, rank 0
    writes it after every round of one batch per rank, with the predictions of all ranks merged.
    """

    def __init__(self, path: Optional[Union[str, Path]], identity: Dict[str, Any]) -> None:
        self.path = Path(path) if path is not None else None
        self.identity = identity
        self.done: Dict[str, Dict[str, Any]] = {}
        self.current: Optional[Tuple[str, AttackCursor]] = None
        self.clean_pred: Optional[torch.Tensor] = None  # clean predictions on the whole split
        self.resumed = False
        self._done_text = "{}"  # the finished entries as JSON, re-made only when an attack finishes

    @classmethod
    def open(cls, path: Optional[Union[str, Path]], identity: Dict[str, Any]) -> "EvalProgress":
        """The stored progress at `path` when there is one (checked against `identity`), else a fresh one."""
        progress = cls(path, identity)
        if progress.path is not None and progress.path.exists():
            progress._load()
        return progress

    # -------------------------------------------------------------------------------------- reading
    def finished(self, name: str) -> Optional[Dict[str, Any]]:
        return self.done.get(name)

    def cursor(self, name: str) -> Optional[AttackCursor]:
        """The stored cursor of `name` when it was the attack in progress."""
        return self.current[1] if self.current is not None and self.current[0] == name else None

    def describe(self) -> str:
        """'pgd20, cw done; aa at batch 3/8' (the batch to run next, counted from 1)."""
        parts = [", ".join(self.done) + " done"] if self.done else []
        if self.current is not None:
            name, c = self.current
            at = f"at batch {c.next_batch + 1}/{c.n_batches}" if c.next_batch < c.n_batches else "all batches done"
            parts.append(f"{name} {at}")
        return "; ".join(parts) or "nothing done"

    # -------------------------------------------------------------------------------------- writing
    def batch_done(self, name: str, cursor: AttackCursor) -> None:
        self.current = (name, cursor)
        self._save()

    def attack_done(self, name: str, entry: Dict[str, Any]) -> None:
        self.done[name] = entry
        self._done_text = json.dumps(self.done)
        self.current = None
        self._save()

    def _save(self) -> None:
        if self.path is None:
            return
        current = None if self.current is None else {"attack": self.current[0], **self.current[1].to_dict()}
        atomic_torch_save({"format": FORMAT, "identity": json.dumps(self.identity), "done": self._done_text,
                           "current": current, "clean_pred": self.clean_pred}, self.path)

    def _load(self) -> None:
        assert self.path is not None
        stored = self._read(self.path)
        self._check_identity(json.loads(stored["identity"]))
        self.done = json.loads(stored["done"])
        self._done_text = stored["done"]
        current = stored["current"]
        self.current = None if current is None else (current["attack"], AttackCursor.from_dict(current))
        self.clean_pred = stored["clean_pred"]
        self.resumed = True

    @staticmethod
    def _read(path: Path) -> Dict[str, Any]:
        try:
            stored = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # truncated, empty or foreign files raise zip / pickle / runtime errors
            raise EvalProgressError(f"{path} cannot be read ({first_line(exc, 120)}): it was cut short or is not an "
                                    "evaluation progress file; delete it to evaluate from scratch") from None
        if not isinstance(stored, dict) or stored.get("format") != FORMAT:
            raise EvalProgressError(f"{path} is not a {FORMAT} file; delete it to evaluate from scratch")
        return stored

    def _check_identity(self, stored: Dict[str, Any]) -> None:
        """Refuse the progress of another evaluation, naming what differs."""
        old, new = _flatten(stored), _flatten(self.identity)
        differs = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
        if differs:
            shown = "; ".join(f"{k}: {_short(old.get(k))} in the file, {_short(new.get(k))} now" for k in differs[:3])
            more = f" and {len(differs) - 3} more" if len(differs) > 3 else ""
            raise EvalProgressError(f"{self.path} holds the progress of another evaluation ({shown}{more}): delete it "
                                    "to evaluate from scratch, or evaluate with the same model, data and settings")


def _flatten(d: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    """{'settings': {'pgd20': {'steps': 20}}} -> {'settings.pgd20.steps': 20}, so an error names the setting."""
    out: Dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _short(v: Any) -> str:
    """A value for a one-line error: sha256s cut to 12 characters, anything else to 60."""
    if isinstance(v, str) and len(v) > 16:
        return repr(v[:12] + "...")
    return json.dumps(v, default=str)[:60]
