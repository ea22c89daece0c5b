"""No silent wrong result, no lost run: validation, divergence checks, locks, one-line errors and
untrusted files (issue 10). Each test uses a tiny model or the smoke preset."""
import io
import json
import os
import pickle
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from dfrd_bench.checkpoints import CheckpointError, read_checkpoint, save_model
from dfrd_bench.cli import main
from dfrd_bench.config import ConfigError, resolve_config
from dfrd_bench.data import DataError, load_split
from dfrd_bench.errors import DfrdError, DivergenceError
from dfrd_bench.evaluator import EvaluationError
from dfrd_bench.method import get_method
from dfrd_bench.models import build_model
from dfrd_bench.runner import LOCK_FILE, RunError, RunRequest, run
from dfrd_bench.store import ResultError, write_result
from tests.conftest import random_images


def _req(tmp_path, test_npz, name="r", **over):
    resume = over.pop("resume", False)
    seed = over.pop("seed", 0)
    return RunRequest(method=over.pop("method", "ferd"), dataset="cifar10", preset="smoke", seed=seed, source=test_npz,
                      out=str(tmp_path / "runs"), run_name=name, resume=resume,
                      overrides={"teacher": "random:resnet8", **over})


def _cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


# -- silent wrong results --------------------------------------------------------------------------
def test_a_diverged_student_is_refused_and_nothing_is_written(tmp_path, test_npz):
    with pytest.raises(DivergenceError, match="diverged in epoch") as err:
        run(_req(tmp_path, test_npz, student_lr=1e6), log=lambda s: None)
    assert not (tmp_path / "runs" / "r" / "result.json").exists()
    epoch = int(str(err.value).split("diverged in epoch ")[1].split()[0])
    state = tmp_path / "runs" / "r" / "state.pt"
    if state.exists():  # only epochs before the diverged one were checkpointed
        assert torch.load(state, weights_only=True)["epoch"] < epoch


def test_eval_refuses_a_checkpoint_with_nan_weights(tmp_path, test_npz):
    model = build_model("resnet8", 10)
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] = float("nan")
    save_model(model, tmp_path / "nan.pt", "cifar10", 32)
    res = _cli("eval", "--model", tmp_path / "nan.pt", "--dataset", "cifar10", "--source", test_npz,
               "--attacks", "clean", "--out", tmp_path / "r.json")
    assert res.exit_code == 1 and "non-finite weights" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "r.json").exists()


def _overflowing_student():
    """A resnet8 whose weights are all finite but whose every logit overflows to NaN (weights x 1e5)."""
    model = build_model("resnet8", 10)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1e5)
    return model


def test_a_model_with_finite_weights_but_non_finite_outputs_is_refused(tmp_path, test_npz):
    # eval: the probe batch of the evaluation data finds it before any attack or result
    save_model(_overflowing_student(), tmp_path / "big.pt", "cifar10", 32)
    res = _cli("eval", "--model", tmp_path / "big.pt", "--dataset", "cifar10", "--source", test_npz,
               "--attacks", "clean", "--out", tmp_path / "r.json")
    assert res.exit_code == 1 and "non-finite outputs" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "r.json").exists()
    # run: the epoch-end check probes the student's outputs too (student_lr=1e6 keeps the weights finite)
    with pytest.raises(DivergenceError, match="diverged in epoch 1 .*--resume") as err:
        run(_req(tmp_path, test_npz, student_lr=1e6, epochs=1), log=lambda s: None)
    assert "non-finite" in str(err.value)
    assert not any((tmp_path / "runs" / "r" / f).exists() for f in ("result.json", "state.pt", "student.pt"))


def test_a_non_finite_generator_loss_ends_the_run_and_a_resume_says_so_again(tmp_path, test_npz):
    ferd = get_method("ferd")
    original = ferd.generate

    def nan_in_epoch_2(self, ctx):
        samples = original(self, ctx)
        if ctx.epoch == 1:
            samples.logs["adv"] = torch.tensor(float("nan"))
        return samples

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ferd, "generate", nan_in_epoch_2)
        for resume in (False, True):  # the kept state (epoch 1) diverges again, loudly, on --resume
            with pytest.raises(DivergenceError, match=r"diverged in epoch 2 \(a loss is non-finite: gen/adv = nan\).*"
                                                      "without --resume"):
                run(_req(tmp_path, test_npz, resume=resume, gen_iters=1, student_iters=1), log=lambda s: None)
            state = torch.load(tmp_path / "runs" / "r" / "state.pt", weights_only=True)
            assert state["epoch"] == 1 and not (tmp_path / "runs" / "r" / "result.json").exists()


