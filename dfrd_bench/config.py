"""Run settings as data: runner defaults, presets per dataset, method defaults, `--set` overrides.

Resolution order (later wins):
  RUNNER_DEFAULTS -> Method.runner_defaults -> RUNNER_PRESETS[preset]['*'] -> RUNNER_PRESETS[preset][dataset]
  -> Method.defaults -> Method.presets[preset]['*'] -> Method.presets[preset][dataset]
  -> Method.variants[variant] (when --set variant=NAME; a variant may also hold per-preset layers:
     {'*': {...}, 'quick': {...}}) -> --set key=value.
A preset with a parent (PRESET_PARENTS: standard -> quick) applies the parent's preset layers first.
Presets are registered (`register_preset`, which plugins call too); `preset_names()` lists them.
The result is one flat, frozen, JSON-serialisable mapping stored in every result.
"""
from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import yaml

from .errors import DfrdError
from .utils import parse_fraction

# The presets are a registry (`register_preset` below; the five built-ins are registered through it,
# a plugin registers its own at import time). These are its live views, kept by register_preset:
# RUNNER_PRESETS[name] = the preset's runner layers ({'*' or dataset: settings}), PRESET_PARENTS[name] =
# the preset it builds on, PRESET_NAMES = the names in registration order (a tuple rebound at every
# registration: read `config.PRESET_NAMES` or call preset_names(), do not import the name).
# A preset may build on another: its layers go on top of the parent's (runner, method and variant
# layers alike), so `standard` is `quick` with the budget raised and nothing else to keep in step.
PRESET_NAMES: Tuple[str, ...] = ()
PRESET_PARENTS: Dict[str, str] = {}
RUNNER_PRESETS: Dict[str, Dict[str, Dict[str, Any]]] = {}
PRESET_HELP: Dict[str, str] = {}
# The L-inf budget every attack uses unless set (runs, eval, teacher training, the Python API), as a
# number and as the command line writes it; its range (EPS_RANGE) is below with the other ranges.
DEFAULT_EPS = 8 / 255
DEFAULT_EPS_TEXT = "8/255"
COMPILE_MODES = ("auto", "on", "off")
PRECISIONS = ("auto", "fp32", "bf16")
CPU_AUTO_PRECISIONS = ("fp32", "bf16-if-native")
# Bumped whenever a default that results depend on changes (a method's reading, an augmentation, a
# preset); every run result records it and tables never put two versions in one setup.
#   1: before issue 9 (FERD's UTAEs on the teacher, no student-stage augmentation, NVlabs DeepInv, ...)
#   2: issue 9's defaults (docs/methods/ferd.md, docs/methods.md)
#   3: issue 29, per method (`Method.defaults_version`): FERD's bottleneck as its authors' code runs it,
#      `released` with their generator initialisation; DeepInv's `paper` pixel steps. The core's own
#      defaults did not move, so this number stays 2 and other methods' runs stay current.
DEFAULTS_VERSION = 2


def run_defaults_version(method_cls: Any) -> int:
    """The defaults version a run of `method_cls` records: the core's, or the method's where it moved later."""
    return max(DEFAULTS_VERSION, int(getattr(method_cls, "defaults_version", 0) or 0))

