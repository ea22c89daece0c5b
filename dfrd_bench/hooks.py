"""Forward hooks, as context managers that always remove their hooks: the one way the suite reads
inside a model. The model's own `forward` always runs unchanged; hooks only watch it (or, for
`layer_hooks(replace=...)`, swap one layer's output).

- `bn_statistics_loss(model)` measures, on the INPUT of every BatchNorm layer (as DeepInversion
  does), || mu_batch - running_mean ||_2 + || var_batch - running_var ||_2, summed over layers.
- `bn_input_means(model)` collects every BN layer's input averaged over space (CMI's features).
- `layer_hooks(net, capture, replace)` records named layers' outputs and can replace one layer's
  output: what `Classifier.features`, `forward_stages` and `forward_from` are built on.

A BN hook ignores an empty batch: `Classifier.forward_from` runs the layers before the replaced one
on an empty batch (docs/models.md, "Inside a model").
"""
from __future__ import annotations

import contextlib
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

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
        if x.shape[0] == 0:  # the skipped layers of a forward_from: no statistics to compare
            return
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
        if inputs[0].shape[0]:  # an empty batch (the skipped layers of a forward_from) has no means
            collected.append(instance_means(inputs[0]))

    handles = [layer.register_forward_hook(hook) for layer in layers]
    try:
        yield collected
    finally:
        for h in handles:
            h.remove()


# ------------------------------------------------------------------------------------------------
# Named layers: their outputs recorded, or one of them replaced
# ------------------------------------------------------------------------------------------------
class LayerRecord:
    """What `layer_hooks` saw during one forward: each captured layer's output, how often every
    hooked layer ran, and the captured tensors' version counters (to detect in-place changes)."""

    def __init__(self, what: str, names: Sequence[str]) -> None:
        self.what = what
        self.calls: Dict[str, int] = {n: 0 for n in names}
        self.outputs: Dict[str, torch.Tensor] = {}
        self._versions: Dict[str, int] = {}

    def keep(self, name: str, output: torch.Tensor) -> None:
        self.calls[name] += 1
        if not isinstance(output, torch.Tensor):
            raise InputError(f"{self.what}: layer {name} returns {type(output).__name__}, not a tensor; "
                             "pick a layer that outputs a feature map")
        self.outputs[name] = output
        if not output.is_inference():
            self._versions[name] = output._version

    def checked(self) -> Dict[str, torch.Tensor]:
        """The outputs, once every hooked layer ran exactly once and none was changed in place after it."""
        for name, count in self.calls.items():
            if count != 1:
                how = "did not run" if count == 0 else f"ran {count} times"
                raise InputError(f"{self.what}: layer {name} {how} in one forward pass; pick a layer the "
                                 "model's forward calls exactly once (docs/models.md, \"Inside a model\")")
        for name, version in self._versions.items():
            if self.outputs[name]._version != version:
                raise InputError(f"{self.what}: the forward changes layer {name}'s output in place after it; "
                                 "pick another layer (docs/models.md, \"Inside a model\")")
        return self.outputs


@contextlib.contextmanager
def layer_hooks(net: torch.nn.Module, capture: Sequence[str] = (), replace: Optional[Tuple[str, torch.Tensor]] = None,
                what: str = "model") -> Iterator[LayerRecord]:
    """During forward passes inside the block, record the outputs of the submodules of `net` named in
    `capture` (paths as `net.get_submodule` takes them) and, with `replace=(name, h)`, return h in place
    of that submodule's output. Call `record.checked()` after ONE forward pass: it refuses a layer that
    did not run exactly once or whose output the forward changed in place. Hooks removed on exit."""
    names = list(dict.fromkeys(list(capture) + ([replace[0]] if replace else [])))
    record = LayerRecord(what, names)
    handles = []
    try:
        for name in names:
            module = layer_module(net, name, what)
            if replace is not None and name == replace[0]:
                handles.append(module.register_forward_hook(_replacer(record, name, replace[1])))
            else:
                handles.append(module.register_forward_hook(lambda m, i, o, n=name: record.keep(n, o)))
        yield record
    finally:
        for h in handles:
            h.remove()


def _replacer(record: LayerRecord, name: str, h: torch.Tensor):
    def hook(module, inputs, output):
        if not isinstance(output, torch.Tensor) or tuple(output.shape[1:]) != tuple(h.shape[1:]):
            shape = tuple(output.shape[1:]) if isinstance(output, torch.Tensor) else type(output).__name__
            raise InputError(f"{record.what}: layer {name} outputs {shape} per image, the replacement "
                             f"{tuple(h.shape[1:])}: give features taken at that layer")
        record.keep(name, h)
        return h
    return hook


def layer_module(net: torch.nn.Module, name: str, what: str = "model") -> torch.nn.Module:
    """The submodule `name` of `net`, or one line naming the top-level modules it has."""
    try:
        return net.get_submodule(name)
    except AttributeError:
        children = ", ".join(n for n, _ in net.named_children()) or "none"
        raise InputError(f"{what} has no layer {name!r}: give a module path such as block3 or layer.2 "
                         f"(its top-level modules: {children})") from None
