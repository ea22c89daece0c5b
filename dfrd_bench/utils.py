"""Small shared helpers: atomic writes, cache folder, progress bars, seeding, devices, eps parsing."""
from __future__ import annotations

import json
import os
import random
import sys
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterable, Optional, Union

import numpy as np
from .errors import InputError, WriteError


def cache_dir() -> Path:
    """$DFRD_CACHE, else $XDG_CACHE_HOME/dfrd-bench, else ~/.cache/dfrd-bench."""
    env = os.environ.get("DFRD_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dfrd-bench"


def atomic_write_bytes(path: Union[str, Path], data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename: never a half-written file.
    A failed write (a full disk, a read-only folder) raises WriteError: one line saying what to do."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise write_error(path, exc) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results and caches are meant to be shared
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise write_error(path, exc) from None
        raise


def write_error(path: Union[str, Path], exc: OSError) -> WriteError:
    """`exc` (an OSError of writing `path`) as a one-line WriteError that says what to do (same errno)."""
    import errno

    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        todo = ("free some disk space (or pass an --out on another disk), then run the same command again "
                "(a run continues from its last checkpoint with --resume)")
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        todo = "pass an --out you can write to"
    else:
        todo = "check that folder, then run the same command again"
    err = WriteError(f"cannot write {path} ({reason}): {todo}")
    err.errno, err.strerror = exc.errno, exc.strerror
    return err


def atomic_write_json(path: Union[str, Path], obj: Any, allow_nan: bool = True) -> None:
    text = json.dumps(obj, indent=2, sort_keys=False, default=_json_default, allow_nan=allow_nan)
    atomic_write_bytes(path, (text + "\n").encode())


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


def atomic_torch_save(obj: Any, path: Union[str, Path]) -> None:
    import io

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def progress(iterable: Optional[Iterable] = None, **kwargs):
    """tqdm that stays quiet when stderr is not a terminal unless DFRD_PROGRESS=1 (keeps CI logs short),
    and on every process but rank 0 of a data-parallel run (one set of bars per run)."""
    from tqdm.auto import tqdm

    env = os.environ.get("DFRD_PROGRESS")
    disable = (env == "0") if env is not None else not sys.stderr.isatty()
    disable = disable or os.environ.get("RANK", "0").strip() not in ("", "0")  # not rank 0 of a torchrun
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("leave", False)
    return tqdm(iterable, disable=disable, **kwargs)


def seed_everything(seed: int, rank: int = 0) -> "torch.Generator":  # noqa: F821
    """Seed python/numpy/torch for this process and return a torch.Generator for explicit streams.

    The rank offset gives every process of a data-parallel run its own streams.
    """
    import torch

    s = int(seed) + 1000003 * int(rank)
    random.seed(s)
    np.random.seed(s % (2**32))
    torch.manual_seed(s)
    gen = torch.Generator()
    gen.manual_seed(s)
    return gen


def pick_device(device: Optional[str] = None) -> "torch.device":  # noqa: F821
    import torch

    from .errors import DfrdError

    if device and device != "auto":
        try:
            dev = torch.device(device)
        except (RuntimeError, ValueError):
            raise DfrdError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            from .cuda_driver import cuda_unusable_reason

            # why: a CPU-only torch, no driver, a driver older than torch's CUDA needs, hidden GPUs
            raise DfrdError(f"--device {device}: CUDA cannot be used here: {cuda_unusable_reason()}")
        if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DfrdError(f"--device {device}: this machine has {torch.cuda.device_count()} GPU(s)")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    _warn_if_gpu_unusable()
    return torch.device("cpu")


_WARNED_GPU: list = []


def _warn_if_gpu_unusable() -> None:
    """--device auto on a machine with an NVIDIA driver that torch cannot use: say so (once), since the
    run would otherwise go to the CPU without a word."""
    import warnings

    from .cuda_driver import cuda_unusable_reason, driver_version

    if _WARNED_GPU:  # checked once per process
        return
    _WARNED_GPU.append(True)
    if driver_version() is None:
        return
    warnings.warn(f"--device auto runs on the CPU: this machine has an NVIDIA driver, but {cuda_unusable_reason()}",
                  RuntimeWarning, stacklevel=3)


def parse_fraction(text: Union[str, float, int]) -> float:
    """'8/255' -> 0.0313..., '0.03' -> 0.03; used for eps and step sizes on the command line."""
    if isinstance(text, (int, float)):
        return float(text)
    text = str(text).strip()
    try:
        return float(Fraction(text))
    except (ValueError, ZeroDivisionError):
        raise InputError(f"cannot read {text!r} as a number; use e.g. 8/255 or 0.031") from None


def format_eps(eps: float) -> str:
    """0.0313725 -> '8/255' when it is a multiple of 1/255 (how papers write budgets)."""
    k = eps * 255
    return f"{round(k)}/255" if abs(k - round(k)) < 1e-6 else f"{eps:g}"


def read_between_markers(path: Union[str, Path], name: str) -> str:
    """The text `replace_between_markers(path, name, body)` put there: body with one final newline."""
    text = Path(path).read_text()
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    if start not in text or end not in text:
        raise InputError(f"{path} lacks the markers {start} ... {end}")
    return text[text.index(start) + len(start) + 1: text.index(end)]


def replace_between_markers(path: Union[str, Path], name: str, body: str) -> None:
    """Atomically replace the text between `<!-- name:start -->` and `<!-- name:end -->` in `path`.

    Generated blocks (teacher cards, benchmark tables) live inside hand-written READMEs this way.
    """
    path = Path(path)
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = path.read_text() if path.exists() else ""
    if start not in text or end not in text:
        raise InputError(f"{path} lacks the markers {start} ... {end}: add them where the generated text goes")
    new = text[: text.index(start) + len(start)] + "\n" + body.rstrip("\n") + "\n" + text[text.index(end):]
    atomic_write_bytes(path, new.encode())
