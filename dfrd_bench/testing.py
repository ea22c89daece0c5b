"""Helpers for a method plugin's own tests (and this project's): build a method's context, run it,
interrupt it as Ctrl-C would, resume it, and check that the student ends bit-identical.

A plugin installed in its own package imports them from here (`tests/conftest.py` of this repository
re-exports them for the suite's tests). Nothing here needs pytest: a failed check raises
`AssertionError`, which every test runner reports. The one-line check a plugin needs is

    from dfrd_bench.testing import assert_resume_is_exact

    def test_mymethod_resumes_exactly(tmp_path):
        assert_resume_is_exact("mymethod", tmp_path)   # smoke preset, random teacher, 3 epochs

and `method_context(MyMethod)` gives the `MethodContext` to test one verb on tiny tensors
(docs/adding-a-method.md, "Test it").
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Tuple, Union

import numpy as np
import torch

from .method import MethodContext

PathLike = Union[str, Path]
Result = Dict[str, Any]
# make_request(run_name, resume=False) -> dfrd_bench.runner.RunRequest
RequestFactory = Callable[..., Any]

__all__ = ["random_images", "write_test_npz", "method_context", "interrupt_then_resume", "same_students",
           "assert_resume_is_exact"]

_MISSING = object()


def _quiet(line: str) -> None:
    """A run's log that prints nothing."""


