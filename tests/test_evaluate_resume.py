"""Resumable evaluation: a killed evaluation continues at its first unfinished batch with the numbers of an
uninterrupted one, refuses the progress of another evaluation, and `run --resume` resumes the final evaluation."""
import json
import shutil

import pytest
import torch
from click.testing import CliRunner

from dfrd_bench.attacks import ATTACKS, AttackSettings
from dfrd_bench.checkpoints import save_model
from dfrd_bench.cli import main
from dfrd_bench.data import from_arrays
from dfrd_bench.eval_progress import EvalProgressError
from dfrd_bench.evaluator import evaluate
from dfrd_bench.models import build_model
from dfrd_bench.runner import EVAL_PROGRESS_FILE, RunRequest, run
from tests.conftest import TinyLinear, random_images

ATTACK_LIST = ["clean", "fgsm", "pgd20", "cw"]


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny models and batches: a second thread brings nothing and, on a busy machine, costs 10-30x
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


SETTINGS = dict(eps=1 / 255, pgd_steps=3, cw_steps=3)  # leaves part of the points robust, so every batch counts


def _model_and_data(n: int = 12, seed: int = 1):
    """A linear model and images labelled with its own predictions: every point is attacked."""
    model = TinyLinear(10, 32, seed=seed)
    x = random_images(n, seed=5)
    with torch.no_grad():
        y = model(torch.from_numpy(x).permute(0, 3, 1, 2).float().div(255)).argmax(1).numpy()
    return model, from_arrays(x, y, "cifar10")


def _numbers(result):
    return {name: {k: v for k, v in entry.items() if k != "seconds"} for name, entry in result["attacks"].items()}


class Recorder:
    """Wraps the evaluator's attacks: records (attack, generator state) per call and raises
    KeyboardInterrupt, as Ctrl-C would, on call number `kill_at` of attack `kill`."""

    def __init__(self, monkeypatch, kill=None, kill_at=None):
        self.calls, self.kill, self.kill_at = [], kill, kill_at
        for name in ATTACK_LIST + ["aa"]:
            monkeypatch.setitem(ATTACKS._items, name, self._wrap(name, ATTACKS.get(name)))

    def _wrap(self, name, fn):
        def attack(model, x, y, s, gen=None):
            self.calls.append((name, gen.get_state().clone()))
            if name == self.kill and sum(c[0] == name for c in self.calls) == self.kill_at:
                raise KeyboardInterrupt
            return fn(model, x, y, s, gen)
        return attack

    def of(self, name):
        return [state for n, state in self.calls if n == name]


@pytest.mark.parametrize("kill,kill_at,expected", [
    ("pgd20", 2, "clean, fgsm done; pgd20 at batch 2/3"),
    ("cw", 3, "clean, fgsm, pgd20 done; cw at batch 3/3"),
    ("cw", 1, "clean, fgsm, pgd20 done"),  # killed between two attacks
])
def test_an_interrupted_evaluation_resumes_to_the_same_numbers(tmp_path, monkeypatch, kill, kill_at, expected):
    model, data = _model_and_data()
    settings = AttackSettings(**SETTINGS)
    with monkeypatch.context() as mp:
        full_calls = Recorder(mp)
        full = evaluate(model, data, ATTACK_LIST, settings, batch_size=4)
    assert 0 < full["attacks"]["pgd20"]["avg"] < 100 and 0 < full["attacks"]["cw"]["avg"] < 100

    path = tmp_path / "progress.pt"
    with monkeypatch.context() as mp:
        Recorder(mp, kill=kill, kill_at=kill_at)
        with pytest.raises(KeyboardInterrupt):
            evaluate(model, data, ATTACK_LIST, settings, batch_size=4, progress_path=path)
    assert path.exists()
    lines = []
    with monkeypatch.context() as mp:
        resumed_calls = Recorder(mp)
        resumed = evaluate(model, data, ATTACK_LIST, settings, batch_size=4, progress_path=path, log=lines.append)

    assert lines[0] == f"resuming evaluation: {expected}"
    assert _numbers(resumed) == _numbers(full)
    # finished attacks are not run again; the killed one runs its unfinished batches only, each from the
    # generator state it had in the uninterrupted evaluation (the same random starts)
    done = ATTACK_LIST[:ATTACK_LIST.index(kill)]
    assert not any(resumed_calls.of(name) for name in done)
    again = resumed_calls.of(kill)
    assert len(again) == 3 - (kill_at - 1)
    assert all(torch.equal(a, b) for a, b in zip(again, full_calls.of(kill)[kill_at - 1:]))


