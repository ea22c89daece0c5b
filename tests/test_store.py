import json

import pytest

from dfrd_bench.store import ResultError, SCHEMA, read_result, results_frame, write_result


def _result(**kw):
    r = {"kind": "eval", "dataset": "cifar10", "data_source": {"kind": "npz", "sha256": "ab", "n": 2},
         "model": {"spec": "m"}, "provenance": {},
         "attacks": {"clean": {"avg": 50.0, "worst": 0.0, "worst10": 0.0, "nsd": 1.0, "per_class": [100.0, 0.0], "n": 2}}}
    r.update(kw)
    r["attacks"]["clean"]["per_class"] += [50.0] * ({"cifar100": 100}.get(r["dataset"], 10) - 2)  # one per class
    return r


def test_write_read_roundtrip_and_frame(tmp_path):
    write_result(_result(), tmp_path / "a" / "r1.json")
    write_result(_result(dataset="cifar100"), tmp_path / "r2.json")
    (tmp_path / "other.json").write_text(json.dumps({"not": "a result"}))
    assert read_result(tmp_path / "a" / "r1.json")["schema"] == SCHEMA
    df = results_frame(tmp_path)
    assert len(df) == 2 and set(df["dataset"]) == {"cifar10", "cifar100"}
    assert not list(tmp_path.rglob("*.tmp")), "atomic writes leave no temporary files"


def test_invalid_results_are_refused(tmp_path):
    bad = _result()
    del bad["attacks"]["clean"]["nsd"]
    with pytest.raises(ResultError, match="lacks nsd"):
        write_result(bad, tmp_path / "x.json")
    assert not (tmp_path / "x.json").exists()
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ResultError, match="cannot read"):
        read_result(tmp_path / "broken.json")
