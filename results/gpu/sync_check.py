"""Checks of the CUDA path that need a GPU (issue 28), in one short process; writes one JSON.

1. Host syncs: for every method, the synchronising CUDA calls (torch.cuda.set_sync_debug_mode) in
   one student iteration (after a warm-up one) and in one generation stage, with small models
   (random ResNet-8 teacher and student, the smoke preset's batch of 8).
2. Precision rules on CUDA: a bf16 run's generator output is fp32, FERD's reweighting PGD stays in
   the eps ball, p is fp32; the evaluation runs with TF32 off.
3. The compile fallback and cuDNN autotune settings as a run sees them.

    python3 results/gpu/sync_check.py OUT.json [cpu]     # cpu: a plumbing check without a GPU (no sync counts)
"""
from __future__ import annotations

import json
import sys
import time
import warnings

import torch

DEVICE = torch.device("cuda")


def count_syncs(fn):
    if DEVICE.type != "cuda":
        fn()
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
            torch.cuda.set_sync_debug_mode("default")
            torch.cuda.synchronize()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def method_syncs(name: str) -> dict:
    from dfrd_bench.config import resolve_config
    from dfrd_bench.method import check_teacher, get_method
    from dfrd_bench.runner import make_context, student_batch, student_step
    from dfrd_bench.utils import seed_everything

    device = DEVICE
    cls = get_method(name)
    cfg = resolve_config(cls, "cifar10", "smoke", {"teacher": "random:resnet8", "student": "resnet8"})
    ctx = make_context(cfg, "cifar10", device, seed_everything(0))
    method = cls()
    check_teacher(method, ctx.teacher, cfg)
    method.setup(ctx)
    with ctx.accel.autocast():
        samples = method.generate(ctx)  # warm-up (cuDNN autotune, allocator)
    ctx.pool.add(samples.x, samples.y)
    opt = torch.optim.SGD(ctx.student.parameters(), lr=0.01, momentum=0.9)
    ctx.student.train()
    student_step(method, ctx, opt, student_batch(ctx.pool, cfg, ctx.rng))
    ctx.epoch = 1  # not the epoch whose first batch records FERD's UTAE spread (a logged statistic)

    def generate() -> None:
        with ctx.accel.autocast():
            s = method.generate(ctx)
        ctx.pool.add(s.x, s.y)

    step = count_syncs(lambda: student_step(method, ctx, opt, student_batch(ctx.pool, cfg, ctx.rng)))
    stage = count_syncs(generate)
    return {"student_iteration_syncs": step, "generation_stage_syncs": stage, "gen_iters": cfg.gen_iters,
            "generated_dtype": str(samples.x.dtype), "precision": ctx.accel.precision}


def precision_checks() -> dict:
    import methods.ferd as ferd
    from dfrd_bench.acceleration import tf32_enabled
    from dfrd_bench.attacks import AttackSettings
    from dfrd_bench.config import resolve_config
    from dfrd_bench.data import ImageSet
    from dfrd_bench.evaluator import evaluate
    from dfrd_bench.method import get_method
    from dfrd_bench.runner import make_context
    from dfrd_bench.utils import seed_everything

    import numpy as np

    device = DEVICE
    cfg = resolve_config(get_method("ferd"), "cifar10", "smoke", {"teacher": "random:resnet8", "reweight_pgd_steps": 10})
    ctx = make_context(cfg, "cifar10", device, seed_everything(0))
    worst = []
    real = ferd.sign_ascent

    def spy(objective, x, eps, *args, **kwargs):
        out = real(objective, x, eps, *args, **kwargs)
        worst.append(float((out - x.float()).abs().max()) - eps)
        return out

    ferd.sign_ascent = spy
    method = ferd.FERD()
    method.setup(ctx)
    with ctx.accel.autocast():
        samples = method.generate(ctx)
    ferd.sign_ascent = real
    seen = []
    ctx.student.register_forward_hook(lambda m, i, o: seen.append(tf32_enabled()))
    data = ImageSet(np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8), np.arange(16) % 10,
                    [str(c) for c in range(10)], source={"kind": "random"})
    evaluate(ctx.student, data, ["clean", "pgd20"], AttackSettings(eps=8 / 255), device=str(device), batch_size=8)
    return {"training_precision": ctx.accel.precision, "samples_dtype": str(samples.x.dtype),
            "reweight_pgd_max_excess_over_eps": max(worst) if worst else None,
            "p_dtype": str(method.p.dtype), "tf32_during_evaluation": sorted(set(map(str, seen))),
            "tf32_outside": str(tf32_enabled()), "cudnn_benchmark": torch.backends.cudnn.benchmark}


def main(out: str) -> None:
    t0 = time.time()
    report = {"device": torch.cuda.get_device_name(0) if DEVICE.type == "cuda" else "cpu", "torch": torch.__version__,
              "methods": {}}
    for name in ("ferd", "zskt", "cmi", "deepinv", "fast", "dfhl"):
        try:
            report["methods"][name] = method_syncs(name)
        except Exception as exc:  # noqa: BLE001 - report it and go on with the next
            report["methods"][name] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        print(name, report["methods"][name], flush=True)
    try:
        report["precision"] = precision_checks()
    except Exception as exc:  # noqa: BLE001
        report["precision"] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    print("precision", report["precision"], flush=True)
    report["seconds"] = round(time.time() - t0, 1)
    with open(out, "w") as fh:
        json.dump(report, fh, indent=2)


if __name__ == "__main__":
    if len(sys.argv) > 2:
        DEVICE = torch.device(sys.argv[2])
    main(sys.argv[1] if len(sys.argv) > 1 else "sync_check.json")
