"""The scripts under results/ that maintain committed benchmark files."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
POOL_COVERAGE = REPO / "results" / "standard" / "pool_coverage.py"


def test_pool_coverage_keeps_rows_whose_state_is_gone(tmp_path: Path) -> None:
    """A benchmark worktree that is lost takes the runs' state.pt with it; the rows already labelled from
    them must survive the next sync, and a run with neither a row nor its state is skipped, not guessed."""
    runs = tmp_path / "runs"
    for name in ("kept-run", "new-run-without-state"):
        (runs / name).mkdir(parents=True)
        (runs / name / "result.json").write_text(json.dumps({"method": "ferd"}))
    known = {"run": "kept-run", "student": "resnet8", "method": "ferd", "seed": 0, "marker": 41}
    out = tmp_path / "coverage.json"
    out.write_text(json.dumps([known]))
    subprocess.run([sys.executable, str(POOL_COVERAGE), str(runs), "--out", str(out)],
                   check=True, capture_output=True, text=True)
    assert json.loads(out.read_text()) == [known]
