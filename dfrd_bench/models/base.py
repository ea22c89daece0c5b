"""The uniform model interface every method relies on.

Every architecture of the suite is a `StagedNet`: an ordered list of named stages (stem, blocks...,
head) that its forward runs one at a time. `Classifier` wraps any network (ours, timm's, a `py:`
factory's, a RobustBench entry) with the dataset's normalisation, so all models take [0, 1] images,
and answers the questions methods ask without special-casing architectures: `bn_layers()`,
`features(x, layer)` (the paper's layer l, by default the last convolutional block), `forward_from(h,
x, layer)` (the rest of the network, f_{l+}) and `forward_stages(x)`. All of them run the network's
own forward with forward hooks on its layers (dfrd_bench/hooks.py); which layers are its stages is
data (models/stages.py).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..errors import InputError, first_line
from ..hooks import layer_hooks, layer_module
from ..registry import Registry
from .stages import default_layer, find_stages, head_norm_layer


class StagedNet(nn.Module):
    """Base for architectures: subclasses set `stage_names` (the last one the classifier head) and
    `feature_layer`, and own the stages; a stage read by methods must be a submodule."""

    stage_names: Tuple[str, ...] = ()
    feature_layer: Optional[str] = None  # the last convolutional block
    head_norm: Optional[str] = None      # the BatchNorm that starts the head, on feature_layer's output

    def run_stage(self, name: str, h: torch.Tensor) -> torch.Tensor:
        return getattr(self, name)(h)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for name in self.stage_names:
            h = self.run_stage(name, h)
        return h

    def head_after_norm(self, h: torch.Tensor) -> Optional[torch.Tensor]:
        """The head from the output of its first BatchNorm (`head_norm`) on; a class with a head_norm
        defines it. The default: None (forward_from then goes through hooks)."""
        return None

    def continue_from(self, layer: str, h: torch.Tensor) -> Optional[torch.Tensor]:
        """Logits from activations h at `layer`, run directly (no hooks, no empty batch through the
        layers before): from a stage's output the later stages, from `head_norm`'s output the rest of
        the head. None for any other layer. `Classifier.check_layers` checks it against the forward."""
        names = tuple(self.stage_names)
        if layer in names[:-1]:
            for name in names[names.index(layer) + 1:]:
                h = self.run_stage(name, h)
            return h
        if layer is not None and layer == self.head_norm:
            return self.head_after_norm(h)
        return None


class Classifier(nn.Module):
    """A network with normalisation inside: takes [0,1] NCHW images, returns logits."""

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

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))

    # -- which layers can be read ---------------------------------------------------------------
    @property
    def stage_names(self) -> Tuple[str, ...]:
        """The network's stage layers (module paths inside `net`, forward order; no head); () if opaque."""
        if isinstance(self.net, torch.jit.ScriptModule):
            return ()  # a TorchScript model's layers cannot be hooked
        return find_stages(self.net)

    @property
    def feature_layer(self) -> Optional[str]:
        """Layer l by default: the last convolutional block (None for an opaque network)."""
        return default_layer(self.net, self.stage_names)

    @property
    def head_norm_layer(self) -> Optional[str]:
        """The BatchNorm that starts the head on the last block's output (WRN's `bn1`), or None."""
        if isinstance(self.net, torch.jit.ScriptModule):
            return None
        return head_norm_layer(self.net)

    def _layer(self, layer: Optional[str]) -> str:
        layer = layer or self.feature_layer
        if layer is None:
            raise InputError(f"{self.arch} exposes no stages (models/stages.py knows none of its layers): name a "
                             "layer by its module path (docs/models.md, \"Inside a model\")")
        layer_module(self.net, layer, self.arch)
        return layer

    # -- the forward pass, watched by hooks --------------------------------------------------------
    def forward_hooked(self, x: torch.Tensor, capture: Sequence[str] = (),
                       replace: Optional[Tuple[str, torch.Tensor]] = None) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """The network's own forward of x, with the outputs of the `capture` layers recorded and, with
        `replace=(layer, h)`, that layer's output replaced by h: (logits, {layer: output})."""
        with layer_hooks(self.net, capture, replace, what=self.arch) as record:
            logits = self(x)
        outputs = record.checked()
        return logits, {name: outputs[name] for name in capture}

    def features(self, x: torch.Tensor, layer: Optional[str] = None) -> torch.Tensor:
        """Activations at the output of `layer` (default: the last convolutional block)."""
        return self.forward_features(x, layer)[1]

    def forward_features(self, x: torch.Tensor, layer: Optional[str] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Logits and the activations at `layer`, from one forward pass."""
        layer = self._layer(layer)
        logits, outputs = self.forward_hooked(x, [layer])
        return logits, outputs[layer]

    def forward_from(self, h: torch.Tensor, x: torch.Tensor, layer: Optional[str] = None) -> torch.Tensor:
        """Logits from activations h taken at `layer` (f_{l+} in the FERD paper): the network's own forward
        with that layer's output replaced by h. The layers before it run on an empty batch shaped like x
        (the images h came from), so they cost nothing; `check_layers` verifies on a probe that nothing
        after the layer reads them."""
        layer = self._layer(layer)
        # a StagedNet continues directly from a stage or its head's BN (the bottleneck calls this 10-50
        # times per generator step: the hooked forward costs 1.2 ms more per call on a WRN-16-2)
        if isinstance(self.net, StagedNet):
            logits = self.net.continue_from(layer, h)
            if logits is not None:
                return logits
        return self.forward_hooked(x[:0], replace=(layer, h))[0]

    def forward_stages(self, x: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """Logits and the output of every stage (for attention transfer and the like)."""
        stages = self.stage_names
        if not stages:
            raise InputError(f"{self.arch} exposes no stages (models/stages.py knows none of its layers): use it "
                             "with a method that needs none (docs/models.md, \"Inside a model\")")
        return self.forward_hooked(x, stages)

    def check_layers(self, image_size: int, layers: Sequence[str], continue_from: Optional[str] = None) -> None:
        """On a fixed probe batch of two images (no RNG drawn, no state changed): every layer in `layers`
        runs once and outputs an (N, C, H, W) feature map, and, for `continue_from`, forward_from
        reproduces the logits. Raises a one-line InputError otherwise."""
        probe = torch.linspace(0, 1, 2 * 3 * image_size * image_size).view(2, 3, image_size, image_size)
        probe = probe.to(self.mean.device)
        names = list(dict.fromkeys([*layers, *([continue_from] if continue_from else [])]))
        with torch.no_grad():
            logits, outputs = self.forward_hooked(probe, names)
            for name, out in outputs.items():
                if out.dim() != 4:
                    raise InputError(f"{self.arch}: layer {name} outputs {tuple(out.shape[1:])} per image, not a "
                                     "(C, H, W) feature map: methods that read layers need a convolutional one")
            if continue_from is not None:
                self._check_continuation(probe, logits, outputs[continue_from], continue_from)

    def _check_continuation(self, probe: torch.Tensor, logits: torch.Tensor, h: torch.Tensor, layer: str) -> None:
        why = ("its forward uses what comes before that layer after it (a skip across it, or the batch's size or "
               "statistics); pick a later layer or another method")
        try:
            rest = self.forward_from(h, probe, layer)
        except RuntimeError as exc:
            raise InputError(f"{self.arch} cannot be continued from layer {layer} ({first_line(exc, 80)}): {why}") from exc
        scale = logits.abs().max().clamp_min(1e-6)
        if rest.shape != logits.shape or not torch.isfinite(rest).all() or (rest - logits).abs().max() > 1e-3 * scale:
            raise InputError(f"{self.arch} cannot be continued from layer {layer}: {why}")

    # -- what methods ask of any model ---------------------------------------------------------
    def bn_layers(self) -> List[_BatchNorm]:
        return [m for m in self.modules() if isinstance(m, _BatchNorm)]


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
