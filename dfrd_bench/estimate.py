"""`dfrd-bench estimate`: what a whole run costs, in FLOPs counted from the real models, and in time on
named devices at a stated utilisation.

The FLOPs of each elementary pass (teacher forward, a frozen model's forward + input gradient, the
teacher's head from layer l, the student's training forward + backward, the generator's forward +
backward) are counted with `torch.utils.flop_counter.FlopCounterMode` on the run's architectures
(untrained weights: FLOPs do not depend on them) for a batch of two images, per image. The method's
pass counts per stage (`Method.bench_passes`, the numbers `dfrd-bench bench` bounds its timings
with) and the run's budget (epochs, iterations, batch sizes) make the training parts; the evaluator's
attack steps make the evaluation parts, with stated accuracies deciding how many points are attacked
(AutoAttack's later attacks only see the points that survive APGD-CE).

Times are estimates, not measurements: FLOPs / (the device's peak x utilisation), training passes at
the peak of the run's training precision (bf16 on CUDA by default), evaluation passes at the fp32
(non-tensor-core) peak since the evaluation is IEEE fp32 (acceleration.py, rule 4), and every pass at
least `launch_floor_ms` (small passes are bound by kernel launches, not FLOPs). FLOP counts cover the
teacher, student and generator passes only (optimiser steps, augmentation, CMI's projection head and
the like are left out).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import torch

from .errors import DfrdError

# Peak dense throughput in TFLOP/s (vendor datasheets; tensor-core numbers without sparsity).
DEVICES: Dict[str, Dict[str, Any]] = {
    "h100": {"name": "NVIDIA H100 SXM", "bf16": 989.0, "fp32": 67.0,
             "source": "NVIDIA H100 datasheet: BF16 tensor 989 TFLOP/s dense, FP32 67 TFLOP/s"},
    "h200": {"name": "NVIDIA H200 SXM", "bf16": 989.0, "fp32": 67.0,
             "source": "NVIDIA H200 datasheet: the H100's compute (BF16 989 dense, FP32 67), more memory"},
    "a100": {"name": "NVIDIA A100 SXM", "bf16": 312.0, "fp32": 19.5,
             "source": "NVIDIA A100 datasheet: BF16 tensor 312 TFLOP/s dense, FP32 19.5 TFLOP/s"},
}
# Fractions of peak assumed for training passes (bf16 tensor cores; CIFAR-sized convolutions at batch
# 256 reach a minority of peak: WRN-34-10 nearer the top of the range, ResNet-18 nearer the bottom,
# where eager training of CIFAR ResNet-18s is reported at 5-15 % of an A100's or H100's bf16 peak) and
# for evaluation passes (fp32 on CUDA cores, large batches).
TRAIN_UTILIZATION = (0.1, 0.35)
EVAL_UTILIZATION = (0.3, 0.6)
LAUNCH_FLOOR_MS = 0.15  # the least a pass takes on a GPU (a few dozen kernel launches of ~5 us)
# Accuracies that decide how many points the evaluator attacks (robust accuracy = what survives)
ASSUMED_CLEAN, ASSUMED_ROBUST = 0.8, 0.5
SPLIT_SIZES = {"cifar10": {"train": 50000, "test": 10000}, "cifar100": {"train": 50000, "test": 10000},
               "tinyimagenet": {"train": 100000, "test": 10000}}
# Architectures of teachers this machine may not hold (FLOPs need the architecture only).
KNOWN_TEACHER_ARCHS = {"robustbench:Chen2024Data_WRN_34_10": "wrn-34-10", "gpu-resnet18-cifar10": "resnet18"}
# AutoAttack standard (pyautoattack 0.2.0): APGD-CE 100 steps; on the survivors APGD-T and FAB-T with 9
# target classes x 100 steps each, Square with 5,000 queries.
AA_STEPS = {"apgd_ce": 100, "apgd_t": 900, "fab_t": 900, "square_queries": 5000}


class EstimateError(DfrdError, ValueError):
    pass


# ------------------------------------------------------------------------------------------ FLOPs
def count_flops(fn: Callable[[], Any]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def _forward_from(teacher, h: torch.Tensor, x: torch.Tensor, layer: str) -> torch.Tensor:
    """teacher.forward_from across its two signatures ((h, layer) and (h, x, layer))."""
    params = list(inspect.signature(teacher.forward_from).parameters)
    return teacher.forward_from(h, x, layer) if len(params) >= 3 and params[1] == "x" else teacher.forward_from(h, layer)


def pass_flops(teacher, student, generator: Optional[torch.nn.Module], image_size: int, num_classes: int,
               latent_dim: Optional[int] = None, layer: Optional[str] = None, batch: int = 2) -> Dict[str, float]:
    """FLOPs per image of every elementary pass (names as dfrd_bench.bench.PASS_NAMES, plus
    'generator_train'), counted on a batch of `batch` images."""
    from .modes import frozen, model_mode

    x = torch.rand(batch, 3, image_size, image_size)
    out: Dict[str, float] = {}

    # .backward() rather than autograd.grad: FlopCounterMode's module tracking refuses autograd.grad
    def input_grad(model) -> None:
        xa = x.clone().requires_grad_(True)
        model(xa).float().logsumexp(1).sum().backward()

    with frozen(student), frozen(teacher):
        out["teacher_forward"] = count_flops(lambda: teacher(x)) / batch
        out["teacher_input_grad"] = count_flops(lambda: input_grad(teacher)) / batch
        out["student_forward"] = count_flops(lambda: student(x)) / batch
        out["student_input_grad"] = count_flops(lambda: input_grad(student)) / batch
        layer = layer or getattr(teacher, "feature_layer", None)
        if layer is not None:
            with torch.no_grad():
                feats = teacher.features(x, layer)

            def head() -> None:
                h = feats.detach().clone().requires_grad_(True)
                _forward_from(teacher, h, x, layer).float().logsumexp(1).sum().backward()

            out["teacher_head_grad"] = count_flops(head) / batch
    with model_mode(student, train=True):
        student.requires_grad_(True)
        out["student_train"] = count_flops(lambda: student(x).float().logsumexp(1).mean().backward()) / batch
        student.zero_grad(set_to_none=True)
    if generator is not None and latent_dim:
        z = torch.randn(batch, latent_dim)
        y = torch.arange(batch) % num_classes

        def gen_step() -> None:
            img = generator(z, y) if getattr(generator, "embed", None) is not None else generator(z)
            img.float().mean().backward()

        try:
            out["generator_train"] = count_flops(gen_step) / batch
        except Exception:  # noqa: BLE001 - a generator with another signature: left out (said in the notes)
            pass
        generator.zero_grad(set_to_none=True)
    return out


# ------------------------------------------------------------------------------------------ the run
def teacher_arch(cfg: Mapping[str, Any], dataset: str) -> str:
    """The teacher's architecture, from its spec, without loading a checkpoint."""
    spec = str(cfg["teacher"])
    if spec.startswith("random:"):
        return spec.split(":", 1)[1]
    if spec in KNOWN_TEACHER_ARCHS:
        return KNOWN_TEACHER_ARCHS[spec]
    from .teachers import bundled_teachers

    cards = bundled_teachers()
    if spec in cards:
        return cards[spec]["arch"]
    if cfg.get("teacher_arch"):
        return str(cfg["teacher_arch"])
    raise EstimateError(f"cannot tell the architecture of teacher {spec!r} without loading it: pass "
                        "--teacher random:<arch> (FLOPs depend on the architecture only)")


