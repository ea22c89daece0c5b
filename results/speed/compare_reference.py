#!/usr/bin/env python3
"""Our training loops against the authors' public loops, timed side by side in one process (CPU).

    cd <repo> && PYTHONPATH=$PWD python3 results/speed/compare_reference.py            # 5 repeats, 1 warm-up
    PYTHONPATH=$PWD python3 results/speed/compare_reference.py --quick                 # 1 repeat, no warm-up: runs?
    PYTHONPATH=$PWD python3 results/speed/compare_reference.py --compile               # + "ours, compile on" rows
    options: --repeats N --warmup K --threads T --rows ferd-student,cmi-generator,... --mirrors DIR --out FILE

The setup of /work/shared/notes/reference-implementations.md ("Speed of the reference loops on this CPU"):
`--threads` threads (2), batch 64, CIFAR-10 shapes, teacher WideResNet-16-2 (`random:wrn-16-2`), student
WideResNet-16-1, the SAME random weights on both sides (the reference models are loaded from our models'
state_dicts and checked to compute the same function), teacher in eval mode. Our side is built exactly as
`dfrd_bench.bench.bench` builds it (`make_context`, the method's `setup`, preset `paper`, `compile` off, and
on in a second "ours" contestant with `--compile`); it gets what the runner gives (channels-last models, a
frozen teacher). The reference side gets plain contiguous models as the reference code has them (teacher
parameters not frozen, their own model classes where their loop needs them). Contestants of one row are
timed interleaved (ours, reference, ..., order reversed every other repeat) after the warm-ups; medians.

Rows (README-reference.md says more):
  ferd-student       FERD student iteration, `--set variant=released` (10-step attack on the student)
                     vs released core (their generate_adv + dkl_loss, loop body of test.py transcribed, no
                     hooks, our batched crop+flip) and vs as released (test.py's train_model_ds_at
                     imported and called as is, with the BatchNorm hooks its main() leaves registered).
  ferd-generator     FERD generator iteration (default settings, 50-step information bottleneck) vs one
                     step of the released Train_Gen_Module.train (IBD_module_cmi.py, imported).
  rslad-student      our `cmi` student iteration (RSLAD on) vs RSLAD's train step (transcribed).
  cmi-generator      CMI generator step, memory bank full, vs Fast-Datafree's CMISynthesizer (imported).
  deepinv-generator  DeepInv pixel step vs Fast-Datafree's DeepInvSyntheiszer (imported).
A generator iteration is (t(1 + R iterations) - t(1)) / R of a whole synthesis call, on both sides (as
`dfrd-bench bench` does), so per-call work (re-initialisation, FERD's reweighting PGD, pool writes) cancels.

Nothing of the authors' code is kept in this repository: at run time each mirror's HEAD is extracted
(`git archive`) from `--mirrors` into a temporary folder, patched where it cannot run here (the list is
PATCHES below and in the JSON), imported, and the folder deleted at exit.
"""
from __future__ import annotations

import os

# The reference code picks CUDA whenever it sees a GPU (IBD_module_cmi.py:116, query_sample.py:94) while the
# models here live on the CPU: hide GPUs before torch is imported. This comparison is a CPU measurement.
os.environ["CUDA_VISIBLE_DEVICES"] = ""
os.environ.setdefault("MPLBACKEND", "Agg")  # the released FERD utils.py imports matplotlib.pyplot

import argparse  # noqa: E402
import contextlib  # noqa: E402
import copy  # noqa: E402
import datetime  # noqa: E402
import importlib  # noqa: E402
import importlib.util  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tarfile  # noqa: E402
import traceback  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import types  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable, Dict, List, Optional  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from dfrd_bench.augment import random_crop_flip  # noqa: E402
from dfrd_bench.config import Config, resolve_config  # noqa: E402
from dfrd_bench.data import get_dataset_spec  # noqa: E402
from dfrd_bench.method import get_method  # noqa: E402
from dfrd_bench.optim import create_optimizer  # noqa: E402
from dfrd_bench.runner import make_context, student_batch, student_step  # noqa: E402
from dfrd_bench.utils import seed_everything  # noqa: E402

DATASET, TEACHER, STUDENT, PRESET = "cifar10", "random:wrn-16-2", "wrn-16-1", "paper"
NUM_CLASSES, IMAGE = 10, 32
MIRRORS = {"ferd": "mayaobuduyao+FERD", "fd": "zju-vipa+Fast-Datafree"}
ROWS = ("ferd-student", "ferd-generator", "rslad-student", "cmi-generator", "deepinv-generator")
ROW_MIRRORS = {"ferd-student": ("ferd",), "ferd-generator": ("ferd",), "rslad-student": (),
               "cmi-generator": ("fd",), "deepinv-generator": ("fd",)}

# Everything changed in or around the authors' code so that it runs here; recorded in the JSON.
PATCHES: List[str] = []


class Abort(Exception):
    """A one-line reason to stop (printed without a traceback)."""


# ------------------------------------------------------------------------------------------------
# The mirrors: extract HEAD into a temporary folder, patch, import in isolation
# ------------------------------------------------------------------------------------------------
def _git(git_dir: Path, *args: str, binary: bool = False):
    out = subprocess.run(["git", f"--git-dir={git_dir}", *args], capture_output=True, check=True)
    return out.stdout if binary else out.stdout.decode().strip()


class Mirrors:
    def __init__(self, root: Path, work: Path) -> None:
        self.root, self.work = root, work
        self.commits: Dict[str, str] = {}
        self._trees: Dict[str, Path] = {}

    def git_dir(self, key: str) -> Path:
        repo = self.root / MIRRORS[key] / "repo"
        return repo / ".git" if (repo / ".git").is_dir() else repo  # snapshots with or without a work tree

    def check(self, keys) -> None:
        for key in keys:
            gd = self.git_dir(key)
            try:
                self.commits[MIRRORS[key]] = _git(gd, "rev-parse", "HEAD")
            except (OSError, subprocess.CalledProcessError):
                raise Abort(f"no git mirror of {MIRRORS[key]} at {gd.parent} (pass --mirrors DIR holding "
                            f"{', '.join(MIRRORS.values())})") from None

    def tree(self, key: str) -> Path:
        """The mirror's HEAD as files in the temporary folder (extracted once)."""
        if key not in self._trees:
            dest = self.work / MIRRORS[key]
            dest.mkdir(parents=True)
            data = _git(self.git_dir(key), "archive", "--format=tar", "HEAD", binary=True)
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                try:
                    tar.extractall(dest, filter="data")
                except TypeError:  # Python < 3.11.4: no extraction filters
                    tar.extractall(dest)
            self._trees[key] = dest
        return self._trees[key]


