"""Shared fixtures. The offline assets live in ../shared/assets (or $DFRD_ASSETS); tests that need
them are skipped with a message where they are absent.

The method-test helpers (method_context, random_images, interrupt_then_resume, same_students) live in
dfrd_bench.testing, where an installed plugin's tests can import them too; they are re-exported here."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from dfrd_bench.testing import interrupt_then_resume, method_context, random_images, same_students  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
ASSETS = Path(os.environ.get("DFRD_ASSETS", REPO.parent / "shared" / "assets"))


def pytest_configure(config):
    # DFRD_TEST_THREADS (default 2): torch threads of the test process and of the processes it starts
    threads = int(os.environ.get("DFRD_TEST_THREADS", "2"))
    torch.set_num_threads(min(threads, torch.get_num_threads()))
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
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


@pytest.fixture
def make_ctx():
    """`method_context` as a fixture, for tests that prefer fixtures to imports."""
    return method_context


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