# Settings the runner owns (every method has them).
RUNNER_DEFAULTS: Dict[str, Any] = {
    "teacher": None,           # teacher spec (see dfrd_bench.teachers)
    "teacher_arch": None,      # architecture of a foreign teacher checkpoint (a name, timm:<name>, py:FILE.py:FACTORY)
    "teacher_layout": None,    # its key layout (docs/models.md; None = detected)
    "teacher_normalize": None,  # none | dataset | m1,m2,m3/s1,s2,s3 (None = the checkpoint's or the layout's)
    "student": "resnet18",
    "epochs": 220,
    "gen_iters": 200,          # generator iterations per epoch (methods that synthesise with a generator)
    "student_iters": 400,      # student iterations per epoch
    "batch_size": 256,         # student batch size, sampled from the pool
    "synthesis_batch_size": 256,
    # the student's optimiser by name (dfrd_bench/optim.py: register_optimizer); sgd = SGD with
    # student_lr, student_momentum and student_weight_decay (no Nesterov), what every earlier run used
    "student_optimizer": "sgd",
    "student_lr": 0.1,
    "student_momentum": 0.9,
    "student_weight_decay": 5e-4,
    # cosine: annealed over the epochs that train the student (after the warm-up); cosine-through-warmup:
    # annealed over all epochs, warm-up included (FERD's and Fast's released code step their scheduler
    # through the warm-up, so the student starts below student_lr); constant; or a plugin's
    # (dfrd_bench/optim.py: register_schedule)
    "student_schedule": "cosine",
    "warmup_epochs": 0,        # epochs in which only the synthesis stage runs
    # random crop (zero padding 4) + horizontal flip of every pool batch before the method's student
    # loss, drawn from the run's generator (resume stays exact). Each method's default is what its
    # reference does (Method.runner_defaults): on for FERD, CMI, DeepInv and Fast, off for ZSKT and DFHL.
    "student_augment": False,
    "pool_max": None,          # None = keep every synthetic sample (the reference code bases do)
    "pool_sampling": "uniform",  # uniform over the pool | latest (the batch just generated, ZSKT)
    "eps": DEFAULT_EPS,
    "attacks": "clean,fgsm,pgd20,cw,aa",
    "channels_last": True,     # channels-last conv weights for teacher and student (faster; same maths)
    # the same for the generators methods build (ctx.place_generator): 1.6x faster generator passes on
    # a 2-core CPU (issue 31); the images still come out contiguous, equal up to float rounding
    "generator_channels_last": True,
    # torch.compile the frozen-model attack passes: auto = on for runs of >= 4,000 student steps
    # (compile time is paid back), off below (quick, smoke, tests); on | off (dfrd_bench/acceleration.py)
    "compile": "auto",
    # training-time precision: auto = bf16 autocast on CUDA, on a CPU what `cpu_auto_precision` says;
    # fp32 | bf16. The final evaluation is always fp32.
    "precision": "auto",
    # what precision=auto trains in on a CPU: fp32, or bf16 where the CPU computes bf16 natively
    # (avx512_bf16 / AMX; acceleration.cpu_native_bf16) and fp32 elsewhere (issue 31)
    "cpu_auto_precision": "fp32",
    "eval_limit": None,        # stratified test subset for clean/FGSM/PGD/CW (None = full split)
    "aa_limit": None,          # stratified test subset for AutoAttack
    "eval_batch_size": 256,
    "variant": "paper",
    "checkpoint_every_epochs": 1,
    "log_every_epochs": 1,     # print and keep a history record every N epochs (ZSKT runs 80,000)
}


class ConfigError(DfrdError, ValueError):
    pass


PRESET_VERSIONS: Dict[str, int] = {}      # preset -> its own defaults version (register_preset)
PRESET_CPU_MINUTES: Dict[str, str] = {}   # preset -> what a run takes on the 2-core reference CPU


def register_preset(name: str, layers: Optional[Mapping[str, Mapping[str, Any]]] = None, parent: Optional[str] = None,
                    help: str = "", version: int = 0, cpu_minutes: Optional[str] = None) -> None:
    """Register the preset `name` (`--preset NAME`): `layers` = {'*' or a dataset: runner settings} go on
    top of the runner defaults (and on top of `parent`'s layers when it builds on another preset). A
    method gives its own layers for the preset in `Method.presets[name]`, as for the built-ins. A plugin
    calls this at import time; a name already registered is refused. `version`: raised when the
    preset's own settings move (its runs then form a setup of their own: `preset_defaults_version`);
    `cpu_minutes`: what a run takes on the reference 2-core CPU, said in a run's first line."""
    global PRESET_NAMES
    if not isinstance(name, str) or not name.strip() or name == "*" or "/" in name or name != name.strip():
        raise ConfigError(f"a preset name is a word without '/' or spaces around it, got {name!r}")
    if name in RUNNER_PRESETS:
        raise ConfigError(f"preset {name!r} is already registered: register yours under another name")
    if parent is not None and (not isinstance(parent, str) or parent == name):
        raise ConfigError(f"preset {name!r}: parent must be another preset's name, got {parent!r}")
    layers = {} if layers is None else layers
    if not isinstance(layers, Mapping) or not all(isinstance(k, str) and isinstance(v, Mapping) for k, v in layers.items()):
        raise ConfigError(f"preset {name!r}: layers are {{'*' or a dataset: {{setting: value}}}}, got {layers!r}")
    RUNNER_PRESETS[name] = {where: dict(values) for where, values in layers.items()}
    if parent is not None:
        PRESET_PARENTS[name] = parent
    PRESET_HELP[name] = help
    PRESET_VERSIONS[name] = int(version)
    if cpu_minutes:
        PRESET_CPU_MINUTES[name] = cpu_minutes
    PRESET_NAMES = tuple(RUNNER_PRESETS)


