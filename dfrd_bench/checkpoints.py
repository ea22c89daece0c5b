"""Model checkpoints: one self-describing file (architecture, dataset, normalisation, weights).

Loading uses `torch.load(weights_only=True)`, so a checkpoint can carry tensors and plain data
only, never code. A damaged file fails with one line that says what to do.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch

from .errors import DfrdError, first_line
from .models import Classifier, build_model
from .utils import atomic_torch_save

FORMAT = "dfrd-bench-model/1"


class CheckpointError(DfrdError, RuntimeError):
    pass


def sha256_file(path: Union[str, Path]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def weights_sha256(model: torch.nn.Module) -> str:
    """sha256 of a model's state (names, shapes and values, whatever the memory layout): who a model
    really is, whatever its spec or file (a teacher for resume, a model for a resumed evaluation)."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def save_model(model: Classifier, path: Union[str, Path], dataset: str, image_size: int,
               meta: Optional[Dict[str, Any]] = None) -> None:
    payload = {
        "format": FORMAT,
        "arch": model.arch,
        "dataset": dataset,
        "num_classes": model.num_classes,
        "image_size": image_size,
        "mean": model.mean.flatten().tolist(),
        "std": model.std.flatten().tolist(),
        "state_dict": {k: v.detach().cpu() for k, v in model.net.state_dict().items()},
        "meta": meta or {},
    }
    atomic_torch_save(payload, path)


def read_checkpoint(path: Union[str, Path]) -> Dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder, not a file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): re-download or re-create it")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"cannot read checkpoint {path} ({first_line(exc, 120)}); "
            "it is corrupt, truncated or holds code: re-download or re-create it"
        ) from None


def extract_state_dict(obj: Any) -> Dict[str, torch.Tensor]:
    """Accept our format, {'state_dict': ...}, {'model': ...} or a bare state dict; strip 'module.'."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict", "net"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError("checkpoint holds no state dict of tensors")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in obj.items()}


def load_model(path: Union[str, Path], arch: Optional[str] = None, num_classes: Optional[int] = None,
               image_size: Optional[int] = None, mean=None, std=None) -> Classifier:
    """Load a checkpoint; foreign checkpoints need `arch` (and the dataset's classes/normalisation)."""
    raw = read_checkpoint(path)
    ours = isinstance(raw, dict) and raw.get("format") == FORMAT
    if ours:
        arch = arch or raw["arch"]
        num_classes = raw["num_classes"]
        image_size = raw["image_size"]
        mean, std = raw["mean"], raw["std"]
    if arch is None:
        raise CheckpointError(f"{path} is not a dfrd-bench checkpoint: pass --arch to say which architecture it is")
    if num_classes is None:
        raise CheckpointError(f"{path}: the number of classes is unknown; pass --dataset")
    model = build_model(arch, num_classes, image_size or 32,
                        mean if mean is not None else (0.0, 0.0, 0.0), std if std is not None else (1.0, 1.0, 1.0))
    state = extract_state_dict(raw)
    missing, unexpected = model.net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not fit --arch {arch}: {len(missing)} missing keys (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}); check --arch and the class count"
        )
    return model.eval()
