"""Whether torch can use an NVIDIA GPU here, and if not, why, in one sentence: the driver's version
(read without starting CUDA), the oldest driver a torch build's CUDA runs on, and the reason
`pick_device` and `doctor` report. Standard library only (torch imported when asked), so the
device choice in utils.py does not import the whole `doctor` report and what it reads."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import warnings
from pathlib import Path
from typing import Optional, Tuple

# The oldest Linux driver each CUDA major version runs on (NVIDIA's CUDA compatibility table, minor
# version compatibility: any 12.x toolkit runs on a >= 525.60.13 driver, any 13.x on >= 580.65.06).
MIN_LINUX_DRIVER = {11: "450.80.02", 12: "525.60.13", 13: "580.65.06"}
# What `pip install torch` can be pointed at for an older driver (PyTorch's own wheel index).
OLDER_TORCH_HINT = "pip install torch torchvision --index-url https://download.pytorch.org/whl/cu126"


def _version_tuple(text: str) -> Tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


def driver_version() -> Optional[str]:
    """The loaded NVIDIA kernel driver's version ('550.54.15'), or None when none is loaded. Read from
    /proc (no CUDA call: it works when CUDA itself cannot start), else from nvidia-smi."""
    proc = Path("/proc/driver/nvidia/version")
    if proc.is_file():
        match = re.search(r"Kernel Module(?: for [^ ]+)?\s+(\d+\.\d+(?:\.\d+)?)", proc.read_text(errors="replace"))
        if match:
            return match.group(1)
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20).stdout.strip().splitlines()
            return out[0].strip() if out and out[0].strip() else None
        except (OSError, subprocess.SubprocessError):
            return None
    return None


def required_driver(cuda_version: Optional[str]) -> Optional[str]:
    """The oldest Linux driver a torch built for `cuda_version` ('13.0') runs on; None if unknown."""
    if not cuda_version:
        return None
    return MIN_LINUX_DRIVER.get(_version_tuple(cuda_version)[0])


def driver_fits(driver: Optional[str], cuda_version: Optional[str]) -> Optional[bool]:
    """Whether `driver` runs a torch built for `cuda_version`; None when either is unknown."""
    needed = required_driver(cuda_version)
    if not driver or not needed:
        return None
    return _version_tuple(driver) >= _version_tuple(needed)


def cuda_unusable_reason() -> str:
    """Why torch cannot use a GPU here, in one sentence that says what to do."""
    import torch

    built = torch.version.cuda
    if not built:
        return (f"this torch ({torch.__version__}) is built without CUDA: install a CUDA build "
                "(`pip install torch torchvision`; PyPI's Linux wheels are CUDA builds) or use --device cpu")
    driver = driver_version()
    if driver is None:
        return ("no NVIDIA driver is loaded on this machine (no /proc/driver/nvidia/version, no nvidia-smi): "
                "run on a machine with an NVIDIA GPU, or use --device cpu")
    if driver_fits(driver, built) is False:
        return (f"torch {torch.__version__} is built for CUDA {built}, which needs an NVIDIA driver >= "
                f"{required_driver(built)}, and this machine's driver is {driver}: update the driver, or install a "
                f"torch built for an older CUDA ({OLDER_TORCH_HINT})")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.device_count()
    said = next((str(w.message).splitlines()[0] for w in caught if "CUDA" in str(w.message)), "")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return (f"NVIDIA driver {driver} is loaded but torch sees no GPU"
            + (f" ({said})" if said else "")
            + (f"; CUDA_VISIBLE_DEVICES={visible!r}" if visible is not None else "")
            + ": check `nvidia-smi` and CUDA_VISIBLE_DEVICES, or use --device cpu")
