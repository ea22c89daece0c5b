"""Model checkpoints: one self-describing file (architecture, dataset, normalisation, weights).

Loading uses `torch.load(weights_only=True)`, so a checkpoint can carry tensors and plain data
only, never code. A damaged file fails with one line that says what to do.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import torch

from .errors import DfrdError, first_line
from .models import MODEL_INFO, MODELS, Classifier, build_model
from .models.layouts import (Fit, Layout, Normalization, default_normalization, family_of, fit_layouts, get_layout,
                             parse_normalize)
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
               image_size: Optional[int] = None, mean=None, std=None, layout: Optional[str] = None,
               normalize: Optional[str] = None, flags: str = "") -> Classifier:
    """Load a checkpoint; foreign checkpoints need `arch` (and the dataset's classes/normalisation).

    `mean`/`std` are the dataset's. A foreign checkpoint's key layout is detected among those its
    architecture accepts (models/layouts.py) unless `layout` names one; `normalize` (none | dataset |
    m1,m2,m3/s1,s2,s3) overrides the checkpoint's or the layout's normalisation. `flags` prefixes the
    option names that errors mention (`teacher-` for a run's teacher)."""
    raw = read_checkpoint(path)
    ours = isinstance(raw, dict) and raw.get("format") == FORMAT
    chosen = parse_normalize(normalize, mean, std, flag=f"--{flags}normalize") if normalize is not None else None
    if ours:
        if layout is not None:
            raise CheckpointError(f"{path} is a dfrd-bench checkpoint, whose keys need no layout: drop --{flags}layout")
        arch = arch or raw["arch"]
        num_classes = raw["num_classes"]
        image_size = raw["image_size"]
        mean, std = raw["mean"], raw["std"]
    if arch is None:
        raise CheckpointError(f"{path} is not a dfrd-bench checkpoint: pass --{flags}arch to say which architecture "
                              "it is")
    if num_classes is None:
        raise CheckpointError(f"{path}: the number of classes is unknown; pass --dataset")
    model = build_model(arch, num_classes, image_size or 32)
    state = extract_state_dict(raw)
    # a dfrd-bench checkpoint carries its normalisation: its own (native) layout is no guess, even for an
    # architecture whose keys another code base shares (ResNet-18 and pytorch-cifar's)
    found = _pick_layout(path, arch, state, model.net.state_dict(), layout, explicit_norm=chosen is not None or ours,
                         num_classes=num_classes, image_size=image_size or 32, flags=flags)
    model.net.load_state_dict(found.state(state), strict=False)  # only BN step counters may be absent
    if chosen is None:
        chosen = (Normalization("checkpoint", tuple(mean), tuple(std), "the checkpoint") if ours
                  else default_normalization(found.layout, mean, std))
    _set_normalization(model, chosen)
    model.origin = {"layout": found.layout.name, "normalize": chosen.record()}
    return model.eval()


def _set_normalization(model: Classifier, norm: Normalization) -> None:
    model.mean.copy_(torch.tensor(norm.mean, dtype=torch.float32).view(1, -1, 1, 1))
    model.std.copy_(torch.tensor(norm.std, dtype=torch.float32).view(1, -1, 1, 1))


def _pick_layout(path, arch: str, state: Dict[str, torch.Tensor], target: Dict[str, torch.Tensor],
                 layout: Optional[str], explicit_norm: bool, num_classes: int, image_size: int, flags: str) -> Fit:
    """The one layout under which the checkpoint is exactly the model, or one line that says what to do."""
    shapes = {k: v.shape for k, v in target.items()}
    only = get_layout(arch, layout, flag=f"--{flags}layout") if layout is not None else None
    fits = fit_layouts(arch, state, shapes, only)
    exact = [f for f in fits if f.exact]
    if not exact:
        raise CheckpointError(_no_fit_message(path, arch, state, fits, only, num_classes, image_size, flags))
    # Layouts with the same keys differ only in the normalisation they default to (ours: the
    # dataset's; TRADES: none): without --normalize that choice is the user's, not ours.
    defaults = {f.layout.normalize for f in exact}
    if len(exact) > 1 and len(defaults) > 1 and not explicit_norm:
        names = " and ".join(f"{f.layout.name} (normalisation: {f.layout.normalize})" for f in exact)
        raise CheckpointError(
            f"{path} fits --{flags}arch {arch} in layouts {names}, which feed the model differently: pass "
            f"--{flags}layout {exact[-1].layout.name} (its code base) or --{flags}layout {exact[0].layout.name}, "
            f"or --{flags}normalize"
        )
    return exact[0]


def _no_fit_message(path, arch: str, state: Dict[str, torch.Tensor], fits: List[Fit], only: Optional[Layout],
                    num_classes: int, image_size: int, flags: str) -> str:
    tried = ", ".join(f.layout.name for f in fits)
    where = f"layout {only.name}" if only is not None else f"any layout it accepts (tried {tried})"
    elsewhere = _fits_elsewhere(arch, state, num_classes, image_size)
    if elsewhere is not None:
        return (f"{path} does not fit --{flags}arch {arch} in {where}, but fits --{flags}arch {elsewhere.arch} "
                f"in layout {elsewhere.layout.name}: pass --{flags}arch {elsewhere.arch}")
    best = min(fits, key=lambda f: f.cost)
    return (f"{path} does not fit --{flags}arch {arch} in {where}; closest: layout {best.layout.name} with "
            f"{best.describe()}; check --{flags}arch and the class count, or build the model with "
            f"--{flags}arch py:FILE.py:FACTORY (docs/models.md)")


def _fits_elsewhere(arch: str, state: Dict[str, torch.Tensor], num_classes: int, image_size: int) -> Optional[Fit]:
    """An exact fit with another architecture of the same family (e.g. pytorch-cifar's MobileNetV2)."""
    for other in family_of(arch):
        if other == arch or image_size not in MODEL_INFO[other]["image_sizes"]:
            continue
        with torch.device("meta"):  # only names and shapes are needed: nothing is allocated
            target = MODELS.get(other)(num_classes, image_size).state_dict()
        exact = [f for f in fit_layouts(other, state, {k: v.shape for k, v in target.items()}) if f.exact]
        if exact:
            return exact[0]
    return None
