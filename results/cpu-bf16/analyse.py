"""bf16 training on this CPU against fp32 (issue 31): what it costs in accuracy, from the runs in runs/.

    python3 results/cpu-bf16/analyse.py        # prints the table of README.md, writes summary.json

FERD and Fast at `quick`, seeds 0-2, trained in fp32 and in bf16 (autocast; `--set precision=...`), all
evaluated in fp32 on the full test split (clean, PGD-20). FERD's fp32 runs are the "after" runs of
results/ferd-reading/bottleneck/ (the same code and defaults, v3). Differences are tested with the suite's
test (dfrd_bench.inference.compare: Welch on the seed means plus the test-image variance, images paired).
Training CPU time is recorded per run but was measured while other jobs shared the machine: the speed
claim comes from the side-by-side harness (results/speed/), not from these.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))
from dfrd_bench.inference import RunEval, compare  # noqa: E402

FP32_FERD = ROOT / "results/ferd-reading/bottleneck/runs"


def load(method: str, precision: str):
    if method == "ferd" and precision == "fp32":
        paths = sorted(FP32_FERD.glob("ib-after-s*/result.json"))
    else:
        paths = sorted((HERE / "runs").glob(f"{method}-{precision}-s*/result.json"))
    return [json.loads(p.read_text()) for p in paths]


def main() -> None:
    rows, summary = [], {}
    for method in ("ferd", "fast"):
        runs = {p: load(method, p) for p in ("fp32", "bf16")}
        for p, rs in runs.items():
            assert all(r["speed"]["training_precision"] == p for r in rs), f"{method} {p}: a run trained otherwise"
        summary[method] = {}
        for attack in ("clean", "pgd20"):
            for metric in ("avg", "worst"):
                t = compare([RunEval.from_entry(r["attacks"][attack]) for r in runs["bf16"]],
                            [RunEval.from_entry(r["attacks"][attack]) for r in runs["fp32"]], metric)
                per = {p: [r["attacks"][attack][metric] for r in rs] for p, rs in runs.items()}
                summary[method][f"{attack}_{metric}"] = {"fp32": per["fp32"], "bf16": per["bf16"], "diff": t.diff,
                                                         "ci95": [t.low, t.high], "p": t.p, "paired": t.paired}
                rows.append(f"| {method.upper() if method == 'ferd' else 'Fast'} | {attack} {metric} | "
                            f"{np.mean(per['fp32']):.2f} ({', '.join(f'{v:.2f}' for v in per['fp32'])}) | "
                            f"{np.mean(per['bf16']):.2f} ({', '.join(f'{v:.2f}' for v in per['bf16'])}) | "
                            f"{t.diff:+.2f} [{t.low:+.2f}, {t.high:+.2f}] | {t.p:.2f} |")
        cpu = {p: [r["cpu_seconds"]["train"] for r in rs] for p, rs in runs.items()}
        summary[method]["train_cpu_seconds"] = cpu
    (HERE / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print("| method | metric (%) | fp32: mean (seeds 0, 1, 2) | bf16: mean (seeds) | bf16 − fp32 [95%] | p |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
