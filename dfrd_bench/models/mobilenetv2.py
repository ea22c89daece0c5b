"""MobileNetV2 for 32x32 inputs: stride-1 stem and a stride-1 second stage (as in CIFAR code bases).

Two readings exist: ours (ReLU6, a residual only where shapes match, as in the MobileNetV2 paper)
and the one of pytorch-cifar, copied by RSLAD, ARD and FERD (ReLU, and a 1x1 conv+BN projection
shortcut in every stride-1 block whose width changes), registered as `mobilenetv2-pytorch-cifar` so
that their checkpoints compute exactly what they computed there (docs/models.md).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .base import StagedNet, register_model

# (expansion t, output channels c, repeats n, first stride s); the ImageNet version has s=2 in the
# second row and a stride-2 stem, which would shrink a 32x32 image too early.
CIFAR_CFG = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


def _round(channels: float, divisor: int = 8) -> int:
    return max(divisor, int(channels + divisor / 2) // divisor * divisor)


class InvertedResidual(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, expansion: int, stride: int, relu: bool = False,
                 project: bool = False) -> None:
        super().__init__()
        hidden = in_planes * expansion
        self.use_residual = stride == 1 and in_planes == out_planes
        self.relu = relu
        # pytorch-cifar's reading: stride-1 blocks that change width add a projected input
        self.shortcut: Optional[nn.Module] = None
        if project and stride == 1 and in_planes != out_planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, bias=False), nn.BatchNorm2d(out_planes))
        self.conv1 = nn.Conv2d(in_planes, hidden, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.conv2 = nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False)
        self.bn2 = nn.BatchNorm2d(hidden)
        self.conv3 = nn.Conv2d(hidden, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = F.relu if self.relu else F.relu6
        out = act(self.bn1(self.conv1(x)))
        out = act(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.shortcut is not None:
            return out + self.shortcut(x)
        return out + x if self.use_residual else out


class MobileNetV2(StagedNet):
    def __init__(self, num_classes: int, width_mult: float = 1.0, relu: bool = False, project: bool = False) -> None:
        super().__init__()
        stem = _round(32 * width_mult)
        act = nn.ReLU if relu else nn.ReLU6
        self.stem = nn.Sequential(nn.Conv2d(3, stem, 3, 1, 1, bias=False), nn.BatchNorm2d(stem), act(inplace=True))
        in_planes = stem
        names = ["stem"]
        for i, (t, c, n, s) in enumerate(CIFAR_CFG, start=1):
            out = _round(c * width_mult)
            blocks = []
            for stride in [s] + [1] * (n - 1):
                blocks.append(InvertedResidual(in_planes, out, t, stride, relu, project))
                in_planes = out
            setattr(self, f"stage{i}", nn.Sequential(*blocks))
            names.append(f"stage{i}")
        last = _round(1280 * max(1.0, width_mult)) if width_mult >= 1.0 else _round(1280 * width_mult)
        self.conv_last = nn.Sequential(nn.Conv2d(in_planes, last, 1, bias=False), nn.BatchNorm2d(last), act(inplace=True))
        self.linear = nn.Linear(last, num_classes)
        self.stage_names = tuple(names + ["conv_last", "head"])
        self.feature_layer = "conv_last"

    def run_stage(self, name: str, h: torch.Tensor) -> torch.Tensor:
        if name == "head":
            return self.linear(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))
        return getattr(self, name)(h)


register_model("mobilenetv2", "MobileNetV2, CIFAR stem (2.2M params; the paper's student)")(
    lambda c, s: MobileNetV2(c, 1.0))
register_model("mobilenetv2-pytorch-cifar",
               "MobileNetV2 as in pytorch-cifar, RSLAD, ARD and FERD (ReLU, projection shortcuts; 2.3M params)")(
    lambda c, s: MobileNetV2(c, 1.0, relu=True, project=True))
register_model("mobilenetv2-x0.5", "MobileNetV2 at width 0.5 (0.7M params; CPU-sized)", cpu_sized=True)(
    lambda c, s: MobileNetV2(c, 0.5))
register_model("mobilenetv2-x0.25", "MobileNetV2 at width 0.25 (0.2M params; CPU-sized)", cpu_sized=True)(
    lambda c, s: MobileNetV2(c, 0.25))


class MobileNetV2Downsampled(MobileNetV2):
    """MobileNetV2 whose second stage has the ImageNet stride 2 again (16x16 maps from stage 2 on).

    With the CIFAR config the first two stages run at full 32x32 resolution and dominate the cost;
    restoring this one stride makes the width-0.25 net ~4x cheaper, about ResNet-8's cost on CPU.
    """

    def __init__(self, num_classes: int, width_mult: float = 1.0) -> None:
        super().__init__(num_classes, width_mult)
        self.stage2[0].conv2.stride = (2, 2)
        self.stage2[0].use_residual = False


register_model("mobilenetv2-x0.25-s2", "MobileNetV2 at width 0.25, stride 2 in stage 2 (0.2M params; CPU student)",
               cpu_sized=True)(lambda c, s: MobileNetV2Downsampled(c, 0.25))