def patch_source(path: Path, old: str, new: str, why: str) -> None:
    """Replace `old` (which must occur) by `new` in an extracted file and record it in PATCHES."""
    text = path.read_text()
    if old not in text:
        raise Abort(f"{path.name}: '{old}' not found; the mirror changed, update compare_reference.py")
    path.write_text(text.replace(old, new))
    PATCHES.append(f"{'/'.join(path.parts[-3:])}: '{old}' -> '{new}' ({why})")


@contextlib.contextmanager
def reference_imports(root: Path):
    """Import from `root` (put first on sys.path), with the stubs of STUBS in sys.modules. Afterwards the
    tree's modules and the stubs leave sys.modules again, so that two reference trees with the same
    top-level names (`models`, `utils`, ...) never mix and no other code (torch._dynamo probes for
    sklearn) ever sees a stub. Functions keep their module globals, so what was imported stays usable."""
    before = set(sys.modules)
    sys.path.insert(0, str(root))
    importlib.invalidate_caches()
    stubs = install_stubs()
    try:
        yield
    finally:
        sys.path.remove(str(root))
        for name in set(sys.modules) - before:
            origin = getattr(sys.modules[name], "__file__", None) or ""
            if origin.startswith(str(root)) or name in stubs:
                module = sys.modules.pop(name)
                parent, _, child = name.rpartition(".")
                if name in stubs and parent in sys.modules and getattr(sys.modules[parent], child, None) is module:
                    delattr(sys.modules[parent], child)  # e.g. the stub torchvision.models.utils


def import_file(name: str, path: Path) -> types.ModuleType:
    """Import one file under a name of our choosing (the released `test.py` would clash with Python's `test`)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------------------
# Packages the reference code imports that are not installed here: stubs, each recorded in PATCHES
# ------------------------------------------------------------------------------------------------
class _Unavailable:
    """A name from a package that is not installed; the timed loops never call it (calling raises)."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"{self._name} belongs to a package that is not installed (a stub of compare_reference.py)")

    def __getattr__(self, attr: str) -> "_Unavailable":
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _Unavailable(f"{self._name}.{attr}")


def _missing(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is None
    except (ImportError, ValueError):
        return True


def _stub_modules(names: List[str], attrs: Optional[Dict[str, Dict[str, Any]]] = None) -> List[str]:
    """Put modules `names` (a package and its submodules) in sys.modules, every attribute _Unavailable
    unless given in `attrs`; returns the names."""
    attrs = attrs or {}
    for name in names:
        module = types.ModuleType(name)
        module.__file__ = f"<stub {name}>"
        module.__path__ = []  # importable as a package
        module.__dict__.update(attrs.get(name, {}))

        def getattr_(attr: str, _name: str = name) -> Any:
            if attr.startswith("__"):
                raise AttributeError(attr)
            return _Unavailable(f"{_name}.{attr}")

        module.__getattr__ = getattr_
        sys.modules[name] = module
        parent, _, child = name.rpartition(".")
        if parent and parent in sys.modules:
            setattr(sys.modules[parent], child, module)
    return names


class KorniaRandomCrop:
    """kornia.augmentation.RandomCrop(size, padding) as kornia's default cropping_mode='slice' computes it:
    zero padding, then one slice per image (random offset per image)."""

    def __init__(self, size, padding=None, **_: Any) -> None:
        self.size = tuple(size)
        self.padding = padding or 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        p = self.padding
        if p:
            x = F.pad(x, (p, p, p, p))
        n, _, h, w = x.shape
        th, tw = self.size
        ys = torch.randint(0, h - th + 1, (n,)).tolist()
        xs = torch.randint(0, w - tw + 1, (n,)).tolist()
        return torch.stack([x[i, :, ys[i]:ys[i] + th, xs[i]:xs[i] + tw] for i in range(n)])


class KorniaRandomHorizontalFlip:
    def __init__(self, p: float = 0.5, **_: Any) -> None:
        self.p = p

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        flip = (torch.rand(len(x)) < self.p).to(x.device).view(-1, 1, 1, 1)
        return torch.where(flip, x.flip(-1), x)


class KorniaRandomResizedCrop:
    """RandomResizedCrop(size, scale) in kornia's 'slice' mode: per image a box of random area and aspect
    ratio, sliced and resized (bilinear) to `size`."""

    def __init__(self, size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), **_: Any) -> None:
        self.size, self.scale, self.ratio = tuple(size), tuple(scale), tuple(ratio)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        out = []
        for i in range(n):
            area = h * w * random.uniform(*self.scale)
            r = math.exp(random.uniform(math.log(self.ratio[0]), math.log(self.ratio[1])))
            cw = max(1, min(w, int(round(math.sqrt(area * r)))))
            ch = max(1, min(h, int(round(math.sqrt(area / r)))))
            y0, x0 = random.randint(0, h - ch), random.randint(0, w - cw)
            out.append(F.interpolate(x[i:i + 1, :, y0:y0 + ch, x0:x0 + cw], size=self.size, mode="bilinear",
                                     align_corners=False))
        return torch.cat(out)


class KorniaImageSequential:
    def __init__(self, *augs: Callable, **_: Any) -> None:
        self.augs = augs

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for aug in self.augs:
            x = aug(x)
        return x


# package -> (submodules, why, attributes): stand-ins for what the reference code imports and is not installed
STUBS: Dict[str, tuple] = {
    "kornia": (["kornia.augmentation", "kornia.augmentation.container", "kornia.geometry", "kornia.geometry.transform",
                "kornia.geometry.transform.affwarp"],
               "kornia is not installed: a torch shim of the four augmentations the timed loops use (RandomCrop with "
               "padding, RandomHorizontalFlip, RandomResizedCrop, ImageSequential), computed as kornia's default "
               "'slice' cropping mode does but without kornia's parameter-sampling overhead, so the reference rows "
               "that augment with kornia are, if anything, too fast",
               {"kornia.augmentation": {"RandomCrop": KorniaRandomCrop, "RandomHorizontalFlip": KorniaRandomHorizontalFlip,
                                        "RandomResizedCrop": KorniaRandomResizedCrop},
                "kornia.augmentation.container": {"ImageSequential": KorniaImageSequential}}),
    "torchattacks": ([], "imported by the released FERD utils.py and loader/loader.py; unused in the timed loops", {}),
    "sklearn": (["sklearn.mixture", "sklearn.manifold"], "imported by the released FERD utils.py (t-SNE plots); unused", {}),
    "torchmetrics": (["torchmetrics.functional"], "imported by the released FERD losses.py (SSIM); unused", {}),
    "termcolor": ([], "imported by Fast-Datafree datafree/utils/logger.py; unused", {}),
    "torchvision.models.utils": ([], "removed from torchvision; imported by Fast-Datafree's model zoo; unused", {}),
}
MISSING: Dict[str, bool] = {}