def eval_flops(attacks: List[str], n_eval: int, n_aa: int, fwd: float, grad: float, clean_acc: float,
               robust_acc: float, pgd_steps: int = 20, cw_steps: int = 30) -> Dict[str, Dict[str, Any]]:
    """FLOPs of the evaluator's attacks: points wrong on clean inputs are not attacked (evaluator.py);
    each attack step is a forward + input gradient (`grad`), each prediction a forward (`fwd`)."""
    parts: Dict[str, Dict[str, Any]] = {}
    attacked = n_eval * clean_acc
    first = True
    for name in attacks:
        if name == "aa":
            continue
        clean_pass = n_eval * fwd if (name == "clean" or first) else 0.0  # clean predictions, once per split
        first = False
        steps = {"clean": 0, "fgsm": 1, "pgd20": pgd_steps, "cw": cw_steps}[name]
        flops = clean_pass + (attacked * (steps * grad + fwd) if steps else 0.0)
        parts[name] = {"flops": flops, "images": n_eval, "attacked": round(attacked)}
    if "aa" in attacks:
        m_attacked, survivors = n_aa * clean_acc, n_aa * robust_acc
        flops = (n_aa * fwd * 2  # the subset's clean pass and AutoAttack's own
                 + m_attacked * AA_STEPS["apgd_ce"] * grad
                 + survivors * (AA_STEPS["apgd_t"] * grad + AA_STEPS["fab_t"] * (grad + fwd)
                                + AA_STEPS["square_queries"] * fwd))
        parts["aa"] = {"flops": flops, "images": n_aa, "attacked": round(m_attacked), "survivors": round(survivors)}
    return parts


