"""CIFAR-style ResNets: ResNet-18/34 (3x3 stride-1 stem), the small ResNet-6n+2 family
(ResNet-8/20, He et al. 2016) for CPU runs, and PreActResNet-18/34 (also at 64x64)."""
from __future__ import annotations

from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .base import StagedNet, register_model


def _shortcut(in_planes: int, planes: int, stride: int, with_bn: bool = True) -> nn.Module:
    if stride == 1 and in_planes == planes:
        return nn.Sequential()
    layers: List[nn.Module] = [nn.Conv2d(in_planes, planes, 1, stride, bias=False)]
    if with_bn:
        layers.append(nn.BatchNorm2d(planes))
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(in_planes, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class PreActBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut = _shortcut(in_planes, planes, stride, with_bn=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if len(self.shortcut) else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class _Head(nn.Module):
    """Global average pooling + linear, optionally after a final BN-ReLU (pre-activation nets)."""

    def __init__(self, channels: int, num_classes: int, final_bn: bool = False) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels) if final_bn else None
        self.linear = nn.Linear(channels, num_classes)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.after_norm(self.bn(h) if self.bn is not None else h)

    def after_norm(self, h: torch.Tensor) -> torch.Tensor:
        """From the final BN's output on (ReLU first where there is one, as in forward)."""
        if self.bn is not None:
            h = F.relu(h)
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))


class CifarResNet(StagedNet):
    """A 3x3-stem ResNet; `widths` and `strides` define its stages (4 for ResNet-18, 3 for ResNet-20)."""

    def __init__(self, block: type, num_blocks: Sequence[int], widths: Sequence[int], strides: Sequence[int],
                 num_classes: int, preact: bool = False) -> None:
        super().__init__()
        stem_width = widths[0]
        conv = nn.Conv2d(3, stem_width, 3, 1, 1, bias=False)
        self.stem = conv if preact else nn.Sequential(conv, nn.BatchNorm2d(stem_width), nn.ReLU(inplace=True))
        in_planes = stem_width
        names = ["stem"]
        for i, (n, w, s) in enumerate(zip(num_blocks, widths, strides), start=1):
            blocks = []
            for stride in [s] + [1] * (n - 1):
                blocks.append(block(in_planes, w, stride))
                in_planes = w
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
            names.append(f"layer{i}")
        self.head = _Head(in_planes, num_classes, final_bn=preact)
        self.stage_names = tuple(names + ["head"])
        self.feature_layer = names[-1]
        self.head_norm = "head.bn" if preact else None
        _init_weights(self)

    def head_after_norm(self, h: torch.Tensor) -> torch.Tensor:
        return self.head.after_norm(h)


def _init_weights(net: nn.Module) -> None:
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _resnet18(base: int):
    return lambda c, s: CifarResNet(BasicBlock, [2, 2, 2, 2], [base, 2 * base, 4 * base, 8 * base], [1, 2, 2, 2], c)


register_model("resnet18", "CIFAR ResNet-18 (11.2M params; the paper's student)")(_resnet18(64))
register_model("resnet18-w16", "ResNet-18 at base width 16 (0.7M params; CPU-sized)", cpu_sized=True)(_resnet18(16))


@register_model("resnet34", "CIFAR ResNet-34 (21.3M params)")
def _resnet34(c: int, s: int) -> StagedNet:
    return CifarResNet(BasicBlock, [3, 4, 6, 3], [64, 128, 256, 512], [1, 2, 2, 2], c)


def _small_resnet(n: int, width: int = 16):
    return lambda c, s: CifarResNet(BasicBlock, [n, n, n], [width, 2 * width, 4 * width], [1, 2, 2], c)


register_model("resnet8", "ResNet-8 (16/32/64, 0.08M params; CPU-sized)", cpu_sized=True)(_small_resnet(1))
register_model("resnet20", "ResNet-20 (16/32/64, 0.27M params; CPU-sized, the bundled CPU teacher)",
               cpu_sized=True)(_small_resnet(3))
register_model("resnet20-w2", "ResNet-20 at double width (32/64/128, 1.1M params; CPU-sized)",
               cpu_sized=True)(_small_resnet(3, 32))


@register_model("preactresnet18", "PreActResNet-18 (the paper's Tiny-ImageNet student; 32 or 64 px)")
def _preact18(c: int, s: int) -> StagedNet:
    return CifarResNet(PreActBlock, [2, 2, 2, 2], [64, 128, 256, 512], [1, 2, 2, 2], c, preact=True)


@register_model("preactresnet34", "PreActResNet-34 (the paper's Tiny-ImageNet teacher; 32 or 64 px)")
def _preact34(c: int, s: int) -> StagedNet:
    return CifarResNet(PreActBlock, [3, 4, 6, 3], [64, 128, 256, 512], [1, 2, 2, 2], c, preact=True)
