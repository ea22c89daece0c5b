"""Render results/speed/README.md from the `dfrd-bench bench` JSONs that make.sh writes.

    python3 results/speed/render.py results/speed/json > results/speed/README.md
"""
from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

SETUPS = {
    "issue": "The issue's setup: untrained WRN-16-2 teacher, WRN-16-1 student, batch 64, the paper's per-iteration "
             "settings (10-step student attacks, FERD's 50-step bottleneck and 20-step reweighting PGD)",
    "quick": "A `quick` run's loops: the bundled CPU teacher (ResNet-20), ResNet-8 student, quick settings, batch 64",
    "paper": "The paper's models: untrained WRN-34-10 teacher, ResNet-18 student, the paper's per-iteration settings, "
             "batch 64 on this CPU (one repeat; at the paper's batch 256 an iteration takes about 4x as long)",
}


def _fmt(value, digits=3):
    return "–" if value is None else f"{value:.{digits}f}"


def main(folder: str) -> None:
    reports = defaultdict(list)
    for path in sorted(Path(folder).glob("*.json")):
        report = json.loads(path.read_text())
        reports[path.name.split("-", 1)[0]].append((path.name, report))
    print("# Speed of every stage (`dfrd-bench bench`)\n")
    print("Made by `bash results/speed/make.sh` on a quiet machine; rendered by `render.py` from `json/`. "
          "`bound / measured` = the stage's single-pass bound (its teacher and student passes, measured in the "
          "same process) over its measured time; docs/speed.md says how to read it and how to estimate a run.\n")
    for setup, items in reports.items():
        first = items[0][1]
        machine = first["machine"]
        print(f"## {setup}\n\n{SETUPS.get(setup, setup)}. Device {machine['device']} ({machine['processor']}), "
              f"{machine['threads']} threads, torch {machine['torch']}; {first['repeats']} repeats after "
              f"{first['warmup']} warm-up.\n")
        print("| method | compile | stage | per | seconds | samples/s | pass bound s | bound / measured |")
        print("|---|---|---|---|---|---|---|---|")
        for name, report in items:
            compiled = "on" if report["speed"]["compile_attacks"] else "off"
            shown = {k: v for k, v in report.get("overrides", {}).items() if k != "compile"}
            method = report["method"] + "".join(f" ({k}={v})" for k, v in shown.items())
            for stage, e in report["stages"].items():
                print(f"| {method} | {compiled} | {stage} | {e.get('per', 'iteration')} | {_fmt(e['seconds'])} | "
                      f"{_fmt(e.get('samples_per_s'), 1)} | {_fmt(e.get('bound_seconds'))} | {_fmt(e.get('ratio'), 2)} |")
        print()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "results/speed/json")