@dataclass
class EstimateRequest:
    method: str
    dataset: str = "cifar10"
    preset: str = "paper"
    overrides: Dict[str, Any] = field(default_factory=dict)
    devices: Tuple[str, ...] = ("h100",)
    train_utilization: Tuple[float, float] = TRAIN_UTILIZATION
    eval_utilization: Tuple[float, float] = EVAL_UTILIZATION
    launch_floor_ms: float = LAUNCH_FLOOR_MS
    clean_accuracy: float = ASSUMED_CLEAN
    robust_accuracy: float = ASSUMED_ROBUST


def _check(req: EstimateRequest) -> None:
    for name in req.devices:
        if name not in DEVICES:
            raise EstimateError(f"unknown device {name!r}: choose from {', '.join(DEVICES)}")
    for what, (low, high) in (("utilization", req.train_utilization), ("eval utilization", req.eval_utilization)):
        if not 0 < low <= high <= 1:
            raise EstimateError(f"{what} must be LOW,HIGH with 0 < LOW <= HIGH <= 1, got {low},{high}")
    if not 0 <= req.robust_accuracy <= req.clean_accuracy <= 1:
        raise EstimateError("accuracies must satisfy 0 <= robust <= clean <= 1")


def estimate(req: EstimateRequest) -> Dict[str, Any]:
    """FLOPs per part of a whole run and its time on each device in `req.devices` (see the module docstring)."""
    from .config import resolve_config, student_steps
    from .data import get_dataset_spec
    from .evaluator import parse_attacks
    from .method import get_method
    from .runner import make_context
    from .utils import seed_everything

    _check(req)
    method_cls = get_method(req.method)
    cfg = resolve_config(method_cls, req.dataset, req.preset, req.overrides)
    if not cfg.teacher:
        raise EstimateError(f"preset {req.preset} has no teacher for {req.dataset}: pass --teacher SPEC")
    arch = teacher_arch(cfg, req.dataset)
    spec = get_dataset_spec(req.dataset)
    counting = cfg.replace(teacher=f"random:{arch}", channels_last=False, compile="off", precision="fp32")
    torch.manual_seed(0)
    ctx = make_context(counting, req.dataset, torch.device("cpu"), seed_everything(0))
    method = method_cls()
    method.setup(ctx)
    generator = getattr(method, "generator", None)
    flops = pass_flops(ctx.teacher, ctx.student, generator if isinstance(generator, torch.nn.Module) else None,
                       spec.image_size, spec.num_classes, cfg.get("latent_dim"), cfg.get("layer") or None)
    counts = method.bench_passes(counting, ctx)

    def stage(name: str, repeats: float, batch: int, extra: Optional[Dict[str, float]] = None) -> Dict[str, Any]:
        passes = dict(counts.get(name) or {})
        passes.update(extra or {})
        missing = [p for p in passes if p not in flops]
        per_image = sum(n * flops[p] for p, n in passes.items() if p in flops)
        return {"flops": per_image * batch * repeats, "passes_per_step": passes, "steps": repeats, "batch": batch,
                "flops_per_step": per_image * batch,
                "pass_flops_per_step": {p: flops[p] * batch for p in passes if p in flops},
                **({"uncounted_passes": missing} if missing else {})}

    gen_passes = {"generator_train": 1} if "generator_train" in flops and "generator iteration" in counts else {}
    epochs, warmup = int(cfg.epochs), int(cfg.warmup_epochs)
    parts: Dict[str, Dict[str, Any]] = {}
    if "generator iteration" in counts and cfg.gen_iters:
        parts["generation"] = stage("generator iteration", epochs * cfg.gen_iters, cfg.synthesis_batch_size, gen_passes)
    if counts.get("generation overhead"):
        parts["generation_overhead"] = stage("generation overhead", epochs, cfg.synthesis_batch_size)
        if req.method == "ferd":
            parts["generation_overhead"]["what"] = "the reweighting PGD on the teacher (class weights p)"
    parts["student_stage"] = stage("student iteration", student_steps(cfg), cfg.batch_size)

    attacks = parse_attacks(cfg.attacks)
    n_test = SPLIT_SIZES.get(req.dataset, {}).get("test", 10000)
    n_eval = min(cfg.eval_limit or n_test, n_test)
    n_aa = min(cfg.aa_limit or n_eval, n_eval)
    evaluation = eval_flops(attacks, n_eval, n_aa, flops["student_forward"], flops["student_input_grad"],
                            req.clean_accuracy, req.robust_accuracy)
    train_flops = sum(p["flops"] for p in parts.values())
    eval_total = sum(p["flops"] for p in evaluation.values())
    train_peak = "fp32" if cfg.precision == "fp32" else "bf16"  # auto: bf16 on CUDA (acceleration.autocast_dtype)

    def seconds(part: Dict[str, Any], peak: float, util: float) -> float:
        """Each pass of a step at peak x util, and at least the launch floor; times the steps."""
        per_step = sum(n * max(part["pass_flops_per_step"].get(p, 0.0) / (peak * 1e12 * util), req.launch_floor_ms / 1e3)
                       for p, n in part["passes_per_step"].items())
        return per_step * part["steps"]

    times: Dict[str, Any] = {}
    for name in req.devices:
        dev = DEVICES[name]
        per_util = []
        for tu, eu in zip(req.train_utilization, req.eval_utilization):
            train = {k: seconds(p, dev[train_peak], tu) for k, p in parts.items()}
            ev = {k: p["flops"] / (dev["fp32"] * 1e12 * eu) for k, p in evaluation.items()}
            per_util.append({"train_utilization": tu, "eval_utilization": eu, "parts_seconds": train,
                             "evaluation_seconds": ev, "total_seconds": sum(train.values()) + sum(ev.values())})
        times[name] = {"device": dev["name"], "peak_tflops": {"training": f"{dev[train_peak]} ({train_peak})",
                                                                 "evaluation": f"{dev['fp32']} (fp32)"},
                       "source": dev["source"], "optimistic": per_util[-1], "pessimistic": per_util[0]}
    return {
        "kind": "estimate",
        "method": req.method, "preset": req.preset, "dataset": req.dataset, "overrides": req.overrides,
        "teacher": {"spec": cfg.teacher, "arch": arch}, "student": cfg.student,
        "budget": {"epochs": epochs, "warmup_epochs": warmup, "gen_iters": cfg.gen_iters,
                   "student_iters": cfg.student_iters, "student_steps": student_steps(cfg),
                   "batch_size": cfg.batch_size, "synthesis_batch_size": cfg.synthesis_batch_size,
                   "eval_images": n_eval, "aa_images": n_aa, "attacks": attacks},
        "pass_gflops_per_image": {k: round(v / 1e9, 4) for k, v in flops.items()},
        "parts": parts,
        "evaluation": evaluation,
        "training_flops": train_flops,
        "evaluation_flops": eval_total,
        "total_flops": train_flops + eval_total,
        "times": times,
        "assumptions": {
            "training_precision_on_gpu": train_peak,
            "train_utilization": list(req.train_utilization), "eval_utilization": list(req.eval_utilization),
            "launch_floor_ms": req.launch_floor_ms,
            "clean_accuracy": req.clean_accuracy, "robust_accuracy": req.robust_accuracy,
            "autoattack": dict(AA_STEPS),
            "note": "times are estimates (FLOPs / peak x utilisation), not measurements; FLOPs count the "
                    "teacher, student and generator passes only",
        },
    }


