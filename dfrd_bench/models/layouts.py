"""Checkpoint key layouts of public CIFAR code bases, as data, and the input normalisation a model expects.

A `Layout` says how the state-dict keys of one code base's model name the tensors of one of our
architectures: ordered (regex, replacement) rules, the first matching rule rewriting a key (a
replacement of None drops it, e.g. TRADES' unused `sub_block1`), keys no rule matches kept as they
are. Layouts only rename: the maths must already be the same (the tests build each code base's
module and compare logits), so a code base whose network computes something else (pytorch-cifar's
PreActResNet, which has no final BN-ReLU) has no layout here and is loaded with `py:` instead.

`fit_layouts` tries every layout an architecture accepts; `checkpoints.load_model` picks the one
whose renamed keys and shapes equal the model's exactly, and otherwise names the closest.
Every layout also carries the normalisation its code base trains with (what `--normalize` defaults
to when the layout is detected): the robust code bases feed [0, 1] images unnormalised.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch

from ..errors import InputError

Rule = Tuple[str, Optional[str]]  # (regex on the checkpoint's key, replacement; None drops the key)
NATIVE = "dfrd-bench"


@dataclass(frozen=True)
class Layout:
    name: str
    archs: Tuple[str, ...]        # the architectures (`--arch`) whose tensors these keys name
    description: str
    sources: Tuple[str, ...]      # where the key names were read: repository and file
    rules: Tuple[Rule, ...] = ()
    normalize: str = "none"       # what its code base feeds the model: none | dataset


def _flat_blocks(prefix: str, repeats: Sequence[int], stage: str) -> Tuple[Rule, ...]:
    """`layers.7.` -> `stage4.1.`: a flat Sequential of blocks split into our stages of `repeats` blocks."""
    rules, i = [], 0
    for s, n in enumerate(repeats, start=1):
        for j in range(n):
            rules.append((rf"^{prefix}\.{i}\.", f"{stage}{s}.{j}."))
            i += 1
    return tuple(rules)


RESNETS = ("resnet18", "resnet34")
PREACTS = ("preactresnet18", "preactresnet34")
WRNS = ("wrn-34-10", "wrn-28-10", "wrn-40-2", "wrn-16-2", "wrn-16-1")
MOBILENET_BLOCKS = (1, 2, 3, 4, 3, 3, 1)  # blocks per row of the CIFAR MobileNetV2 config

LAYOUTS: Tuple[Layout, ...] = (
    Layout(
        "pytorch-cifar", RESNETS,
        "ResNet of pytorch-cifar and the robust-distillation code built on it: conv1, bn1, layer1-4 "
        "(BasicBlock with shortcut.0/.1), linear",
        ("kuangliu/pytorch-cifar models/resnet.py", "zibojia/RSLAD cifar10_models/resnet.py",
         "goldblum/AdversariallyRobustDistillation models/resnet.py", "mayaobuduyao/FERD models/resnet.py",
         "RobustBench/robustbench model_zoo/architectures/resnet.py (ResNet)"),
        ((r"^conv1\.", "stem.0."), (r"^bn1\.", "stem.1."), (r"^linear\.", "head.linear.")),
    ),
    Layout(
        "ferd", PREACTS,
        "PreActResNet of the released FERD code, with a final BN-ReLU before pooling: conv1, layer1-4 "
        "(PreActBlock, shortcut on the activated input), bn, linear",
        ("mayaobuduyao/FERD models/preactresnet.py",
         "RobustBench/robustbench model_zoo/architectures/resnet.py (PreActResNet with bn_before_fc=True "
         "and PreActBlockV2: same keys and maths)"),
        ((r"^conv1\.", "stem."), (r"^bn\.", "head.bn."), (r"^linear\.", "head.linear.")),
    ),
    Layout(
        "trades", WRNS,
        "WideResNet of TRADES and the code built on it (RobustBench, FERD): conv1, block1-3.layer.N, "
        "bn1, fc; TRADES' unused sub_block1 is dropped",
        ("yaodongyu/TRADES models/wideresnet.py", "RobustBench/robustbench model_zoo/architectures/wide_resnet.py",
         "mayaobuduyao/FERD models/wideresnet.py"),
        ((r"^sub_block1\.", None),),
    ),
    Layout(
        "pytorch-cifar", ("mobilenetv2-pytorch-cifar",),
        "MobileNetV2 of pytorch-cifar, RSLAD and ARD: conv1, bn1, layers.0-16 (Block with shortcut "
        "at stride 1), conv2, bn2, linear",
        ("kuangliu/pytorch-cifar models/mobilenetv2.py", "zibojia/RSLAD cifar10_models/mobilenet_v2.py",
         "goldblum/AdversariallyRobustDistillation models/mobilenetv2.py"),
        ((r"^conv1\.", "stem.0."), (r"^bn1\.", "stem.1."), (r"^conv2\.", "conv_last.0."), (r"^bn2\.", "conv_last.1."))
        + _flat_blocks("layers", MOBILENET_BLOCKS, "stage"),
    ),
    Layout(
        "ferd", ("mobilenetv2-pytorch-cifar",),
        "MobileNetV2 of the released FERD code: pytorch-cifar's with the classifier named fc",
        ("mayaobuduyao/FERD models/mobilenetv2.py",),
        ((r"^conv1\.", "stem.0."), (r"^bn1\.", "stem.1."), (r"^conv2\.", "conv_last.0."), (r"^bn2\.", "conv_last.1."),
         (r"^fc\.", "linear.")) + _flat_blocks("layers", MOBILENET_BLOCKS, "stage"),
    ),
)

# Our own key names, accepted by every architecture. A foreign checkpoint that already uses them
# gets the dataset's normalisation, as before layouts existed.
NATIVE_LAYOUT = Layout(NATIVE, ("*",),
                       "dfrd-bench's own key names (our checkpoints, or a bare state dict of our models)",
                       ("dfrd_bench/models",), (), normalize="dataset")

# Architectures that compute the same kind of network, tried when a checkpoint fits none of the
# layouts of the --arch given, so the error can name the --arch it does fit.
FAMILIES: Tuple[Tuple[str, ...], ...] = (
    RESNETS + ("resnet18-w16",), PREACTS, WRNS, ("mobilenetv2", "mobilenetv2-pytorch-cifar"),
)


def layouts_for(arch: str) -> List[Layout]:
    """The layouts `arch` accepts: ours first, then the public code bases'."""
    return [NATIVE_LAYOUT] + [lay for lay in LAYOUTS if arch in lay.archs]


