"""Which layers of a network are its stages (the block outputs methods read), as data.

Methods read inside a teacher through forward hooks on these layers (dfrd_bench/hooks.py), so the
network's own `forward` runs unchanged. The stages of a network are, in this order of rules:

1. a `StagedNet` (this suite's architectures, or a `py:` factory's): its `stage_names` but the last
   (the classifier head), those that are submodules;
2. a timm model: the modules its `feature_info` names;
3. any other network: the first pattern of `STAGE_PATTERNS` whose module paths all exist in it
   (`name.*` stands for every child of `name`, in order);
4. none: the network is opaque (logits and BatchNorm layers only).

The default layer l (FERD's bottleneck) is the last stage, the last convolutional block, unless a
StagedNet names its own `feature_layer`. Whether a stage really is one (it runs once per forward,
its output is a feature map that nothing changes in place) is checked on a probe batch before a run
(`Classifier.check_layers`).
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

from torch import nn

# (module paths, the code bases that use them). Most specific first.
STAGE_PATTERNS: Tuple[Tuple[Tuple[str, ...], str], ...] = (
    (("conv1", "block1", "block2", "block3"),
     "WideResNet of TRADES, RobustBench (and its subclasses: Rice2020OverfittingNet, Hendrycks2019UsingNet, "
     "Ding2020MMANet, Chen2020EfficientNet, BoostingWideResNet, ...), FERD; PAF_WideResNet"),
    (("init_conv", "layer.*"), "DeepMind's WideResNet (RobustBench DMWideResNet), RaWideResNet, MeanSparse"),
    (("conv_2d", "layer_0", "layer_1", "layer_2", "layer_3"), "DeepMind's PreActResNet (RobustBench DMPreActResNet)"),
    (("stem_conv", "blocks.*"), "RobustBench RobustWideResNet and robust_resnet (Huang 2021, 2022)"),
    (("layer1", "layer2", "layer3", "layer4"),
     "ResNet and PreActResNet of pytorch-cifar and RobustBench (and subclasses), ResNeSt"),
)


def _has(net: nn.Module, path: str) -> bool:
    try:
        net.get_submodule(path)
        return True
    except AttributeError:
        return False


def _expand(net: nn.Module, pattern: Sequence[str]) -> Optional[List[str]]:
    """The pattern's module paths in `net`, or None when one is missing."""
    paths: List[str] = []
    for item in pattern:
        if item.endswith(".*"):
            parent = item[:-2]
            if not _has(net, parent):
                return None
            children = [f"{parent}.{n}" for n, _ in net.get_submodule(parent).named_children()]
            if not children:
                return None
            paths.extend(children)
        elif _has(net, item):
            paths.append(item)
        else:
            return None
    return paths


def find_stages(net: nn.Module) -> Tuple[str, ...]:
    """The stage layers of `net` (module paths, in forward order), by the rules of the module docstring."""
    names = getattr(net, "stage_names", None)
    if names is not None and hasattr(net, "run_stage"):  # a StagedNet
        return tuple(n for n in tuple(names)[:-1] if _has(net, n))
    info = getattr(net, "feature_info", None)
    if isinstance(info, list) and info and all(isinstance(f, dict) and "module" in f for f in info):
        return tuple(f["module"] for f in info if _has(net, f["module"]))
    for pattern, _ in STAGE_PATTERNS:
        paths = _expand(net, pattern)
        if paths is not None:
            return tuple(paths)
    return ()


def default_layer(net: nn.Module, stages: Sequence[str]) -> Optional[str]:
    """Layer l by default: a StagedNet's `feature_layer`, else the last stage (None when opaque)."""
    own = getattr(net, "feature_layer", None) if hasattr(net, "run_stage") else None
    return own or (stages[-1] if stages else None)


def head_norm_layer(net: nn.Module) -> Optional[str]:
    """The BatchNorm that starts a StagedNet's head on its last block's output (`head_norm`: WRN's `bn1`,
    a pre-activation ResNet's `head.bn`), where FERD's authors cut layer l (`pop=3`); None for a
    post-activation head and for foreign networks (their in-place ReLU after that BN rewrites its
    output, so it cannot be read or replaced by a hook)."""
    own = getattr(net, "head_norm", None) if hasattr(net, "run_stage") else None
    return own if own and _has(net, own) else None


def stages_markdown() -> str:
    """The table of docs/models.md, generated from STAGE_PATTERNS (a test keeps the page in step)."""
    rows = ["| stage layers (module paths; `name.*`: its children in order) | layer l | networks |", "|---|---|---|"]
    for pattern, networks in STAGE_PATTERNS:
        rows.append(f"| {', '.join(f'`{p}`' for p in pattern)} | `{pattern[-1]}`"
                    f"{' (its last child)' if pattern[-1].endswith('.*') else ''} | {networks} |")
    return "\n".join(rows)