def _teacher_file(path, seed):
    torch.manual_seed(seed)
    save_model(build_model("resnet8", 10), path, "cifar10", 32)
    return str(path)


def _interrupt(tmp_path, test_npz, **over):
    ferd = get_method("ferd")
    original = ferd.student_loss

    def flaky(self, ctx, batch):
        if ctx.epoch == 1:
            raise KeyboardInterrupt
        return original(self, ctx, batch)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ferd, "student_loss", flaky)
        with pytest.raises(KeyboardInterrupt):
            run(_req(tmp_path, test_npz, **over), log=lambda s: None)


def test_resume_refuses_another_seed_or_another_teacher_file(tmp_path, test_npz):
    teacher = _teacher_file(tmp_path / "teacher.pt", 0)
    _interrupt(tmp_path, test_npz, teacher=teacher)
    with pytest.raises(RunError, match="seed: 0 in the state, 1 now"):
        run(_req(tmp_path, test_npz, teacher=teacher, seed=1, resume=True), log=lambda s: None)
    _teacher_file(tmp_path / "teacher.pt", 1)  # another teacher at the same path
    with pytest.raises(RunError, match="teacher_weights_sha256"):
        run(_req(tmp_path, test_npz, teacher=teacher, resume=True), log=lambda s: None)
    _teacher_file(tmp_path / "teacher.pt", 0)  # the original back: the resume goes through
    assert run(_req(tmp_path, test_npz, teacher=teacher, resume=True), log=lambda s: None)["seed"] == 0


def test_resume_without_a_state_says_it_starts_fresh(tmp_path, test_npz):
    lines = []
    run(_req(tmp_path, test_npz, resume=True), log=lines.append)
    assert any("starting fresh" in line for line in lines)


@pytest.mark.parametrize("over, match", [
    ({"eps": 8}, "write 8/255"), ({"eps": -1}, "eps must be > 0"), ({"gamma": float("nan")}, "gamma must be finite"),
    ({"gamma": 1.5}, "gamma must be >= 0 and <= 1"), ({"student_iters": 0}, "student_iters must be >= 1"),
    ({"eval_limit": 0}, "eval_limit must be >= 1"), ({"eval_limit": -5}, "eval_limit must be >= 1"),
    ({"epochs": "abc"}, "whole number"), ({"epochs": 2.5}, "whole number"),
    ({"checkpoint_every_epochs": 0}, "checkpoint_every_epochs must be >= 1"), ({"batch_size": 0}, "batch_size must be >= 1"),
    ({"student_lr": float("nan")}, "student_lr must be finite"), ({"attacks": ""}, "no attack given"),
    ({"batch_size": 10**9}, "batch_size must be >= 1 and <= 65536"), ({"eval_batch_size": 10**9}, "<= 65536"),
    ({"seed": -1}, r"--seed must be a whole number in \[0, 4294967295\], got -1"),
])
def test_meaningless_settings_fail_before_anything_runs(tmp_path, test_npz, over, match):
    with pytest.raises(DfrdError, match=match):
        run(_req(tmp_path, test_npz, **over), log=lambda s: None)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # no empty run folder


