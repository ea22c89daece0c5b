"""What FERD's information bottleneck does under the two readings (issue 29), from the runs in runs/.

    python3 results/ferd-reading/bottleneck/analyse.py      # writes summary.json and the tables of README.md

Per run: the non-robust channel fraction the bottleneck marks (`gen/nonrobust_frac`, mean over
epochs and last epoch), L_uni, the correlation of the class weights p (last epoch, and averaged over
epochs) with the teacher's per-class PGD-20 error on the test split (the teacher's own evaluation,
results/teachers/; a diagnostic, nothing is chosen on it), and the student's clean and PGD-20
average and worst class. The difference of the readings is tested with the suite's own test
(dfrd_bench.inference.compare: Welch on seed means plus the test-image variance, paired on outcomes).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from scipy import stats

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
sys.path.insert(0, str(ROOT))
from dfrd_bench.inference import RunEval, compare  # noqa: E402

READINGS = {"before": "printed Eq. 5 (defaults v2, `variant=ib-printed`)", "after": "authors' IFP.py (defaults v3)"}


def teacher_error() -> np.ndarray:
    t = json.loads((ROOT / "results/teachers/cpu-resnet20-cifar10.json").read_text())
    return 100.0 - np.asarray(t["attacks"]["pgd20"]["per_class"], dtype=float)


def run_summary(result: dict, err: np.ndarray) -> dict:
    hist = result["history"]
    frac = [h["gen/nonrobust_frac"] for h in hist if "gen/nonrobust_frac" in h]
    p_last = np.asarray(hist[-1]["gen/p"], dtype=float)
    p_mean = np.mean([h["gen/p"] for h in hist], axis=0)
    out = {"seed": result["seed"], "defaults_version": result.get("defaults_version"),
           "commit": (result.get("provenance") or {}).get("git", {}).get("commit"),
           "nonrobust_frac_mean": float(np.mean(frac)), "nonrobust_frac_last": float(frac[-1]),
           "uni_mean": float(np.mean([h["gen/uni"] for h in hist])),
           "p_last_pearson": float(stats.pearsonr(p_last, err)[0]),
           "p_mean_pearson": float(stats.pearsonr(p_mean, err)[0]),
           "p_mean_spearman": float(stats.spearmanr(p_mean, err)[0]),
           "p_max_over_min_last": float(p_last.max() / p_last.min())}
    for attack in ("clean", "pgd20"):
        e = result["attacks"][attack]
        out[f"{attack}_avg"], out[f"{attack}_worst"] = e["avg"], e["worst"]
    return out


def main() -> None:
    err = teacher_error()
    runs = {k: [] for k in READINGS}
    entries = {k: [] for k in READINGS}
    for path in sorted((HERE / "runs").glob("ib-*/result.json")):
        r = json.loads(path.read_text())
        reading = path.parent.name.split("-")[1]
        runs[reading].append(run_summary(r, err))
        entries[reading].append(r["attacks"])
    keys = [k for k in runs["before"][0] if k not in ("seed", "defaults_version", "commit")]
    summary = {"teacher_pgd20_error_per_class": err.tolist(), "readings": READINGS, "runs": runs,
               "mean": {g: {k: float(np.mean([r[k] for r in rs])) for k in keys} for g, rs in runs.items()},
               "sd": {g: {k: float(np.std([r[k] for r in rs], ddof=1)) for k in keys} for g, rs in runs.items()}}
    tests = {}
    for attack in ("clean", "pgd20"):
        for metric in ("avg", "worst"):
            t = compare([RunEval.from_entry(a[attack]) for a in entries["after"]],
                        [RunEval.from_entry(a[attack]) for a in entries["before"]], metric)
            tests[f"{attack}_{metric}"] = {"after_minus_before": t.diff, "ci95": [t.low, t.high], "p": t.p,
                                           "paired_images": t.paired}
    for key in ("nonrobust_frac_mean", "p_mean_pearson"):
        a, b = [r[key] for r in runs["after"]], [r[key] for r in runs["before"]]
        w = stats.ttest_ind(a, b, equal_var=False)
        tests[key] = {"after_minus_before": float(np.mean(a) - np.mean(b)), "p": float(w.pvalue)}
    summary["tests"] = tests
    (HERE / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(markdown(summary))


def markdown(s: dict) -> str:
    rows = [("non-robust channel fraction, mean over epochs", "nonrobust_frac_mean", "{:.3f}"),
            ("non-robust channel fraction, last epoch", "nonrobust_frac_last", "{:.3f}"),
            ("L_uni, mean over epochs", "uni_mean", "{:.3f}"),
            ("corr(p, teacher's PGD-20 error), p of the last epoch", "p_last_pearson", "{:.2f}"),
            ("corr(p, teacher's PGD-20 error), p averaged over epochs", "p_mean_pearson", "{:.2f}"),
            ("Spearman of the same", "p_mean_spearman", "{:.2f}"),
            ("largest / smallest class weight, last epoch", "p_max_over_min_last", "{:.2f}"),
            ("clean avg (%)", "clean_avg", "{:.2f}"), ("clean worst class (%)", "clean_worst", "{:.2f}"),
            ("PGD-20 avg (%)", "pgd20_avg", "{:.2f}"), ("PGD-20 worst class (%)", "pgd20_worst", "{:.2f}")]
    out = ["| 3 seeds each, mean ± sd (per seed) | before: " + s["readings"]["before"] + " | after: "
           + s["readings"]["after"] + " |", "|---|---|---|"]
    for label, key, fmt in rows:
        cells = []
        for g in ("before", "after"):
            per = ", ".join(fmt.format(r[key]) for r in s["runs"][g])
            cells.append(f"{fmt.format(s['mean'][g][key])} ± {fmt.format(s['sd'][g][key])} ({per})")
        out.append(f"| {label} | {cells[0]} | {cells[1]} |")
    out += ["", "| after − before | difference | 95% interval | p |", "|---|---|---|---|"]
    for key, t in s["tests"].items():
        ci = f"[{t['ci95'][0]:+.2f}, {t['ci95'][1]:+.2f}]" if "ci95" in t else "–"
        out.append(f"| {key} | {t['after_minus_before']:+.3f} | {ci} | {t['p']:.3f} |")
    return "\n".join(out)


if __name__ == "__main__":
    main()