def test_autoattack_resumes_at_its_unfinished_batch(tmp_path, monkeypatch):
    model, data = _model_and_data(n=8)
    settings = AttackSettings(eps=4 / 255, batch_size=4)  # AutoAttack's batches: 2 of 4 images
    full = evaluate(model, data, ["clean", "aa"], settings, batch_size=8)
    path = tmp_path / "progress.pt"
    with monkeypatch.context() as mp:
        Recorder(mp, kill="aa", kill_at=2)
        with pytest.raises(KeyboardInterrupt):
            evaluate(model, data, ["clean", "aa"], settings, batch_size=8, progress_path=path)
    lines = []
    with monkeypatch.context() as mp:
        calls = Recorder(mp)
        resumed = evaluate(model, data, ["clean", "aa"], settings, batch_size=8, progress_path=path, log=lines.append)
    assert lines[0] == "resuming evaluation: clean done; aa at batch 2/2"
    assert [n for n, _ in calls.calls] == ["aa"]
    assert _numbers(resumed) == _numbers(full)


def test_a_finished_progress_file_returns_the_stored_numbers_without_attacking(tmp_path, monkeypatch):
    model, data = _model_and_data()
    path = tmp_path / "progress.pt"
    first = evaluate(model, data, ATTACK_LIST, AttackSettings(**SETTINGS), batch_size=4, progress_path=path)
    assert _numbers(first) == _numbers(evaluate(model, data, ATTACK_LIST, AttackSettings(**SETTINGS), batch_size=4))
    with monkeypatch.context() as mp:
        calls = Recorder(mp)
        again = evaluate(model, data, ATTACK_LIST, AttackSettings(**SETTINGS), batch_size=4, progress_path=path)
    assert calls.calls == [] and again["attacks"] == first["attacks"]


@pytest.mark.parametrize("change,named", [
    (dict(model_seed=2), "model_weights_sha256"),
    (dict(settings=dict(SETTINGS, eps=2 / 255)), "settings.eps"),
    (dict(settings=dict(SETTINGS, pgd_steps=4)), "settings.pgd20.steps"),
    (dict(settings=dict(SETTINGS, seed=1)), "seed"),
    (dict(batch_size=3), "batch_size"),
    (dict(attacks=["clean", "pgd20", "cw"]), "attacks"),
    (dict(data_n=10), "data_sha256"),
])
def test_the_progress_of_another_evaluation_is_refused(tmp_path, monkeypatch, change, named):
    model, data = _model_and_data()
    path = tmp_path / "progress.pt"
    with monkeypatch.context() as mp:
        Recorder(mp, kill="pgd20", kill_at=2)
        with pytest.raises(KeyboardInterrupt):
            evaluate(model, data, ATTACK_LIST, AttackSettings(**SETTINGS), batch_size=4, progress_path=path)
    other_model, other_data = _model_and_data(n=change.get("data_n", 12), seed=change.get("model_seed", 1))
    with pytest.raises(EvalProgressError, match="holds the progress of another evaluation") as err:
        evaluate(other_model, other_data, change.get("attacks", ATTACK_LIST),
                 AttackSettings(**change.get("settings", SETTINGS)), batch_size=change.get("batch_size", 4),
                 progress_path=path)
    message = str(err.value)
    assert "\n" not in message and f"{named}:" in message and "delete it" in message
    assert path.exists()  # never removed behind the user's back


def test_an_unreadable_progress_file_is_refused(tmp_path):
    model, data = _model_and_data(n=4)
    path = tmp_path / "progress.pt"
    path.write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(EvalProgressError, match="cannot be read .*delete it"):
        evaluate(model, data, ["clean"], progress_path=path)
    torch.save({"format": "something-else"}, path)
    with pytest.raises(EvalProgressError, match="is not a dfrd-bench-eval-progress/1 file"):
        evaluate(model, data, ["clean"], progress_path=path)


