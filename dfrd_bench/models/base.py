"""The uniform model interface every method relies on.

Every architecture is a `StagedNet`: an ordered list of named stages (stem, blocks..., head) that
`run_stage` executes one at a time. `Classifier` wraps one with the dataset's normalisation, so
all models take [0, 1] images, and answers the questions methods ask without special-casing
architectures: `bn_layers()`, `features(x, layer)` (the paper's layer l, by default the last
convolutional block) and `forward_from(h, layer)` (the rest of the network, f_{l+}).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..errors import InputError
from ..registry import Registry


class StagedNet(nn.Module):
    """Base for architectures: subclasses set `stage_names` and `feature_layer` and own the stages."""

    stage_names: Tuple[str, ...] = ()
    feature_layer: Optional[str] = None  # the last convolutional block

    def run_stage(self, name: str, h: torch.Tensor) -> torch.Tensor:
        return getattr(self, name)(h)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for name in self.stage_names:
            h = self.run_stage(name, h)
        return h


class Classifier(nn.Module):
    """A StagedNet with normalisation inside: takes [0,1] NCHW images, returns logits."""

    def __init__(
        self,
        net: nn.Module,
        num_classes: int,
        mean: Sequence[float] = (0.0, 0.0, 0.0),
        std: Sequence[float] = (1.0, 1.0, 1.0),
        arch: str = "custom",
    ) -> None:
        super().__init__()
        self.net = net
        self.arch = arch
        self.num_classes = int(num_classes)
        # How a loaded model was read (key layout, normalisation and its source, factory, format):
        # copied into the result's model block so that a number is never ambiguous.
        self.origin: Dict[str, Any] = {}
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    # -- the forward pass, whole or split at a layer ------------------------------------------
    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))

    @property
    def stage_names(self) -> Tuple[str, ...]:
        return tuple(getattr(self.net, "stage_names", ()))

    @property
    def feature_layer(self) -> Optional[str]:
        return getattr(self.net, "feature_layer", None)

    def _split(self, layer: Optional[str]) -> int:
        layer = layer or self.feature_layer
        names = self.stage_names
        if layer is None or layer not in names:
            raise InputError(
                f"{self.arch} has no layer {layer!r} to split at; its stages are {', '.join(names) or 'none'}"
            )
        if layer == names[-1]:
            raise InputError(f"layer {layer!r} is the classifier head; pick a convolutional stage")
        return names.index(layer)

    def features(self, x: torch.Tensor, layer: Optional[str] = None) -> torch.Tensor:
        """Activations after stage `layer` (default: the last convolutional block)."""
        stop = self._split(layer)
        h = self.normalize(x)
        for name in self.stage_names[: stop + 1]:
            h = self.net.run_stage(name, h)
        return h

    def forward_from(self, h: torch.Tensor, layer: Optional[str] = None) -> torch.Tensor:
        """Logits from activations taken after stage `layer` (f_{l+} in the FERD paper)."""
        start = self._split(layer)
        for name in self.stage_names[start + 1:]:
            h = self.net.run_stage(name, h)
        return h

    def forward_stages(self, x: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """Logits and the output of every stage but the head (for attention transfer and the like)."""
        h = self.normalize(x)
        acts: Dict[str, torch.Tensor] = {}
        for name in self.stage_names:
            h = self.net.run_stage(name, h)
            if name != self.stage_names[-1]:
                acts[name] = h
        return h, acts

    # -- what methods ask of any model ---------------------------------------------------------
    def bn_layers(self) -> List[_BatchNorm]:
        return [m for m in self.modules() if isinstance(m, _BatchNorm)]

    def named_stages(self) -> List[str]:
        return list(self.stage_names)


# ------------------------------------------------------------------------------------------------
# The model zoo as data: name -> builder(num_classes, image_size) plus a one-line description.
# ------------------------------------------------------------------------------------------------
ModelBuilder = Callable[[int, int], nn.Module]
MODELS: Registry[ModelBuilder] = Registry("model")
MODEL_INFO: Dict[str, Dict[str, object]] = {}


def register_model(name: str, description: str, cpu_sized: bool = False, image_sizes=(32, 64),
                   num_classes: Optional[int] = None):
    def decorator(builder: ModelBuilder) -> ModelBuilder:
        MODELS.add(name, builder, help=description)
        MODEL_INFO[name] = {"description": description, "cpu_sized": cpu_sized,
                            "image_sizes": tuple(image_sizes), "num_classes": num_classes}
        return builder

    return decorator


def build_model(
    arch: str,
    num_classes: int,
    image_size: int = 32,
    mean: Sequence[float] = (0.0, 0.0, 0.0),
    std: Sequence[float] = (1.0, 1.0, 1.0),
) -> Classifier:
    """Build an architecture by name (or `timm:<name>`) wrapped with normalisation."""
    if arch.startswith("timm:"):
        from .timm_adapter import build_timm

        net = build_timm(arch[len("timm:"):], num_classes)
    else:
        builder = MODELS.get(arch)
        info = MODEL_INFO[arch]
        if image_size not in info["image_sizes"]:
            raise InputError(f"{arch} is built for {info['image_sizes']} pixel images, not {image_size}")
        if info["num_classes"] is not None and info["num_classes"] != num_classes:
            raise InputError(f"{arch} has {info['num_classes']} classes, the dataset has {num_classes}")
        net = builder(num_classes, image_size)
    return Classifier(net, num_classes, mean, std, arch=arch)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