def family_of(arch: str) -> Tuple[str, ...]:
    for family in FAMILIES:
        if arch in family:
            return family
    return (arch,)


def get_layout(arch: str, name: str, flag: str = "--layout") -> Layout:
    """The layout `name` of `arch`, or one line naming the ones it has."""
    for lay in layouts_for(arch):
        if lay.name == name:
            return lay
    names = ", ".join(lay.name for lay in layouts_for(arch))
    elsewhere = sorted({a for lay in LAYOUTS if lay.name == name for a in lay.archs})
    hint = f" ({name} is a layout of {', '.join(elsewhere)})" if elsewhere else ""
    raise InputError(f"{flag} {name}: --arch {arch} has no such layout{hint}; its layouts: {names}")


@lru_cache(maxsize=None)
def _compiled(pattern: str) -> "re.Pattern[str]":
    return re.compile(pattern)


def rename(layout: Layout, keys: Iterable[str]) -> Dict[str, str]:
    """{our key: the checkpoint's key} for every key the layout keeps."""
    out: Dict[str, str] = {}
    for key in keys:
        new: Optional[str] = key
        for pattern, replacement in layout.rules:
            if _compiled(pattern).search(key):
                new = None if replacement is None else _compiled(pattern).sub(replacement, key, count=1)
                break
        if new is not None:
            out[new] = key
    return out


def _is_counter(key: str) -> bool:
    # BatchNorm's step counter: absent from checkpoints older than PyTorch 0.4.1, never used in eval
    return key.endswith("num_batches_tracked")


@dataclass
class Fit:
    """How a checkpoint's tensors fit one architecture under one layout."""

    layout: Layout
    arch: str
    names: Dict[str, str]                # our key -> the checkpoint's key
    missing: List[str]                   # our keys the checkpoint lacks
    unexpected: List[str]                # the checkpoint's keys we have no place for (its own names)
    shapes: List[str]                    # 'key: checkpoint (..) vs model (..)'

    @property
    def cost(self) -> int:
        return len(self.missing) + len(self.unexpected) + len(self.shapes)

    @property
    def exact(self) -> bool:
        return self.cost == 0

    def state(self, ckpt: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """The checkpoint's tensors under our names (load with strict=False: counters may be absent)."""
        return {ours: ckpt[theirs] for ours, theirs in self.names.items()}

    def describe(self, limit: int = 3) -> str:
        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} missing keys (e.g. {', '.join(self.missing[:limit])})")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected (e.g. {', '.join(self.unexpected[:limit])})")
        if self.shapes:
            # a shape line is long: two are enough to see what differs (width or classes)
            parts.append(f"{len(self.shapes)} of another shape (e.g. {'; '.join(self.shapes[:2])})")
        return ", ".join(parts) or "an exact fit"