def package_states() -> Dict[str, str]:
    """{package: 'installed <version>' | 'stub'} for every package of STUBS (checked once, before any stub)."""
    states = {}
    for name in STUBS:
        MISSING[name] = _missing(name)
        if MISSING[name]:
            states[name] = "stub"
            why = STUBS[name][1]
            PATCHES.append(f"stub {name} ({why})")
        else:
            version = getattr(importlib.import_module(name.split(".")[0]), "__version__", "?")
            states[name] = f"installed {version}"
    return states


def install_stubs() -> List[str]:
    """Stubs for the packages of STUBS that are not installed; returns the module names put in sys.modules."""
    names: List[str] = []
    for name, (subs, _why, attrs) in STUBS.items():
        if MISSING.get(name, _missing(name)):
            names += _stub_modules([name] + subs, attrs)
    return names


# ------------------------------------------------------------------------------------------------
# Models: the same weights on both sides
# ------------------------------------------------------------------------------------------------
class Normalized(nn.Module):
    """Dataset normalisation in front of a reference network that has none (ours have it inside)."""

    def __init__(self, net: nn.Module, mean, std) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


def same_weights(reference: nn.Module, ours: nn.Module) -> nn.Module:
    """Load our network's weights (Classifier.net: TRADES/robustbench names, as the reference WRNs use)
    into a reference network: contiguous parameters, gradients on (no reference code freezes its teacher)."""
    reference.load_state_dict(ours.net.state_dict(), strict=True)
    reference.to(memory_format=torch.contiguous_format).requires_grad_(True)
    return reference


def plain_copy(ours: nn.Module) -> nn.Module:
    """Our model as a reference script would hold it: contiguous weights, parameters not frozen."""
    model = copy.deepcopy(ours).to(memory_format=torch.contiguous_format)
    return model.requires_grad_(True)


def max_difference(a: Callable, b: Callable, x: torch.Tensor, *models: nn.Module) -> float:
    """max |a(x) - b(x)| with the models in eval mode (restored afterwards)."""
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    with torch.no_grad():
        diff = float((a(x) - b(x)).abs().max())
    for m, mode in zip(models, modes):
        m.train(mode)
    return diff


# ------------------------------------------------------------------------------------------------
# Timing
# ------------------------------------------------------------------------------------------------
def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def by_difference(run: Callable[[int], float], extra: int) -> float:
    """Seconds per iteration of a whole synthesis call: (t(1 + extra) - t(1)) / extra; run(n) times itself."""
    short = run(1)
    long_ = run(1 + extra)
    return (long_ - short) / extra


@dataclass
class Contestant:
    key: str
    side: str                   # "ours" | "reference"
    label: str
    kind: str                   # ours | imported | transcribed | imported functions, transcribed body
    source: str
    measure: Callable[[], float]  # one measurement: seconds per iteration
    samples: List[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)


@dataclass
class Row:
    name: str
    loop: str
    contestants: List[Contestant]
    checks: Dict[str, float] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)


def measure_row(row: Row, repeats: int, warmup: int, log: Callable[[str], None]) -> None:
    for i in range(warmup + repeats):
        order = row.contestants if i % 2 == 0 else row.contestants[::-1]
        for c in order:
            seconds = c.measure()
            tag = "warm-up" if i < warmup else f"repeat {i - warmup + 1}/{repeats}"
            log(f"  {row.name} [{tag}] {c.label}: {seconds:.3f} s/iter")
            if i >= warmup:
                c.samples.append(seconds)


# ------------------------------------------------------------------------------------------------
# Our side, built as dfrd_bench.bench.bench builds it
# ------------------------------------------------------------------------------------------------
@dataclass
class Ours:
    cfg: Config
    ctx: Any
    method: Any
    rng: torch.Generator


def build_ours(method_name: str, overrides: Dict[str, Any], opts: argparse.Namespace, compile_mode: str,
               precision: str = "fp32") -> Ours:
    method_cls = get_method(method_name)
    cfg = resolve_config(method_cls, DATASET, PRESET, {**overrides, "teacher": TEACHER, "student": STUDENT,
                                                       "batch_size": opts.batch, "synthesis_batch_size": opts.batch,
                                                       "compile": compile_mode, "precision": precision})
    rng = seed_everything(opts.seed)  # same seed for every build: the same teacher and student weights
    ctx = make_context(cfg, DATASET, torch.device("cpu"), rng)
    method = method_cls()
    method.setup(ctx)
    return Ours(cfg, ctx, method, rng)


def fill_pool(o: Ours, n: int) -> None:
    """n uniform random images in the pool (the student iteration only needs batches to draw)."""
    o.ctx.pool.add(torch.rand(n, 3, IMAGE, IMAGE, generator=o.rng), torch.randint(0, NUM_CLASSES, (n,), generator=o.rng))


def ours_student(o: Ours) -> Callable[[], float]:
    """The runner's loop body, as `dfrd-bench bench` times it: pool batch (+ crop+flip), loss, backward, SGD."""
    cfg, ctx = o.cfg, o.ctx
    opt = create_optimizer(cfg.student_optimizer, ctx.student.parameters(), cfg)  # the runner's
    ctx.student.train()
    return lambda: timed(lambda: student_step(o.method, ctx, opt, student_batch(ctx.pool, cfg, o.rng)))


def ours_generator(o: Ours, extra: int) -> Callable[[], float]:
    """One generator iteration by difference of whole generation stages, as `dfrd-bench bench` does."""
    cfg, ctx = o.cfg, o.ctx

    def run(n: int) -> float:
        def stage() -> None:
            ctx.cfg = cfg.replace(gen_iters=n)
            try:
                with ctx.accel.autocast():
                    samples = o.method.generate(ctx)
            finally:
                ctx.cfg = cfg
            ctx.pool.add(samples.x, samples.y)
        return timed(stage)

    return lambda: by_difference(run, extra)


