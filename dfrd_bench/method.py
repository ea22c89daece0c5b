"""The `Method` interface every data-free robustness distillation method implements.

The runner owns the loop (epochs, the generation and distillation stages, the pool, the student's
optimiser and schedule, checkpoints, evaluation, the result). A method supplies only what is its
own, through two verbs it must write and three it overrides when it has state:

    generate(ctx) -> Samples     one generation stage; the runner adds the samples to the pool
    student_loss(ctx, batch)     build adversarial examples, return (loss, logs)
    setup(ctx)                   optional: build generators / optimisers / state (called once)
    state_dict() / load_state_dict(state)   optional: everything else needed to resume exactly

The defaults of the optional ones build nothing and save nothing: a method without state of its own
(no generator, no optimiser, no memory bank) writes none of them. Optional too: `end_epoch(ctx) ->
logs` after the distillation stage. Draw every random number from `ctx` (ctx.randn / ctx.rand /
ctx.randint / ctx.multinomial) or the global torch RNG, both of which are checkpointed, so a resumed
run ends with the same student.

Data-parallel runs (`torchrun`, docs/adding-a-method.md): a method that sets `data_parallel = True`
synthesises its share of the batch (ctx.cfg holds the per-process batch sizes) and keeps whatever it
shares across samples the same on every process with `ctx.average_gradients`, `ctx.average_buffers`,
`ctx.sync_module`, `ctx.gather`, `ctx.average` and `ctx.broadcast`; with one process they do nothing.

This module is the interface and the context. Next to it: what tables, figures and `list methods`
say about a method (its label, paper, family, ...: `info = MethodInfo(...)`) is in
dfrd_bench/method_info.py; the `METHODS` registry, `@register_method` and the plugin loading (entry
points, `--plugin`, the built-ins' shadow guard) are in dfrd_bench/plugins.py. Every name of both is
re-exported here, so `from dfrd_bench.method import register_method, MethodInfo` keeps working (the
registry's names are loaded on first use: dfrd_bench.plugins builds on this module).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, Iterable, List, Mapping, Optional, Tuple

import torch

from .acceleration import Accelerator, to_device
from .config import Config
from .distributed import World
from .errors import InputError
from .method_info import FAMILIES, MethodInfo, method_info, table_order  # noqa: F401  (re-exported)
from .models import Classifier
from .modes import frozen, in_eval_mode, model_mode  # noqa: F401  (re-exported for method plugins)
from .pool import SamplePool


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

    def place_generator(self, module: torch.nn.Module) -> torch.nn.Module:
        """A generator (or any module a method builds and trains) on the run's device, its convolution
        weights channels-last where `generator_channels_last` says so (the default; 1.6x faster
        generator passes on a 2-core CPU, issue 31). Call it after building, before the optimiser."""
        module = module.to(self.device)
        if self.cfg.generator_channels_last:
            module = module.to(memory_format=torch.channels_last)
        return module

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

    def broadcast(self, tensors: Iterable[torch.Tensor]) -> None:
        """In place, each tensor becomes rank 0's: shared state every process computed from the same
        gathered values (class weights), made bit-identical whatever the kernels did."""
        self.world.broadcast_(tensors)

    # Random draws from the run's own stream (on the CPU: the same numbers on every device), copied to
    # the device without waiting for it (acceleration.to_device).
    def randn(self, *shape: int) -> torch.Tensor:
        return to_device(torch.randn(*shape, generator=self.rng), self.device)

    def rand(self, *shape: int) -> torch.Tensor:
        return to_device(torch.rand(*shape, generator=self.rng), self.device)

    def randint(self, high: int, *shape: int) -> torch.Tensor:
        return to_device(torch.randint(0, high, shape, generator=self.rng), self.device)

    def multinomial(self, probs: torch.Tensor, n: int) -> torch.Tensor:
        draws = torch.multinomial(probs.detach().cpu().double(), n, replacement=True, generator=self.rng)
        return to_device(draws, self.device)


class Method:
    """Base class of method plugins; see the module docstring and docs/adding-a-method.md."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    info: ClassVar[MethodInfo] = MethodInfo()  # label, family, ... for tables and figures (MethodInfo)
    defaults: ClassVar[Dict[str, Any]] = {}
    # Runner settings whose default differs for this method, e.g. {"student_augment": True} where
    # the method's reference augments its student batches. Presets and --set still override them.
    runner_defaults: ClassVar[Dict[str, Any]] = {}
    # Allowed values of the method's numeric settings (dfrd_bench.config.Range), checked when the
    # settings are resolved, before anything runs; every float setting must also be finite.
    ranges: ClassVar[Dict[str, Any]] = {}
    # Allowed values of the method's text settings ({setting: (value, ...)}), checked with the ranges.
    choices: ClassVar[Dict[str, Tuple[Any, ...]]] = {}
    # Raised when one of this method's defaults moves (a reading, a preset's budget); a run records
    # max(dfrd_bench.config.DEFAULTS_VERSION, this) and tables keep only a method's newest runs.
    defaults_version: ClassVar[int] = 0
    # A module that declares this method's own tables, figures, claims and published numbers
    # (dfrd_bench/report/contrib.py); imported when the report is drawn, never by a run.
    report_module: ClassVar[Optional[str]] = None
    # Settings added after results were first written, with the value those results ran with
    # (config.with_added_settings: resume checks and `dfrd-bench reproduce` read an old config so).
    settings_added: ClassVar[Dict[str, Any]] = {}
    presets: ClassVar[Dict[str, Dict[str, Dict[str, Any]]]] = {}
    variants: ClassVar[Dict[str, Dict[str, Any]]] = {}
    # True once the method keeps its shared state the same on every process of a data-parallel run
    # (the ctx hooks above); the runner refuses torchrun with several processes otherwise.
    data_parallel: ClassVar[bool] = False

    def teacher_needs(self, cfg: Config) -> Tuple[str, ...]:
        """What the method reads inside the teacher besides its logits, checked before anything runs:
        'batchnorm' (BN-statistics hooks), 'layer' (features at layer l, forward_from), 'stages'
        (every stage's output). A TorchScript or opaque `py:` teacher exposes none of them."""
        return ()

    def feature_layer(self, cfg: Mapping[str, Any], teacher: Classifier) -> Optional[str]:
        """Layer l for a method that needs 'layer': the `layer` setting, else the teacher's default."""
        return cfg.get("layer") or teacher.feature_layer

    def setup(self, ctx: MethodContext) -> None:
        """Optional (the default builds nothing): build generators, optimisers and other state, once
        before the first epoch and before a resume loads `state_dict`."""

    def generate(self, ctx: MethodContext) -> Samples:
        """Required: one generation stage; the runner adds the samples to the pool, logs `gen/<key>`."""
        raise NotImplementedError

    def student_loss(self, ctx: MethodContext, batch: Batch) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """Required: the student's loss on a pool batch and its logs (`student/<key>`)."""
        raise NotImplementedError

    def end_epoch(self, ctx: MethodContext) -> Dict[str, Any]:
        """Optional: logs after the distillation stage (the default logs nothing)."""
        return {}

    def bench_passes(self, cfg: Config, ctx: MethodContext) -> Dict[str, Dict[str, float]]:
        """For `dfrd-bench bench`: per stage ('generator iteration', 'generation overhead', 'student
        iteration'), how many elementary passes of the teacher and student it needs (names in
        dfrd_bench.bench.PASS_NAMES, each on one batch). Optional; a stage left out gets no bound."""
        return {}

    def state_dict(self) -> Dict[str, Any]:
        """Optional (the default saves nothing): everything `setup` built that changes during a run
        (generator and optimiser states, banks, running statistics), for an exact resume. The
        student, its optimiser, the pool and the random streams are the runner's and saved already."""
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Optional: the inverse of `state_dict`, called after `setup` on --resume."""


NEEDS = {"batchnorm": "BatchNorm layers", "layer": "intermediate layer (layer l)", "stages": "stage outputs"}


PYTHON_MODEL = ("load its weights into a Python model (--teacher-arch NAME, or --teacher-arch py:FILE.py:FACTORY; "
                "docs/models.md) or pick another method")
NO_STAGES = ("give a teacher whose stages are known (docs/models.md, \"Inside a model\"), build it as a StagedNet "
             "with --teacher-arch py:FILE.py:FACTORY, or pick another method")


def _missing(teacher: Classifier, need: str, cfg: Mapping[str, Any]) -> Optional[Tuple[str, str]]:
    """(why `teacher` cannot give what `need` asks, what to do), or None."""
    if need not in NEEDS:
        raise ValueError(f"unknown teacher need {need!r}; use one of {', '.join(NEEDS)}")
    if getattr(teacher, "origin", {}).get("format") == "torchscript":
        return "is a TorchScript model, whose layers cannot be hooked", PYTHON_MODEL
    if need == "batchnorm":
        return None if teacher.bn_layers() else ("has no BatchNorm layer", "pick a teacher with BatchNorm or another method")
    if need == "layer" and (cfg.get("layer") or teacher.feature_layer):
        return None  # the method's own choice of layer is then checked on a probe (check_teacher)
    if need == "stages" and teacher.stage_names:
        return None
    return "exposes none (its architecture's stages are not known)", NO_STAGES


def check_teacher(method: "Method", teacher: Classifier, cfg: Config) -> None:
    """Fail in one line, before any work, when the teacher lacks what the method reads inside it; the
    layers it reads are tried on a probe batch (they run once, give feature maps, layer l continues)."""
    needs = method.teacher_needs(cfg)
    for need in needs:
        missing = _missing(teacher, need, cfg)
        if missing is not None:
            why, fix = missing
            raise InputError(f"{method.name} needs the teacher's {NEEDS[need]}, and teacher {teacher.arch} {why}: "
                             f"{fix}")
    if "layer" in needs or "stages" in needs:
        from .data import get_dataset_spec

        size = get_dataset_spec(cfg["dataset"]).image_size if "dataset" in cfg else 32
        layer = method.feature_layer(cfg, teacher) if "layer" in needs else None
        try:
            teacher.check_layers(size, teacher.stage_names if "stages" in needs else (), continue_from=layer)
        except InputError as exc:
            raise InputError(f"{method.name}: {exc}") from None


# ------------------------------------------------------------------------------------------------
# Re-exported from dfrd_bench.plugins (the registry and the loading), which imports this module:
# loaded on first use (PEP 562), so `import dfrd_bench.method` and `import dfrd_bench.plugins` work in
# either order and neither import is a cycle.
_PLUGIN_NAMES = ("METHODS", "PluginError", "register_method", "checked_info", "load_plugins", "load_plugin_module",
                 "plugin_modules", "get_method", "check_builtin_package", "ENTRY_POINT_GROUP", "BUILTIN_PACKAGE",
                 "PROJECT_ROOT", "log", "DfrdError", "Registry")


def __getattr__(name: str) -> Any:
    if name in _PLUGIN_NAMES:
        from . import plugins

        return getattr(plugins, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> List[str]:
    return sorted(list(globals()) + list(_PLUGIN_NAMES))