def preset_defaults_version(preset: str) -> int:
    """The defaults version a run at `preset` records as its setup's: the core's, or the preset's own
    where its settings moved later (a preset's version is its own, not its parent's)."""
    return max(DEFAULTS_VERSION, PRESET_VERSIONS.get(preset, 0))


def unregister_preset(name: str) -> None:
    """Remove a registered preset (a test's or an unloaded plugin's); one another preset builds on stays."""
    global PRESET_NAMES
    if name not in RUNNER_PRESETS:
        raise ConfigError(f"unknown preset {name!r}; registered: {', '.join(preset_names())}")
    children = sorted(child for child, parent in PRESET_PARENTS.items() if parent == name)
    if children:
        raise ConfigError(f"preset {name!r} cannot be removed: {', '.join(children)} build(s) on it")
    del RUNNER_PRESETS[name]
    PRESET_PARENTS.pop(name, None)
    PRESET_HELP.pop(name, None)
    PRESET_VERSIONS.pop(name, None)
    PRESET_CPU_MINUTES.pop(name, None)
    PRESET_NAMES = tuple(RUNNER_PRESETS)


def preset_names() -> List[str]:
    """The registered presets, in registration order (the built-ins: paper, gpu, standard, quick, smoke)."""
    return list(RUNNER_PRESETS)


register_preset("paper", {
        "*": {},
        "cifar10": {"teacher": "robustbench:Chen2024Data_WRN_34_10", "student": "resnet18",
                    "batch_size": 256, "synthesis_batch_size": 256},
        "cifar100": {"teacher": "robustbench:Chen2024Data_WRN_34_10", "student": "resnet18",
                     "batch_size": 512, "synthesis_batch_size": 512},
        # The paper's Tiny-ImageNet teacher (PreActResNet-34, TRADES) is not public: pass --teacher.
        "tinyimagenet": {"student": "preactresnet18", "batch_size": 512, "synthesis_batch_size": 512},
    }, help="the paper's settings for the dataset (a GPU job)")
# One GPU run in about 5 minutes (issue 28; sized with `dfrd-bench estimate --preset gpu`, docs/speed.md):
# the paper's per-step settings (attack steps, batch 256, ResNet-18 student) with 20 epochs x (20
# generator + 100 student iterations) = 2,000 student steps (2.3 % of paper's 88,000), a
# ResNet-18 robust teacher trained by the suite on a GPU (results/gpu/make.sh: N-FGSM, 30 epochs), the full test split
# and AutoAttack on a class-stratified 1,000.
register_preset("gpu", {
        "*": {"student": "resnet18", "epochs": 20, "gen_iters": 20, "student_iters": 100, "batch_size": 256,
              "synthesis_batch_size": 256, "pool_max": None, "eval_limit": None, "aa_limit": 1000},
        "cifar10": {"teacher": "gpu-resnet18-cifar10"},
    }, help="one GPU run in about 5 minutes (2,000 student steps)")
# The CPU benchmark (issue 12; pilot and reasoning in results/standard-pilot/README.md): `quick` with
# 5x the student steps (40 epochs x 40 iterations of 64 = 1,600) and a pool of 40 x 128 = 5,120
# synthetic images instead of 512; full test split, AutoAttack on a stratified 500 (50 per class).
# About 20 minutes a run on 2 cores, evaluation included. (Registered before its parent `quick`, in
# the order the presets have always been listed; a parent is looked up when a preset is resolved.)
register_preset("standard", {
        # fp32 training and contiguous generators pinned: the committed benchmark (defaults v2) was
        # trained so and stays reproducible (bit-identical re-runs) and comparable whatever `quick` does
        "*": {"epochs": 40, "synthesis_batch_size": 128, "pool_max": 8192, "aa_limit": 500,
              "cpu_auto_precision": "fp32", "generator_channels_last": False},
    }, parent="quick", help="the CPU benchmark: quick with 5x the student steps",
    cpu_minutes="20-50 CPU-minutes by method, evaluation included")