def ours_contestants(method: str, overrides: Dict[str, Any], opts, kind: str, with_compile: bool,
                     prepare: Callable[[Ours], None] = lambda o: None) -> List[Contestant]:
    """'ours' with compile off (always) and on (--compile, student rows: the generator iterations run no
    compiled pass), in each training precision of --precision (fp32; bf16: autocast, as `precision=bf16`
    or a preset's `cpu_auto_precision` on a CPU with native bf16 trains). Returns the contestants; the
    first one's Ours is kept on it for the reference side."""
    out = []
    for precision in opts.precision.split(","):
        for mode in ("off", "on") if with_compile else ("off",):
            o = build_ours(method, overrides, opts, mode, precision)
            prepare(o)
            set_args = " ".join(f"--set {k}={v}" for k, v in {**overrides, "precision": precision}.items())
            measure = ours_student(o) if kind == "student" else ours_generator(o, opts.gen_extra_iters)
            suffix = "" if precision == "fp32" else f"-{precision}"
            c = Contestant(f"ours-compile-{mode}{suffix}", "ours", f"ours (compile {mode}, {precision})", "ours",
                           f"dfrd-bench {method} [{PRESET}] {set_args}".strip(), measure)
            c.ours = o  # type: ignore[attr-defined]
            out.append(c)
    return out


# ------------------------------------------------------------------------------------------------
# The released FERD code (mayaobuduyao/FERD)
# ------------------------------------------------------------------------------------------------
class FerdReleased:
    """The released FERD modules, imported once: test.py (as `ferd_released_test`, with the argv of a
    CIFAR-10 run at our batch size), and through it IBD_module_cmi, query_sample, losses, models."""

    def __init__(self, mirrors: Mirrors, work: Path, batch: int) -> None:
        root = mirrors.tree("ferd")
        # models/IFP.py creates the bottleneck's parameter and noise with .cuda() (lines 53 and 68): on the
        # CPU they are created where the features are. On a GPU .cuda() copies a CPU tensor over; here
        # nothing is copied, the only difference.
        patch_source(root / "models" / "IFP.py", "torch.normal(0, 1, size=lambda_r.size()).cuda()",
                     "torch.normal(0, 1, size=lambda_r.size()).to(lambda_r.device)", "no CUDA: CPU run")
        patch_source(root / "models" / "IFP.py", "torch.zeros([*latent_r.size()[:2],1,1]).cuda()",
                     "torch.zeros([*latent_r.size()[:2],1,1]).to(latent_r.device)", "no CUDA: CPU run")
        self.run_dir = work / "ferd-run"
        argv = sys.argv
        sys.argv = ["test.py", "--data", "CIFAR10", "--batch_size", str(batch), "--lr", "0.1",
                    "--experiment_name", "compare_reference", "--result_dir", str(self.run_dir)]
        try:
            with reference_imports(root):
                # test.py's module level parses argv, makes its run folders (in the temporary folder), opens
                # its log file there (logging.basicConfig) and builds the kornia crop+flip; main() is not run.
                self.test = import_file("ferd_released_test", root / "test.py")
                self.wrn_ifd = importlib.import_module("models.wideresnet_ifd")
                self.wrn = importlib.import_module("models.wideresnet")
                self.generator = importlib.import_module("models.generator")
        finally:
            sys.argv = argv
        self.args = self.test.args
        spec = get_dataset_spec(DATASET)
        self.mean, self.std = spec.mean, spec.std

    def teacher(self, ours: nn.Module) -> nn.Module:
        """The released teacher class (IFD_network_loader: WideResNet_IFD, whose forward takes pop= and
        intermediate_propagate=, which the bottleneck needs) at depth 16, width 2, with our weights and our
        normalisation as its mean/std (the released run passes 0 and 1 for raw inputs)."""
        net = self.wrn_ifd.WideResNet_IFD(depth=16, in_channels=3, num_classes=NUM_CLASSES, widen_factor=2, dropRate=0.0,
                                          mean=torch.tensor(self.mean).view(1, 3, 1, 1),
                                          std=torch.tensor(self.std).view(1, 3, 1, 1))
        return same_weights(net, ours).eval()

    def student(self, ours: nn.Module) -> nn.Module:
        """The released code's WideResNet class (models/wideresnet.py) at depth 16, width 1, our weights,
        with our normalisation in front (the released run feeds raw [0,1] inputs)."""
        net = self.wrn.WideResNet(depth=16, num_classes=NUM_CLASSES, widen_factor=1, dropRate=0.0)
        return Normalized(same_weights(net, ours), self.mean, self.std)


