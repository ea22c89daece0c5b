"""`dfrd-bench bench`: how fast each stage of a method runs, and how close it is to its passes.

For one method, teacher, student, batch size and device, every stage the runner executes is timed
with warm-ups and interleaved repeats (medians):

    generator iteration   one step of the method's synthesis loop: the difference between a
                          generation stage of 1 + R iterations and one of 1, divided by R
    generation overhead   what a generation stage costs besides its iterations (FERD's
                          reweighting PGD, selection, re-initialisation)
    student iteration     exactly the runner's loop body: pool batch (+ augmentation), the method's
                          loss, backward, SGD step
    eval <attack>         the shared evaluator on `eval_images` images, every point attacked

and set beside its *single-pass bound*: the same models' elementary passes (teacher forward,
frozen-model forward + input gradient, student training forward + backward), measured in the same
process, times how many of each the stage needs (`Method.bench_passes`). ratio = bound / measured:
1.0 means the stage costs no more than its passes; below 1 the rest is overhead (optimiser steps,
augmentation, small kernels). Bounds cover teacher and student passes only: a stage with a
generator of its own also pays that generator's pass, so its ratio stays below 1 even when nothing is
wasted. docs/running.md ("How fast will my run be?") shows how to read the output.
"""
from __future__ import annotations

import json
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch

from .acceleration import cpu_native_bf16, fp32_region, ieee_fp32
from .attacks import AttackSettings, kl_objective
from .config import resolve_config
from .data import ImageSet
from .errors import DfrdError
from .evaluator import evaluate, parse_attacks
from .method import MethodContext, check_teacher, get_method
from .modes import frozen, model_mode
from .optim import create_optimizer
from .runner import make_context, student_batch, student_step
from .utils import atomic_write_json, pick_device, seed_everything

PASS_NAMES = ("teacher_forward", "teacher_input_grad", "teacher_head_grad", "student_forward",
              "student_input_grad", "student_train")
# The evaluator's passes: the student in IEEE fp32, eager (acceleration.py, rule 4), whatever the run's
# `precision` and `compile`; measured apart when training passes run in bf16 or compiled.
EVAL_PASS_NAMES = ("eval_student_forward", "eval_student_input_grad")


class BenchError(DfrdError, ValueError):
    pass


@dataclass
class BenchRequest:
    method: str
    dataset: str = "cifar10"
    preset: str = "paper"            # the per-iteration settings of the paper (attack steps, IB steps, ...)
    teacher: str = "random:wrn-16-2"
    student: str = "wrn-16-1"
    batch_size: int = 64
    device: str = "auto"
    repeats: int = 5
    warmup: int = 1
    gen_extra_iters: int = 2         # R: generator iteration = (t(1 + R iterations) - t(1)) / R
    eval_images: int = 256
    attacks: str = "clean,fgsm,pgd20,cw"
    overrides: Dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    threads: Optional[int] = None


def _timings(fn: Callable[[], Any], repeats: int, warmup: int, sync: Callable[[], None]) -> List[float]:
    """Seconds of each of `repeats` calls of fn, after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return times


def _median_time(fn: Callable[[], Any], repeats: int, warmup: int, sync: Callable[[], None]) -> float:
    return statistics.median(_timings(fn, repeats, warmup, sync))


def _sync_for(device: torch.device) -> Callable[[], None]:
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def measure_passes(ctx: MethodContext, x: torch.Tensor, repeats: int, warmup: int) -> Dict[str, float]:
    """Median seconds of each elementary pass on batch x, with the run's attack models and autocast."""
    teacher, student, accel = ctx.teacher, ctx.student, ctx.accel
    probs = torch.full((len(x), ctx.num_classes), 1.0 / ctx.num_classes, device=x.device)
    sgd = torch.optim.SGD(student.parameters(), lr=0.0)  # lr 0: the pass is timed, the student unchanged

    def input_grad(model: Callable[[torch.Tensor], torch.Tensor]) -> None:
        xa = x.detach().clone().requires_grad_(True)
        with accel.autocast():
            loss = kl_objective(model, probs)(xa).sum()
        torch.autograd.grad(loss, [xa])

    def forward(model: torch.nn.Module) -> None:
        with torch.no_grad(), accel.autocast():
            model(x)

    def train_step() -> None:
        student.train()
        with accel.autocast():
            loss = student(x).float().logsumexp(1).mean()
        sgd.zero_grad(set_to_none=True)
        loss.backward()
        sgd.step()

    feats = None
    if teacher.feature_layer is not None:
        with torch.no_grad():
            feats = teacher.features(x)

    def head_grad() -> None:
        h = feats.detach().clone().requires_grad_(True)
        with accel.autocast():
            loss = teacher.forward_from(h, x).float().logsumexp(1).sum()
        torch.autograd.grad(loss, [h])

    sync = _sync_for(x.device)
    out: Dict[str, float] = {}
    with frozen(student):
        out["teacher_forward"] = _median_time(lambda: forward(teacher), repeats, warmup, sync)
        out["teacher_input_grad"] = _median_time(lambda: input_grad(accel.attack_model(teacher)), repeats, warmup, sync)
        if feats is not None:
            out["teacher_head_grad"] = _median_time(head_grad, repeats, warmup, sync)
        out["student_forward"] = _median_time(lambda: forward(student), repeats, warmup, sync)
        out["student_input_grad"] = _median_time(lambda: input_grad(accel.attack_model(student)), repeats, warmup, sync)
        out.update(measure_eval_passes(ctx, x, repeats, warmup, out))
    with model_mode(student, train=True):
        out["student_train"] = _median_time(train_step, repeats, warmup, sync)
    return out