# CPU-sized: the bundled CPU teacher, a small student, a few minutes on 2 cores. Version 3 (issue 31):
# AutoAttack on a class-stratified 500 (50 per class, as `standard`) instead of 2,000, which took
# 80 % of the evaluation, and bf16 training where the CPU has native bf16 (results/cpu-bf16/: no
# accuracy difference detected at 3 seeds of FERD and Fast; evaluation stays fp32).
register_preset("quick", {
        "*": {"student": "resnet8", "epochs": 8, "gen_iters": 10, "student_iters": 40, "batch_size": 64,
              "synthesis_batch_size": 64, "pool_max": 4096, "eval_limit": None, "aa_limit": 500,
              "cpu_auto_precision": "bf16-if-native"},
        "cifar10": {"teacher": "cpu-resnet20-cifar10"},
    }, help="CPU-sized: the bundled CPU teacher, a small student", version=3,
    cpu_minutes="3-5 minutes on 2 cores with native bf16, more without")
# Seconds, for tests and plumbing checks.
register_preset("smoke", {
        "*": {"student": "resnet8", "epochs": 2, "gen_iters": 2, "student_iters": 2, "batch_size": 8,
              "synthesis_batch_size": 8, "pool_max": 64, "eval_limit": 20, "aa_limit": 10,
              "attacks": "clean,pgd20"},
        "cifar10": {"teacher": "cpu-resnet20-cifar10"},
    }, help="seconds, for tests and plumbing checks")


@dataclass(frozen=True)
class Range:
    """The values a numeric setting may take; `None` is allowed only where the default is None."""

    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False        # low itself is not allowed
    integer: bool = False
    hint: str = ""

    def check(self, key: str, value: Any, nullable: bool) -> None:
        if value is None:
            if nullable:
                return
            raise ConfigError(f"{key} needs a value")
        kind = "a whole number" if self.integer else "a number"
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (self.integer and not float(value).is_integer()):
            raise ConfigError(f"{key} takes {kind}{' or null' if nullable else ''}, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{key} must be finite, got {value!r}")
        too_low = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        too_high = self.high is not None and value > self.high
        if too_low or too_high:
            lo = "" if self.low is None else f"{'>' if self.low_open else '>='} {self.low:g}"
            hi = "" if self.high is None else f"<= {self.high:g}"
            span = " and ".join(t for t in (lo, hi) if t)
            raise ConfigError(f"{key} must be {span}, got {value!r}{self.hint}")


def count(low: int = 1) -> Range:
    return Range(low, integer=True)


# The largest batch a setting (or `eval --batch-size`) may ask for: 2**16 CIFAR images are 0.8 GB of
# float32 input alone; a larger batch is a typo that would fail in the allocator.
MAX_BATCH = 65536
MAX_SEED = 2**32 - 1  # numpy's seed range


def batch_range() -> Range:
    return Range(1, MAX_BATCH, integer=True, hint=" (a larger batch does not fit in memory)")


def check_seed(seed: Any, what: str = "seed") -> int:
    """A seed as a whole number in [0, 2**32 - 1] (numpy's range), refused with one line otherwise:
    before any training, not in numpy after it."""
    if isinstance(seed, bool) or not isinstance(seed, int) and not (isinstance(seed, str) and seed.strip().isdigit()):
        raise ConfigError(f"{what} must be a whole number >= 0, got {seed!r}")
    if not 0 <= int(seed) <= MAX_SEED:
        raise ConfigError(f"{what} must be a whole number in [0, {MAX_SEED}], got {seed!r}")
    return int(seed)


# The runner's settings; a method adds its own with `Method.ranges`. Every float setting must also be
# finite, every whole-number setting whole (checked from the defaults' types).
# The range of an L-inf budget wherever one is given (the `eps` setting, `eval --eps`, teacher training).
EPS_RANGE = Range(0.0, 1.0, low_open=True, hint=f" (images are in [0, 1]: write {DEFAULT_EPS_TEXT}, not 8)")


def check_eps(eps: Any, what: str = "eps") -> float:
    """`eps` as a budget in (0, 1], refused with one line (a ConfigError naming `what`) otherwise."""
    EPS_RANGE.check(what, eps, nullable=False)
    return float(eps)


RUNNER_RANGES: Dict[str, Range] = {
    "epochs": count(), "student_iters": count(), "gen_iters": count(0), "batch_size": batch_range(),
    "synthesis_batch_size": batch_range(), "eval_batch_size": batch_range(), "warmup_epochs": count(0),
    "checkpoint_every_epochs": count(), "log_every_epochs": count(), "pool_max": count(),
    "eval_limit": count(), "aa_limit": count(),
    "eps": EPS_RANGE,
    "student_lr": Range(0.0, low_open=True), "student_momentum": Range(0.0, 1.0),
    "student_weight_decay": Range(0.0),
}


