"""`timm:<name>`: any timm model, as timm builds it; its stages are the modules its `feature_info` names."""
from __future__ import annotations

import torch

from ..errors import UnknownName


def build_timm(name: str, num_classes: int) -> torch.nn.Module:
    import timm

    if name not in timm.list_models():
        raise UnknownName(f"timm has no model {name!r}; see timm.list_models()")
    # pretrained=False: nothing is downloaded; weights come from a checkpoint via --model.
    return timm.create_model(name, pretrained=False, num_classes=num_classes)
