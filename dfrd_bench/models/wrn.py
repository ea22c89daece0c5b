"""WideResNet-depth-k (Zagoruyko & Komodakis). Attribute names follow the TRADES/robustbench code
(`conv1`, `block1.layer.0.bn1`, ..., `bn1`, `fc`), so their WRN-34-10 checkpoints load directly
(layout `trades` in models/layouts.py drops TRADES' unused `sub_block1`)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from .base import StagedNet, register_model


class WideBlock(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
        self.drop_rate = drop_rate
        self.equalInOut = in_planes == out_planes
        self.convShortcut = None if self.equalInOut else nn.Conv2d(in_planes, out_planes, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(x))
        shortcut = x if self.equalInOut else self.convShortcut(out)
        out = self.relu2(self.bn2(self.conv1(out)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        return self.conv2(out) + shortcut


class NetworkBlock(nn.Module):
    def __init__(self, n: int, in_planes: int, out_planes: int, stride: int, drop_rate: float) -> None:
        super().__init__()
        self.layer = nn.Sequential(*[
            WideBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, drop_rate)
            for i in range(n)
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(StagedNet):
    stage_names = ("conv1", "block1", "block2", "block3", "head")
    feature_layer = "block3"
    head_norm = "bn1"

    def __init__(self, depth: int, widen: int, num_classes: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise InputError(f"WideResNet depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.block1 = NetworkBlock(n, widths[0], widths[1], 1, drop_rate)
        self.block2 = NetworkBlock(n, widths[1], widths[2], 2, drop_rate)
        self.block3 = NetworkBlock(n, widths[2], widths[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(widths[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def run_stage(self, name: str, h: torch.Tensor) -> torch.Tensor:
        if name == "head":
            return self.head_after_norm(self.bn1(h))  # bn1's output is layer l for FERD (head_norm)
        return getattr(self, name)(h)

    def head_after_norm(self, h: torch.Tensor) -> torch.Tensor:
        # ReLU not in place: bn1's output may be a tensor a hook or the bottleneck still reads
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(F.relu(h), 1), 1))


for _depth, _widen, _note in [(34, 10, "the paper's CIFAR teacher"), (28, 10, ""), (40, 2, "DFKD teacher"),
                              (16, 2, "CPU-sized"), (16, 1, "CPU-sized")]:
    register_model(
        f"wrn-{_depth}-{_widen}",
        f"WideResNet-{_depth}-{_widen}" + (f" ({_note})" if _note else ""),
        cpu_sized=_note == "CPU-sized",
    )(lambda c, s, d=_depth, w=_widen: WideResNet(d, w, c))