def runner_choices() -> Dict[str, Sequence[str]]:
    """The runner's text settings with declared choices, each checked when settings are resolved:
    the student optimiser and schedule (registries in dfrd_bench/optim.py, which plugins extend),
    compile and precision."""
    from .optim import optimizer_names, schedule_names

    return {"student_schedule": schedule_names(), "student_optimizer": optimizer_names(),
            "compile": COMPILE_MODES, "precision": PRECISIONS, "cpu_auto_precision": CPU_AUTO_PRECISIONS}


# Runner settings added after results were first written, with the value every earlier run had: a
# stored config (a resume state, a result) that lacks one is read as having it (with_added_settings).
SETTINGS_ADDED: Dict[str, Any] = {"student_optimizer": "sgd", "cpu_auto_precision": "fp32",
                                  "generator_channels_last": False}


def with_added_settings(stored: Mapping[str, Any], method_cls: Any = None) -> Dict[str, Any]:
    """A stored resolved config with the settings it predates at the value it ran with: the runner's
    (SETTINGS_ADDED) and the method's (`Method.settings_added`, e.g. FERD's bottleneck readings of v3,
    whose absence means the v2 reading ran)."""
    return {**SETTINGS_ADDED, **(getattr(method_cls, "settings_added", None) or {}), **stored}


def validate(values: Mapping[str, Any], defaults: Mapping[str, Any], ranges: Mapping[str, Range]) -> None:
    """Every setting in its range, every float finite, warm-up shorter than the run; one line per error."""
    for key, value in values.items():
        if value is None and defaults.get(key) is not None:
            raise ConfigError(f"{key} needs a value (null is allowed only for settings whose default is null)")
        if key in ranges:
            ranges[key].check(key, value, nullable=defaults.get(key) is None)
        elif isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key} must be finite, got {value!r}")
    if values["warmup_epochs"] >= values["epochs"]:
        raise ConfigError(f"warmup_epochs ({values['warmup_epochs']}) must be below epochs ({values['epochs']}): "
                          "the student would never train")


class Config(Mapping[str, Any]):
    """A frozen flat mapping with attribute access; a misspelt attribute is an error, not None."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        object.__setattr__(self, "_values", MappingProxyType(dict(values)))

    def __getattr__(self, key: str) -> Any:
        try:
            return self._values[key]
        except KeyError:
            close = difflib.get_close_matches(key, list(self._values), n=3)
            raise AttributeError(f"no setting {key!r}" + (f"; did you mean {', '.join(close)}?" if close else "")) from None

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError("Config is frozen; use --set key=value")

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self):
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def to_dict(self) -> Dict[str, Any]:
        return dict(self._values)

    def replace(self, **changes: Any) -> "Config":
        """A copy with `changes` applied (already resolved values; no checks)."""
        return Config({**self._values, **changes})


def setting_text(value: Any) -> str:
    """A Python or YAML value as `--set` text (parsed back by parse_overrides): booleans as
    true/false, None as null, anything else as str()."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else str(value)


def parse_overrides(items: Iterable[str]) -> Dict[str, Any]:
    """['a=1', 'b=true', 'c=8/255'] -> {'a': 1, 'b': True, 'c': '8/255'} (typed later against defaults)."""
    out: Dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set takes key=value, got {item!r}")
        key, raw = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
    return out


# Settings that are text whatever they look like: paths and specs ('runs/a/teacher.pt') and
# normalisations ('0.5,0.5,0.5/0.25,0.25,0.25') are not fractions.
TEXT_SETTINGS = frozenset({"teacher", "teacher_arch", "teacher_layout", "teacher_normalize", "student"})


def _coerce(key: str, value: Any, default: Any) -> Any:
    if value is None:   # allowed only where the declared default is None (checked in validate)
        return None
    if key in TEXT_SETTINGS:
        if not isinstance(value, str):
            raise ConfigError(f"{key} takes text, got {value!r}")
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{key} takes true or false, got {value!r}")
        return value
    if isinstance(default, float) or (default is None and isinstance(value, str) and "/" in value):
        if isinstance(value, str):
            try:
                return parse_fraction(value)
            except ValueError as exc:
                raise ConfigError(f"{key}: {exc}") from None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    if isinstance(default, int) and not isinstance(default, bool):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{key} takes a whole number, got {value!r}")
    if isinstance(default, str) and isinstance(value, bool):
        # YAML reads on/off (and yes/no, true/false) as booleans: a text setting gets them back as on/off
        return "on" if value else "off"
    if isinstance(default, str) and not isinstance(value, str):
        raise ConfigError(f"{key} takes a name (text), got {value!r}")
    return value