def ferd_rows(opts, mirrors: Mirrors, work: Path, rows: List[str]) -> List[Row]:
    ferd = FerdReleased(mirrors, work, opts.batch)
    test, args = ferd.test, ferd.args
    out: List[Row] = []
    probe = torch.rand(8, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(1))

    # -- the released models of main() (test.py:166-199): one teacher, student and generator shared by the
    # generator and the student loop, with Train_Gen_Module's hooks registered on them (it registers
    # DeepInversion hooks on every BatchNorm of teacher and student and CMI instance-mean hooks on the
    # teacher, IBD_module_cmi.py:151-164, and never removes them).
    def released_models(o: Ours):
        teacher = ferd.teacher(o.ctx.teacher)
        student = nn.DataParallel(ferd.student(o.ctx.student))          # test.py:186 (a no-op wrapper on the CPU)
        generator = nn.DataParallel(ferd.generator.Generator(nz=args.gen_dim_z, ngf=64, img_size=IMAGE, nc=3))  # :192-193
        helper = test.Train_Gen_Module(args, teacher, student, generator)  # :199
        return teacher, student, generator, helper

    def restore_teacher(teacher: nn.Module, o: Ours) -> None:
        # pgd_attack ends with model.train() (query_sample.py:117) and the teacher(x_adv) that follows
        # (IBD_module_cmi.py:239) moves its BatchNorm statistics: put our weights back between calls
        # (untimed) so every call sees the same teacher; main() would keep the drifted one.
        teacher.load_state_dict(o.ctx.teacher.net.state_dict())
        teacher.eval()

    if "ferd-student" in rows:
        ours = ours_contestants("ferd", {"variant": "released"}, opts, "student", opts.compile,
                                prepare=lambda o: fill_pool(o, 4 * opts.batch))
        o = ours[0].ours
        pool_x = o.ctx.pool.images.float().div(255.0)
        pool_y = o.ctx.pool.labels.clone()

        # released core: test.py:127-148 with the imported generate_adv (query_sample.py:42-64) and dkl_loss
        # (losses.py:44-61); plain models without hooks, batches from memory, our batched crop+flip for
        # their kornia std_aug (test.py:106-109, 130), so that augmentation costs the same on both sides.
        teacher_c = ferd.teacher(o.ctx.teacher)
        student_c = ferd.student(o.ctx.student)
        opt_c = torch.optim.SGD(student_c.parameters(), lr=0.1, weight_decay=5e-4, momentum=0.9)  # test.py:196
        gen_adv, dkl_loss = test.generate_adv, test.L.dkl_loss
        teacher_c.eval()
        student_c.train()                                                      # test.py:118-119

        def core_step() -> None:
            idx = torch.randint(0, len(pool_x), (opts.batch,))
            x_cln, labels = pool_x[idx], pool_y[idx]                           # :127-128 (data_iter.next())
            labels = F.one_hot(labels, NUM_CLASSES).float()                    # :129
            x_cln = random_crop_flip(x_cln)                                    # :130 std_aug(x_cln)
            with torch.no_grad():                                              # :132
                logits_t_cln = teacher_c(x_cln).detach()                       # :133
            logits_s_cln = student_c(x_cln.detach())                           # :134
            x_adv = gen_adv(student_c, x_cln, logits_t_cln, labels)            # :136
            logits_s_adv = student_c(x_adv.detach())                           # :138
            loss_dkl = dkl_loss(logits_s_cln, logits_t_cln, gamma=1, CLASS_PRIOR=labels, GI=True, T2=100.0)  # :140
            loss_rob = dkl_loss(logits_s_adv, logits_t_cln, gamma=1, CLASS_PRIOR=labels, GI=True, T2=100.0)  # :141
            loss = 5.0 / 6 * loss_dkl + 1.0 / 6 * loss_rob                     # :144
            opt_c.zero_grad()                                                  # :146
            loss.backward()                                                    # :147
            opt_c.step()                                                       # :148

        # as released: test.py's train_model_ds_at itself (lines 115-152: its DataLoader over the .npy pool
        # written by its save_mem, kornia crop+flip, the hooks left on by Train_Gen_Module, DataParallel),
        # one iteration = (t(N_S = 1 + R) - t(N_S = 1)) / R.
        teacher_r, student_r, generator_r, _helper = released_models(o)
        opt_r = torch.optim.SGD(student_r.parameters(), lr=args.lr, weight_decay=args.weight_decay, momentum=args.momentum)
        test.save_mem(pool_x, pool_y, test.save_mem_dir, 1, "cln")

        def released_student_run(n: int) -> float:
            args.N_S = n
            return timed(lambda: test.train_model_ds_at(args, generator_r, student_r, teacher_r, opt_r, args.warmup + 1))

        row = Row("ferd-student", "FERD student iteration, released settings", ours + [
            Contestant("released-core", "reference", "released core", "imported functions, transcribed body",
                       "FERD test.py:127-148 (train_model_ds_at loop body) transcribed; query_sample.generate_adv and "
                       "losses.dkl_loss imported; no hooks; batches from memory + our crop+flip",
                       lambda: timed(core_step)),
            Contestant("as-released", "reference", "as released (hooks on, kornia aug, .npy loader)", "imported",
                       "FERD test.py:115-152 train_model_ds_at called as is, after Train_Gen_Module "
                       "(IBD_module_cmi.py:109-177) registered its hooks as main() does",
                       lambda: by_difference(released_student_run, opts.gen_extra_iters)),
        ])
        row.checks["teacher: released WideResNet_IFD vs ours, max |logit diff|"] = max_difference(
            teacher_c, o.ctx.teacher, probe, teacher_c, o.ctx.teacher)
        row.checks["student: released WideResNet (+normalisation) vs ours, max |logit diff|"] = max_difference(
            student_c, o.ctx.student, probe, student_c, o.ctx.student)
        row.notes.append("kornia: " + ("torch shim (not installed)" if MISSING.get("kornia") else "installed"))
        out.append(row)

    if "ferd-generator" in rows:
        ours = ours_contestants("ferd", {}, opts, "generator", False)  # no compiled pass in a generator iteration
        o = ours[0].ours
        teacher_r, student_r, generator_r, helper = released_models(o)
        labels_prob = torch.ones(NUM_CLASSES) / NUM_CLASSES                  # test.py:207
        PATCHES.append("FERD IBD_module_cmi.py:238 pgd_attack(self.teacher, x_syn, t_logit_z, labels) raises TypeError "
                       "(logits passed as labels, labels as eps) after the N_G loop: timed up to there, that error "
                       "caught; the released teacher's weights restored between calls (untimed)")

        def train_call() -> None:
            try:
                helper.train(labels_prob)                                     # test.py:212
            except TypeError as exc:
                # The released reweighting call pgd_attack(self.teacher, x_syn, t_logit_z, labels)
                # (IBD_module_cmi.py:238) passes the logits as labels and the labels as eps, and raises
                # this TypeError in query_sample.py:99 once the N_G loop is over: as released, the call
                # ends there. Only that error is caught; both calls of the difference end at the same point.
                frames = [f.name for f in traceback.extract_tb(exc.__traceback__)]
                if frames[-1:] != ["pgd_attack"]:
                    raise

        def released_generator_run(n: int) -> float:
            args.N_G = n
            seconds = timed(train_call)
            restore_teacher(teacher_r, o)
            return seconds

        row = Row("ferd-generator", "FERD generator iteration (50-step bottleneck)", ours + [
            Contestant("released", "reference", "released Train_Gen_Module.train", "imported",
                       "FERD IBD_module_cmi.py:180-269 Train_Gen_Module.train (one of its N_G steps, lines 199-230, "
                       "incl. models/IFP.py:65-104 find_features: the 50-step bottleneck)",
                       lambda: by_difference(released_generator_run, opts.gen_extra_iters)),
        ])
        row.checks["teacher: released WideResNet_IFD vs ours, max |logit diff|"] = max_difference(
            teacher_r, o.ctx.teacher, probe, teacher_r, o.ctx.teacher)
        row.notes.append("ours: FERD defaults (conditional generator, latent 256, one crop+flip view); released: "
                         "noise-only generator (latent 100), global + local kornia views, decoupled-KD divergence, "
                         "CMI hooks and head stepped although unused, per-sample-per-channel bottleneck noise")
        out.append(row)
    return out