def test_every_runner_setting_has_a_range_check():
    from dfrd_bench.config import RUNNER_DEFAULTS, RUNNER_RANGES

    numeric = {k for k, v in RUNNER_DEFAULTS.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    assert numeric <= set(RUNNER_RANGES), numeric - set(RUNNER_RANGES)
    assert resolve_config(get_method("ferd"), "cifar10", "quick")  # the presets themselves pass


def _npz(path, x, y):
    np.savez(path, x=x, y=y)
    return str(path)


@pytest.mark.parametrize("make, match", [
    (lambda: (random_images(8, size=64), np.arange(8) % 10), r"\(64, 64, 3\), but cifar10 images are \(32, 32, 3\)"),
    (lambda: (random_images(8), np.arange(6) % 10), "8 images but 'y' 6 labels"),
    (lambda: (random_images(8), np.eye(10)[np.arange(8) % 10]), "one-hot"),
    (lambda: (random_images(0), np.zeros(0, dtype=np.int64)), "holds no image"),
    (lambda: (np.array([1, "a"], dtype=object), np.arange(2)), r"d\.npz: cannot read its arrays.*no Python objects"),
])
def test_npz_data_must_fit_the_dataset(tmp_path, make, match):
    x, y = make()
    with pytest.raises(DataError, match=match):
        load_split("cifar10", "test", _npz(tmp_path / "d.npz", x, y), use_cache=False)


def test_eval_limit_zero_is_refused_and_no_nan_is_ever_written(tmp_path, test_npz):
    res = _cli("eval", "--model", "random:resnet8", "--dataset", "cifar10", "--source", test_npz, "--limit", 0)
    assert res.exit_code == 2 and "must be at least 1" in res.output
    result = {"kind": "eval", "dataset": "cifar10", "data_source": {}, "model": {}, "provenance": {},
              "attacks": {"clean": {"avg": float("nan"), "worst": 0, "worst10": 0, "nsd": None, "per_class": [], "n": 0}}}
    with pytest.raises(ResultError, match="NaN"):
        write_result(result, tmp_path / "nan.json")
    assert not (tmp_path / "nan.json").exists()


# -- lost data -------------------------------------------------------------------------------------
def test_a_second_run_on_a_locked_folder_fails_fast_while_the_first_completes(tmp_path, test_npz):
    ferd = get_method("ferd")
    original = ferd.student_loss
    started = threading.Event()

    def slow(self, ctx, batch):
        started.set()
        time.sleep(0.2)
        return original(self, ctx, batch)

    outcome = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ferd, "student_loss", slow)
        first = threading.Thread(target=lambda: outcome.setdefault("first", run(_req(tmp_path, test_npz), log=lambda s: None)))
        first.start()
        assert started.wait(60)
        t0 = time.time()
        with pytest.raises(RunError, match="another dfrd-bench run is using"):
            run(_req(tmp_path, test_npz, resume=True), log=lambda s: None)
        assert time.time() - t0 < 5
        first.join(120)
    assert outcome["first"]["method"] == "ferd" and (tmp_path / "runs" / "r" / "result.json").exists()


def test_stale_temporaries_of_a_killed_write_are_removed_on_resume(tmp_path, test_npz):
    _interrupt(tmp_path, test_npz)
    stale = tmp_path / "runs" / "r" / ".state.pt.abc123.tmp"
    stale.write_bytes(b"x" * 1000)
    run(_req(tmp_path, test_npz, resume=True), log=lambda s: None)
    assert not stale.exists()


def test_table_reports_unreadable_results_and_strict_fails(tmp_path, test_npz):
    run(_req(tmp_path, test_npz), log=lambda s: None)
    good = tmp_path / "runs" / "r" / "result.json"
    bad = tmp_path / "runs" / "cut" / "result.json"
    bad.parent.mkdir()
    bad.write_text(good.read_text()[:200])  # truncated
    res = _cli("table", "--table", "runs", "--results", tmp_path / "runs")
    assert res.exit_code == 0 and str(bad) in res.output and "could not be read" in res.output
    strict = _cli("table", "--table", "runs", "--results", tmp_path / "runs", "--strict")
    assert strict.exit_code == 1


