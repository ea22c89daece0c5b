"""The image generator the generator-based methods share (the CMI / Fast-Datafree architecture):
Linear -> BN -> [upsample, conv, BN, LeakyReLU] x 2 -> conv -> sigmoid, so outputs are [0,1] images,
always fp32 (it runs outside any autocast).

With `num_classes` set it is conditional, g(z, y): the label's learned embedding multiplies z
(FERD's Algorithm 1 writes g(z, y)); without, it is fed noise only (CMI, Fast, FERD's released code).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .acceleration import fp32_region

# How a generator is (re-)initialised: the DFKD authors' `reset_model` (CMI's and FERD's released code),
# or PyTorch's default initialisation of each layer.
GENERATOR_INITS = ("dcgan", "default")


class Generator(nn.Module):
    def __init__(self, latent_dim: int = 256, width: int = 64, image_size: int = 32, channels: int = 3,
                 num_classes: Optional[int] = None) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.init_size = image_size // 4
        self.embed = nn.Embedding(num_classes, latent_dim) if num_classes else None
        self.l1 = nn.Sequential(nn.Linear(latent_dim, width * 2 * self.init_size ** 2))
        self.conv_blocks = nn.Sequential(
            nn.BatchNorm2d(width * 2),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(width * 2, width * 2, 3, 1, 1, bias=False),
            nn.BatchNorm2d(width * 2),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(width * 2, width, 3, 1, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(width, channels, 3, 1, 1),
            nn.Sigmoid(),
        )
        self.width = width

    def forward(self, z: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.embed is not None:
            if y is None:
                raise ValueError("this generator is conditional: pass labels y")
        # fp32 images whatever autocast surrounds the call (precision rule 2, dfrd_bench/acceleration.py):
        # its output is what every later pass and attack starts from. Contiguous whatever the layout of
        # the weights (ctx.place_generator), so what reads the images never sees the difference.
        with fp32_region(z.device):
            z = z.float()
            if self.embed is not None:
                z = z * self.embed(y)
            h = self.l1(z).view(z.shape[0], self.width * 2, self.init_size, self.init_size)
            return self.conv_blocks(h).contiguous()

    def reinit_first_layers(self, generator: Optional[torch.Generator] = None) -> None:
        """Fast-Datafree's late re-initialisation (`reset_l0`): the first linear layer's weight and the
        first BatchNorm's weight drawn from N(0, 0.02), both biases set to 0, as its code does (a BN
        scale near 0, not PyTorch's default 1). Draws come from `generator` (the run's) when given,
        on the CPU, so a resumed run draws the same numbers on any device."""
        with torch.no_grad():
            for layer in (self.l1[0], self.conv_blocks[0]):
                layer.weight.copy_(torch.empty(layer.weight.shape).normal_(0.0, 0.02, generator=generator))
                layer.bias.zero_()


def dcgan_init_(module: nn.Module) -> None:
    """The authors' code's `reset_model` (CMI's `datafree/utils`, FERD's `IBD_module_cmi.py`): conv and
    linear weights N(0, 0.02), BN scales N(1, 0.02), biases 0. Draws from torch's global RNG, as theirs."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
            m.reset_running_stats()


def reinit_generator_(generator: nn.Module, scheme: str) -> None:
    """Re-initialise every layer of `generator` by `scheme` (one of GENERATOR_INITS)."""
    if scheme == "dcgan":
        dcgan_init_(generator)
    elif scheme == "default":
        for m in generator.modules():
            if m is not generator and hasattr(m, "reset_parameters"):
                m.reset_parameters()
    else:
        raise ValueError(f"unknown generator initialisation {scheme!r}: one of {', '.join(GENERATOR_INITS)}")
