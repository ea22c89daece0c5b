"""Significance of a difference between two methods, with an error rate that holds at three seeds.

The test (docs/reporting.md, "Significance") compares the mean over seeds of a metric (avg, worst,
worst10, nsd, or one class's accuracy) between two groups of runs:

    t = (mean_A - mean_B) / sqrt(s_A^2 / n_A + s_B^2 / n_B + v_img)

- s_A^2, s_B^2: the sample variances of the metric over each group's seeds (run-to-run spread: the
  dominant term in every committed benchmark). All runs are evaluated on the same test images, so
  this spread holds no test-image noise.
- v_img: the variance of the difference that comes from which test images the split happens to hold,
  estimated by resampling the test images per class. When every run of both groups carries per-image
  outcomes on the same images (metrics.encode_outcomes), the images are resampled *paired*: one draw
  of images for all runs (hard images are hard for both methods, so most of that noise cancels).
  Without outcomes, each run's per-class counts are drawn Binomial(n_c, p_c) and the seeds of a group
  are treated as perfectly correlated and the two groups as independent (an upper bound on v_img).
- degrees of freedom: Welch–Satterthwaite over the two seed terms, with v_img counted as known.

This is Welch's unequal-variance t-test (Welch 1947) on seed means with the image-level variance
folded in, as in a two-level (seeds, then images) model. Unlike a bootstrap over 3 seeds, whose
percentile interval is too narrow by about sqrt((n-1)/n) and by the t-quantile, it holds its level at
n = 3: the calibration is measured in tests/test_inference.py and reported in docs/reporting.md.

A family of comparisons is controlled with Holm's step-down procedure (Holm 1979); "better than all
baselines" is an intersection-union test (Berger 1982): every comparison must be significant.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from scipy import stats

from .metrics import decode_outcomes, metric_draws, nsd, worst_fraction

ALPHA = 0.05
IMAGE_DRAWS = 400          # image resamples for v_img (its Monte-Carlo error is a few % of a small term)
POWER = 0.8
MAX_SEEDS = 100
METRICS = ("avg", "worst", "worst10", "nsd")


@dataclass
class RunEval:
    """One run's evaluation under one attack: per-class accuracy (%) and image counts, and, when the
    result has them, per-class outcome bits and the identity of the images they refer to."""
    per_class: List[Optional[float]]
    per_class_n: List[int]
    bits: Optional[List[np.ndarray]] = None
    images_sha256: Optional[str] = None

    @classmethod
    def from_entry(cls, entry: Dict) -> "RunEval":
        out = entry.get("outcomes")
        bits = decode_outcomes(out, entry["per_class_n"]) if out else None
        return cls(list(entry["per_class"]), list(entry["per_class_n"]), bits,
                   out.get("images_sha256") if out else None)

    def only_class(self, k: int) -> "RunEval":
        return RunEval([self.per_class[k]], [self.per_class_n[k]],
                       None if self.bits is None else [self.bits[k]], self.images_sha256 and f"{self.images_sha256}/{k}")


def metric_of(pct: np.ndarray, metric: str, n: Optional[np.ndarray] = None) -> np.ndarray:
    """`metric` of per-class accuracies `pct` (..., classes) in percent, over the last axis."""
    if metric == "avg":
        w = np.ones(pct.shape[-1]) if n is None else np.asarray(n, dtype=float)
        return (pct * w).sum(-1) / w.sum()
    if metric == "worst":
        return pct.min(-1)
    if metric == "worst10":
        k = max(1, math.ceil(0.1 * pct.shape[-1]))
        return np.sort(pct, axis=-1)[..., :k].mean(-1)
    if metric == "nsd":
        mean = pct.mean(-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(mean > 0, pct.std(-1) / np.maximum(mean, 1e-12), np.nan)
    raise ValueError(f"unknown metric {metric!r}: {', '.join(METRICS)}")


def _point(run: RunEval, metric: str) -> float:
    pc = np.array([np.nan if v is None else v for v in run.per_class], dtype=float)
    n = np.asarray(run.per_class_n)
    keep = (n > 0) & ~np.isnan(pc)
    if metric == "worst10":
        return worst_fraction(pc, 0.1)      # as metrics.summarize computes it
    if metric == "nsd":
        return nsd(pc[keep])
    return float(metric_of(pc[keep], metric, n[keep]))


_WEIGHTS: Dict[Tuple, List[np.ndarray]] = {}


def _image_weights(sizes: Tuple[int, ...], draws: int, seed: int) -> List[np.ndarray]:
    """Per class, `draws` multinomial resamples of its images (counts per image), cached: the same
    draws serve every comparison on the same images, so a table's numbers do not depend on its order."""
    key = (sizes, draws, seed)
    if key not in _WEIGHTS:
        rng = np.random.default_rng(seed)
        _WEIGHTS.clear()  # one image set at a time keeps the memory to one (draws x images) array
        _WEIGHTS[key] = [rng.multinomial(n, np.full(n, 1.0 / n), size=draws).astype(np.float32) if n else
                         np.zeros((draws, 0), np.float32) for n in sizes]
    return _WEIGHTS[key]