def measure_eval_passes(ctx: MethodContext, x: torch.Tensor, repeats: int, warmup: int,
                        training: Dict[str, float]) -> Dict[str, float]:
    """The evaluator's student passes (forward; forward + input gradient) as the evaluator runs them:
    IEEE fp32 and eager. Where the run's own passes are that already (fp32, not compiled) they are the
    same passes and are not timed twice."""
    accel, student = ctx.accel, ctx.student
    if accel.dtype is None and not accel.compile_attacks:
        return {"eval_student_forward": training["student_forward"],
                "eval_student_input_grad": training["student_input_grad"]}
    probs = torch.full((len(x), ctx.num_classes), 1.0 / ctx.num_classes, device=x.device)

    def forward() -> None:
        with torch.no_grad(), ieee_fp32(), fp32_region(x.device):
            student(x)

    def input_grad() -> None:
        xa = x.detach().clone().requires_grad_(True)
        with ieee_fp32(), fp32_region(x.device):
            loss = kl_objective(student, probs)(xa).sum()
            torch.autograd.grad(loss, [xa])

    sync = _sync_for(x.device)
    return {"eval_student_forward": _median_time(forward, repeats, warmup, sync),
            "eval_student_input_grad": _median_time(input_grad, repeats, warmup, sync)}


def stage_bound(counts: Optional[Dict[str, float]], passes: Dict[str, float]) -> Optional[float]:
    """Seconds the stage's passes take: sum of count x measured pass time; None if undeclared."""
    if not counts or any(name not in passes for name in counts):
        return None
    return sum(n * passes[name] for name, n in counts.items())


def eval_bound(attack: str, settings: AttackSettings, passes: Dict[str, float], batch_size: int,
               images: int) -> Optional[float]:
    """Passes of the evaluator per attack, scaled from the measured batch to `images` images."""
    steps = {"clean": 0, "fgsm": 1, "pgd20": settings.pgd_steps, "cw": settings.cw_steps}.get(attack)
    if steps is None:
        return None  # AutoAttack: adaptive, no fixed number of passes
    # the evaluator's passes (fp32, eager); a report made before they were timed apart has the run's only
    grad = passes.get("eval_student_input_grad", passes["student_input_grad"])
    forward = passes.get("eval_student_forward", passes["student_forward"])
    per_batch = steps * grad + forward
    return per_batch * images / batch_size