def random_images(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    """`n` random uint8 images (N, size, size, 3) from numpy's generator seeded with `seed`."""
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def write_test_npz(path: PathLike, n: int = 40, num_classes: int = 10, size: int = 32, seed: int = 3) -> str:
    """A random test split as .npz (`x`: uint8 images, `y`: labels cycling through the classes, so
    every class has n / num_classes images): the evaluation data of a smoke run (`--source`), with
    no dataset on disk. Returns the path as a string."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=random_images(n, size=size, seed=seed), y=np.arange(n) % num_classes)
    return str(path)


def method_context(method_cls: type, teacher: Optional[torch.nn.Module] = None,
                   student: Optional[torch.nn.Module] = None, *, preset: str = "smoke", seed: int = 0,
                   epoch: int = 0, pool_max: Any = "config", image_size: int = 32,
                   num_classes: Optional[int] = None, **overrides: Any) -> MethodContext:
    """The MethodContext a method test builds: `method_cls`'s settings on CIFAR-10 at `preset` with a
    random resnet8 teacher spec and `overrides` (settings, as `--set` would give them).

    Missing models are built under torch seed 0 (teacher first: a frozen resnet8 in eval mode, then a
    resnet8 student); the context's generator is seeded with `seed`; the pool holds `pool_max` images
    ('config': the settings' pool_max; None: unbounded). The context is on the CPU with one process."""
    from .config import resolve_config
    from .models import build_model
    from .pool import SamplePool

    cfg = resolve_config(method_cls, "cifar10", preset, {"teacher": "random:resnet8", **overrides})
    if teacher is None or student is None:
        torch.manual_seed(0)
        teacher = teacher if teacher is not None else build_model("resnet8", 10, 32).eval().requires_grad_(False)
        student = student if student is not None else build_model("resnet8", 10, 32)
    return MethodContext(teacher=teacher, student=student, cfg=cfg, device=torch.device("cpu"),
                         rng=torch.Generator().manual_seed(seed),
                         pool=SamplePool(cfg.pool_max if pool_max == "config" else pool_max),
                         num_classes=num_classes or teacher.num_classes, image_size=image_size, epoch=epoch)


def interrupt_then_resume(method_cls: type, make_request: RequestFactory,
                          fail_when: Callable[[MethodContext], bool]) -> Result:
    """Run `make_request("split")` until `fail_when(ctx)` makes the student loss raise
    KeyboardInterrupt (as Ctrl-C would), then resume it with `make_request("split", resume=True)`;
    returns the resumed run's result.

    `method_cls.student_loss` is patched only while the first run lasts. An `AssertionError` says
    that the first run finished without being interrupted (`fail_when` never held)."""
    from .runner import run

    own = method_cls.__dict__.get("student_loss", _MISSING)
    original = method_cls.student_loss

    def flaky(self: Any, ctx: MethodContext, batch: Any) -> Any:
        if fail_when(ctx):
            raise KeyboardInterrupt
        return original(self, ctx, batch)

    method_cls.student_loss = flaky
    try:
        try:
            run(make_request("split"), log=_quiet)
        except KeyboardInterrupt:
            pass
        else:
            raise AssertionError(f"{getattr(method_cls, 'name', method_cls)}: the run finished without being "
                                 f"interrupted (fail_when never held in a student step)")
    finally:
        if own is _MISSING:
            del method_cls.student_loss
        else:
            method_cls.student_loss = own
    return run(make_request("split", resume=True), log=_quiet)


def same_students(runs: PathLike, a: str = "full", b: str = "split") -> bool:
    """True when the final students of the runs `runs/a` and `runs/b` are bit-identical."""
    runs = Path(runs)
    sa = torch.load(runs / a / "student.pt", weights_only=True)["state_dict"]
    sb = torch.load(runs / b / "student.pt", weights_only=True)["state_dict"]
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _losses(history: Iterable[Mapping[str, Any]]) -> list:
    """The generator and student logs (gen/*, student/*) of each epoch record: what must repeat."""
    return [{k: v for k, v in record.items() if k.startswith(("gen/", "student/"))} for record in history]


def assert_resume_is_exact(method: str, out: PathLike, *, dataset: str = "cifar10", preset: str = "smoke",
                           epochs: int = 3, interrupt_epoch: Optional[int] = None, seed: int = 0,
                           source: Optional[str] = None, overrides: Optional[Mapping[str, Any]] = None
                           ) -> Tuple[Result, Result]:
    """The resume check every method needs: run `method` for `epochs` epochs once without a stop
    ('full'), then again ('split') stopped as Ctrl-C would in the second student step at or after
    epoch `interrupt_epoch` (0-based; default epochs // 2) and resumed with --resume; assert that both
    runs end with bit-identical students and log the same gen/* and student/* values every epoch.

    Runs go to `out`/runs/{full,split}. Defaults: a random resnet8 teacher (`random:resnet8`), the
    clean evaluation only, and, without `source`, a random test split written to `out`/test.npz
    (`write_test_npz`) so nothing is downloaded. `overrides` are settings on top (as `--set`).
    `method` must be registered (installed, or its module imported). Returns (full, resumed) results.
    """
    from .data import get_dataset_spec
    from .plugins import get_method
    from .runner import RunRequest, run

    out = Path(out)
    method_cls = get_method(method)
    if source is None:
        spec = get_dataset_spec(dataset)
        source = write_test_npz(out / "test.npz", n=2 * spec.num_classes, num_classes=spec.num_classes,
                                size=spec.image_size)
    settings = {"teacher": "random:resnet8", "attacks": "clean", **(overrides or {}), "epochs": epochs}
    stop_at = epochs // 2 if interrupt_epoch is None else interrupt_epoch
    if not 0 <= stop_at < epochs:
        raise ValueError(f"interrupt_epoch must be in [0, {epochs}), got {stop_at}")

    def make_request(name: str, resume: bool = False) -> Any:
        return RunRequest(method=method, dataset=dataset, preset=preset, seed=seed, source=source,
                          out=str(out / "runs"), run_name=name, resume=resume, overrides=dict(settings))

    steps = {"n": 0}

    def fail_when(ctx: MethodContext) -> bool:
        if ctx.epoch < stop_at:
            return False
        steps["n"] += 1
        return steps["n"] >= 2  # one student step of the stopped epoch is taken, then thrown away

    full = run(make_request("full"), log=_quiet)
    resumed = interrupt_then_resume(method_cls, make_request, fail_when)
    assert same_students(out / "runs", "full", "split"), (
        f"{method}: the run stopped (in epoch {stop_at + 1} or later) and resumed ends with a different student "
        f"than the run without a stop: something the method changes is missing from its state_dict(), or a "
        f"random draw does not come from ctx (ctx.randn / rand / randint / multinomial, generator=ctx.rng)")
    logged, relogged = _losses(full["history"]), _losses(resumed["history"])
    assert len(logged) == len(relogged), f"{method}: {len(relogged)} epochs logged after the resume, {len(logged)} without"
    for epoch, (a, b) in enumerate(zip(logged, relogged), 1):
        assert a == b, f"{method}: epoch {epoch} logs differently after the resume: {a} != {b}"
    return full, resumed