def _paired_draws(runs: Sequence[RunEval], metric: str, draws: int, seed: int) -> np.ndarray:
    """(draws, runs) metric values with the test images resampled once per draw for all runs."""
    sizes = tuple(int(n) for n in runs[0].per_class_n)
    weights = _image_weights(sizes, draws, seed)
    pct = np.stack([np.stack([w @ b.astype(np.float32) for w, b in zip(weights, r.bits)], -1) for r in runs], 1)
    pct = pct / np.maximum(np.asarray(sizes, dtype=np.float32), 1) * 100.0          # (draws, runs, classes)
    keep = np.asarray(sizes) > 0
    return metric_of(pct[..., keep], metric, np.asarray(sizes)[keep])


def paired(a: Sequence[RunEval], b: Sequence[RunEval]) -> bool:
    """True when every run of both groups has outcomes on the same images (the paired image resampling)."""
    runs = list(a) + list(b)
    return all(r.bits is not None for r in runs) and len({r.images_sha256 for r in runs}) == 1


def image_variance(a: Sequence[RunEval], b: Sequence[RunEval], metric: str, draws: int = IMAGE_DRAWS,
                   seed: int = 0) -> float:
    """Var over test-image resamples of mean_A - mean_B, or of mean_A alone when `b` is empty (see the
    module docstring for the paired and the unpaired path)."""
    if paired(a, b):
        d = _paired_draws(list(a) + list(b), metric, draws, seed)
        diff = d[:, :len(a)].mean(1) - (d[:, len(a):].mean(1) if len(b) else 0.0)
        diff = diff[~np.isnan(diff)]
        return float(diff.var(ddof=1)) if len(diff) > 1 else 0.0
    rng = np.random.default_rng(seed)
    sds = []
    for group in (a, b):
        per_run = [np.nanstd(metric_draws(r.per_class, r.per_class_n, metric, draws, rng)[1], ddof=1) for r in group]
        sds.append(float(np.mean(per_run)) if per_run else 0.0)   # seeds of a group fully correlated
    return sds[0] ** 2 + sds[1] ** 2


@dataclass
class Test:
    """mean_A - mean_B with its t-interval and two-sided p-value; `seeds_needed` when undecided."""
    a_mean: float
    b_mean: float
    diff: float
    se: float
    df: float
    p: float
    low: float
    high: float
    n: Tuple[int, int]
    paired: bool
    sd: Tuple[float, float] = (0.0, 0.0)    # seed sd of each group
    v_img: float = 0.0
    level: float = 1 - ALPHA
    notes: List[str] = field(default_factory=list)

    def significant(self, alpha: float = ALPHA) -> bool:
        return self.p < alpha


