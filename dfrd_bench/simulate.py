"""Simulated benchmarks with a known truth, to measure what the significance marks do (docs/reporting.md).

A simulated run is a result dict like a real one (kind 'run', per-class numbers and per-image outcomes),
so it goes through the same code as real results: `inference.compare` directly, or `dfrd-bench table
--ci` on the files `write_benchmark` writes. The model of a benchmark:

- class c of attack a has a base accuracy (spread over 25-75 % clean, x0.45 under PGD-20);
- a method shifts every class by its `effect` (points);
- each run (seed) shifts each class independently by N(0, seed_sd): run-to-run spread;
- image i is correct when sqrt(rho) z_i + sqrt(1 - rho) e_run,i exceeds the quantile that gives the
  run's class accuracy: z_i, shared by every run, is the image's difficulty (so runs agree on hard
  images, as real models do, and the paired test has something to pair), e is the run's own noise.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence

import numpy as np
from scipy import stats

from .metrics import encode_outcomes, summarize

TEACHER_SHA = "5" * 64
ATTACK_SCALE = {"clean": 1.0, "pgd20": 0.45}


def _base_accuracy(num_classes: int, attack: str) -> np.ndarray:
    return np.linspace(25.0, 75.0, num_classes)[::-1].copy() * ATTACK_SCALE.get(attack, 0.45)


def simulate_runs(effects: Mapping[str, float], seeds: int, seed_sd: float, images_per_class: int = 1000,
                  num_classes: int = 10, attacks: Sequence[str] = ("clean", "pgd20"), rho: float = 0.7,
                  seed: int = 0, student: str = "resnet8", proposed: str = "ferd") -> List[Dict[str, Any]]:
    """One simulated benchmark: `seeds` runs of every method in `effects` (method -> shift in points)."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(num_classes), images_per_class)
    difficulty = {a: rng.standard_normal(len(y)) for a in attacks}
    images_sha = f"simulated-{num_classes}x{images_per_class}"
    results = []
    for method, effect in effects.items():
        for s in range(seeds):
            entries = {}
            for a in attacks:
                acc = np.clip(_base_accuracy(num_classes, a) + effect + rng.normal(0.0, seed_sd, num_classes), 0.5, 99.5)
                threshold = stats.norm.ppf(1.0 - acc / 100.0)[y]
                score = np.sqrt(rho) * difficulty[a] + np.sqrt(1.0 - rho) * rng.standard_normal(len(y))
                correct = score > threshold
                pred = np.where(correct, y, (y + 1) % num_classes)
                entry = summarize(y, pred, num_classes)
                entry["outcomes"] = encode_outcomes(y, correct, num_classes, images_sha)
                entries[a] = entry
            results.append(_result(method, s, student, entries, method == proposed))
    return results


def _result(method: str, seed: int, student: str, attacks: Dict[str, Any], proposed: bool) -> Dict[str, Any]:
    config = {"utae_on": "student", "student_augment": True} if proposed else {}
    return {
        "kind": "run", "method": method, "variant": "paper", "preset": "simulated", "dataset": "cifar10",
        "seed": seed, "teacher": {"spec": "simulated-teacher", "checkpoint_sha256": TEACHER_SHA},
        "student": {"arch": student, "params": 1},
        "model": {"spec": "student.pt", "arch": student, "num_classes": 10},
        "data_source": {"kind": "simulated", "path": "simulated", "split": "test",
                        "n": sum(e["n"] for e in attacks.values()) // len(attacks), "sha256": "simulated"},
        "attacks": attacks, "settings": {}, "config": config, "overrides": {}, "history": [],
        "provenance": {"created": "2026-01-01T00:00:00", "git": {"commit": None, "dirty": False}},
        "defaults_version": 2,
    }


def write_benchmark(results: Sequence[Dict[str, Any]], folder: str | Path) -> Path:
    """Write simulated results as a results folder (one run folder each) for `dfrd-bench table`."""
    from .store import write_result

    folder = Path(folder)
    for r in results:
        write_result(r, folder / f"{r['method']}-{r['student']['arch']}-s{r['seed']}" / "result.json")
    return folder
