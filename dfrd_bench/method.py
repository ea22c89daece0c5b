"""The `Method` interface every data-free robustness distillation method implements.

The runner owns the loop (epochs, the generation and distillation stages, the pool, the student's
optimiser and schedule, checkpoints, evaluation, the result). A method supplies only what is its
own, through four verbs:

    setup(ctx)                   build generators / optimisers / state (called once)
    generate(ctx) -> Samples     one generation stage; the runner adds the samples to the pool
    student_loss(ctx, batch)     build adversarial examples, return (loss, logs)
    state_dict() / load_state_dict(state)   everything needed to resume exactly

Optional: `end_epoch(ctx) -> logs` after the distillation stage. Draw every random number from
`ctx` (ctx.randn / ctx.rand / ctx.randint / ctx.multinomial) or the global torch RNG, both of
which are checkpointed, so a resumed run ends with the same student.

Data-parallel runs (`torchrun`, docs/adding-a-method.md): a method that sets `data_parallel = True`
synthesises its share of the batch (ctx.cfg holds the per-process batch sizes) and keeps whatever it
shares across samples the same on every process with `ctx.average_gradients`, `ctx.average_buffers`,
`ctx.sync_module`, `ctx.gather` and `ctx.average`; with one process they do nothing.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Callable, ClassVar, Dict, Iterable, List, Optional, Tuple

import torch

from .acceleration import Accelerator
from .config import Config
from .distributed import World
from .models import Classifier
from .pool import SamplePool
from .modes import frozen, in_eval_mode, model_mode  # noqa: F401  (re-exported for method plugins)
from .registry import Registry

ENTRY_POINT_GROUP = "dfrd_bench.methods"
log = logging.getLogger(__name__)


@dataclass
class Samples:
    """Synthetic images in [0,1] (N,3,H,W) and their labels (None if the method has none)."""

    x: torch.Tensor
    y: Optional[torch.Tensor] = None
    logs: Dict[str, Any] = field(default_factory=dict)


class LowestLossBatch:
    """`select(x_F)` of the generator-based methods: keep the batch with the lowest loss seen so far,
    compared on the device (no host sync per step)."""

    def __init__(self, device: torch.device) -> None:
        self.loss = torch.tensor(float("inf"), device=device)
        self.x: Optional[torch.Tensor] = None

    def update(self, loss: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        better = self.improved = loss.detach() < self.loss  # kept for methods that track more per batch
        self.loss = torch.where(better, loss.detach(), self.loss)
        self.x = x.detach() if self.x is None else torch.where(better, x.detach(), self.x)
        return self.x


@dataclass
class Batch:
    x: torch.Tensor
    y: torch.Tensor  # -1 where the pool holds no label


@dataclass
class MethodContext:
    teacher: Classifier
    student: Classifier
    cfg: Config
    device: torch.device
    rng: torch.Generator          # CPU generator: same numbers on every device
    pool: SamplePool
    num_classes: int
    image_size: int
    epoch: int = 0
    rank: int = 0
    # speed settings: autocast for training passes, compiled attack passes (dfrd_bench/acceleration.py)
    accel: Accelerator = field(default_factory=lambda: Accelerator(torch.device("cpu")))
    world: World = field(default_factory=World)  # the processes of a data-parallel run (one by default)

    @property
    def world_size(self) -> int:
        return self.world.size

    # Keeping what a method shares across samples the same on every process of a data-parallel run
    # (each a no-op with one process).
    def average_gradients(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Between backward() and the optimiser step of a shared module (a generator, a head; not
        per-sample tensors such as z): the gradient of the loss over the global batch."""
        self.world.average_gradients(params)

    def average_buffers(self, module: torch.nn.Module) -> None:
        """After forwards in train mode: BatchNorm running statistics averaged over the processes."""
        self.world.average_buffers(module)

    def sync_module(self, module: torch.nn.Module) -> None:
        """After a (re-)initialisation drawn per process: rank 0's parameters and buffers everywhere."""
        self.world.broadcast_module(module)

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """Every process's rows of `t`, in rank order: per-sample values a method turns into shared
        state (class statistics, a memory bank)."""
        return self.world.gather(t)

    def average(self, tensors: Iterable[torch.Tensor]) -> None:
        """In place, each tensor's mean over the processes (statistics a method keeps across steps)."""
        self.world.average_(tensors)

    # Random draws from the run's own stream, moved to the device.
    def randn(self, *shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=self.rng).to(self.device)

    def rand(self, *shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=self.rng).to(self.device)

    def randint(self, high: int, *shape: int) -> torch.Tensor:
        return torch.randint(0, high, shape, generator=self.rng).to(self.device)

    def multinomial(self, probs: torch.Tensor, n: int) -> torch.Tensor:
        return torch.multinomial(probs.detach().cpu().double(), n, replacement=True, generator=self.rng).to(self.device)