def fit(layout: Layout, arch: str, ckpt: Mapping[str, torch.Tensor], target: Mapping[str, torch.Size]) -> Fit:
    """Compare the checkpoint renamed by `layout` with the model's keys and shapes."""
    names = rename(layout, ckpt.keys())
    missing = [k for k in target if k not in names and not _is_counter(k)]
    unexpected = [theirs for ours, theirs in names.items() if ours not in target and not _is_counter(ours)]
    shapes = [f"{k}: checkpoint {tuple(ckpt[names[k]].shape)} vs model {tuple(target[k])}"
              for k in target if k in names and tuple(ckpt[names[k]].shape) != tuple(target[k])]
    kept = {ours: theirs for ours, theirs in names.items() if ours in target}
    return Fit(layout, arch, kept, missing, unexpected, shapes)


def fit_layouts(arch: str, ckpt: Mapping[str, torch.Tensor], target: Mapping[str, torch.Size],
                only: Optional[Layout] = None) -> List[Fit]:
    """Every layout of `arch` (or just `only`) against the checkpoint, in the order `layouts_for` gives."""
    layouts = [only] if only is not None else layouts_for(arch)
    return [fit(lay, arch, ckpt, target) for lay in layouts]


# ------------------------------------------------------------------------------------------------
# Normalisation: the mean/std a model subtracts and divides by before its first layer.
# ------------------------------------------------------------------------------------------------
NORMALIZE_SYNTAX = "none, dataset, or MEAN/STD as m1,m2,m3/s1,s2,s3 (e.g. 0.4914,0.4822,0.4465/0.2023,0.1994,0.2010)"


@dataclass(frozen=True)
class Normalization:
    spec: str                      # none | dataset | m1,m2,m3/s1,s2,s3 | checkpoint
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    source: str                    # who chose it: --normalize, the checkpoint, a layout's default

    def record(self) -> Dict[str, object]:
        """What a result's model block stores."""
        return {"spec": self.spec, "mean": list(self.mean), "std": list(self.std), "source": self.source}



NONE = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


def _numbers(text: str, flag: str, raw: str) -> Tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"{flag} {raw!r}: write {NORMALIZE_SYNTAX}") from None
    if len(values) == 1:
        values = values * 3  # one value for all three channels
    if len(values) != 3:
        raise InputError(f"{flag} {raw!r}: give 1 or 3 numbers on each side of '/'; write {NORMALIZE_SYNTAX}")
    return values


def parse_normalize(text: str, dataset_mean: Optional[Sequence[float]], dataset_std: Optional[Sequence[float]],
                    source: str = "--normalize", flag: str = "--normalize") -> Normalization:
    """`none`, `dataset` or `m1,m2,m3/s1,s2,s3` (one number per side means all channels)."""
    raw = str(text).strip()
    word = raw.lower()
    if word == "none":
        return Normalization("none", NONE[0], NONE[1], source)
    if word == "dataset":
        if dataset_mean is None or dataset_std is None:
            raise InputError(f"{flag} dataset: the dataset is unknown here; pass --dataset or MEAN/STD values")
        return Normalization("dataset", tuple(map(float, dataset_mean)), tuple(map(float, dataset_std)), source)
    if raw.count("/") != 1:
        raise InputError(f"{flag} {raw!r}: write {NORMALIZE_SYNTAX}")
    mean_text, std_text = raw.split("/")
    mean, std = _numbers(mean_text, flag, raw), _numbers(std_text, flag, raw)
    if min(std) <= 0:
        raise InputError(f"{flag} {raw!r}: every std must be above 0")
    return Normalization(f"{','.join(f'{v:g}' for v in mean)}/{','.join(f'{v:g}' for v in std)}", mean, std, source)


def default_normalization(layout: Layout, dataset_mean: Sequence[float], dataset_std: Sequence[float]) -> Normalization:
    """What a checkpoint detected in `layout` is fed when --normalize is not given."""
    return parse_normalize(layout.normalize, dataset_mean, dataset_std, source=f"layout {layout.name}'s default")


# ------------------------------------------------------------------------------------------------
# The table of docs/models.md, generated from LAYOUTS (a test keeps the page in step).
# ------------------------------------------------------------------------------------------------
def layouts_markdown() -> str:
    rows = ["| layout | --arch | normalisation | keys | key names read from |", "|---|---|---|---|---|"]
    for lay in (NATIVE_LAYOUT,) + LAYOUTS:
        archs = "every architecture" if lay.archs == ("*",) else ", ".join(f"`{a}`" for a in lay.archs)
        rows.append(f"| `{lay.name}` | {archs} | {lay.normalize} | {lay.description} | {'; '.join(lay.sources)} |")
    return "\n".join(rows)
