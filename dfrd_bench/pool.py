"""The synthetic-sample pool D: images stored as uint8 (as the reference code bases store PNGs),
on the training device, optionally bounded (oldest dropped first), sampled uniformly."""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch

from .acceleration import to_device


class SamplePool:
    def __init__(self, max_size: Optional[int] = None, device: torch.device | str = "cpu") -> None:
        self.max_size = max_size
        self.device = torch.device(device)
        self.images = torch.empty(0, dtype=torch.uint8, device=self.device)
        self.labels = torch.empty(0, dtype=torch.long, device=self.device)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @staticmethod
    def quantize(x: torch.Tensor) -> torch.Tensor:
        return (x.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)  # fp32 pixels (acceleration.py)

    def add(self, x: torch.Tensor, y: Optional[torch.Tensor] = None) -> None:
        """Add [0,1] images (and labels; -1 where a method has none)."""
        q = self.quantize(x).to(self.device)
        labels = (y.detach().long() if y is not None else torch.full((len(x),), -1, dtype=torch.long)).to(self.device)
        self.images = q if len(self) == 0 else torch.cat([self.images, q])
        self.labels = torch.cat([self.labels, labels])
        if self.max_size is not None and len(self) > self.max_size:
            self.images = self.images[-self.max_size:]
            self.labels = self.labels[-self.max_size:]

    def sample(self, batch_size: int, generator: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
        if len(self) == 0:
            raise RuntimeError("the synthetic pool is empty: the method's generate() returned no samples")
        idx = to_device(torch.randint(0, len(self), (batch_size,), generator=generator), self.device)
        return self.images[idx].float().div_(255.0), self.labels[idx]

    def latest(self, batch_size: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """The most recently added samples, in order (ZSKT trains on the batch just generated)."""
        if len(self) == 0:
            raise RuntimeError("the synthetic pool is empty: the method's generate() returned no samples")
        return self.images[-batch_size:].float().div_(255.0), self.labels[-batch_size:]

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return {"images": self.images.cpu(), "labels": self.labels.cpu()}

    def load_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        self.images = state["images"].to(self.device)
        self.labels = state["labels"].to(self.device)
