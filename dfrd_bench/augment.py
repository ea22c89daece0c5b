"""Batched, tensor-side image augmentations (no per-image Python loop), shared by teacher training
and the method plugins."""
from __future__ import annotations

from typing import Optional

import torch

from .acceleration import to_device


def random_crop_flip(x: torch.Tensor, padding: int = 4, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Zero-pad by `padding`, take a random crop of the original size, flip half the batch."""
    n, c, h, w = x.shape
    dev = x.device
    padded = torch.nn.functional.pad(x, (padding,) * 4)
    # drawn on the generator's device (the CPU for a run's seeded stream), copied without a host sync
    oy = to_device(torch.randint(0, 2 * padding + 1, (n,), generator=generator), dev)
    ox = to_device(torch.randint(0, 2 * padding + 1, (n,), generator=generator), dev)
    flip = to_device(torch.rand(n, generator=generator), dev) < 0.5
    rows = oy[:, None] + torch.arange(h, device=dev)[None]
    cols = ox[:, None] + torch.arange(w, device=dev)[None]
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    batch = torch.arange(n, device=dev)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


def _affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    return torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def random_resized_crop(x: torch.Tensor, scale=(0.25, 1.0), ratio=(3 / 4, 4 / 3), flip: bool = True,
                        generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Differentiable batched RandomResizedCrop (+ horizontal flip): each image gets its own box,
    resampled back to full size (CMI's local views, DFHL's strong augmentation)."""
    n = x.shape[0]
    area = torch.empty(n).uniform_(scale[0], scale[1], generator=generator)
    log_r = torch.empty(n).uniform_(float(torch.log(torch.tensor(ratio[0]))), float(torch.log(torch.tensor(ratio[1]))),
                                    generator=generator)
    r = torch.exp(log_r)
    w = torch.sqrt(area * r).clamp(max=1.0)
    h = torch.sqrt(area / r).clamp(max=1.0)
    cx = (torch.rand(n, generator=generator) * 2 - 1) * (1 - w)
    cy = (torch.rand(n, generator=generator) * 2 - 1) * (1 - h)
    sx = torch.where(torch.rand(n, generator=generator) < 0.5, -w, w) if flip else w
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sx, cx, h, cy
    return _affine(x, theta.to(x.device, x.dtype))


def random_rotation(x: torch.Tensor, degrees: float = 15.0, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Differentiable batched rotation by a uniform angle in [-degrees, degrees]."""
    n = x.shape[0]
    angle = (torch.rand(n, generator=generator) * 2 - 1) * degrees * torch.pi / 180
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
    return _affine(x, theta.to(x.device, x.dtype))