# -- one-line errors -------------------------------------------------------------------------------
def test_broken_files_give_one_line_errors(tmp_path, test_npz):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    res = _cli("eval", "--model", empty, "--arch", "resnet8", "--dataset", "cifar10", "--source", test_npz)
    assert res.exit_code == 1 and "empty (0 bytes)" in res.output and "Traceback" not in res.output
    with pytest.raises(CheckpointError, match="0 bytes"):
        read_checkpoint(empty)
    # a truncated state.pt on --resume
    _interrupt(tmp_path, test_npz)
    state = tmp_path / "runs" / "r" / "state.pt"
    state.write_bytes(state.read_bytes()[:100])
    with pytest.raises(RunError, match="cannot be read.*delete it to start the run over"):
        run(_req(tmp_path, test_npz, resume=True), log=lambda s: None)
    # a sweep file that is not YAML
    bad = tmp_path / "bad.yaml"
    bad.write_text("methods: [ferd\ndatasets: cifar10\n")
    res = _cli("sweep", bad, "--dry-run")
    assert res.exit_code == 1 and "not valid YAML at line" in res.output and len(res.output.strip().splitlines()) == 1
    res = _cli("run", "--method", "ferd", "--dataset", "cifar10", "--preset", "smoke", "--teacher", "random:resnet8",
               "--source", test_npz, "--device", "bogus", "--out", tmp_path / "o")
    assert res.exit_code == 1 and "unknown device 'bogus'" in res.output


@pytest.mark.parametrize("name", ["../../escaped", "/tmp/absolute", "..", ".", "a/b", "x" * 300])
def test_a_run_name_is_one_folder_name_under_out(tmp_path, test_npz, name):
    with pytest.raises(RunError, match="one folder name|at most 200 characters"):
        run(_req(tmp_path, test_npz, name=name), log=lambda s: None)
    assert not (tmp_path / "runs").exists() and not (tmp_path.parent / "escaped").exists()


def test_negative_seeds_and_huge_batches_are_refused_at_once_by_eval_and_sweep(tmp_path, test_npz):
    base = ["eval", "--model", "random:resnet8", "--dataset", "cifar10", "--source", test_npz, "--attacks", "clean"]
    res = _cli(*base, "--seed", -1)
    assert res.exit_code == 2 and "--seed: must be a whole number in [0, 4294967295], got -1" in res.output
    res = _cli(*base, "--batch-size", 10**9)
    assert res.exit_code == 2 and "--batch-size: must be at most 65536" in res.output
    res = _cli("sweep", "--method", "ferd", "--dataset", "cifar10", "--seed", "0,-1", "--dry-run")
    assert res.exit_code == 1 and "seeds must be a whole number >= 0, got '-1'" in res.output


def test_a_full_disk_or_a_read_only_out_is_one_line(tmp_path, test_npz, monkeypatch):
    import errno

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)  # every atomic write: checkpoints, results, tables
    res = _cli("run", "--method", "ferd", "--dataset", "cifar10", "--preset", "smoke", "--teacher", "random:resnet8",
               "--source", test_npz, "--out", tmp_path / "o", "--name", "r", "--set", "epochs=1", "--set", "gen_iters=1",
               "--set", "student_iters=1")
    assert res.exit_code == 1 and "Traceback" not in res.output and len(res.output.strip().splitlines()) >= 1
    last = res.output.strip().splitlines()[-1]
    assert "cannot write" in last and "state.pt (No space left on device): free some disk space" in last
    assert "--resume" in last and not list((tmp_path / "o" / "r").glob(".*.tmp"))  # no temporary left behind
    (tmp_path / "res").mkdir()
    res = _cli("table", "--table", "runs", "--results", tmp_path / "res", "--out", tmp_path / "t.md")
    assert res.exit_code == 1 and "cannot write" in res.output and "No space left on device" in res.output
    monkeypatch.undo()

    def read_only(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr("tempfile.mkstemp", read_only)
    res = _cli("table", "--table", "runs", "--results", tmp_path / "res", "--out", tmp_path / "t.md")
    assert res.exit_code == 1 and "Permission denied): pass an --out you can write to" in res.output
    monkeypatch.setattr("tempfile.NamedTemporaryFile", read_only)
    res = _cli("plot", "--results", tmp_path / "res", "--out", tmp_path / "figs")
    assert res.exit_code == 1 and "pass an --out you can write to" in res.output and "Traceback" not in res.output
    monkeypatch.undo()

    def savefig_on_a_read_only_disk(*args, **kwargs):  # an OSError outside the atomic writes
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / "figs" / "fig1.png"))

    monkeypatch.setattr("dfrd_bench.report.plots.plot", savefig_on_a_read_only_disk)
    res = _cli("plot", "--results", tmp_path / "res", "--out", tmp_path / "figs")
    assert res.exit_code == 1 and "fig1.png (Read-only file system): pass an --out you can write to" in res.output


