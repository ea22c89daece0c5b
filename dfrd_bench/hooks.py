"""BatchNorm-statistics hooks, as context managers that always remove their hooks.

`bn_statistics_loss(model)` measures, on the INPUT of every BatchNorm layer (as DeepInversion
does), || mu_batch - running_mean ||_2 + || var_batch - running_var ||_2, summed over layers.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, List, Optional

import torch
from torch.nn.modules.batchnorm import _BatchNorm
from .errors import InputError


def instance_means(x: torch.Tensor) -> torch.Tensor:
    """Per-sample means over the spatial dimensions of a BN input: (N, C) (CMI's instance features)."""
    return x.mean(dim=list(range(2, x.dim()))) if x.dim() > 2 else x


class BNStatistics:
    """Collects BN-statistics terms. With `momentum`, each layer's batch statistics are blended
    with the past ones, m * past + (1 - m) * batch (Fast-Datafree); `commit=False` uses the past
    without moving it. `ema_state()` / `load_ema_state()` save and restore the past statistics."""

    def __init__(self, layers: List[_BatchNorm], momentum: Optional[float] = None,
                 instance_means: bool = False) -> None:
        self.layers = layers
        self.terms: List[torch.Tensor] = []
        # With instance_means, every layer's per-sample spatial means (N, C) are kept too (CMI's
        # instance features), and the batch mean is taken from them instead of recomputed from x.
        self.instance_means: Optional[List[torch.Tensor]] = [] if instance_means else None
        self.momentum = momentum  # Fast's blend of batch statistics over steps (None = plain)
        self.commit = True
        self._ema: dict = {}

    def ema_state(self) -> List[Optional[tuple]]:
        """Per layer (model order), the past (mean, var) the next blend uses, or None."""
        return [None if id(l) not in self._ema else tuple(t.detach().cpu() for t in self._ema[id(l)])
                for l in self.layers]

    def load_ema_state(self, state: List[Optional[tuple]]) -> None:
        if len(state) != len(self.layers):
            raise ValueError(f"BN momentum state for {len(state)} layers, the model has {len(self.layers)}")
        self._ema = {id(l): (e[0].to(l.running_mean), e[1].to(l.running_var))
                     for l, e in zip(self.layers, state) if e is not None}

    def average_ema(self, average) -> None:
        """Replace every layer's past (mean, var) by `average` of them (a callable that averages a list
        of tensors in place, e.g. over the processes of a data-parallel run)."""
        pairs = [(key, (m.detach().clone(), v.detach().clone())) for key, (m, v) in self._ema.items()]
        average([t for _, pair in pairs for t in pair])
        self._ema = dict(pairs)

    def _hook(self, module: _BatchNorm, inputs, output) -> None:
        x = inputs[0]
        dims = [0] + list(range(2, x.dim()))
        if self.instance_means is not None:
            per_sample = instance_means(x)
            self.instance_means.append(per_sample)
            mean = per_sample.mean(0)
        else:
            mean = x.mean(dims)
        var = x.var(dims, unbiased=False)
        if self.momentum is not None:
            key = id(module)
            if key in self._ema:
                prev_mean, prev_var = self._ema[key]
                mean = self.momentum * prev_mean + (1 - self.momentum) * mean
                var = self.momentum * prev_var + (1 - self.momentum) * var
            if self.commit:
                self._ema[key] = (mean.detach(), var.detach())
        self.terms.append(torch.norm(mean - module.running_mean, 2) + torch.norm(var - module.running_var, 2))

    def loss(self) -> torch.Tensor:
        if not self.terms:
            raise RuntimeError("no BatchNorm layer fired: run the model inside the context, and check it has BatchNorm")
        total = torch.stack(self.terms).sum()
        self.terms = []
        return total


def _bn_layers(model: torch.nn.Module) -> List[_BatchNorm]:
    """The model's BN layers, or one line saying why there are none to hook."""
    layers = model.bn_layers() if hasattr(model, "bn_layers") else [m for m in model.modules() if isinstance(m, _BatchNorm)]
    if not layers:
        name = getattr(model, "arch", type(model).__name__)
        if getattr(model, "origin", {}).get("format") == "torchscript":
            raise InputError(f"{name} is a TorchScript model, whose BatchNorm layers cannot be hooked: "
                             "load its weights into a Python model (docs/models.md)")
        raise InputError(f"{name} has no BatchNorm layer: a BN-statistics loss needs a teacher with BatchNorm")
    return layers


@contextlib.contextmanager
def bn_statistics_loss(model: torch.nn.Module, momentum: Optional[float] = None,
                       state: Optional[BNStatistics] = None, instance_means: bool = False) -> Iterator[BNStatistics]:
    """Collect BN-statistics terms of forward passes inside the block; hooks removed on exit.
    instance_means=True also keeps each layer's per-sample means (`stats.instance_means`), what
    `bn_input_means` collects, from the same hook."""
    layers = _bn_layers(model)
    stats = state or BNStatistics(layers, momentum, instance_means)
    handles = [layer.register_forward_hook(stats._hook) for layer in layers]
    try:
        yield stats
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def bn_input_means(model: torch.nn.Module) -> Iterator[List[torch.Tensor]]:
    """Collect, per forward pass inside the block, each BN layer's input averaged over space:
    a list of (N, C_l) tensors (CMI's instance features). Hooks removed on exit."""
    layers = _bn_layers(model)
    collected: List[torch.Tensor] = []

    def hook(module, inputs, output):
        collected.append(instance_means(inputs[0]))

    handles = [layer.register_forward_hook(hook) for layer in layers]
    try:
        yield collected
    finally:
        for h in handles:
            h.remove()
