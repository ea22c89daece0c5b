"""RobustBench teachers: every architecture family loads with robustbench's own logits and exposes its
stages to FERD and ZSKT by hooks; names and missing files get one-line answers; `teacher card`.

No download: each test writes random weights where robustbench looks for a downloaded checkpoint
(<model_dir>/<dataset>/Linf/<name>.pt). Families whose smallest zoo entry is large are built at a small
depth or width by swapping that entry's constructor (robustbench's loader calls it), so the family's
own class and forward are what is tested, through robustbench's own loading of that entry.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from dfrd_bench.teachers import TeacherError, load_teacher
from tests.conftest import random_images


@pytest.fixture(scope="module")
def rb():
    from dfrd_bench._compat import import_robustbench

    return import_robustbench()


def _entry(name: str, dataset: str = "cifar10"):
    from dfrd_bench import robustbench_zoo as zoo

    return zoo.entry(name, dataset)


def write_random(folder: Path, name: str, dataset: str = "cifar10", wrap: str = "state_dict") -> Path:
    """A random-weight checkpoint of robustbench's network for `name` where robustbench looks for it
    (BatchNorm statistics randomised too, so that they matter)."""
    torch.manual_seed(0)
    net = _entry(name, dataset)["model"]()
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    path = folder / dataset / "Linf" / f"{name}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({wrap: net.state_dict()}, path)
    return path


def _small(family: str) -> Optional[Callable[[], torch.nn.Module]]:
    """A small network of the family (the zoo's smallest entries of these are 36-184M parameters)."""
    from robustbench.model_zoo.architectures.dm_wide_resnet import CIFAR10_MEAN, CIFAR10_STD, DMWideResNet, Swish
    from robustbench.model_zoo.architectures.resnet import BasicBlock, PreActBlock, PreActResNet, ResNet
    from robustbench.model_zoo.architectures.wide_resnet import WideResNet
    from robustbench.model_zoo.cifar10 import Rice2020OverfittingNet

    return {
        "WideResNet": lambda: WideResNet(depth=16, widen_factor=2),
        "Rice2020OverfittingNet": lambda: Rice2020OverfittingNet(depth=16, widen_factor=2),
        "DMWideResNet": lambda: DMWideResNet(num_classes=10, depth=16, width=2, activation_fn=Swish,
                                             mean=CIFAR10_MEAN, std=CIFAR10_STD),
        "ResNet": lambda: ResNet(BasicBlock, [1, 1, 1, 1]),
        "PreActResNet": lambda: PreActResNet(PreActBlock, [1, 1, 1, 1]),
    }.get(family)


# (family, zoo entry, checkpoint wrapper robustbench reads, stage layers, layer l's output per image)
FAMILIES = [
    ("WideResNet", "Chen2024Data_WRN_34_10", "state_dict", ("conv1", "block1", "block2", "block3"), (128, 8, 8)),
    ("Rice2020OverfittingNet", "Rice2020Overfitting", "state_dict", ("conv1", "block1", "block2", "block3"),
     (128, 8, 8)),
    ("DMWideResNet", "Rebuffi2021Fixing_28_10_cutmix_ddpm", "state_dict", ("init_conv", "layer.0", "layer.1", "layer.2"),
     (128, 8, 8)),
    # DMPreActResNet is built at depth 18 only (12.5M parameters): about 10 s here
    pytest.param("DMPreActResNet", "Rebuffi2021Fixing_R18_ddpm", "state_dict",
                 ("conv_2d", "layer_0", "layer_1", "layer_2", "layer_3"), (512, 4, 4), marks=pytest.mark.slow),
    ("ResNet", "Addepalli2022Efficient_RN18", "state_dict", ("layer1", "layer2", "layer3", "layer4"), (512, 4, 4)),
    # robustbench reads this entry's checkpoint['last']
    ("PreActResNet", "Andriushchenko2020Understanding", "last", ("layer1", "layer2", "layer3", "layer4"), (512, 4, 4)),
]


@pytest.mark.parametrize("family,name,wrap,stages,feature_shape", FAMILIES,
                         ids=[(f.values if hasattr(f, "values") else f)[0] for f in FAMILIES])
def test_family_loads_with_robustbenchs_logits_and_exposes_its_stages(rb, tmp_path, monkeypatch, family, name, wrap,
                                                                     stages, feature_shape):
    if _small(family) is not None:
        monkeypatch.setitem(_entry(name), "model", _small(family))
    write_random(tmp_path, name, wrap=wrap)
    teacher = load_teacher(f"robustbench:{name}", "cifar10", model_dir=str(tmp_path))
    reference = rb.utils.load_model(name, model_dir=str(tmp_path), dataset="cifar10", threat_model="Linf")
    assert type(reference).__name__ == family == teacher.origin["robustbench"]["family"]
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        ref = reference(x)
        logits = teacher(x)
        assert (logits - ref).abs().max() <= 1e-3 * ref.abs().max()  # the bound; hooks give it exactly
        assert teacher.stage_names == stages and teacher.feature_layer == stages[-1]
        out, feats = teacher.forward_features(x)
        assert tuple(feats.shape) == (3, *feature_shape) and torch.equal(out, logits)
        assert torch.equal(teacher.forward_from(feats, x), logits)  # f_{l+}: the rest of the network's own forward
        masked = teacher.forward_from(feats * 0, x)
        assert not torch.allclose(masked, logits)  # ... and it really runs on the replaced features
        stage_logits, acts = teacher.forward_stages(x)
        assert list(acts) == list(stages) and torch.equal(stage_logits, logits)
    teacher.check_layers(32, stages, stages[-1])
    if family == "Rice2020OverfittingNet":  # its forward normalises before WideResNet's: a split by stages skipped it
        with torch.no_grad():
            plain = type(reference).__mro__[1].forward(reference, x)
        assert not torch.allclose(plain, logits, rtol=1e-3)


def test_misspelt_and_other_dataset_names_suggest_entries(rb):
    with pytest.raises(TeacherError, match=r"^robustbench has no Linf cifar10 model 'Rebufi2021Fixing_R18_ddpm'; "
                                           r"did you mean Rebuffi2021Fixing_R18_ddpm, "):
        load_teacher("robustbench:Rebufi2021Fixing_R18_ddpm", "cifar10")
    with pytest.raises(TeacherError, match=r"did you mean Rebuffi2021Fixing_R18_ddpm"):  # case
        load_teacher("robustbench:rebuffi2021fixing_r18_ddpm", "cifar10")
    with pytest.raises(TeacherError, match=r"'Addepalli2021Towards_PARN18' \(it is a cifar100 model: pass --dataset "
                                           r"cifar100\)"):
        load_teacher("robustbench:Addepalli2021Towards_PARN18", "cifar10")
    with pytest.raises(TeacherError, match=r"robustbench has no Linf tinyimagenet models here"):
        load_teacher("robustbench:Rebuffi2021Fixing_R18_ddpm", "tinyimagenet")


def test_missing_checkpoint_offline_says_where_and_from_where(rb, tmp_path, monkeypatch):
    monkeypatch.setenv("DFRD_OFFLINE", "1")
    expected = tmp_path / "cifar100" / "Linf" / "Chen2024Data_WRN_34_10.pt"
    with pytest.raises(TeacherError, match=rf"put its checkpoint at {expected}; robustbench fetches it from Google "
                                           r"Drive file \S+ and records no checksum for it"):
        load_teacher("robustbench:Chen2024Data_WRN_34_10", "cifar100", model_dir=str(tmp_path))
    # an ensemble: one file per member, named as robustbench names them
    with pytest.raises(TeacherError, match=r"Chen2020Adversarial.pt_m0.pt \(and 2 more: Chen2020Adversarial.pt_m1.pt"):
        load_teacher("robustbench:Chen2020Adversarial", "cifar10", model_dir=str(tmp_path))


def test_a_file_robustbench_cannot_read_is_named(rb, tmp_path):
    path = tmp_path / "cifar10" / "Linf" / "Ding2020MMA.pt"
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": {"w": torch.zeros(1)}}, path)
    with pytest.raises(TeacherError, match=rf"robustbench could not load {path} \(RuntimeError: .*\): check that it "
                                           r"is the checkpoint of robustbench:Ding2020MMA for cifar10"):
        load_teacher("robustbench:Ding2020MMA", "cifar10", model_dir=str(tmp_path))


def test_import_robustbench_needs_no_shim():
    """robustbench imports `autoattack`; the installed alias makes it pyautoattack's very modules."""
    import autoattack
    import autoattack.state
    import pyautoattack
    import pyautoattack.state

    assert autoattack is pyautoattack and autoattack.state is pyautoattack.state


def test_zoo_entries_are_classified_without_weights(rb):
    from dfrd_bench import robustbench_zoo as zoo

    r18 = zoo.inspect_entry("Rebuffi2021Fixing_R18_ddpm", "cifar10")
    assert (r18.family, round(r18.params_m, 1), r18.can) == ("DMPreActResNet", 12.5, ("batchnorm", "layer", "stages"))
    assert {"ferd", "zskt", "cmi", "dfhl"} <= set(zoo.supported_methods(r18.can, "cifar10"))
    ensemble = zoo.inspect_entry("Chen2020Adversarial", "cifar10")
    assert ensemble.can == ("batchnorm",) and "ensemble of 3" in ensemble.note
    assert "ferd" not in zoo.supported_methods(ensemble.can, "cifar10")
    assert "dfhl" in zoo.supported_methods(ensemble.can, "cifar10")
    cuda_only = zoo.inspect_entry("Bai2023Improving_trades", "cifar100")
    assert cuda_only.family == "?" and "cannot be inspected" in cuda_only.note


@pytest.mark.slow
def test_list_teachers_robustbench_shows_every_entry(rb):
    from dfrd_bench.cli import main

    res = CliRunner().invoke(main, ["list", "teachers", "--robustbench", "--dataset", "cifar100"])
    assert res.exit_code == 0, res.output
    rows = {line.split()[0]: line for line in res.output.splitlines()[2:] if line and not line.startswith(" ")}
    assert len(rows) == 38
    assert "DMPreActResNet" in rows["Rebuffi2021Fixing_R18_ddpm"] and "ferd" in rows["Rebuffi2021Fixing_R18_ddpm"]
    assert "ferd" not in rows["Bai2023Improving_edm"]


def test_teacher_card_evaluates_and_records_the_checkpoint(rb, tmp_path, monkeypatch):
    from dfrd_bench.cli import main

    name = "Rebuffi2021Fixing_28_10_cutmix_ddpm"
    monkeypatch.setitem(_entry(name), "model", _small("DMWideResNet"))
    path = write_random(tmp_path / "models", name)
    np.savez(tmp_path / "d.npz", x=random_images(8), y=np.arange(8) % 10)
    res = CliRunner().invoke(main, ["teacher", "card", f"robustbench:{name}", "--model-dir", str(tmp_path / "models"),
                                    "--source", str(tmp_path / "d.npz"), "--limit", "6", "--aa-limit", "2",
                                    "--device", "cpu", "--out", str(tmp_path / "evals"), "--cards", str(tmp_path / "cards")])
    assert res.exit_code == 0, res.output
    card = json.loads((tmp_path / "cards" / f"{name}-cifar10.json").read_text())
    from dfrd_bench.checkpoints import sha256_file

    assert card["sha256"] == sha256_file(path) and card["arch"] == "DMWideResNet"
    ev = card["evaluation"]
    assert {k: v["n"] for k, v in ev["attacks"].items()} == {"clean": 6, "pgd20": 6, "aa": 2}
    assert ev["data_source_per_attack"]["aa"]["subset"]["n"] == 2  # the stated AutoAttack subset
    assert card["command"].startswith(f"dfrd-bench teacher card robustbench:{name} --dataset cifar10 --limit 6")
    result = json.loads((tmp_path / "evals" / f"robustbench-{name}-cifar10.json").read_text())
    assert result["kind"] == "teacher" and result["model"]["checkpoint_sha256"] == card["sha256"]
    res = CliRunner().invoke(main, ["teacher", "card", "cpu-resnet20-cifar10"])
    assert res.exit_code != 0 and "teacher card takes robustbench:<name>" in res.output


@pytest.mark.slow
@pytest.mark.parametrize("method", ["ferd", "zskt"])
def test_ferd_and_zskt_run_on_a_robustbench_teacher(rb, tmp_path, method):
    from dfrd_bench.runner import RunRequest, run

    name = "Rebuffi2021Fixing_R18_ddpm"
    write_random(tmp_path / "models", name)
    np.savez(tmp_path / "d.npz", x=random_images(10), y=np.arange(10))
    req = RunRequest(method=method, dataset="cifar10", preset="smoke", seed=0, source=str(tmp_path / "d.npz"),
                     out=str(tmp_path / "runs"), model_dir=str(tmp_path / "models"),
                     overrides={"teacher": f"robustbench:{name}", "epochs": 1, "attacks": "clean"})
    result = run(req, log=lambda s: None)
    assert result["teacher"]["robustbench"]["family"] == "DMPreActResNet" and result["teacher"]["checkpoint_sha256"]
    assert np.isfinite(result["attacks"]["clean"]["avg"]) and len(result["history"]) == 1
