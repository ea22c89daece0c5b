"""Models the zoo does not know: `py:` factories, TorchScript files and wrapped external modules.

- `py:path/to/file.py:factory` or `py:package.module:factory` names a function that builds the
  network (called with `num_classes=` when it takes it); a checkpoint, if given, is loaded into it
  with the usual weights-only reader. Its stages (FERD's layer l, attention transfer) are read by
  hooks on the module as it is, when models/stages.py knows them; otherwise it is opaque.
- A TorchScript file (torch.jit.save) carries its own architecture and is recognised by its
  archive (a `code/` folder and `constants.pkl`). It can be evaluated; its layers cannot be hooked,
  so it cannot be the teacher of a method that reads BatchNorm statistics.

Both run code the user supplies (Python, or TorchScript's restricted language) by design: name
only files you trust. Plain checkpoints are still read with `weights_only=True`.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import torch

from .checkpoints import CheckpointError, extract_state_dict, read_checkpoint, sha256_file
from .errors import InputError, first_line
from .models import Classifier
from .models.layouts import NONE, Normalization, fit, NATIVE_LAYOUT

PY_PREFIX = "py:"
PY_SYNTAX = "py:path/to/file.py:factory or py:package.module:factory"


# ------------------------------------------------------------------------------------------------
# Wrapping any module as a Classifier
# ------------------------------------------------------------------------------------------------
def wrap_external(model: torch.nn.Module, num_classes: int, arch: str,
                  mean: Sequence[float] = NONE[0], std: Sequence[float] = NONE[1]) -> Classifier:
    """A Classifier around `model` as it is: its forward runs unchanged and its stages, if any, are read
    by hooks (models/stages.py). The default mean/std suit models that normalise inside."""
    return Classifier(model, num_classes, mean, std, arch=arch)


def check_logits(model: Classifier, num_classes: int, image_size: int, what: str) -> None:
    """One forward pass on a blank image: the model must answer with one logit per class."""
    try:
        with torch.no_grad():
            out = model.eval()(torch.zeros(1, 3, image_size, image_size))
    except Exception as exc:
        raise InputError(f"{what} fails on a 1x3x{image_size}x{image_size} image ({first_line(exc, 120)}): "
                         "it must take [0, 1] NCHW images of the dataset's size") from exc
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise InputError(f"{what} returns {shape} for one image, not (1, {num_classes}) logits: "
                         "return only the logits, for the dataset's classes")


def _set_origin(model: Classifier, norm: Normalization, **extra: Any) -> Classifier:
    model.origin = {**extra, "normalize": norm.record()}
    return model


# ------------------------------------------------------------------------------------------------
# TorchScript
# ------------------------------------------------------------------------------------------------
def is_torchscript(path: Union[str, Path]) -> bool:
    """A torch.jit.save archive: a zip with the scripted code beside the tensors."""
    path = Path(path)
    if not path.is_file() or not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any("/code/" in n for n in names) and any(n.endswith("constants.pkl") for n in names)


def load_torchscript(path: Union[str, Path], num_classes: int, image_size: int, norm: Normalization) -> Classifier:
    try:
        with warnings.catch_warnings():  # torch 2.9+ marks TorchScript deprecated; the file is still read
            warnings.simplefilter("ignore", FutureWarning)
            scripted = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise CheckpointError(f"cannot load TorchScript file {path} ({first_line(exc, 120)}): re-export it "
                              "with torch.jit.save") from None
    model = wrap_external(scripted, num_classes, "torchscript", norm.mean, norm.std)
    check_logits(model, num_classes, image_size, f"TorchScript model {path}")
    return _set_origin(model, norm, format="torchscript")


# ------------------------------------------------------------------------------------------------
# py: factories
# ------------------------------------------------------------------------------------------------
def _split_spec(spec: str) -> Tuple[str, str]:
    target, sep, name = spec[len(PY_PREFIX):].rpartition(":")
    if not sep or not target or not name.isidentifier():
        raise InputError(f"{spec!r}: write {PY_SYNTAX}")
    return target, name


def _import_file(path: Path) -> Any:
    if not path.is_file():
        raise InputError(f"{path} does not exist: give {PY_SYNTAX}")
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(f"dfrd_user_model_{digest}", path)
    module = importlib.util.module_from_spec(spec)
    # The file's folder goes first on the path while it runs, so it can import its neighbours
    # (`from models.resnet import ResNet18`), as it would when run from its own repository.
    sys.path.insert(0, str(path.resolve().parent))
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise InputError(f"importing {path} failed ({first_line(exc, 120)}): fix the file or its imports") from exc
    finally:
        sys.path.remove(str(path.resolve().parent))
    return module


def load_factory(spec: str) -> Tuple[Callable[..., Any], Dict[str, Any]]:
    """The factory a `py:` spec names, and what identifies its code (file and sha256)."""
    target, name = _split_spec(spec)
    if target.endswith(".py"):
        module = _import_file(Path(target).expanduser())
    else:
        try:
            module = importlib.import_module(target)
        except Exception as exc:
            raise InputError(f"cannot import {target} ({first_line(exc, 120)}): put it on PYTHONPATH, "
                             f"or give a file as {PY_SYNTAX}") from exc
    factory = getattr(module, name, None)
    if not callable(factory):
        found = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise InputError(f"{spec}: {target} has no function {name!r}; it has: {', '.join(found[:12]) or 'none'}")
    source = getattr(module, "__file__", None)
    info = {"factory": spec}
    if source and Path(source).is_file():
        info.update(factory_file=str(source), factory_sha256=sha256_file(source))
    return factory, info


def _call_factory(factory: Callable[..., Any], spec: str, num_classes: int) -> torch.nn.Module:
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    takes = "num_classes" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    try:
        net = factory(num_classes=num_classes) if takes else factory()
    except Exception as exc:
        raise InputError(f"{spec} raised {first_line(exc, 120)}: it must build the model with no argument "
                         "but num_classes") from exc
    if not isinstance(net, torch.nn.Module):
        raise InputError(f"{spec} returned {type(net).__name__}, not a torch.nn.Module")
    return net


def load_weights(net: torch.nn.Module, path: Union[str, Path], what: str) -> None:
    """The checkpoint into the factory's module, keys as its code names them (wrappers and `module.` stripped)."""
    state = extract_state_dict(read_checkpoint(path))
    target = net.state_dict()
    result = fit(NATIVE_LAYOUT, what, state, {k: v.shape for k, v in target.items()})
    if not result.exact:
        raise CheckpointError(f"{path} does not fit the model {what} builds: {result.describe()}; "
                              "check the factory's arguments and the class count")
    net.load_state_dict(result.state(state), strict=False)  # only BN step counters may be absent


def load_py_model(spec: str, num_classes: int, image_size: int, norm: Normalization,
                  weights: Optional[Union[str, Path]] = None) -> Classifier:
    """Build the model a `py:` spec names; load `weights` into it when given."""
    factory, info = load_factory(spec)
    net = _call_factory(factory, spec, num_classes)
    if weights is not None:
        load_weights(net, weights, spec)
    model = wrap_external(net.eval(), num_classes, spec, norm.mean, norm.std)
    check_logits(model, num_classes, image_size, spec)
    return _set_origin(model, norm, **info)
