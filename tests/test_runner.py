"""The method API, the runner, resume, plugins and `run` end to end (smoke scale)."""
import json
import textwrap

import pytest
from click.testing import CliRunner

from dfrd_bench.checkpoints import load_model
from dfrd_bench.cli import main
from dfrd_bench.config import ConfigError, parse_overrides
from dfrd_bench.method import METHODS, Method, Samples, get_method, load_plugins, register_method
from dfrd_bench.registry import RegistryError
from dfrd_bench.runner import RunError, RunRequest, run
from dfrd_bench.store import read_result
from tests.conftest import same_students


def _req(tmp_path, test_npz, **kw):
    base = dict(method="ferd", dataset="cifar10", preset="smoke", seed=0, source=test_npz, out=str(tmp_path / "runs"),
                overrides={"teacher": "random:resnet8"})
    base.update(kw)
    return RunRequest(**base)


def test_ferd_smoke_run_writes_result_student_and_samples(tmp_path, test_npz):
    result = run(_req(tmp_path, test_npz), log=lambda s: None)
    run_dir = tmp_path / "runs" / result["run_dir"].split("/")[-1]
    saved = read_result(run_dir / "result.json")
    assert saved["method"] == "ferd" and saved["preset"] == "smoke" and saved["kind"] == "run"
    assert set(saved["attacks"]) == {"clean", "pgd20"} and saved["attacks"]["clean"]["n"] == 20
    assert len(saved["history"]) == 2 and len(saved["history"][0]["gen/p"]) == 10
    assert saved["history"][1]["pool"] == 16
    assert saved["config"]["gamma"] == 0.5 and saved["teacher"]["spec"] == "random:resnet8"
    assert "utae_target_hist" in saved["history"][0]
    assert (run_dir / "samples.png").stat().st_size > 0
    assert load_model(run_dir / "student.pt").arch == "resnet8"
    assert saved["cpu_seconds"]["train"] > 0 and saved["cpu_seconds"]["eval"] >= 0  # a 20-image smoke evaluation can round to 0.0


def test_epoch_log_is_one_compact_line_and_tensorboard_gets_every_record(tmp_path, test_npz):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    lines = []
    result = run(_req(tmp_path, test_npz, tensorboard=str(tmp_path / "tb")), log=lines.append)
    epoch_lines = [line for line in lines if line.startswith("epoch ")]
    assert len(epoch_lines) == 2 and epoch_lines[1].startswith("epoch 2/2 · gen ")
    assert " · student " in epoch_lines[1] and " · lr " in epoch_lines[1] and " · left 0:00:00" in epoch_lines[1]
    assert not any(line.startswith("{") for line in lines)                 # the full record is in the history
    assert "gen/total" in result["history"][1]
    board = tmp_path / "tb" / result["run_dir"].split("/")[-1]
    events = EventAccumulator(str(board), size_guidance={"images": 0, "scalars": 0}).Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"student/loss", "gen/total", "lr", "seconds", "pool"} <= scalars
    assert [e.value for e in events.Scalars("student/loss")] == pytest.approx(
        [h["student/loss"] for h in result["history"]], rel=1e-6)
    assert events.Tags()["images"] == ["samples"]
    # the sampling weights p_c: one chart, a line per class (add_scalars writes one run folder per class)
    per_class = sorted(p.name for p in board.iterdir() if p.is_dir() and p.name.startswith("gen_p_"))
    assert len(per_class) == 10 and "gen_p_airplane" in per_class


