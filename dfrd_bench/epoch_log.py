"""What a run shows per epoch: one compact line for people, and (optionally) TensorBoard.

The full record of every logged epoch stays in the result's `history` (and in the checkpoint); the
console line keeps what someone watching a run looks at (epoch, losses, learning rate, seconds, time
left), and `--tensorboard DIR` writes every scalar of the record, the class sampling weights p_c and
the synthetic sample grid where TensorBoard users look for them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import torch

from .errors import DfrdError

# what the console line shows, in this order, when the record has it: (keys, label), the first of the
# keys the record has. A method's generator loss is `gen/total` (FERD, CMI, DeepInv, Fast, DFHL) or
# `gen/loss` (a plugin's single loss, the worked example); a method with neither (ZSKT) shows no `gen`.
LINE_KEYS = ((("gen/total", "gen/loss"), "gen"), (("student/loss",), "student"), (("student/kl_clean",), "kl clean"),
             (("student/kl_adv",), "kl adv"), (("lr",), "lr"))


class TensorBoardMissing(DfrdError, ImportError):
    pass


def clock(seconds: float) -> str:
    """h:mm:ss"""
    minutes, secs = divmod(int(round(max(0.0, seconds))), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def epoch_line(record: Mapping[str, Any], epochs: int, eta_seconds: float) -> str:
    """'epoch 3/40 · gen 25.98 · student 0.488 · kl clean 0.454 · kl adv 0.495 · lr 0.1 · pool 384 · 21.9 s · left 0:14:16'."""
    parts = [f"epoch {record['epoch']}/{epochs}"]
    for keys, label in LINE_KEYS:
        value = next((record[k] for k in keys if isinstance(record.get(k), (int, float))), None)
        if value is not None:
            parts.append(f"{label} {value:.4g}")
    if "pool" in record:
        parts.append(f"pool {record['pool']}")
    parts.append(f"{record.get('seconds', 0):.1f} s")
    parts.append(f"left {clock(eta_seconds)}")
    return " · ".join(parts)


def require_tensorboard() -> None:
    """Fail before any training when --tensorboard is asked for and cannot be written."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401  (needs the tensorboard package)
    except ImportError:
        raise TensorBoardMissing("--tensorboard needs the tensorboard package: pip install 'dfrd-bench[tensorboard]'") from None


class TensorBoardLog:
    """Every scalar of each epoch record, the per-class lists (sampling weights p_c, label histogram)
    as one chart per list with a line per class, and the synthetic sample grid."""

    def __init__(self, log_dir: str, run_name: str, class_names: Sequence[str]) -> None:
        require_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        self.path = Path(log_dir) / run_name
        self.writer = SummaryWriter(log_dir=str(self.path))
        self.class_names = list(class_names)

    def record(self, record: Mapping[str, Any]) -> None:
        step = int(record["epoch"])
        for key, value in record.items():
            if key == "epoch":
                continue
            if isinstance(value, bool):
                value = float(value)
            if isinstance(value, (int, float)):
                self.writer.add_scalar(key, float(value), step)
            elif isinstance(value, (list, tuple)) and len(value) == len(self.class_names) and \
                    all(isinstance(v, (int, float)) for v in value):
                self.writer.add_scalars(key, {c: float(v) for c, v in zip(self.class_names, value)}, step)

    def samples(self, x: torch.Tensor, y: torch.Tensor, step: int, per_class: int = 8) -> None:
        """Up to `per_class` synthetic images of each class, one row per class."""
        from torchvision.utils import make_grid

        rows = []
        for c in range(len(self.class_names)):
            picked = x[y == c][:per_class]
            if len(picked):
                pad = torch.zeros(per_class - len(picked), *x.shape[1:], dtype=x.dtype)
                rows.append(torch.cat([picked.detach().float().cpu(), pad.float()]))
        if rows:
            grid = make_grid(torch.cat(rows).clamp(0, 1), nrow=per_class)
            self.writer.add_image("samples", grid, step)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


def open_tensorboard(log_dir: Optional[str], run_name: str, class_names: Sequence[str]) -> Optional[TensorBoardLog]:
    return TensorBoardLog(log_dir, run_name, class_names) if log_dir else None

