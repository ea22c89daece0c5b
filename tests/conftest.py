"""Shared fixtures. The offline assets live in ../shared/assets (or $DFRD_ASSETS); tests that need
them are skipped with a message where they are absent."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
ASSETS = Path(os.environ.get("DFRD_ASSETS", REPO.parent / "shared" / "assets"))


def pytest_configure(config):
    torch.set_num_threads(min(2, torch.get_num_threads()))
    os.environ.setdefault("DFRD_OFFLINE", "1")  # never try a download from the tests


def pytest_collection_modifyitems(config, items):
    # every test that asks for the offline assets carries the `assets` marker (-m "not assets" leaves them out)
    for item in items:
        if "assets" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.assets)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # one decoded-data cache per test session, never the user's
    monkeypatch.setenv("DFRD_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture
def assets() -> Path:
    if not (ASSETS / "README.md").exists():
        pytest.skip(f"offline assets not found at {ASSETS} (set DFRD_ASSETS or put ../shared/assets beside the repo)")
    return ASSETS


def method_context(method_cls, teacher=None, student=None, *, preset: str = "smoke", seed: int = 0, epoch: int = 0,
                   pool_max="config", image_size: int = 32, num_classes=None, **overrides):
    """The MethodContext every method test builds: `method_cls`'s settings at `preset` with a random
    resnet8 teacher spec and `overrides`; missing models are built under torch seed 0 (teacher first:
    a frozen resnet8 in eval mode, then a resnet8 student); the context's generator is seeded with
    `seed`; the pool holds `pool_max` images ('config': the settings' pool_max; None: unbounded)."""
    from dfrd_bench.config import resolve_config
    from dfrd_bench.method import MethodContext
    from dfrd_bench.models import build_model
    from dfrd_bench.pool import SamplePool

    cfg = resolve_config(method_cls, "cifar10", preset, {"teacher": "random:resnet8", **overrides})
    if teacher is None or student is None:
        torch.manual_seed(0)
        teacher = teacher if teacher is not None else build_model("resnet8", 10, 32).eval().requires_grad_(False)
        student = student if student is not None else build_model("resnet8", 10, 32)
    return MethodContext(teacher=teacher, student=student, cfg=cfg, device=torch.device("cpu"),
                         rng=torch.Generator().manual_seed(seed),
                         pool=SamplePool(cfg.pool_max if pool_max == "config" else pool_max),
                         num_classes=num_classes or teacher.num_classes, image_size=image_size, epoch=epoch)


@pytest.fixture
def make_ctx():
    """`method_context` as a fixture, for tests that prefer fixtures to imports."""
    return method_context


def random_images(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


class TinyLinear(torch.nn.Module):
    """A linear classifier on [0,1] images with a known input gradient (for hand-checked attacks)."""

    def __init__(self, num_classes: int = 3, size: int = 4, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.num_classes = num_classes
        self.w = torch.nn.Parameter(torch.randn(num_classes, 3 * size * size, generator=g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.w.t()


@pytest.fixture
def test_npz(tmp_path) -> str:
    """A 40-image random CIFAR-10-shaped test split (4 per class) as .npz: the evaluation data of smoke runs."""
    path = tmp_path / "test.npz"
    np.savez(path, x=random_images(40, seed=3), y=np.arange(40) % 10)
    return str(path)


def interrupt_then_resume(method_cls, make_request, fail_when):
    """Run make_request("split") until `fail_when(ctx)` makes the student loss raise KeyboardInterrupt
    (as Ctrl-C would), then resume it; returns the resumed result."""
    from dfrd_bench.runner import run

    original = method_cls.student_loss

    def flaky(self, ctx, batch):
        if fail_when(ctx):
            raise KeyboardInterrupt
        return original(self, ctx, batch)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(method_cls, "student_loss", flaky)
        with pytest.raises(KeyboardInterrupt):
            run(make_request("split"), log=lambda s: None)
    return run(make_request("split", resume=True), log=lambda s: None)


def same_students(runs: Path, a: str = "full", b: str = "split") -> bool:
    """True when the two runs' final students are bit-identical."""
    sa = torch.load(runs / a / "student.pt", weights_only=True)["state_dict"]
    sb = torch.load(runs / b / "student.pt", weights_only=True)["state_dict"]
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