def _layer(target: Dict[str, Any], layer: Mapping[str, Any], allowed: Iterable[str], where: str) -> None:
    allowed = set(allowed)
    for key, value in layer.items():
        if key not in allowed:
            close = difflib.get_close_matches(key, sorted(allowed), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"unknown setting {key!r} in {where}{hint}")
        target[key] = _coerce(key, value, target.get(key))


def resolve_config(method_cls: Any, dataset: str, preset: str, overrides: Optional[Mapping[str, Any]] = None) -> Config:
    if preset not in RUNNER_PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose {', '.join(preset_names())}")
    method_defaults = dict(getattr(method_cls, "defaults", {}))
    clash = set(method_defaults) & set(RUNNER_DEFAULTS)
    if clash:
        raise ConfigError(f"method {method_cls.name} redefines runner settings {sorted(clash)}")
    values: Dict[str, Any] = {**RUNNER_DEFAULTS, **method_defaults}
    keys = list(values)
    _layer(values, getattr(method_cls, "runner_defaults", {}), RUNNER_DEFAULTS, f"{method_cls.name} runner_defaults")
    for name in preset_chain(preset):   # a parent preset's layers first, then the preset's own
        _layer(values, RUNNER_PRESETS[name].get("*", {}), keys, f"preset {name}")
        _layer(values, RUNNER_PRESETS[name].get(dataset, {}), keys, f"preset {name}/{dataset}")
        method_presets = getattr(method_cls, "presets", {}).get(name, {})
        _layer(values, method_presets.get("*", {}), keys, f"{method_cls.name} preset {name}")
        _layer(values, method_presets.get(dataset, {}), keys, f"{method_cls.name} preset {name}/{dataset}")
    overrides = dict(overrides or {})
    variant = overrides.get("variant", values["variant"])
    if variant != "paper":
        variants = getattr(method_cls, "variants", {})
        if variant not in variants:
            raise ConfigError(f"{method_cls.name} has no variant {variant!r}; it has: paper, {', '.join(variants) or '-'}")
        for where, layer in _variant_layers(variants[variant], preset, dataset):
            _layer(values, layer, keys, f"{method_cls.name} variant {variant}{where}")
    _layer(values, overrides, keys, "--set")
    values["preset"] = preset
    values["dataset"] = dataset
    for key, choices in runner_choices().items():
        if values[key] not in choices:
            raise ConfigError(f"{key} must be one of {', '.join(choices)}, got {values[key]!r}")
    for key, allowed in getattr(method_cls, "choices", {}).items():
        if values.get(key) not in allowed:
            raise ConfigError(f"{key} must be one of {', '.join(map(str, allowed))}, got {values.get(key)!r}")
    defaults = {**RUNNER_DEFAULTS, **method_defaults}
    validate(values, defaults, {**RUNNER_RANGES, **getattr(method_cls, "ranges", {})})
    return Config(values)


def _variant_layers(variant: Mapping[str, Any], preset: str, dataset: str):
    """A variant is a flat mapping of settings, or {'*': settings, '<preset>': settings,
    '<preset>/<dataset>': settings} when part of it depends on the budget (e.g. a warm-up length)."""
    if "*" not in variant:
        return [("", variant)]
    keys = ["*"] + [k for name in preset_chain(preset) for k in (name, f"{name}/{dataset}")]
    return [(f" ({key})", variant[key]) for key in keys if key in variant]


def preset_chain(preset: str) -> List[str]:
    """The presets whose layers make up `preset`, parent first: ['quick', 'standard'] for standard."""
    chain = [preset]
    while chain[-1] in PRESET_PARENTS:
        parent = PRESET_PARENTS[chain[-1]]
        if parent not in RUNNER_PRESETS:
            raise ConfigError(f"preset {chain[-1]!r} builds on {parent!r}, which is not a registered preset "
                              f"({', '.join(preset_names())})")
        if parent in chain:
            raise ConfigError(f"presets {' -> '.join(chain + [parent])} build on each other in a loop")
        chain.append(parent)
    return chain[::-1]


def student_steps(cfg: Mapping[str, Any]) -> int:
    """Optimiser steps the student takes in a run: (epochs - warm-up epochs) x student iterations.
    The `paper` presets give every method the same number (docs/methods.md, budget policy)."""
    return max(0, int(cfg["epochs"]) - int(cfg["warmup_epochs"])) * int(cfg["student_iters"])