# ------------------------------------------------------------------------------------------------
# RSLAD (zibojia/RSLAD: not mirrored, transcribed)
# ------------------------------------------------------------------------------------------------
def rslad_row(opts) -> Row:
    ours = ours_contestants("cmi", {}, opts, "student", opts.compile, prepare=lambda o: fill_pool(o, 4 * opts.batch))
    o = ours[0].ours
    pool_x = o.ctx.pool.images.float().div(255.0)
    teacher, student = plain_copy(o.ctx.teacher).eval(), plain_copy(o.ctx.student).train()
    # resnet18_rslad_cifar10.py:36 (SGD lr 0.1, momentum 0.9, weight decay 2e-4)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)

    def kl_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # resnet18_rslad_cifar10.py:37-39
        loss = -a * b + torch.log(b + 1e-5) * b
        return loss

    def rslad_inner_loss(model, teacher_logits, x_natural, y, optimizer, step_size=0.003, epsilon=0.031,
                         perturb_steps=10, beta=6.0):  # rslad_loss.py:26-59
        criterion_kl = nn.KLDivLoss(reduction="none")                 # :36 (size_average=False, reduce=False)
        model.eval()                                                  # :37
        x_adv = x_natural.detach() + 0.001 * torch.randn(x_natural.shape).detach()  # :40 (.cuda() dropped)
        for _ in range(perturb_steps):                                # :42
            x_adv.requires_grad_()
            with torch.enable_grad():
                loss_kl = criterion_kl(F.log_softmax(model(x_adv), dim=1), F.softmax(teacher_logits, dim=1))
                loss_kl = torch.sum(loss_kl)
            grad = torch.autograd.grad(loss_kl, [x_adv])[0]
            x_adv = x_adv.detach() + step_size * torch.sign(grad.detach())
            x_adv = torch.min(torch.max(x_adv, x_natural - epsilon), x_natural + epsilon)
            x_adv = torch.clamp(x_adv, 0.0, 1.0)                      # :51
        model.train()                                                 # :53
        x_adv = torch.clamp(x_adv, 0.0, 1.0).detach()                 # :55 (Variable(..., requires_grad=False))
        optimizer.zero_grad()                                         # :57
        logits = model(x_adv)                                         # :58
        return logits

    def step() -> None:  # resnet18_rslad_cifar10.py:47-64, one batch of the training loop
        idx = torch.randint(0, len(pool_x), (opts.batch,))
        # :47 the loader's batch: torchvision RandomCrop(32, 4) + flip per image in its workers (:17-21);
        # here the same batched crop+flip as ours, so augmentation costs the same on both sides
        train_batch_data = random_crop_flip(pool_x[idx])
        train_batch_labels = None                                     # unused by the loss
        student.train()                                               # :48
        optimizer.zero_grad()                                         # :51
        with torch.no_grad():                                         # :52
            teacher_logits = teacher(train_batch_data)                # :53
        # :55 (passes epsilon=epsilon, a name this file does not define; 8/255, the RSLAD paper's)
        adv_logits = rslad_inner_loss(student, teacher_logits, train_batch_data, train_batch_labels, optimizer,
                                      step_size=2 / 255.0, epsilon=8 / 255.0, perturb_steps=10)
        student.train()                                               # :56
        nat_logits = student(train_batch_data)                        # :57
        kl_Loss1 = kl_loss(F.log_softmax(adv_logits, dim=1), F.softmax(teacher_logits.detach(), dim=1))  # :58
        kl_Loss2 = kl_loss(F.log_softmax(nat_logits, dim=1), F.softmax(teacher_logits.detach(), dim=1))  # :59
        kl_Loss1 = torch.mean(kl_Loss1)                               # :60
        kl_Loss2 = torch.mean(kl_Loss2)                               # :61
        loss = 5 / 6.0 * kl_Loss1 + 1 / 6.0 * kl_Loss2                # :62
        loss.backward()                                               # :63
        optimizer.step()                                              # :64

    row = Row("rslad-student", "RSLAD student step", ours + [
        Contestant("rslad", "reference", "RSLAD train step", "transcribed",
                   "zibojia/RSLAD resnet18_rslad_cifar10.py:47-64 (commit 8960f134) + rslad_loss.py:26-59 "
                   "rslad_inner_loss (commit 5e63842f), transcribed (the repository is not mirrored here)",
                   lambda: timed(step)),
    ])
    probe = torch.rand(8, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(1))
    row.checks["teacher: plain copy vs ours, max |logit diff|"] = max_difference(teacher, o.ctx.teacher, probe, teacher,
                                                                                 o.ctx.teacher)
    row.checks["student: plain copy vs ours, max |logit diff|"] = max_difference(student, o.ctx.student, probe, student,
                                                                                 o.ctx.student)
    row.notes.append("ours: dfrd-bench cmi student iteration (RobustKDMethod, rslad on: 10 steps of 2/255 on the "
                     "student, 5/6 adv + 1/6 clean KL, SGD); reference models: plain contiguous copies of ours "
                     "(RSLAD's DataParallel wrappers omitted: a no-op on the CPU)")
    return row


# ------------------------------------------------------------------------------------------------
# Fast-Datafree (zju-vipa/Fast-Datafree): CMISynthesizer and DeepInvSyntheiszer, imported
# ------------------------------------------------------------------------------------------------
class FastDatafree:
    def __init__(self, mirrors: Mirrors) -> None:
        root = mirrors.tree("fd")
        with reference_imports(root):
            self.datafree = importlib.import_module("datafree")
            self.contrastive = importlib.import_module("datafree.synthesis.contrastive")
            self.deepinversion = importlib.import_module("datafree.synthesis.deepinversion")
            self.wresnet = importlib.import_module("datafree.models.classifiers.wresnet")
            self.generator = importlib.import_module("datafree.models.generator")
        spec = get_dataset_spec(DATASET)
        # datafree_kd.py:245: Normalizer(**NORMALIZE_DICT[dataset]); here our CIFAR-10 statistics, so that
        # teacher(normalizer(x)) is the same function as our teacher(x)
        self.normalizer = self.datafree.utils.Normalizer(mean=spec.mean, std=spec.std)
        # synthesize() ends a round by writing the batch as PNG files to its pool folder and opening a
        # 4-worker DataLoader iterator over all of them (contrastive.py:243-257, deepinversion.py:121-130):
        # per-round work, not part of a step, and the worker processes would prefetch in the background
        # while the next contestant is timed. DataIter is replaced in these two modules by a no-op and each
        # synthesizer's pool by one that writes nothing.
        for module in (self.contrastive, self.deepinversion):
            module.DataIter = lambda loader: None
        PATCHES.append("Fast-Datafree contrastive.py / deepinversion.py: DataIter -> no-op, ImagePool.add -> no-op "
                       "(per-round pool write and 4-worker loader after the synthesis loop; the timed steps are inside it)")

    @staticmethod
    def no_pool(synth) -> None:
        synth.data_pool.add = lambda *a, **k: None
        synth.data_pool.get_dataset = lambda *a, **k: [0]

    def models(self, o: Ours):
        """datafree_kd.py:243-244 (registry wrn16_2 / wrn16_1 = wresnet.py) with our weights; fresh per
        synthesizer, since each registers hooks that it never removes."""
        teacher = same_weights(self.wresnet.wrn_16_2(NUM_CLASSES), o.ctx.teacher).eval()
        student = same_weights(self.wresnet.wrn_16_1(NUM_CLASSES), o.ctx.student)
        return teacher, student