def welch_test(a_vals: Sequence[float], b_vals: Sequence[float], v_img: float = 0.0, level: float = 1 - ALPHA,
               paired_images: bool = False) -> Optional[Test]:
    """The test of the module docstring on per-seed values; None below two seeds on a side (no spread to
    test against: a difference of single runs says nothing about seed-to-seed noise)."""
    a = np.asarray([v for v in a_vals if v is not None and not np.isnan(v)], dtype=float)
    b = np.asarray([v for v in b_vals if v is not None and not np.isnan(v)], dtype=float)
    if len(a) < 2 or len(b) < 2:
        return None
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    var = va + vb + max(v_img, 0.0)
    diff = float(a.mean() - b.mean())
    denom = va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1)
    df = float(var ** 2 / denom) if denom > 0 else math.inf
    se = math.sqrt(var)
    if se == 0:
        p = 1.0 if diff == 0 else 0.0
    else:
        p = float(2 * stats.t.sf(abs(diff) / se, df))
    q = float(stats.t.ppf(0.5 + level / 2, df)) if math.isfinite(df) else float(stats.norm.ppf(0.5 + level / 2))
    return Test(float(a.mean()), float(b.mean()), diff, se, df, p, diff - q * se, diff + q * se, (len(a), len(b)),
                paired_images, (float(a.std(ddof=1)), float(b.std(ddof=1))), float(v_img), level)


def compare(a: Sequence[RunEval], b: Sequence[RunEval], metric: str, level: float = 1 - ALPHA) -> Optional[Test]:
    """The significance test of mean_A - mean_B of `metric` over seeds (None below two seeds a side)."""
    av = [_point(r, metric) for r in a]
    bv = [_point(r, metric) for r in b]
    if sum(not np.isnan(v) for v in av) < 2 or sum(not np.isnan(v) for v in bv) < 2:
        return None
    return welch_test(av, bv, image_variance(a, b, metric), level, paired(a, b))


def interval(runs: Sequence[RunEval], metric: str, level: float = 1 - ALPHA) -> Optional[Tuple[float, float]]:
    """The t-interval of one group's seed mean: seed spread plus image-level variance, cut to [0, 100]
    (NSD: [0, inf)); None below 2 seeds."""
    vals = np.asarray([_point(r, metric) for r in runs], dtype=float)
    vals = vals[~np.isnan(vals)]
    if len(vals) < 2:
        return None
    se = math.sqrt(vals.var(ddof=1) / len(vals) + image_variance(runs, [], metric))
    q = float(stats.t.ppf(0.5 + level / 2, len(vals) - 1))
    top = math.inf if metric == "nsd" else 100.0     # a symmetric interval, cut to the values the metric can take
    return max(0.0, float(vals.mean() - q * se)), min(top, float(vals.mean() + q * se))


def holm(pvalues: Sequence[float]) -> List[float]:
    """Holm's step-down adjusted p-values (family-wise error rate at any level alpha: reject where < alpha)."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [1.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def seeds_needed(test: Test, alpha: float = ALPHA, power: float = POWER, max_seeds: int = MAX_SEEDS) -> Optional[int]:
    """Seeds per method at which a two-sided test at `alpha` would have `power` to detect the observed
    difference, with the observed seed spread (pooled) and image-level variance: a power calculation
    (noncentral t, df 2n - 2; n - 1 for a one-sample test), not a promise. None when the difference is 0 or needs more than max_seeds."""
    if test.diff == 0 or not math.isfinite(test.diff):
        return None
    one_sample = test.n[1] == 0          # a seed mean against a fixed reference
    sigma2 = test.sd[0] ** 2 if one_sample else (test.sd[0] ** 2 + test.sd[1] ** 2) / 2
    for n in range(2, max_seeds + 1):
        se = math.sqrt((1 if one_sample else 2) * sigma2 / n + test.v_img)
        if se == 0:
            return n
        df = n - 1 if one_sample else 2 * n - 2
        crit = stats.t.ppf(1 - alpha / 2, df)
        delta = abs(test.diff) / se
        if stats.nct.sf(crit, df, delta) + stats.nct.cdf(-crit, df, delta) >= power:
            return n
    return None
