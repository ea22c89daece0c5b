"""`dfrd-bench reproduce`: the number-by-number comparison, the identity checks, and one re-run end to end."""
import json

import pytest
from click.testing import CliRunner

from dfrd_bench.cli import main
from dfrd_bench.reproduce import IDENTICAL, OUTSIDE, WITHIN, ReproduceError, compare, plan, seed_spread_runs, verdict
from dfrd_bench.store import write_result


def _result(seed=0, clean=(60.0, 40.0), run_dir=None, teacher=None, **extra):
    per_class = list(clean) + [50.0] * 8                      # two classes set, eight at 50 %
    attack = {"avg": sum(per_class) / len(per_class), "worst": min(per_class), "worst10": min(per_class),
              "nsd": 0.2, "per_class": per_class, "n": 20}
    return {"kind": "run", "method": "ferd", "variant": "paper", "preset": "smoke", "dataset": "cifar10", "seed": seed,
            "teacher": teacher or {"spec": "random:resnet8"}, "student": {"arch": "resnet8", "params": 1},
            "model": {"spec": "student.pt", "arch": "resnet8", "num_classes": 10},
            "data_source": {"kind": "npz", "path": "/nowhere/test.npz", "split": "test", "n": 20, "sha256": "00"},
            "attacks": {"clean": attack}, "settings": {}, "config": {"gamma": 0.5}, "overrides": {},
            "provenance": {"created": f"2026-01-0{seed + 1}T00:00:00"}, "run_dir": run_dir or f"runs/s{seed}", **extra}


def test_each_number_is_identical_within_the_seed_spread_or_outside_it():
    recorded = _result(0, clean=(60.0, 40.0))
    seeds = [recorded, _result(1, clean=(64.0, 30.0)), _result(2, clean=(50.0, 36.0))]
    reproduced = _result(0, clean=(60.0, 28.0))
    numbers = {(n.metric, n.cls): n for n in compare(recorded, reproduced, seeds, ["clean"])}
    assert numbers[("per_class", 0)].verdict == IDENTICAL and numbers[("nsd", None)].verdict == IDENTICAL
    assert numbers[("avg", None)].verdict == WITHIN            # 48.8 in 48.6..50 over the three seeds
    assert numbers[("avg", None)].spread == pytest.approx((48.6, 50.0)) and numbers[("avg", None)].seeds == 3
    assert numbers[("worst", None)].verdict == OUTSIDE         # 28 below 30..40
    assert numbers[("per_class", 1)].verdict == OUTSIDE
    assert len(numbers) == 4 + 10
    assert verdict(None, None, None) == IDENTICAL              # an undefined NSD both times
    assert verdict(0.2, None, (0.1, 0.3)) == OUTSIDE
    assert verdict(50.0, 50.5, None) == OUTSIDE                # no value of any seed to compare with


def test_the_seed_spread_is_the_results_setup_over_its_seeds(tmp_path):
    runs = tmp_path / "runs"
    for seed in (0, 1, 2):
        write_result(_result(seed, clean=(60.0 + seed, 40.0)), runs / f"s{seed}" / "result.json")
    write_result(_result(1, config={"gamma": 0.9}, overrides={"gamma": 0.9}), runs / "g" / "result.json")
    write_result(_result(1, preset="quick"), runs / "q" / "result.json")
    found = seed_spread_runs(runs / "s0" / "result.json", _result(0))
    assert sorted(r.seed for r in found) == [0, 1, 2]          # not the other gamma, nor the other preset


def test_a_teacher_or_data_other_than_the_recorded_one_is_refused(tmp_path, test_npz):
    teacher = tmp_path / "teacher.pt"
    teacher.write_bytes(b"not the recorded teacher")
    path = tmp_path / "runs" / "s0" / "result.json"
    write_result(_result(teacher={"spec": str(teacher), "checkpoint_sha256": "ab" * 32}), path)
    res = CliRunner().invoke(main, ["reproduce", str(path), "--dry-run"])
    assert res.exit_code == 1 and "refusing to reproduce with another teacher" in res.output
    assert len(res.output.strip().splitlines()) == 1
    write_result(_result(), path)                               # a random teacher: nothing to check; data mismatch
    with pytest.raises(ReproduceError, match="sha256 .* pass --source with the recorded data"):
        plan(path, source=test_npz)


@pytest.mark.slow
def test_a_smoke_run_reproduces_bit_identically(tmp_path, test_npz):
    cli = CliRunner()
    res = cli.invoke(main, ["run", "--method", "ferd", "--dataset", "cifar10", "--preset", "smoke", "--set", "epochs=1",
                            "--attacks", "clean", "--source", test_npz, "--out", str(tmp_path / "runs")])
    assert res.exit_code == 0, res.output
    original = next((tmp_path / "runs").rglob("result.json"))
    refused = cli.invoke(main, ["reproduce", str(original), "--out", str(tmp_path / "runs")])
    assert refused.exit_code == 1 and "already holds a result" in refused.output   # never over the original
    dry = cli.invoke(main, ["reproduce", str(original), "--dry-run"])
    assert dry.exit_code == 0 and "would run: " in dry.output and "teacher cpu-resnet20-cifar10: sha256" in dry.output
    res = cli.invoke(main, ["reproduce", str(original), "--out", str(tmp_path / "again"),
                            "--report", str(tmp_path / "report.json")])
    assert res.exit_code == 0, res.output
    assert "| clean | avg |" in res.output and "per class (10)" in res.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["summary"] == {IDENTICAL: 14, WITHIN: 0, OUTSIDE: 0}
    assert (tmp_path / "again" / original.parent.name / "result.json").exists()
