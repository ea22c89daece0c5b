"""`timm:<name>`: any timm model, split into its own forward_features / forward_head."""
from __future__ import annotations

import torch

from ..errors import UnknownName
from .base import StagedNet


class TimmNet(StagedNet):
    stage_names = ("features", "head")
    feature_layer = "features"

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def run_stage(self, name: str, h: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(h) if name == "features" else self.model.forward_head(h)


def build_timm(name: str, num_classes: int) -> StagedNet:
    import timm

    if name not in timm.list_models():
        raise UnknownName(f"timm has no model {name!r}; see timm.list_models()")
    # pretrained=False: nothing is downloaded; weights come from a checkpoint via --model.
    return TimmNet(timm.create_model(name, pretrained=False, num_classes=num_classes))
