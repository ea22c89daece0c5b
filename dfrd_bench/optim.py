"""The student's optimiser and learning-rate schedule, chosen by name (as timm's create_optimizer_v2 /
create_scheduler): `student_optimizer` and `student_schedule` name entries of the registries below.

A plugin adds its own at import time (docs/running.md, "Registering presets, optimisers, schedules
and attacks"):

    @register_optimizer("adamw", help="AdamW at student_lr, decoupled weight decay student_weight_decay")
    def adamw(params, cfg):
        return torch.optim.AdamW(params, lr=cfg["student_lr"], weight_decay=cfg["student_weight_decay"])

    @register_schedule("step", help="student_lr, divided by 10 at half the epochs")
    def step(cfg, epoch):
        return cfg["student_lr"] * (0.1 if epoch >= cfg["epochs"] // 2 else 1.0)

An optimiser factory takes (params, cfg) and returns a torch optimiser whose param groups the runner
sets to each epoch's learning rate; a schedule takes (cfg, 0-based epoch) and returns that epoch's
learning rate (warm-up epochs included: the runner asks only for epochs that train the student).
Both names are checked when the settings are resolved (config.resolve_config), so a misspelt one
fails before any work with one line naming the registered ones.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Mapping

import torch

from .config import ConfigError

OptimizerFactory = Callable[[Iterable[torch.nn.Parameter], Mapping[str, Any]], torch.optim.Optimizer]
Schedule = Callable[[Mapping[str, Any], int], float]


@dataclass(frozen=True)
class _Entry:
    fn: Callable[..., Any]
    help: str


_OPTIMIZERS: Dict[str, _Entry] = {}
_SCHEDULES: Dict[str, _Entry] = {}


def _register(table: Dict[str, _Entry], kind: str, name: str, fn: Callable[..., Any], help: str) -> None:
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"a student {kind} needs a name, got {name!r}")
    if name in table:
        raise ConfigError(f"student {kind} {name!r} is already registered (by {table[name].fn.__module__})")
    doc = (getattr(fn, "__doc__", None) or "").strip().splitlines()
    table[name] = _Entry(fn, help or (doc[0] if doc else ""))


def register_optimizer(name: str, help: str = "") -> Callable[[OptimizerFactory], OptimizerFactory]:
    """Decorator: `factory(params, cfg) -> torch.optim.Optimizer` under `name` (a duplicate is refused)."""
    def decorator(factory: OptimizerFactory) -> OptimizerFactory:
        _register(_OPTIMIZERS, "optimizer", name, factory, help)
        return factory

    return decorator


def register_schedule(name: str, help: str = "") -> Callable[[Schedule], Schedule]:
    """Decorator: `schedule(cfg, epoch) -> learning rate` under `name` (a duplicate is refused)."""
    def decorator(schedule: Schedule) -> Schedule:
        _register(_SCHEDULES, "schedule", name, schedule, help)
        return schedule

    return decorator


def unregister_optimizer(name: str) -> None:
    """Remove a registered optimiser (a test's, an unloaded plugin's)."""
    _lookup(_OPTIMIZERS, "student_optimizer", name)
    del _OPTIMIZERS[name]


def unregister_schedule(name: str) -> None:
    """Remove a registered schedule (a test's, an unloaded plugin's)."""
    _lookup(_SCHEDULES, "student_schedule", name)
    del _SCHEDULES[name]


def optimizer_names() -> List[str]:
    """The registered optimisers, in registration order (the built-in `sgd` first)."""
    return list(_OPTIMIZERS)


def schedule_names() -> List[str]:
    """The registered schedules, in registration order (cosine, cosine-through-warmup, constant first)."""
    return list(_SCHEDULES)


def describe_optimizer(name: str) -> str:
    return _lookup(_OPTIMIZERS, "student_optimizer", name).help


def describe_schedule(name: str) -> str:
    return _lookup(_SCHEDULES, "student_schedule", name).help


def _lookup(table: Dict[str, _Entry], key: str, name: str) -> _Entry:
    if name not in table:
        raise ConfigError(f"{key} must be one of {', '.join(table)}, got {name!r}")
    return table[name]


def create_optimizer(name: str, params: Iterable[torch.nn.Parameter], cfg: Mapping[str, Any]) -> torch.optim.Optimizer:
    """The student optimiser `name` over `params` with the run's settings `cfg` (student_lr, ...)."""
    return _lookup(_OPTIMIZERS, "student_optimizer", name).fn(params, cfg)


def get_schedule(name: str) -> Schedule:
    """The schedule registered as `name`: schedule(cfg, epoch) -> learning rate."""
    return _lookup(_SCHEDULES, "student_schedule", name).fn


def scheduled_lr(cfg: Mapping[str, Any], epoch: int) -> float:
    """The student's learning rate in (0-based) `epoch` under cfg['student_schedule']."""
    return get_schedule(cfg["student_schedule"])(cfg, epoch)


# ------------------------------------------------------------------------------------------------ built-ins
@register_optimizer("sgd", help="SGD: student_lr, momentum student_momentum, weight decay student_weight_decay "
                                "(no Nesterov, no dampening)")
def sgd(params: Iterable[torch.nn.Parameter], cfg: Mapping[str, Any]) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=cfg["student_lr"], momentum=cfg["student_momentum"],
                           weight_decay=cfg["student_weight_decay"])


def cosine_lr(base: float, step: int, total: int) -> float:
    """Cosine annealing from `base` to 0 over `total` steps (CosineAnnealingLR with T_max=total)."""
    return 0.5 * base * (1 + math.cos(math.pi * step / max(1, total)))


@register_schedule("cosine", help="annealed to 0 over the epochs after the warm-up (the first student epoch "
                                  "gets student_lr)")
def cosine(cfg: Mapping[str, Any], epoch: int) -> float:
    warmup = cfg["warmup_epochs"]
    return cosine_lr(cfg["student_lr"], max(0, epoch - warmup), cfg["epochs"] - warmup)


@register_schedule("cosine-through-warmup", help="annealed over all epochs, warm-up included (FERD's and Fast's "
                                                 "released code step their scheduler through the warm-up)")
def cosine_through_warmup(cfg: Mapping[str, Any], epoch: int) -> float:
    return cosine_lr(cfg["student_lr"], epoch, cfg["epochs"])


@register_schedule("constant", help="student_lr in every epoch")
def constant(cfg: Mapping[str, Any], epoch: int) -> float:
    return cfg["student_lr"]
