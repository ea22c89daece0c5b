"""How often the significance marks fire, on simulated benchmarks with a known truth (issue 26).

    python3 results/calibration/calibrate.py            # writes results/calibration/README.md (~15 CPU-min)
    python3 results/calibration/calibrate.py --quick    # fewer simulations, for a look

Part 1 runs `dfrd-bench table --table 1 --attacks clean,pgd20 --ci` on simulated result files (two
identical methods, FERD and Fast) and counts FERD's marked cells: the false-mark rate of the whole
pipeline. Part 2 measures single comparisons (`inference.compare`) under the null and under true
differences: the calibration and power table of docs/reporting.md. The model of a benchmark is in
dfrd_bench/simulate.py.
"""
from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from dfrd_bench.cli import main
from dfrd_bench.inference import RunEval, compare
from dfrd_bench.simulate import simulate_runs, write_benchmark

HERE = Path(__file__).parent
METRICS = ("avg", "worst", "nsd")


def ferd_cells(markdown: str):
    """FERD's six metric cells (clean Avg/Worst/NSD, PGD-20 Avg/Worst/NSD) of a rendered Table 1."""
    row = next(line for line in markdown.splitlines() if "| FERD |" in line)
    return [c.strip() for c in row.split("|")[1:-1]][3:9]


BASELINES = ("zskt", "cmi", "deepinv", "fast", "dfhl")


def table_marks(effect: float, seed_sd: float, seeds: int, benchmarks: int, first_seed: int = 0,
                baselines: tuple = ("fast",)):
    """(marked FERD cells, FERD cells) over `benchmarks` simulated benchmarks through `table --ci`."""
    marked = cells = 0
    for b in range(benchmarks):
        with tempfile.TemporaryDirectory() as tmp:
            effects = {"ferd": effect, **{m: 0.0 for m in baselines}}
            folder = write_benchmark(simulate_runs(effects, seeds, seed_sd, seed=first_seed + b), Path(tmp) / "runs")
            out = CliRunner().invoke(main, ["table", "--table", "1", "--attacks", "clean,pgd20", "--ci",
                                            "--results", str(folder)])
            if out.exit_code != 0:
                raise SystemExit(out.output)
            metric_cells = ferd_cells(out.output)
            marked += sum(bool(re.search("[▲▼]", c)) for c in metric_cells)
            cells += len(metric_cells)
    return marked, cells


def single_tests(effect: float, seed_sd: float, seeds: int, reps: int, first_seed: int = 10_000):
    """Per metric, the fraction of simulations whose FERD-vs-Fast test is significant at 5% (clean and PGD-20)."""
    hits = {m: 0 for m in METRICS}
    total = 0
    for rep in range(reps):
        runs = simulate_runs({"ferd": effect, "fast": 0.0}, seeds, seed_sd, seed=first_seed + rep)
        for attack in ("clean", "pgd20"):
            a = [RunEval.from_entry(r["attacks"][attack]) for r in runs if r["method"] == "ferd"]
            b = [RunEval.from_entry(r["attacks"][attack]) for r in runs if r["method"] == "fast"]
            for m in METRICS:
                hits[m] += compare(a, b, m).p < 0.05
            total += 1
    return {m: h / total for m, h in hits.items()}, total


def main_(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    benchmarks, reps = (20, 40) if args.quick else (80, 200)
    t0 = time.time()
    lines = ["# Calibration of the significance marks (simulated benchmarks)", "",
             f"Made by `python3 results/calibration/calibrate.py{' --quick' if args.quick else ''}` "
             "(dfrd_bench/simulate.py's model: per-class base accuracies 25-75 % clean, x0.45 under PGD-20; per run "
             "and class an independent N(0, seed sd) shift; 1,000 test images per class, outcomes correlated "
             "across runs through a shared image difficulty, rho 0.7).", "",
             "## 1. The whole pipeline under the null: `dfrd-bench table --table 1 --attacks clean,pgd20 --ci`", "",
             "Identical methods, 3 seeds each: FERD and Fast (the issue's check), and FERD with all five "
             "baselines (the shape of the real Table 1); FERD's 6 cells per table (clean and PGD-20 x Avg, "
             "Worst, NSD); the family of a table is its 6 cells (Holm). A marked cell is a false mark.", "",
             "| methods | seed sd (points) | benchmarks | FERD cells | marked | rate |", "|--|--:|--:|--:|--:|--:|"]
    for baselines, sd, n_bench in ((("fast",), 4.0, benchmarks), (("fast",), 2.0, benchmarks),
                                   (BASELINES, 4.0, benchmarks // 2)):
        marked, cells = table_marks(0.0, sd, 3, n_bench, baselines=baselines)
        label = "FERD + Fast" if len(baselines) == 1 else "FERD + 5 baselines"
        lines.append(f"| {label} | {sd:g} | {n_bench} | {cells} | {marked} | {100 * marked / cells:.1f} % |")
    lines += ["", "## 2. One comparison (`inference.compare`), fraction significant at 5 %", "",
              "Effect 0: the false-positive rate (nominal 5 %). Effect > 0: power (a true shift of every class, so "
              "of the average, by that many points). Clean and PGD-20 pooled; "
              f"{reps} simulated benchmarks per row ({2 * reps} comparisons).", "",
              "| effect (points) | seed sd | seeds | Avg | Worst | NSD |", "|--:|--:|--:|--:|--:|--:|"]
    for effect, sd, seeds in ((0, 0, 3), (0, 2, 3), (0, 4, 3), (0, 2, 5), (0, 4, 5),
                              (2, 2, 3), (5, 2, 3), (5, 4, 3), (2, 2, 5), (5, 4, 5)):
        rates, _ = single_tests(effect, sd, seeds, reps)
        lines.append(f"| {effect} | {sd} | {seeds} | " + " | ".join(f"{100 * rates[m]:.1f} %" for m in METRICS) + " |")
    lines += ["", "## 3. Power of a mark through the table (Holm over 6 cells)", "",
              "| effect (points) | seed sd | seeds | benchmarks | FERD Avg cells marked ▲ |", "|--:|--:|--:|--:|--:|"]
    for effect, sd, seeds in ((5, 2, 3), (5, 4, 3), (5, 4, 5)):
        n_bench = benchmarks // 2
        got = 0
        for b in range(n_bench):
            with tempfile.TemporaryDirectory() as tmp:
                folder = write_benchmark(simulate_runs({"ferd": effect, "fast": 0.0}, seeds, sd, seed=50_000 + b),
                                         Path(tmp) / "runs")
                out = CliRunner().invoke(main, ["table", "--table", "1", "--attacks", "clean,pgd20", "--ci",
                                                "--results", str(folder)])
                cells = ferd_cells(out.output)
                got += sum("▲" in c for c in (cells[0], cells[3]))   # clean Avg and PGD-20 Avg
        lines.append(f"| {effect} | {sd} | {seeds} | {n_bench} | {100 * got / (2 * n_bench):.0f} % |")
    lines += ["", f"Took {(time.time() - t0) / 60:.1f} minutes on this machine."]
    out = HERE / ("README-quick.md" if args.quick else "README.md")
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main_())