def fd_rows(opts, mirrors: Mirrors, work: Path, rows: List[str]) -> List[Row]:
    fd = FastDatafree(mirrors)
    out: List[Row] = []
    probe = torch.rand(8, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(1))

    def synth_run(synth) -> Callable[[int], float]:
        def run(n: int) -> float:
            synth.iterations = n
            return timed(synth.synthesize)
        return run

    def fd_row(name: str, loop: str, ours: List["Contestant"], o: "Ours", teacher, synth, key: str, label: str,
               source: str) -> "Row":
        """A Fast-Datafree synthesizer row: one inner step by difference, and the same-function check."""
        row = Row(name, loop, ours + [Contestant(key, "reference", label, "imported", source,
                                                 lambda: by_difference(synth_run(synth), opts.gen_extra_iters))])
        row.checks["teacher: Fast-Datafree wrn_16_2(normalizer(x)) vs ours, max |logit diff|"] = max_difference(
            lambda x: teacher(fd.normalizer(x)), o.ctx.teacher, probe, teacher, o.ctx.teacher)
        return row

    if "cmi-generator" in rows:
        def full_bank(o: Ours) -> None:
            o.method.bank.add(torch.randn(o.method.bank.size, o.method.bank.dim, generator=o.rng))

        ours = ours_contestants("cmi", {}, opts, "generator", False, prepare=full_bank)
        o = ours[0].ours
        teacher, student = fd.models(o)
        generator = fd.generator.Generator(nz=256, ngf=64, img_size=IMAGE, nc=3)       # datafree_kd.py:276-277
        synth = fd.contrastive.CMISynthesizer(                                          # datafree_kd.py:282-290
            teacher, student, generator, nz=256, num_classes=NUM_CLASSES, img_size=(3, IMAGE, IMAGE),
            feature_reuse=False, feature_layers=None, bank_size=40960, n_neg=4096, head_dim=256, init_dataset=None,
            iterations=1, lr_g=1e-3, progressive_scale=False, synthesis_batch_size=opts.batch,
            sample_batch_size=opts.batch, adv=0.5, bn=1.0, oh=1.0, cr=0.8, cr_T=0.2,    # scripts/cmi_cifar.sh
            save_dir=str(work / "fd-cmi"), transform=None, normalizer=fd.normalizer, device="cpu")
        fd.no_pool(synth)
        # a full bank, through its own add(): 40,960 random rows, then one batch more (get_data samples the
        # whole bank once n_updates > max_size, contrastive.py:68-71)
        synth.mem_bank.add(torch.randn(synth.mem_bank.max_size, synth.mem_bank.dim_feat))
        synth.mem_bank.add(torch.randn(opts.batch, synth.mem_bank.dim_feat))
        row = fd_row("cmi-generator", "CMI generator step (memory bank full)", ours, o, teacher, synth, "fd-cmi",
                     "Fast-Datafree CMISynthesizer",
                     "Fast-Datafree datafree/synthesis/contrastive.py:170-258 CMISynthesizer.synthesize (one of its "
                     "inner steps, lines 189-239), settings of datafree_kd.py:282-290 and scripts/cmi_cifar.sh")
        row.notes.append(f"bank: 40,960 x {synth.mem_bank.dim_feat} rows (ours {o.method.bank.size} x {o.method.bank.dim}), "
                         "4,096 negatives, head 256, both on the CPU")
        out.append(row)

    if "deepinv-generator" in rows:
        ours = ours_contestants("deepinv", {}, opts, "generator", False)
        o = ours[0].ours
        teacher, student = fd.models(o)
        synth = fd.deepinversion.DeepInvSyntheiszer(                                    # datafree_kd.py:257-263
            teacher=teacher, student=student, num_classes=NUM_CLASSES, img_size=(3, IMAGE, IMAGE), iterations=1,
            lr_g=0.1, synthesis_batch_size=opts.batch, sample_batch_size=opts.batch,
            adv=1, bn=10, oh=1, tv=0.0, l2=0.0,                                         # scripts/deepinv_cifar.sh
            save_dir=str(work / "fd-deepinv"), transform=None, normalizer=fd.normalizer, device="cpu")
        fd.no_pool(synth)
        out.append(fd_row("deepinv-generator", "DeepInv pixel step", ours, o, teacher, synth, "fd-deepinv",
                          "Fast-Datafree DeepInvSyntheiszer",
                          "Fast-Datafree datafree/synthesis/deepinversion.py:77-131 DeepInvSyntheiszer.synthesize (one "
                          "of its inner steps, lines 92-115), settings of datafree_kd.py:257-263 and "
                          "scripts/deepinv_cifar.sh"))
    return out


# ------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------
def table(rows: List[Row]) -> str:
    lines = ["| loop | ours s/iter | reference s/iter | reference/ours |", "|---|---|---|---|"]
    for row in rows:
        ours = [c for c in row.contestants if c.side == "ours"]
        refs = [c for c in row.contestants if c.side == "reference"]
        for o in ours:
            for r in refs:
                what = f"{row.loop}: {o.label} vs {r.label} [{r.kind}]"
                ratio = r.median / o.median if o.median > 0 else float("nan")
                lines.append(f"| {what} | {o.median:.3f} | {r.median:.3f} | {ratio:.2f} |")
    return "\n".join(lines)


def machine() -> Dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"cpu": model or platform.processor() or platform.machine(), "logical_cpus": os.cpu_count(),
            "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def our_commit() -> Dict[str, Any]:
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, check=True,
                                text=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, check=True, text=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": dirty}


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mirrors", default="/work/.mirror", help="folder of the git mirrors (owner+name/repo)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--gen-extra-iters", type=int, default=2, help="R: generator iteration = (t(1+R) - t(1)) / R")
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated subset of {', '.join(ROWS)}")
    p.add_argument("--compile", action="store_true",
                   help="also time our student loops with compile on")
    p.add_argument("--quick", action="store_true", help="1 repeat, no warm-up: checks that everything runs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", default="fp32",
                   help="our contestants' training precision(s), comma-separated: fp32 (the reference's), bf16")
    p.add_argument("--out", default="results/speed/reference.json")
    p.add_argument("--in-process", action="store_true",
                   help="run several rows in this one process (default: one process per row; see run_rows_apart)")
    opts = p.parse_args(argv)
    if opts.quick:
        opts.repeats, opts.warmup = 1, 0
    rows = [r.strip() for r in opts.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS]
    if unknown or not rows:
        p.error(f"unknown rows {unknown}; choose from {', '.join(ROWS)}")
    if opts.repeats < 1 or opts.warmup < 0 or opts.gen_extra_iters < 1 or opts.batch < 1 or opts.threads < 1:
        p.error("repeats, gen-extra-iters, batch and threads must be >= 1, warmup >= 0")
    opts.row_list = rows
    return opts