def test_tensorboard_missing_fails_before_training(tmp_path, test_npz, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(Exception, match=r"pip install 'dfrd-bench\[tensorboard\]'"):
        run(_req(tmp_path, test_npz, tensorboard=str(tmp_path / "tb")), log=lambda s: None)
    assert not (tmp_path / "runs").exists()                                # nothing was started


@pytest.mark.slow
def test_interrupted_run_resumes_to_the_same_student(tmp_path, test_npz, monkeypatch):
    kw = dict(overrides={"teacher": "random:resnet8", "epochs": 3})
    full = run(_req(tmp_path, test_npz, run_name="full", **kw), log=lambda s: None)

    # interrupt in the middle of epoch 2's distillation stage (as Ctrl-C or kill -9 would)
    ferd_cls = get_method("ferd")
    original = ferd_cls.student_loss
    calls = {"n": 0}

    def flaky(self, ctx, batch):
        calls["n"] += 1
        if ctx.epoch == 1 and calls["n"] > 3:
            raise KeyboardInterrupt
        return original(self, ctx, batch)

    monkeypatch.setattr(ferd_cls, "student_loss", flaky)
    with pytest.raises(KeyboardInterrupt):
        run(_req(tmp_path, test_npz, run_name="split", **kw), log=lambda s: None)
    monkeypatch.setattr(ferd_cls, "student_loss", original)
    with pytest.raises(RunError, match="--resume"):
        run(_req(tmp_path, test_npz, run_name="split", **kw), log=lambda s: None)
    resumed = run(_req(tmp_path, test_npz, run_name="split", resume=True, **kw), log=lambda s: None)

    assert full["config"]["student_augment"]  # FERD's default: augmented student batches, resumed exactly
    assert same_students(tmp_path / "runs")
    assert resumed["attacks"]["pgd20"]["per_class"] == full["attacks"]["pgd20"]["per_class"]
    assert [h["student/loss"] for h in resumed["history"]] == [h["student/loss"] for h in full["history"]]


def test_each_session_of_a_resumed_run_records_its_provenance(tmp_path, test_npz, monkeypatch):
    import torch

    from dfrd_bench import provenance
    from tests.conftest import interrupt_then_resume

    commits = iter([{"commit": "a" * 40, "dirty": False}, {"commit": "b" * 40, "dirty": True}])
    current = {}

    def git_commit():  # one commit per session: the start's, then the resume's (and the final block's)
        if "git" not in current:
            current["git"] = next(commits)
        return current["git"]

    monkeypatch.setattr(provenance, "git_commit", git_commit)

    def req(name, resume=False):
        if resume:
            current.clear()  # a new process on a new checkout
        return _req(tmp_path, test_npz, run_name=name, resume=resume)

    resumed = interrupt_then_resume(get_method("ferd"), req, lambda ctx: ctx.epoch == 1)
    sessions = resumed["provenance"]["sessions"]
    assert [(s["event"], s["epoch"], s["git"]["commit"][0]) for s in sessions] == [("start", 0, "a"), ("resume", 1, "b")]
    assert all(s["packages"]["torch"] and s["created"] and s["device"] == "cpu" for s in sessions)
    assert resumed["provenance"]["git"]["commit"] == "b" * 40               # the old block: the finishing process
    state = torch.load(tmp_path / "runs" / "split" / "state.pt", weights_only=True)
    assert json.loads(state["sessions"]) == sessions                        # kept in the checkpoint state
    assert read_result(tmp_path / "runs" / "split" / "result.json")["provenance"]["sessions"] == sessions


def test_a_third_party_plugin_registers_through_entry_points(tmp_path, test_npz, monkeypatch):
    pkg = tmp_path / "site"
    (pkg / "toyplugin").mkdir(parents=True)
    (pkg / "toyplugin" / "__init__.py").write_text(textwrap.dedent('''
        import torch
        from dfrd_bench.losses import kl_div
        from dfrd_bench.method import Method, Samples

        class Toy(Method):
            """Noise images, plain KD."""
            summary = "noise images and plain KD"
            defaults = {"noise_scale": 1.0}

            def generate(self, ctx):
                n = ctx.cfg.synthesis_batch_size
                return Samples((0.5 + 0.1 * ctx.cfg.noise_scale * ctx.randn(n, 3, 32, 32)).clamp(0, 1))

            def student_loss(self, ctx, batch):
                with torch.no_grad():
                    t = ctx.teacher(batch.x)
                return kl_div(t, ctx.student(batch.x)), {}
    '''))
    dist = pkg / "toyplugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toyplugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[dfrd_bench.methods]\ntoy = toyplugin:Toy\n")
    monkeypatch.syspath_prepend(str(pkg))
    assert "toy" in load_plugins(refresh=True)
    result = run(_req(tmp_path, test_npz, method="toy"), log=lambda s: None)
    assert result["method"] == "toy" and result["config"]["noise_scale"] == 1.0
    assert CliRunner().invoke(main, ["list", "methods"]).output.count("toy") >= 1


def test_registry_refuses_duplicates_and_suggests_names():
    with pytest.raises(RegistryError, match="duplicate method name 'ferd'"):
        @register_method("ferd")
        class Again(Method):
            pass
    with pytest.raises(RegistryError, match="did you mean ferd"):
        get_method("fred")


def test_bad_settings_fail_early(tmp_path, test_npz):
    with pytest.raises(ConfigError, match="did you mean gamma"):
        run(_req(tmp_path, test_npz, overrides={"teacher": "random:resnet8", "gama": 0.1}), log=lambda s: None)
    with pytest.raises(ConfigError, match="true or false"):
        run(_req(tmp_path, test_npz, overrides={"teacher": "random:resnet8", "reweight": 3}), log=lambda s: None)
    with pytest.raises(ConfigError, match="warmup_epochs"):
        run(_req(tmp_path, test_npz, overrides={"teacher": "random:resnet8", "variant": "released", "warmup_epochs": 5}), log=lambda s: None)
    assert parse_overrides(["lambda_1=5/6", "reweight=false", "layer=layer2"]) == {
        "lambda_1": "5/6", "reweight": False, "layer": "layer2"}


def test_nan_student_loss_stops_the_run(tmp_path, test_npz, monkeypatch):
    ferd_cls = get_method("ferd")
    monkeypatch.setattr(ferd_cls, "student_loss",
                        lambda self, ctx, batch: (ctx.student(batch.x).sum() * float("nan"), {}))
    with pytest.raises(FloatingPointError, match="diverged in epoch 1"):
        run(_req(tmp_path, test_npz), log=lambda s: None)


@pytest.mark.parametrize("sets", [["reweight=false"], ["fae=false"], ["utae=false"], ["reweight_strategy=tanh"],
                                  ["variant=released", "warmup_epochs=1"], ["layer=layer2"], ["gamma=0.9"],
                                  ["variant=paper-literal"], ["variant=rslad-weights"], ["student_augment=false"],
                                  ["utae_on=teacher"], ["gen_adv_loss=dkd"]])
def test_switches_run(tmp_path, test_npz, sets):
    res = CliRunner().invoke(main, ["run", "--method", "ferd", "--dataset", "cifar10", "--preset", "smoke",
                                    "--teacher", "random:resnet8", "--source", test_npz, "--out", str(tmp_path),
                                    *sum((["--set", s] for s in sets), [])])
    assert res.exit_code == 0, res.output
    result = json.loads(next(tmp_path.rglob("result.json")).read_text())
    for s in sets:
        k, v = s.split("=")
        assert str(result["config"][k]).lower() == v.lower()
