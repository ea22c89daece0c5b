"""The committed readings are what the code renders from the committed results, byte for byte.

Tables and figures are never typed: results/standard/render.sh writes them from the result JSONs. These
tests render again the ones drawn by a plugin's report module (FERD's Tables 3, 6, 7, 9 and Figs. 4, 5,
dfrd_bench/report/contrib.py) and the claims section, and compare with the committed files, so a change
of the report layer that moves one byte, or results committed without their readings, fails here.
(They read every committed run, in about 6 s; `results/standard/render.sh` refreshes the files.)
"""
from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from dfrd_bench.cli import main
from dfrd_bench.utils import read_between_markers

ROOT = Path(__file__).resolve().parents[1]
STANDARD = ROOT / "results" / "standard"

pytestmark = [
              pytest.mark.skipif(not (STANDARD / "runs").is_dir(), reason="no committed results/standard/runs")]


def _table(args, tmp_path: Path) -> str:
    out = tmp_path / "t.md"
    result = CliRunner().invoke(main, ["table", *args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out.read_text()


def test_ferd_ablation_table_renders_as_committed(tmp_path):
    text = _table(["--table", "3", "--attacks", "clean,pgd20", "--ci", "--results", str(STANDARD / "runs")], tmp_path)
    assert text == (STANDARD / "table3.md").read_text()


def test_quick_scale_tables_render_as_committed(tmp_path):
    if not (STANDARD / "quick" / "runs").is_dir():
        pytest.skip("no committed quick-scale runs")
    text = _table(["--table", "6,7,8,9", "--attacks", "all", "--results", str(STANDARD / "quick" / "runs")], tmp_path)
    assert text == (STANDARD / "quick" / "tables.md").read_text()


def test_table1_and_claims_render_as_committed_in_the_readme(tmp_path):
    text = _table(["--table", "1,claims", "--attacks", "all", "--ci", "--results", str(STANDARD / "runs"),
                   "--results", str(ROOT / "results" / "teachers")], tmp_path)
    assert text.rstrip("\n") + "\n" == read_between_markers(ROOT / "results" / "README.md", "tables")


@pytest.mark.parametrize("figure,folder", [("4", STANDARD / "runs"), ("5", STANDARD / "quick" / "runs")])
def test_plugin_figures_render_as_committed(tmp_path, figure, folder):
    committed = STANDARD / ("figures" if figure == "4" else "quick/figures")
    if not folder.is_dir() or not list(committed.glob(f"fig{figure}-*.png")):
        pytest.skip(f"no committed fig{figure}")
    result = CliRunner().invoke(main, ["plot", "--figure", figure, "--results", str(folder), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    written = sorted(tmp_path.glob(f"fig{figure}-*"))
    assert written
    for path in written:
        assert path.read_bytes() == (committed / path.name).read_bytes(), f"{path.name} differs from the committed file"
