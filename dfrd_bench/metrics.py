"""Per-class robustness metrics, from per-sample predictions.

Definitions (accuracies in percent):
- avg: accuracy over all evaluated images (equals the mean of per-class accuracies on a balanced split);
- worst: the lowest per-class accuracy;
- worst10: the mean accuracy of the lowest ceil(10% of the classes) (1 class for CIFAR-10, 10 for
  CIFAR-100, 20 for Tiny-ImageNet), the paper's worst-10%;
- nsd: standard deviation (population, ddof=0) of the per-class accuracies divided by their mean;
- confusion: counts, rows = true class, columns = predicted class;
- target_entropy: entropy (bits) of the distribution of predicted classes over misclassified images,
  the spread of the attack's targets; target_entropy_norm divides it by log2(C).
Classes with no evaluated image (possible on small subsets) are left out of worst/worst10/nsd and
reported as null.
"""
from __future__ import annotations

import base64
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

OUTCOMES_FORMAT = "per-class-bitset/1"


def confusion_matrix(y: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    return np.bincount(y * num_classes + pred, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_accuracy(confusion: np.ndarray) -> np.ndarray:
    counts = confusion.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, 100.0 * np.diag(confusion) / np.maximum(counts, 1), np.nan)


def worst_fraction(per_class: np.ndarray, fraction: float = 0.1) -> float:
    vals = np.sort(per_class[~np.isnan(per_class)])
    k = max(1, math.ceil(fraction * len(per_class)))
    return float(vals[: min(k, len(vals))].mean())


def nsd(per_class: np.ndarray) -> float:
    vals = per_class[~np.isnan(per_class)]
    mean = vals.mean()
    return float(vals.std() / mean) if mean > 0 else float("nan")  # undefined at 0 % accuracy


def entropy_bits(counts: np.ndarray) -> float:
    total = counts.sum()
    if total == 0:
        return 0.0
    p = counts[counts > 0] / total
    return float(-(p * np.log2(p)).sum())


def target_entropy(confusion: np.ndarray) -> Dict[str, Any]:
    wrong = confusion.copy()
    np.fill_diagonal(wrong, 0)
    c = confusion.shape[0]
    per_class = [entropy_bits(row) / math.log2(c - 1) if c > 2 else 0.0 for row in wrong]
    h = entropy_bits(wrong.sum(0))
    return {"target_entropy": h, "target_entropy_norm": h / math.log2(c),
            "target_entropy_per_class_norm": per_class}


def _finite_or_none(v: float) -> Optional[float]:
    return v if math.isfinite(v) else None


def summarize(y: np.ndarray, pred: np.ndarray, num_classes: int) -> Dict[str, Any]:
    """All metrics of one attack from labels and predictions."""
    y = np.asarray(y, dtype=np.int64)
    pred = np.asarray(pred, dtype=np.int64)
    conf = confusion_matrix(y, pred, num_classes)
    pc = per_class_accuracy(conf)
    out: Dict[str, Any] = {
        "n": int(len(y)),
        "avg": float(100.0 * (y == pred).mean()) if len(y) else float("nan"),
        "worst": float(np.nanmin(pc)),
        "worst10": worst_fraction(pc, 0.1),
        "nsd": _finite_or_none(nsd(pc)),
        "per_class": [None if math.isnan(v) else float(v) for v in pc],
        "per_class_n": conf.sum(1).astype(int).tolist(),
        "confusion": conf.astype(int).tolist(),
    }
    out.update(target_entropy(conf))
    return out


def encode_outcomes(y: np.ndarray, correct: np.ndarray, num_classes: int, images_sha256: str) -> Dict[str, Any]:
    """Which images an attack left correct, per class: class c's images in evaluation order, one bit each
    (numpy packbits, big-endian), base64. Two evaluations with the same `images_sha256` (the decoded
    pixels and labels evaluated, in order) hold the same images in the same order, so their bits pair."""
    y = np.asarray(y, dtype=np.int64)
    correct = np.asarray(correct, dtype=bool)
    bits = [base64.b64encode(np.packbits(correct[y == c]).tobytes()).decode("ascii") for c in range(num_classes)]
    return {"format": OUTCOMES_FORMAT, "images_sha256": images_sha256,
            "order": "class by class; within a class, the evaluation order", "bits": bits}


def decode_outcomes(outcomes: Dict[str, Any], per_class_n: Sequence[int]) -> List[np.ndarray]:
    """The per-class boolean arrays of `encode_outcomes` (lengths per_class_n); ValueError on a malformed
    block, so a corrupt result is refused rather than read as other numbers."""
    if not isinstance(outcomes, dict) or outcomes.get("format") != OUTCOMES_FORMAT:
        raise ValueError(f"outcomes are not in the {OUTCOMES_FORMAT} format")
    bits = outcomes.get("bits")
    if not isinstance(bits, list) or len(bits) != len(per_class_n):
        raise ValueError(f"outcomes hold {len(bits) if isinstance(bits, list) else 'no'} classes, "
                         f"the entry {len(per_class_n)}")
    out = []
    for text, n in zip(bits, per_class_n):
        raw = np.frombuffer(base64.b64decode(text, validate=True), dtype=np.uint8)
        if len(raw) != (int(n) + 7) // 8:
            raise ValueError(f"outcome bits of a class with {n} images have {len(raw)} bytes")
        out.append(np.unpackbits(raw)[: int(n)].astype(bool))
    return out


Evaluation = Tuple[Sequence[Optional[float]], Sequence[int]]   # (per-class accuracy %, per-class image count)


def metric_draws(per_class: Sequence[Optional[float]], per_class_n: Sequence[int], metric: str,
                 draws: int, rng: np.random.Generator) -> Tuple[float, np.ndarray]:
    """(estimate, bootstrap draws) of `metric` (avg | worst | worst10 | nsd) of one evaluation.

    Resampling the test images with replacement, stratified by class (the split is fixed per class),
    makes each class's correct count Binomial(n_c, p_c); the metric is recomputed on each draw with
    the definitions at the top of this module.
    """
    acc = np.array([np.nan if v is None else v for v in per_class], dtype=float) / 100.0
    n = np.asarray(per_class_n, dtype=np.int64)
    keep = (n > 0) & ~np.isnan(acc)
    acc, n = acc[keep], n[keep]
    hits = rng.binomial(n[None, :], acc[None, :], size=(draws, len(n))) / n[None, :] * 100.0
    pct = acc * 100.0
    if metric == "avg":
        return float((pct * n).sum() / n.sum()), (hits * n[None, :]).sum(1) / n.sum()
    if metric == "worst":
        return float(pct.min()), hits.min(1)
    if metric == "worst10":
        k = max(1, math.ceil(0.1 * len(per_class)))
        return worst_fraction(pct, 0.1), np.sort(hits, axis=1)[:, :k].mean(1)
    if metric == "nsd":
        mean = hits.mean(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return nsd(pct), np.where(mean > 0, hits.std(1) / np.maximum(mean, 1e-12), np.nan)
    raise ValueError(f"unknown metric {metric!r}: avg, worst, worst10 or nsd")


def seed_and_image_draws(evaluations: Sequence[Evaluation], metric: str, draws: int,
                         rng: np.random.Generator) -> Tuple[float, np.ndarray]:
    """(mean over seeds, bootstrap draws of that mean), resampling on two levels: the seeds with
    replacement, then within each drawn seed its test images per class (`metric_draws`). With one
    seed only the images are resampled, so the interval then says nothing about seed-to-seed spread."""
    per_seed = [metric_draws(pc, pn, metric, draws, rng) for pc, pn in evaluations]
    estimate = float(np.mean([e for e, _ in per_seed]))
    table = np.stack([d for _, d in per_seed])                       # (seeds, draws)
    s = len(per_seed)
    if s == 1:
        return estimate, table[0]
    picks = rng.integers(0, s, size=(draws, s))                      # seeds drawn with replacement
    return estimate, table[picks, np.arange(draws)[:, None]].mean(1)


def bootstrap_worst(evaluations: Sequence[Evaluation],
                    fraction: Optional[float] = None, draws: int = 2000, level: float = 0.95,
                    seed: int = 0) -> Dict[str, float]:
    """Percentile bootstrap interval for the worst-class (or worst-`fraction`) accuracy.

    `evaluations` holds (per_class accuracy in percent, per_class_n) of one evaluation, or of several
    seeds whose worst values are averaged (seeds resampled, then each drawn seed's images:
    `seed_and_image_draws`, the same resampling as the significance test).
    With ~1,000 images per class the interval is about +-3 points; on 100 per class about +-9. The
    minimum over noisy classes is biased low: when several classes are close to the worst one the
    interval sits below the estimate, a sign that which class is worst is itself uncertain.
    Returns {'estimate', 'low', 'high', 'draws', 'level'} in percent.
    """
    if fraction not in (None, 0.1):
        raise ValueError(f"worst-fraction {fraction}: only the worst class (None) and the worst 10% (0.1) are defined")
    rng = np.random.default_rng(seed)
    estimate, stats = seed_and_image_draws(evaluations, "worst" if fraction is None else "worst10", draws, rng)
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(stats, [tail, 100.0 - tail])
    return {"estimate": estimate, "low": float(low), "high": float(high), "draws": draws, "level": level}