def test_bad_image_sources_name_the_file(tmp_path):
    root = tmp_path / "imgs"
    from PIL import Image

    for i, c in enumerate(("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")):
        (root / "test" / c).mkdir(parents=True)
        Image.fromarray(random_images(1, seed=i)[0]).save(root / "test" / c / "a.jpg")
    good = (root / "test" / "cat" / "a.jpg").read_bytes()
    (root / "test" / "cat" / "a.jpg").write_bytes(good[: len(good) // 3])  # a truncated JPEG
    with pytest.raises(DataError, match=r"cannot decode .*cat/a\.jpg"):
        load_split("cifar10", "test", str(root), use_cache=False)
    fake = tmp_path / "fake.zip"
    fake.write_text("not a zip")
    with pytest.raises(DataError, match="not a readable zip archive"):
        load_split("cifar10", "test", str(fake), use_cache=False)


def test_an_unwritable_out_fails_before_any_work(tmp_path, test_npz):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    res = _cli("eval", "--model", "random:resnet8", "--dataset", "cifar10", "--source", test_npz,
               "--out", blocker / "r.json")
    assert res.exit_code == 1 and "cannot write" in res.output
    with pytest.raises(RunError, match="cannot write to"):
        run(RunRequest(method="ferd", dataset="cifar10", preset="smoke", source=test_npz, out=str(blocker),
                       overrides={"teacher": "random:resnet8"}), log=lambda s: None)


def test_bugs_keep_their_traceback_and_debug_shows_every_one(tmp_path, test_npz, monkeypatch):
    args = ["run", "--method", "ferd", "--dataset", "cifar10", "--preset", "smoke", "--teacher", "random:resnet8",
            "--source", test_npz, "--out", tmp_path / "o"]
    ferd = get_method("ferd")
    monkeypatch.setattr(ferd, "student_loss", lambda self, ctx, batch: {}["kl"])
    res = _cli(*args)
    assert isinstance(res.exception, KeyError)  # a plugin bug is not turned into "Error: kl"
    monkeypatch.undo()
    res = _cli("--debug", *args, "--set", "eps=8")
    assert isinstance(res.exception, ConfigError)
    res = _cli(*args, "--set", "eps=8")  # --debug holds for its own command only
    assert res.exit_code == 1 and "write 8/255" in res.output
    monkeypatch.setenv("DFRD_DEBUG", "1")
    assert isinstance(_cli(*args, "--set", "eps=8").exception, ConfigError)


def test_a_failing_sweep_point_logs_its_traceback(tmp_path, test_npz):
    res = _cli("sweep", "--method", "ferd", "--dataset", "cifar10", "--preset", "smoke", "--teacher", "random:resnet8",
               "--source", test_npz, "--out", tmp_path / "sw", "--set", "student_lr=1e6")
    assert res.exit_code == 1
    logs = list((tmp_path / "sw").rglob("error.log"))
    assert len(logs) == 1 and "Traceback" in logs[0].read_text() and "DivergenceError" in logs[0].read_text()


# -- untrusted files -------------------------------------------------------------------------------
class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "pwned"))


def test_a_crafted_cifar_pickle_is_refused_without_running_code(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    marker = tmp_path / "marker"
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": _Payload(str(marker)), b"labels": [0]}))
    with pytest.raises(DataError, match="not a CIFAR batch file.*refusing"):
        load_split("cifar10", "test", str(tmp_path), use_cache=False)
    assert not marker.exists()
    # the real format still loads
    x = random_images(6)
    batch = {b"data": x.transpose(0, 3, 1, 2).reshape(6, -1), b"labels": list(range(6)), b"batch_label": b"t",
             b"filenames": [b"a"] * 6}
    (folder / "test_batch").write_bytes(pickle.dumps(batch))
    assert np.array_equal(load_split("cifar10", "test", str(tmp_path), use_cache=False).x, x)


def test_a_checkpoint_that_carries_code_is_refused(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": _Payload(str(marker))}, path)
    with pytest.raises(CheckpointError, match="corrupt, truncated or holds code"):
        read_checkpoint(path)
    assert not marker.exists()