def teacher_training_estimate(arch: str, method: str, epochs: int, dataset: str = "cifar10", attack_steps: int = 10,
                              batch_size: int = 128, val_size: int = 1000, devices: Tuple[str, ...] = ("h100",),
                              utilization: Tuple[float, float] = TRAIN_UTILIZATION) -> Dict[str, Any]:
    """FLOPs and time of `dfrd-bench teacher train` (dfrd_bench.teacher_training) at its recipe."""
    from .data import get_dataset_spec
    from .models import build_model
    from .teacher_training import METHODS

    if method not in METHODS:
        raise EstimateError(f"unknown teacher training method {method!r}; choose from {', '.join(METHODS)}")
    spec = get_dataset_spec(dataset)
    torch.manual_seed(0)
    model = build_model(arch, spec.num_classes, spec.image_size)
    fl = pass_flops(model, model, None, spec.image_size, spec.num_classes)
    inner = {"pgd": attack_steps, "trades": attack_steps, "fgsm-rs": 1, "n-fgsm": 1}[method]
    per_image = inner * fl["student_input_grad"] + fl["student_train"] + (fl["student_forward"] if method == "trades" else 0)
    n_train = SPLIT_SIZES.get(dataset, {}).get("train", 50000) - val_size
    steps = (n_train // batch_size) * epochs
    total = per_image * batch_size * steps
    times = {}
    for name in devices:
        dev = DEVICES[name]
        times[name] = {"device": dev["name"],
                       "seconds": [total / (dev["bf16"] * 1e12 * u) for u in utilization], "utilization": list(utilization)}
    return {"kind": "teacher-estimate", "arch": arch, "method": method, "epochs": epochs, "steps": steps,
            "flops_per_image_step": per_image, "total_flops": total, "times": times,
            "note": "bf16 training passes; validation passes and the final evaluation are left out"}


def format_estimate(r: Dict[str, Any]) -> str:
    from tabulate import tabulate

    rows = []
    for name, p in r["parts"].items():
        rows.append([name.replace("_", " "), f"{p['flops'] / 1e15:,.1f}", f"{p['steps']:,.0f} x {p['batch']}",
                     ", ".join(f"{k} {v:g}" for k, v in p["passes_per_step"].items())])
    for name, p in r["evaluation"].items():
        rows.append([f"eval {name}", f"{p['flops'] / 1e15:,.2f}", f"{p['images']:,} images", f"{p['attacked']:,} attacked"])
    text = [f"{r['method']} [{r['preset']}] on {r['dataset']}: teacher {r['teacher']['arch']} ({r['teacher']['spec']}), "
            f"student {r['student']}, {r['budget']['student_steps']:,} student steps",
            tabulate(rows, headers=["part", "PFLOP", "steps x batch", "passes per step"], tablefmt="github"),
            f"total {r['total_flops'] / 1e18:.3f} EFLOP (training {r['training_flops'] / 1e15:,.0f} PFLOP, "
            f"evaluation {r['evaluation_flops'] / 1e15:,.0f} PFLOP)"]
    for name, t in r["times"].items():
        fast, slow = t["optimistic"], t["pessimistic"]
        text.append(f"ESTIMATE on one {t['device']}: {_hms(fast['total_seconds'])} to {_hms(slow['total_seconds'])} "
                    f"(training passes at {fast['train_utilization']:.0%} to {slow['train_utilization']:.0%} of "
                    f"{t['peak_tflops']['training']} TFLOP/s, evaluation at {fast['eval_utilization']:.0%} to "
                    f"{slow['eval_utilization']:.0%} of {t['peak_tflops']['evaluation']} TFLOP/s)")
        text.append("  " + ", ".join(f"{k.replace('_', ' ')} {_hms(v)} to {_hms(slow['parts_seconds'][k])}"
                                     for k, v in fast["parts_seconds"].items())
                    + "; " + ", ".join(f"eval {k} {_hms(v)} to {_hms(slow['evaluation_seconds'][k])}"
                                       for k, v in fast["evaluation_seconds"].items()))
    return "\n".join(text)


def markdown_table(r: Dict[str, Any], device: str = "h100") -> str:
    """The parts as a Markdown table: PFLOP, passes, and the ESTIMATED minutes on `device` (fast to slow)."""
    t = r["times"][device]
    fast, slow = t["optimistic"], t["pessimistic"]
    lines = ["| part | PFLOP | steps x batch, passes per step | est. minutes |", "|---|---|---|---|"]
    for name, p in r["parts"].items():
        passes = ", ".join(f"{k} {v:g}" for k, v in p["passes_per_step"].items())
        lines.append(f"| {name.replace('_', ' ')} | {p['flops'] / 1e15:,.1f} | {p['steps']:,.0f} x {p['batch']}: {passes} | "
                     f"{fast['parts_seconds'][name] / 60:.1f}-{slow['parts_seconds'][name] / 60:.1f} |")
    for name, p in r["evaluation"].items():
        lines.append(f"| eval {name} | {p['flops'] / 1e15:,.2f} | {p['images']:,} images, {p['attacked']:,} attacked | "
                     f"{fast['evaluation_seconds'][name] / 60:.1f}-{slow['evaluation_seconds'][name] / 60:.1f} |")
    lines.append(f"| **total** | **{r['total_flops'] / 1e15:,.0f}** ({r['total_flops'] / 1e18:.2f} EFLOP) | "
                 f"{r['budget']['student_steps']:,} student steps | **{fast['total_seconds'] / 60:.0f}-"
                 f"{slow['total_seconds'] / 60:.0f}** on one {t['device']} |")
    a = r["assumptions"]
    lines.append("")
    lines.append(f"(`dfrd-bench estimate --method {r['method']} --preset {r['preset']}`; training at "
                 f"{a['train_utilization'][1]:.0%}-{a['train_utilization'][0]:.0%} of {t['peak_tflops']['training']} "
                 f"TFLOP/s, evaluation at {a['eval_utilization'][1]:.0%}-{a['eval_utilization'][0]:.0%} of "
                 f"{t['peak_tflops']['evaluation']} TFLOP/s, clean / robust accuracy assumed {a['clean_accuracy']:.0%} / "
                 f"{a['robust_accuracy']:.0%}.)")
    return "\n".join(lines)


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
