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
`ctx.sync_module`, `ctx.gather`, `ctx.average` and `ctx.broadcast`; with one process they do nothing.

What tables, figures and `list methods` say about a method (its label, paper, family, whether it
uses the RSLAD student stage, whether it is the proposed method) is its `info = MethodInfo(...)`,
checked by `register_method`. Methods are found through the entry-point group `dfrd_bench.methods`
(the built-ins in the top-level `methods/` package are declared there too, with a fallback import
of that package, checked to be this project's), and `--plugin module` loads one module for one
command.
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import logging
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, ClassVar, Dict, Iterable, List, Mapping, Optional, Tuple

import torch

from .acceleration import Accelerator, to_device
from .config import Config
from .distributed import World
from .errors import DfrdError, InputError
from .models import Classifier
from .modes import frozen, in_eval_mode, model_mode  # noqa: F401  (re-exported for method plugins)
from .pool import SamplePool
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


FAMILIES: Dict[str, str] = {
    "generator": "a generator network synthesises the samples",
    "inversion": "the pixels themselves are optimised against the teacher",
    "hard-label": "the teacher answers with its top-1 label only",
    "other": "none of these (what a plugin that does not say gets)",
}


@dataclass(frozen=True)
class MethodInfo:
    """What tables, figures and `list methods` say about a method, declared on its class as `info`.

    Nothing here changes how a method runs; `register_method` checks it."""

    label: str = ""                # its name in tables and figure legends ("" = the registered name)
    paper: str = ""                # the paper it comes from ("" = the class's `paper`)
    family: str = "other"          # a key of FAMILIES
    # made robust with the shared RSLAD student stage (dfrd_bench.robust_kd; needs the `rslad`
    # setting): Table 8 gets its rslad=false / rslad=true rows
    rslad_stage: bool = False
    # the method the paper proposes: listed last, and never "the best baseline" a cell is tested against
    proposed: bool = False
    order: int = 100               # position among the baselines in tables and figures (lower first, then name)
    color: Optional[str] = None    # its matplotlib colour in figures (None: the next of the colour cycle)
    # settings a run must have to fill the method's row of the method tables (1, 2, 5), e.g. FERD's reading
    row_settings: Mapping[str, Any] = field(default_factory=dict)
    url: str = ""                  # where the paper or the reference code is


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


METHODS: Registry[type] = Registry("method")


class PluginError(DfrdError, ValueError):
    """A method plugin that cannot be loaded or registered as declared (the message says what to change)."""


def register_method(name: str) -> Callable[[type], type]:
    """Class decorator: `@register_method("ferd")`; a second class with the same name is an error.
    The class's `info` (MethodInfo) is checked here, so a bad declaration fails at import."""

    def decorator(cls: type) -> type:
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise TypeError(f"{cls!r} must subclass dfrd_bench.method.Method")
        info = checked_info(name, cls)
        cls.name = name
        METHODS.add(name, cls, help=cls.summary)
        cls.info, cls.paper = info, info.paper
        return cls

    return decorator


def checked_info(name: str, cls: type) -> MethodInfo:
    """The class's own `info` (one inherited from a registered method describes that one, not this),
    with the label and paper filled in, or one line saying what is wrong with it."""
    info = cls.__dict__.get("info")
    if info is None:  # a plugin that declares nothing: its name as label, RSLAD rows if it has the switch
        return MethodInfo(label=name, paper=cls.paper, rslad_stage="rslad" in cls.defaults)
    if not isinstance(info, MethodInfo):
        raise PluginError(f"method {name!r}: `info` must be a dfrd_bench.method.MethodInfo, got {type(info).__name__}")
    if info.family not in FAMILIES:
        raise PluginError(f"method {name!r}: unknown family {info.family!r} in its MethodInfo: use one of "
                          f"{', '.join(FAMILIES)}")
    if info.rslad_stage and "rslad" not in cls.defaults:
        raise PluginError(f"method {name!r} declares rslad_stage=True but has no `rslad` setting: build it on "
                          f"dfrd_bench.robust_kd.RobustKDMethod (or set rslad_stage=False)")
    return dataclasses.replace(info, label=info.label or name, paper=info.paper or cls.paper)


def method_info(name: str) -> MethodInfo:
    """A registered method's metadata; a method not installed here (a result made elsewhere) gets
    its name as label and the defaults."""
    load_plugins()
    return METHODS.get(name).info if name in METHODS else MethodInfo(label=name)


def table_order(names: Iterable[str]) -> List[str]:
    """`names` in the order tables and figures list methods: the baselines by their `order` (then
    name), the proposed method(s) last, as in the paper."""
    def key(name: str) -> Tuple[bool, int, str]:
        info = method_info(name)
        return info.proposed, info.order, name

    return sorted(dict.fromkeys(names), key=key)


# ------------------------------------------------------------------------------------------------
# Loading: the built-ins and third-party plugins alike come through the entry-point group
# `dfrd_bench.methods` (pyproject.toml declares the built-ins'); `--plugin module` adds one module
# for one command.
BUILTIN_PACKAGE = "methods"
PROJECT_ROOT = Path(__file__).resolve().parent.parent  # the folder that holds dfrd_bench/ and methods/
_PLUGINS_LOADED = False
_PLUGIN_MODULES: List[str] = []  # loaded with --plugin in this process (sweep passes them on to the runs it prints)


def check_builtin_package() -> None:
    """The `methods` package Python would import must be this project's (next to dfrd_bench);
    another installed package of that name would otherwise replace the built-ins without a word."""
    expected = PROJECT_ROOT / BUILTIN_PACKAGE
    module = sys.modules.get(BUILTIN_PACKAGE)
    if module is not None:
        where = getattr(module, "__file__", None) or next(iter(getattr(module, "__path__", [])), None)
    else:
        spec = importlib.util.find_spec(BUILTIN_PACKAGE)
        where = spec and (spec.origin if spec.has_location else next(iter(spec.submodule_search_locations or []), None))
    if where is None:
        raise PluginError(f"dfrd-bench's built-in methods are missing (expected the package {expected}): "
                          f"reinstall dfrd-bench (pip install -e . in its repository)")
    found = Path(where).resolve()
    if expected.resolve() not in (found, found.parent):
        raise PluginError(f"another installed package named 'methods' (at {found}) shadows dfrd-bench's built-in "
                          f"methods ({expected}): uninstall or rename it, or run where it is not importable")


def load_plugins(refresh: bool = False) -> List[str]:
    """Register every method: each entry point in the group `dfrd_bench.methods` (the built-ins'
    are declared in pyproject.toml), then this project's `methods` package when its entry points
    are not installed (a source checkout, an install older than them). Returns the names.

    An entry point may name a module (whose classes register themselves with @register_method)
    or a Method subclass, which is then registered under the entry point's name. A broken
    third-party plugin is reported and skipped; a shadowed or broken built-in is an error.
    """
    global _PLUGINS_LOADED
    if _PLUGINS_LOADED and not refresh:
        return METHODS.names()
    _PLUGINS_LOADED = True  # first: a plugin that asks for a method while it is imported finds no loop
    try:
        check_builtin_package()
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            _load_entry_point(ep)
        importlib.import_module(BUILTIN_PACKAGE)  # a no-op once an entry point imported it
    except BaseException:
        _PLUGINS_LOADED = False  # the next call fails the same way instead of listing half the methods
        raise
    return METHODS.names()


def _load_entry_point(ep: metadata.EntryPoint) -> None:
    builtin = ep.value.split(":")[0].split(".")[0] == BUILTIN_PACKAGE
    if ep.name in METHODS:
        if not builtin and METHODS.get(ep.name).__module__ != ep.value.split(":")[0]:
            log.warning("method plugin %s (%s) skipped: the name is taken by %s", ep.name, ep.value,
                        METHODS.get(ep.name).__module__)
        return
    try:
        obj = ep.load()
    except Exception as exc:  # a broken third-party plugin must not break the suite
        if builtin:
            raise
        log.warning("could not load method plugin %s (%s): %s", ep.name, ep.value, exc)
        return
    if isinstance(obj, type) and issubclass(obj, Method) and ep.name not in METHODS:
        register_method(ep.name)(obj)


def load_plugin_module(module: str) -> List[str]:
    """Import `module` for this process (`--plugin`): its classes register themselves with
    @register_method. Returns the method names it added."""
    load_plugins()
    before = set(METHODS.names())
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and (module == exc.name or module.startswith(exc.name + ".")):
            raise PluginError(f"--plugin {module}: no module named {exc.name!r}: put the folder that holds it on "
                              f"PYTHONPATH, or pip install its package") from None
        raise
    if module not in _PLUGIN_MODULES:
        _PLUGIN_MODULES.append(module)
    return sorted(set(METHODS.names()) - before)


def plugin_modules() -> List[str]:
    """The modules loaded with --plugin in this process, in order."""
    return list(_PLUGIN_MODULES)


def get_method(name: str) -> type:
    load_plugins()
    return METHODS.get(name)