def bench(req: BenchRequest, log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Time every stage of `req.method`; returns the report (see the module docstring)."""
    if req.repeats < 1 or req.warmup < 0 or req.gen_extra_iters < 1 or req.eval_images < 1 or req.batch_size < 1:
        raise BenchError("repeats, gen-extra-iters, eval-images and batch-size must be >= 1, warmup >= 0")
    if req.threads:
        torch.set_num_threads(req.threads)
    method_cls = get_method(req.method)
    overrides = {**req.overrides, "teacher": req.teacher, "student": req.student, "batch_size": req.batch_size,
                 "synthesis_batch_size": req.batch_size}
    cfg = resolve_config(method_cls, req.dataset, req.preset, overrides)
    attacks = parse_attacks(req.attacks)
    device = pick_device(req.device)
    rng = seed_everything(req.seed)
    ctx = make_context(cfg, req.dataset, device, rng)
    method = method_cls()
    check_teacher(method, ctx.teacher, cfg)
    method.setup(ctx)
    sync = _sync_for(device)
    log(f"bench {req.method} [{req.preset}] teacher {req.teacher}, student {req.student}, batch {req.batch_size}, "
        f"{device}, {torch.get_num_threads()} threads"
        + (f" (native bf16: {'yes' if cpu_native_bf16() else 'no'})" if device.type == "cpu" else "")
        + f", {ctx.accel.describe()}")

    stages: Dict[str, Dict[str, Any]] = {}

    def generate(iters: int) -> None:
        ctx.cfg = cfg.replace(gen_iters=iters)
        with ctx.accel.autocast():
            samples = method.generate(ctx)
        ctx.cfg = cfg
        ctx.pool.add(samples.x, samples.y)

    # Interleave the short and long generation stages so drifts of the machine hit both alike.
    short, long_ = [], []
    for i in range(req.warmup + req.repeats):
        t_short = _timings(lambda: generate(1), 1, 0, sync)[0]
        t_long = _timings(lambda: generate(1 + req.gen_extra_iters), 1, 0, sync)[0]
        if i >= req.warmup:
            short.append(t_short)
            long_.append(t_long)
    per_iter = max(0.0, statistics.median([(b - a) / req.gen_extra_iters for a, b in zip(short, long_)]))
    if cfg.gen_iters > 0 and per_iter > 0.05 * statistics.median(short):
        stages["generator iteration"] = {"seconds": per_iter, "samples": req.batch_size}
    stages["generation overhead"] = {"seconds": max(0.0, statistics.median(short) - per_iter), "samples": req.batch_size,
                                     "per": "generation stage"}
    log(f"  generation: {per_iter:.3f} s per iteration, {stages['generation overhead']['seconds']:.3f} s per stage besides")

    opt = create_optimizer(cfg.student_optimizer, ctx.student.parameters(), cfg)  # the run's (dfrd_bench/optim.py)
    ctx.student.train()
    times = _timings(lambda: student_step(method, ctx, opt, student_batch(ctx.pool, cfg, rng)),
                            req.repeats, req.warmup, sync)
    stages["student iteration"] = {"seconds": statistics.median(times), "samples": req.batch_size}
    log(f"  student iteration: {statistics.median(times):.3f} s")

    x_probe = ctx.pool.sample(req.batch_size, rng)[0]
    passes = measure_passes(ctx, x_probe, req.repeats, req.warmup)
    log("  passes: " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in passes.items()))
    counts = method.bench_passes(ctx.cfg, ctx)
    for name, entry in stages.items():
        entry["bound_seconds"] = stage_bound(counts.get(name), passes)
        entry["passes"] = counts.get(name)

    settings = AttackSettings(eps=cfg.eps, seed=req.seed, batch_size=cfg.eval_batch_size,
                              channels_last=cfg.channels_last, attack_misclassified=True)
    images = _bench_images(ctx, req.eval_images, rng)
    for attack in attacks:
        ctx.student.eval()
        times = _timings(lambda: evaluate(ctx.student, images, [attack], settings, device=str(device),
                                                 batch_size=cfg.eval_batch_size), req.repeats, req.warmup, sync)
        bound = eval_bound(attack, settings, passes, req.batch_size, req.eval_images)
        stages[f"eval {attack}"] = {"seconds": statistics.median(times), "samples": req.eval_images,
                                    "bound_seconds": bound, "per": f"{req.eval_images} images"}
        log(f"  eval {attack}: {statistics.median(times):.3f} s for {req.eval_images} images")

    for entry in stages.values():
        entry["samples_per_s"] = entry["samples"] / entry["seconds"] if entry["seconds"] > 0 else None
        bound = entry.get("bound_seconds")
        entry["ratio"] = bound / entry["seconds"] if bound and entry["seconds"] > 0 else None
    return {
        "kind": "bench",
        "method": req.method,
        "preset": req.preset,
        "dataset": req.dataset,
        "teacher": req.teacher,
        "student": req.student,
        "batch_size": req.batch_size,
        "repeats": req.repeats,
        "warmup": req.warmup,
        "overrides": req.overrides,
        "speed": ctx.accel.describe(),
        "passes_seconds": passes,
        "stages": stages,
        "machine": _machine(device),
    }


def _bench_images(ctx: MethodContext, n: int, rng: torch.Generator) -> ImageSet:
    """n pool images with random labels in the ImageSet the evaluator takes (timing only)."""
    x = torch.cat([ctx.pool.sample(min(n, len(ctx.pool)), rng)[0].cpu() for _ in range(-(-n // len(ctx.pool)))])[:n]
    images = (x.permute(0, 2, 3, 1).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    labels = torch.randint(0, ctx.num_classes, (n,), generator=rng).numpy()
    return ImageSet(images, labels.astype("int64"), [str(c) for c in range(ctx.num_classes)],
                    source={"kind": "bench (pool images, random labels)"})


def _machine(device: torch.device) -> Dict[str, Any]:
    info = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "python": platform.python_version(), "processor": platform.processor() or platform.machine()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def format_report(report: Dict[str, Any]) -> str:
    """The stage table as Markdown: seconds, samples/s, single-pass bound and ratio."""
    from tabulate import tabulate

    rows = []
    for name, e in report["stages"].items():
        bound = e.get("bound_seconds")
        rows.append([name, e.get("per", "iteration"), f"{e['seconds']:.3f}",
                     f"{e['samples_per_s']:.1f}" if e.get("samples_per_s") else "–",
                     f"{bound:.3f}" if bound else "–", f"{e['ratio']:.2f}" if e.get("ratio") else "–"])
    return tabulate(rows, headers=["stage", "per", "seconds", "samples/s", "pass bound s", "bound / measured"],
                    tablefmt="github")


def write_report(report: Dict[str, Any], path: Path) -> None:
    atomic_write_json(path, report, allow_nan=False)