def run_rows_apart(opts: argparse.Namespace, argv: List[str]) -> int:
    """Each row in a process of its own, then one table and one JSON. Two reference trees ship a
    package named `datafree` (FERD bundles a modified copy of Fast-Datafree's): run in one process
    after the FERD rows, Fast-Datafree's CMI step timed 0.53 s/iter, below the bound of its own
    passes, against 1.9 s/iter alone, so no row may share a process with another tree's code."""
    keep: List[str] = []
    skip = False
    for arg in argv:  # the caller's options without --rows / --out
        if skip:
            skip = False
            continue
        if arg in ("--rows", "--out"):
            skip = True
            continue
        if not arg.startswith(("--rows=", "--out=")):
            keep.append(arg)
    merged: Optional[Dict[str, Any]] = None
    with tempfile.TemporaryDirectory(prefix="compare-reference-rows-") as tmp:
        for name in opts.row_list:
            part = Path(tmp) / f"{name}.json"
            code = subprocess.call([sys.executable, __file__, *keep, "--rows", name, "--out", str(part), "--in-process"])
            if code != 0:
                return code
            report = json.loads(part.read_text())
            if merged is None:
                merged = report
            else:
                merged["rows"] += report["rows"]
                merged["seconds"] = round(merged["seconds"] + report["seconds"], 1)
                merged["patches"] = sorted(set(merged["patches"]) | set(report["patches"]))
    merged["settings"]["rows_in_separate_processes"] = True
    merged["table"] = "\n".join(["| loop | ours s/iter | reference s/iter | reference/ours |", "|---|---|---|---|"]
                                + [line for r in merged["rows"] for line in _row_lines(r)])
    print("\n" + merged["table"] + "\n")
    out = Path(opts.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(merged, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


def _row_lines(row: Dict[str, Any]) -> List[str]:
    ours = [c for c in row["contestants"] if c["side"] == "ours"]
    refs = [c for c in row["contestants"] if c["side"] == "reference"]
    return [f"| {row['loop']}: {o['label']} vs {r['label']} [{r['kind']}] | {o['median_s_per_iter']:.3f} | "
            f"{r['median_s_per_iter']:.3f} | {r['median_s_per_iter'] / o['median_s_per_iter']:.2f} |"
            for o in ours for r in refs]


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    opts = parse_args(argv)
    if len(opts.row_list) > 1 and not opts.in_process:
        return run_rows_apart(opts, argv)
    torch.set_num_threads(opts.threads)
    mirrors_root = Path(opts.mirrors)
    if not mirrors_root.is_dir():
        print(f"compare_reference: no mirrors folder {mirrors_root} (pass --mirrors DIR)", file=sys.stderr)
        return 2
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    work = Path(tempfile.mkdtemp(prefix="compare-reference-"))
    try:
        mirrors = Mirrors(mirrors_root, work)
        mirrors.check(sorted({m for r in opts.row_list for m in ROW_MIRRORS[r]}))
        packages = package_states()
        if opts.compile and opts.warmup == 0:
            log("note: --compile without warm-up: the 'compile on' samples include the compilation (tens of seconds)")
        started = datetime.datetime.now().astimezone()
        log(f"compare_reference: {torch.get_num_threads()} threads, batch {opts.batch}, {opts.repeats} repeats, "
            f"{opts.warmup} warm-up, rows {', '.join(opts.row_list)}; reference code in {work}")
        rows: List[Row] = []
        for name in opts.row_list:
            built: List[Row] = []
            if name.startswith("ferd-"):
                if any(r.name == name for r in rows):
                    continue
                built = ferd_rows(opts, mirrors, work, [r for r in opts.row_list if r.startswith("ferd-")])
            elif name == "rslad-student":
                built = [rslad_row(opts)]
            elif name in ("cmi-generator", "deepinv-generator"):
                if any(r.name == name for r in rows):
                    continue
                built = fd_rows(opts, mirrors, work, [r for r in opts.row_list if r in ("cmi-generator", "deepinv-generator")])
            for row in built:
                bad = {k: v for k, v in row.checks.items() if not v <= 1e-3}
                if bad:
                    raise Abort(f"{row.name}: the reference models do not compute our function ({bad})")
                log(f"{row.name}: {row.loop} (same-function checks: "
                    + ", ".join(f"{v:.1e}" for v in row.checks.values()) + ")")
                measure_row(row, opts.repeats, opts.warmup, log)
                rows.append(row)
        text = table(rows)
        print("\n" + text + "\n")
        report = {
            "kind": "reference-speed",
            "date": started.isoformat(timespec="seconds"),
            "seconds": round((datetime.datetime.now().astimezone() - started).total_seconds(), 1),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "machine": machine(),
            "ours": {**our_commit(), "dataset": DATASET, "teacher": TEACHER, "student": STUDENT, "preset": PRESET},
            "mirrors": {"root": str(mirrors_root), "commits": mirrors.commits},
            "settings": {"batch": opts.batch, "repeats": opts.repeats, "warmup": opts.warmup, "quick": opts.quick,
                         "gen_extra_iters": opts.gen_extra_iters, "compile": opts.compile, "seed": opts.seed},
            "packages": packages,
            "patches": PATCHES,
            "rows": [{
                "row": r.name, "loop": r.loop, "checks": r.checks, "notes": r.notes,
                "contestants": [{"key": c.key, "side": c.side, "label": c.label, "kind": c.kind, "source": c.source,
                                 "median_s_per_iter": c.median, "samples": c.samples} for c in r.contestants],
                "ratios_reference_over_ours": {f"{ref.key}/{o.key}": ref.median / o.median
                                               for o in r.contestants if o.side == "ours"
                                               for ref in r.contestants if ref.side == "reference" if o.median > 0},
            } for r in rows],
            "table": text,
        }
        out = Path(opts.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(json.dumps(report, indent=1) + "\n")
        tmp.replace(out)
        log(f"wrote {out}")
        return 0
    except Abort as exc:
        print(f"compare_reference: {exc}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
