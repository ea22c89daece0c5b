"""The Python API: the examples of docs/api.md run as written, and the frame matches the tables."""
import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest

import dfrd_bench
from tests.conftest import random_images

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"


@pytest.mark.slow
def test_docs_examples_run(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) >= 4
    np.savez(tmp_path / "test.npz", x=random_images(40, seed=3), y=np.arange(40) % 10)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), namespace)  # one after another, as a notebook would
    assert namespace["result"]["config"]["gamma"] == 0.3
    saved = json.loads((tmp_path / "student-eval.json").read_text())
    assert saved["kind"] == "eval" and set(saved["attacks"]) == {"clean", "pgd20"}
    frame = namespace["frame"]
    assert len(frame) == 2 * 10 and set(frame.attack) == {"clean", "pgd20"}   # smoke: clean, pgd20; 10 classes


def test_import_is_light_and_the_api_is_there():
    code = "import sys, dfrd_bench; assert 'torch' not in sys.modules; print(sorted(dfrd_bench._API))"
    out = os.popen(f"{sys.executable} -c \"{code}\"").read()
    assert "evaluate" in out and "load_model" in out and "load_results" in out and "run" in out
    assert callable(dfrd_bench.evaluate) and callable(dfrd_bench.run)


def test_run_refuses_a_misspelt_setting(tmp_path):
    from dfrd_bench.config import ConfigError

    with pytest.raises(ConfigError, match="gama"):
        dfrd_bench.run("ferd", preset="smoke", out=str(tmp_path), teacher="random:resnet8", gama=0.3)


def test_load_results_is_what_the_tables_show(tmp_path):
    from dfrd_bench.report.tables import build_tables
    from tests.test_report import _result
    from dfrd_bench.store import write_result

    for seed, base in ((0, 40), (1, 44)):
        write_result(_result("ferd", seed=seed, pgd=[base] * 9 + [base - 30]), tmp_path / f"f{seed}" / "result.json")
    frame = dfrd_bench.load_results(tmp_path)
    per_run = frame[frame.attack == "pgd20"].drop_duplicates("seed")
    (table,) = build_tables("1", tmp_path, attacks=["pgd20"])
    ferd = next(r for r in table.blocks[0][1] if r.label == "FERD")
    assert per_run.avg.mean() == pytest.approx(ferd.cells[("pgd20", "avg")].mean)
    assert per_run.worst.mean() == pytest.approx(ferd.cells[("pgd20", "worst")].mean)
    worst = frame[frame.attack == "pgd20"].groupby("seed").accuracy.min()
    assert list(worst) == list(per_run.worst)


def test_load_results_exposes_per_image_outcomes(tmp_path):
    from dfrd_bench.api import load_results
    from dfrd_bench.simulate import simulate_runs, write_benchmark

    runs = simulate_runs({"ferd": 0.0, "fast": 0.0}, 2, 1.0, images_per_class=50, seed=4)
    df = load_results(write_benchmark(runs, tmp_path / "r"))
    row = df[(df.method == "ferd") & (df.seed == 1) & (df.attack == "pgd20") & (df.class_index == 3)].iloc[0]
    assert len(row.correct) == 50 and row.images_sha256 == "simulated-10x50"
    assert row.correct.mean() * 100 == pytest.approx(row.accuracy)