class Method:
    """Base class of method plugins; see the module docstring and docs/adding-a-method.md."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    defaults: ClassVar[Dict[str, Any]] = {}
    # Runner settings whose default differs for this method, e.g. {"student_augment": True} where
    # the method's reference augments its student batches. Presets and --set still override them.
    runner_defaults: ClassVar[Dict[str, Any]] = {}
    # Allowed values of the method's numeric settings (dfrd_bench.config.Range), checked when the
    # settings are resolved, before anything runs; every float setting must also be finite.
    ranges: ClassVar[Dict[str, Any]] = {}
    presets: ClassVar[Dict[str, Dict[str, Dict[str, Any]]]] = {}
    variants: ClassVar[Dict[str, Dict[str, Any]]] = {}
    # True once the method keeps its shared state the same on every process of a data-parallel run
    # (the ctx hooks above); the runner refuses torchrun with several processes otherwise.
    data_parallel: ClassVar[bool] = False

    def setup(self, ctx: MethodContext) -> None:
        pass

    def generate(self, ctx: MethodContext) -> Samples:
        raise NotImplementedError

    def student_loss(self, ctx: MethodContext, batch: Batch) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        raise NotImplementedError

    def end_epoch(self, ctx: MethodContext) -> Dict[str, Any]:
        return {}

    def bench_passes(self, cfg: Config, ctx: MethodContext) -> Dict[str, Dict[str, float]]:
        """For `dfrd-bench bench`: per stage ('generator iteration', 'generation overhead', 'student
        iteration'), how many elementary passes of the teacher and student it needs (names in
        dfrd_bench.bench.PASS_NAMES, each on one batch). Optional; a stage left out gets no bound."""
        return {}

    def state_dict(self) -> Dict[str, Any]:
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        pass


METHODS: Registry[type] = Registry("method")


def register_method(name: str) -> Callable[[type], type]:
    """Class decorator: `@register_method("ferd")`; a second class with the same name is an error."""

    def decorator(cls: type) -> type:
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise TypeError(f"{cls!r} must subclass dfrd_bench.method.Method")
        cls.name = name
        METHODS.add(name, cls, help=cls.summary)
        return cls

    return decorator


_PLUGINS_LOADED = False


def load_plugins(refresh: bool = False) -> List[str]:
    """Import the built-in methods and every entry point in the group `dfrd_bench.methods`.

    An entry point may name a module (whose classes register themselves with @register_method)
    or a Method subclass, which is then registered under the entry point's name.
    """
    global _PLUGINS_LOADED
    if _PLUGINS_LOADED and not refresh:
        return METHODS.names()
    _PLUGINS_LOADED = True
    import methods  # noqa: F401  (the built-in plugins register on import)

    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in METHODS:
            continue
        try:
            obj = ep.load()
        except Exception as exc:  # a broken third-party plugin must not break the suite
            log.warning("could not load method plugin %s (%s): %s", ep.name, ep.value, exc)
            continue
        if isinstance(obj, type) and issubclass(obj, Method) and ep.name not in METHODS:
            register_method(ep.name)(obj)
    return METHODS.names()


def get_method(name: str) -> type:
    load_plugins()
    return METHODS.get(name)
