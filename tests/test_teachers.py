import json

import numpy as np
import pytest
import torch

from dfrd_bench.teachers import TeacherError, bundled_teachers, load_teacher


@pytest.mark.slow
def test_robustbench_checkpoint_in_model_dir_is_used_without_download(tmp_path, monkeypatch):
    monkeypatch.setenv("DFRD_OFFLINE", "1")
    from dfrd_bench._compat import import_robustbench

    import_robustbench()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    name = "Chen2024Data_WRN_34_10"
    reference = model_dicts[BenchmarkDataset.cifar_10][ThreatModel.Linf][name]["model"]().eval()
    target = tmp_path / "cifar10" / "Linf" / f"{name}.pt"
    target.parent.mkdir(parents=True)
    torch.save({"state_dict": reference.state_dict()}, target)
    teacher = load_teacher(f"robustbench:{name}", "cifar10", model_dir=str(tmp_path))
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(teacher(x), reference(x), atol=1e-5)
        feats = teacher.features(x)
        assert feats.shape == (2, 640, 8, 8)  # layer l: the last conv block of WRN-34-10
        assert torch.allclose(teacher.forward_from(feats, x), reference(x), atol=1e-4)
    assert len(teacher.bn_layers()) == 31


def test_bundled_teachers_match_their_cards():
    cards = bundled_teachers()
    for name, card in cards.items():
        for key in ("arch", "dataset", "file", "sha256", "command", "evaluation"):
            assert key in card, f"{name} card lacks {key}"
        model = load_teacher(name, card["dataset"])  # verifies the sha256
        assert model.arch == card["arch"]


@pytest.mark.slow
def test_bundled_cpu_teacher_is_robust_on_real_images(assets):
    cards = bundled_teachers()
    if not cards:
        pytest.skip("no bundled teacher yet")
    from dfrd_bench.attacks import AttackSettings
    from dfrd_bench.data import load_split
    from dfrd_bench.evaluator import evaluate

    name = next(n for n, c in cards.items() if c["dataset"] == "cifar10")
    data = load_split("cifar10", "test", source=str(assets / "cifar10-jpeg.zip")).subset(200, seed=0)
    out = evaluate(load_teacher(name, "cifar10"), data, ["clean", "pgd20"], AttackSettings(pgd_steps=10))["attacks"]
    # loose, honest bounds: far above chance clean, non-trivially robust, and PGD below clean
    assert out["clean"]["avg"] > 45 and 20 < out["pgd20"]["avg"] < out["clean"]["avg"]


def test_bundle_writes_a_card_from_the_evaluation(tmp_path):
    import numpy as np
    from click.testing import CliRunner

    from dfrd_bench.checkpoints import save_model
    from dfrd_bench.cli import main
    from dfrd_bench.models import build_model
    from tests.conftest import random_images

    save_model(build_model("resnet8", 10, 32), tmp_path / "t.pt", "cifar10", 32, meta={"recipe": {"seed": 3}})
    np.savez(tmp_path / "d.npz", x=random_images(10), y=np.arange(10))
    runner = CliRunner()
    res = runner.invoke(main, ["eval", "--model", str(tmp_path / "t.pt"), "--dataset", "cifar10", "--source",
                               str(tmp_path / "d.npz"), "--attacks", "clean", "--out", str(tmp_path / "e.json")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, ["teacher", "bundle", "--checkpoint", str(tmp_path / "t.pt"), "--name", "tiny",
                               "--eval", str(tmp_path / "e.json"), "--command", "dfrd-bench teacher train ...",
                               "--dest", str(tmp_path / "teachers")])
    assert res.exit_code == 0, res.output
    card = json.loads((tmp_path / "teachers" / "tiny.json").read_text())
    evaluated = json.loads((tmp_path / "e.json").read_text())
    assert card["evaluation"]["attacks"]["clean"]["avg"] == evaluated["attacks"]["clean"]["avg"]
    assert card["evaluation"]["results_files"] == [str(tmp_path / "e.json")]
    assert card["seed"] == 3 and (tmp_path / "teachers" / "tiny.pt").exists()
    # a result of another checkpoint is refused
    save_model(build_model("resnet8", 10, 32), tmp_path / "other.pt", "cifar10", 32)
    res = runner.invoke(main, ["teacher", "bundle", "--checkpoint", str(tmp_path / "other.pt"), "--name", "x",
                               "--eval", str(tmp_path / "e.json"), "--command", "c", "--dest", str(tmp_path / "teachers")])
    assert res.exit_code != 0 and "sha256 differs" in res.output
