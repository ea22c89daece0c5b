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


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # one decoded-data cache per test session, never the user's
    monkeypatch.setenv("DFRD_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture
def assets() -> Path:
    if not (ASSETS / "README.md").exists():
        pytest.skip(f"offline assets not found at {ASSETS} (set DFRD_ASSETS or put ../shared/assets beside the repo)")
    return ASSETS


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