def test_eval_resume_file_continues_and_is_removed_when_done(tmp_path, monkeypatch, test_npz):
    torch.manual_seed(0)
    save_model(build_model("resnet8", 10, 32), tmp_path / "model.pt", "cifar10", 32)
    args = ["eval", "--model", str(tmp_path / "model.pt"), "--dataset", "cifar10", "--source", test_npz, "--attacks",
            "clean,fgsm", "--batch-size", "8", "--resume-file", str(tmp_path / "p.pt")]
    with monkeypatch.context() as mp:
        Recorder(mp, kill="clean", kill_at=3)
        res = CliRunner().invoke(main, args + ["--out", str(tmp_path / "split.json")])
    assert res.exit_code == 130 and "run the same command to continue" in res.output
    refused = CliRunner().invoke(main, args + ["--eps", "4/255"])
    assert refused.exit_code == 1 and refused.output.count("\n") == 1 and "settings.eps" in refused.output
    with monkeypatch.context() as mp:
        calls = Recorder(mp)
        res = CliRunner().invoke(main, args + ["--out", str(tmp_path / "split.json")])
    assert res.exit_code == 0, res.output
    assert "resuming evaluation: clean at batch 3/5" in res.output and len(calls.of("clean")) == 3
    assert not (tmp_path / "p.pt").exists()
    res = CliRunner().invoke(main, args[:-2] + ["--out", str(tmp_path / "full.json")])
    assert res.exit_code == 0, res.output
    split, full = (json.loads((tmp_path / f"{n}.json").read_text())["attacks"] for n in ("split", "full"))
    assert _numbers({"attacks": split}) == _numbers({"attacks": full})


def test_a_run_killed_in_its_evaluation_resumes_it(tmp_path, monkeypatch, test_npz):
    """The run is killed in the 2nd PGD batch, then resumed; its numbers must equal an uninterrupted
    evaluation of the same student by the runner (a copy of the killed run's folder without its
    evaluation progress, resumed: nothing to train, everything evaluated from scratch)."""
    runs = tmp_path / "runs"

    def req(name):
        return RunRequest(method="ferd", dataset="cifar10", preset="smoke", source=test_npz, out=str(runs),
                          run_name=name, resume=True, overrides={
                              "teacher": "random:resnet8", "epochs": 1, "eval_limit": 40, "eval_batch_size": 1,
                              "attacks": "clean,fgsm,pgd20"})

    with monkeypatch.context() as mp:
        Recorder(mp, kill="pgd20", kill_at=2)
        with pytest.raises(KeyboardInterrupt):
            run(req("split"), log=lambda s: None)
    assert (runs / "split" / EVAL_PROGRESS_FILE).exists() and not (runs / "split" / "result.json").exists()
    shutil.copytree(runs / "split", runs / "full")
    (runs / "full" / EVAL_PROGRESS_FILE).unlink()

    lines = []
    with monkeypatch.context() as mp:
        calls = Recorder(mp)
        resumed = run(req("split"), log=lines.append)
    full = run(req("full"), log=lambda s: None)
    attacked = full["attacks"]["pgd20"]["attacked"]
    assert attacked >= 2, "the test needs at least 2 PGD batches: change the smoke student or eval_limit"
    assert f"resuming evaluation: clean, fgsm done; pgd20 at batch 2/{attacked}" in lines
    assert not calls.of("clean") and not calls.of("fgsm") and len(calls.of("pgd20")) == attacked - 1
    assert _numbers(resumed) == _numbers(full)
    assert not (runs / "split" / EVAL_PROGRESS_FILE).exists() and (runs / "split" / "result.json").exists()
    # the resume that only evaluated is a session of the run, kept in the state as soon as it starts
    state = torch.load(runs / "split" / "state.pt", weights_only=True)
    assert [(s["event"], s["epoch"]) for s in json.loads(state["sessions"])] == [("start", 0), ("resume", 1)]
    assert json.loads(state["sessions"]) == resumed["provenance"]["sessions"]
