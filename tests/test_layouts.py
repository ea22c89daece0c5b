"""Checkpoints of other code bases (key layouts, normalisation), py: factories and TorchScript models.

Each layout is checked against a module written here in that code base's key names with the same
maths: its random state (BN statistics included) is saved, loaded through our loader, and both must
give the same logits. Nothing is downloaded.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn

from dfrd_bench.checkpoints import save_model
from dfrd_bench.cli import main
from dfrd_bench.errors import DfrdError
from dfrd_bench.models import MODELS, build_model
from dfrd_bench.models.layouts import LAYOUTS, layouts_for, layouts_markdown, parse_normalize
from dfrd_bench.teachers import load_teacher
from tests.conftest import random_images

DOCS = Path(__file__).resolve().parents[1] / "docs"


# ------------------------------------------------------------------------------------------------
# Reference modules: the other code bases' key names, our maths.
# ------------------------------------------------------------------------------------------------
def _conv(i: int, o: int, k: int = 3, s: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(i, o, k, s, k // 2, groups=groups, bias=False)


class PcBasicBlock(nn.Module):  # pytorch-cifar BasicBlock
    def __init__(self, i: int, o: int, s: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv(i, o, 3, s), nn.BatchNorm2d(o)
        self.conv2, self.bn2 = _conv(o, o), nn.BatchNorm2d(o)
        self.shortcut = nn.Sequential(_conv(i, o, 1, s), nn.BatchNorm2d(o)) if s != 1 or i != o else nn.Sequential()

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + self.shortcut(x))


class PcResNet(nn.Module):  # pytorch-cifar / RSLAD / ARD / FERD ResNet
    def __init__(self, blocks, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv(3, 64), nn.BatchNorm2d(64)
        i = 64
        for n, (w, s) in enumerate(zip((64, 128, 256, 512), (1, 2, 2, 2)), start=1):
            layers = []
            for stride in [s] + [1] * (blocks[n - 1] - 1):
                layers.append(PcBasicBlock(i, w, stride))
                i = w
            setattr(self, f"layer{n}", nn.Sequential(*layers))
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(F.avg_pool2d(out, 4).flatten(1))


class FerdPreActBlock(nn.Module):
    def __init__(self, i: int, o: int, s: int) -> None:
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(i), _conv(i, o, 3, s)
        self.bn2, self.conv2 = nn.BatchNorm2d(o), _conv(o, o)
        if s != 1 or i != o:
            self.shortcut = nn.Sequential(_conv(i, o, 1, s))

    def forward(self, x):
        out = F.relu(self.bn1(x))
        skip = self.shortcut(out) if hasattr(self, "shortcut") else x
        return self.conv2(F.relu(self.bn2(self.conv1(out)))) + skip


class FerdPreActResNet(nn.Module):  # FERD's models/preactresnet.py (final bn)
    def __init__(self, blocks, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = _conv(3, 64)
        i = 64
        for n, (w, s) in enumerate(zip((64, 128, 256, 512), (1, 2, 2, 2)), start=1):
            layers = []
            for stride in [s] + [1] * (blocks[n - 1] - 1):
                layers.append(FerdPreActBlock(i, w, stride))
                i = w
            setattr(self, f"layer{n}", nn.Sequential(*layers))
        self.bn = nn.BatchNorm2d(512)
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x):
        out = self.layer4(self.layer3(self.layer2(self.layer1(self.conv1(x)))))
        return self.linear(F.adaptive_avg_pool2d(F.relu(self.bn(out)), 1).flatten(1))


class TradesBlock(nn.Module):
    def __init__(self, i: int, o: int, s: int) -> None:
        super().__init__()
        self.bn1, self.relu1, self.conv1 = nn.BatchNorm2d(i), nn.ReLU(), _conv(i, o, 3, s)
        self.bn2, self.relu2, self.conv2 = nn.BatchNorm2d(o), nn.ReLU(), _conv(o, o)
        self.equal = i == o
        self.convShortcut = None if self.equal else _conv(i, o, 1, s)

    def forward(self, x):
        pre = self.relu1(self.bn1(x))
        out = self.conv2(self.relu2(self.bn2(self.conv1(pre))))
        return out + (x if self.equal else self.convShortcut(pre))


class TradesGroup(nn.Module):
    def __init__(self, n: int, i: int, o: int, s: int) -> None:
        super().__init__()
        self.layer = nn.Sequential(*[TradesBlock(i if k == 0 else o, o, s if k == 0 else 1) for k in range(n)])

    def forward(self, x):
        return self.layer(x)


class TradesWRN(nn.Module):  # TRADES models/wideresnet.py, with its unused sub_block1
    def __init__(self, depth: int, widen: int, num_classes: int = 10, sub_block1: bool = True) -> None:
        super().__init__()
        n, w = (depth - 4) // 6, [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = _conv(3, 16)
        self.block1 = TradesGroup(n, w[0], w[1], 1)
        if sub_block1:
            self.sub_block1 = TradesGroup(n, w[0], w[1], 1)
        self.block2, self.block3 = TradesGroup(n, w[1], w[2], 2), TradesGroup(n, w[2], w[3], 2)
        self.bn1, self.relu, self.fc = nn.BatchNorm2d(w[3]), nn.ReLU(), nn.Linear(w[3], num_classes)

    def forward(self, x):
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        return self.fc(F.avg_pool2d(self.relu(self.bn1(out)), 8).flatten(1))


class PcMobileBlock(nn.Module):
    def __init__(self, i: int, o: int, t: int, s: int) -> None:
        super().__init__()
        h = i * t
        self.stride = s
        self.conv1, self.bn1 = _conv(i, h, 1), nn.BatchNorm2d(h)
        self.conv2, self.bn2 = _conv(h, h, 3, s, groups=h), nn.BatchNorm2d(h)
        self.conv3, self.bn3 = _conv(h, o, 1), nn.BatchNorm2d(o)
        self.shortcut = nn.Sequential(_conv(i, o, 1), nn.BatchNorm2d(o)) if s == 1 and i != o else nn.Sequential()

    def forward(self, x):
        out = self.bn3(self.conv3(F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))))
        return out + self.shortcut(x) if self.stride == 1 else out


class PcMobileNetV2(nn.Module):  # pytorch-cifar / RSLAD / ARD; FERD names the classifier fc
    CFG = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]

    def __init__(self, num_classes: int = 10, head: str = "linear") -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv(3, 32), nn.BatchNorm2d(32)
        blocks, i = [], 32
        for t, c, n, s in self.CFG:
            for stride in [s] + [1] * (n - 1):
                blocks.append(PcMobileBlock(i, c, t, stride))
                i = c
        self.layers = nn.Sequential(*blocks)
        self.conv2, self.bn2 = _conv(320, 1280, 1), nn.BatchNorm2d(1280)
        self.head = head
        setattr(self, head, nn.Linear(1280, num_classes))

    def forward(self, x):
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        out = F.relu(self.bn2(self.conv2(out)))
        return getattr(self, self.head)(F.avg_pool2d(out, 4).flatten(1))


def _randomise_bn(net: nn.Module) -> nn.Module:
    """Non-trivial BN statistics and affine terms, so a mis-mapped BN buffer changes the logits."""
    g = torch.Generator().manual_seed(0)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
            m.running_var.copy_(0.5 + torch.rand(c, generator=g))
            m.weight.data.copy_(0.5 + torch.rand(c, generator=g))
            m.bias.data.copy_(0.1 * torch.randn(c, generator=g))
    return net.eval()


def _save(net: nn.Module, path: Path, wrap: str = "none") -> Path:
    state = net.state_dict()
    if wrap == "dataparallel":  # {'state_dict': {'module.conv1.weight': ...}} as nn.DataParallel saves it
        state = {"state_dict": {f"module.{k}": v for k, v in state.items()}}
    torch.save(state, path)
    return path


def _same_logits(ours: nn.Module, ref: nn.Module, size: int = 32) -> None:
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = ours(x), ref(x)
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-4), (a - b).abs().max()


# (arch, layout, reference builder, checkpoint wrapper): one numeric check per layout
CASES = [
    ("resnet18", "pytorch-cifar", lambda: PcResNet([2, 2, 2, 2]), "none"),
    ("preactresnet18", "ferd", lambda: FerdPreActResNet([2, 2, 2, 2]), "dataparallel"),
    ("wrn-16-2", "trades", lambda: TradesWRN(16, 2), "dataparallel"),
    ("mobilenetv2-pytorch-cifar", "pytorch-cifar", lambda: PcMobileNetV2(), "none"),
    ("mobilenetv2-pytorch-cifar", "ferd", lambda: PcMobileNetV2(head="fc"), "none"),
]


@pytest.mark.parametrize("arch,layout,make,wrap", CASES, ids=[f"{a}-{l}" for a, l, _, _ in CASES])
def test_each_layout_is_detected_and_gives_the_same_logits(tmp_path, arch, layout, make, wrap):
    torch.manual_seed(0)
    ref = _randomise_bn(make())
    path = _save(ref, tmp_path / "ref.pt", wrap)
    model = load_teacher(str(path), "cifar10", arch=arch)
    assert model.origin["layout"] == layout
    # these code bases feed [0, 1] images: no normalisation unless --normalize says so
    assert model.origin["normalize"] == {"spec": "none", "mean": [0.0] * 3, "std": [1.0] * 3,
                                         "source": f"layout {layout}'s default"}
    _same_logits(model, ref)


def test_every_declared_layout_is_checked_numerically():
    checked = {(layout, arch) for arch, layout, _, _ in CASES}
    for lay in LAYOUTS:
        assert any((lay.name, a) in checked for a in lay.archs), f"layout {lay.name} has no numeric test"
        for arch in lay.archs:
            assert arch in MODELS, f"layout {lay.name} names unknown arch {arch}"


@pytest.mark.parametrize("arch,make", [
    ("resnet34", lambda: PcResNet([3, 4, 6, 3])),
    ("preactresnet34", lambda: FerdPreActResNet([3, 4, 6, 3])),
    ("wrn-34-10", lambda: TradesWRN(34, 10)),
    ("wrn-28-10", lambda: TradesWRN(28, 10)),
])
def test_full_size_layouts_fit_key_for_key(arch, make):
    # names and shapes only (meta tensors): the maths is the one checked at small size above
    from dfrd_bench.models.layouts import fit_layouts

    with torch.device("meta"):
        ref, ours = make().state_dict(), MODELS.get(arch)(10, 32).state_dict()
    fits = [f for f in fit_layouts(arch, ref, {k: v.shape for k, v in ours.items()}) if f.exact]
    assert [f.layout.name for f in fits] == [lay.name for lay in layouts_for(arch)[1:]]


def test_the_issue_checkpoint_now_loads_and_normalize_overrides(tmp_path):
    ref = _randomise_bn(PcResNet([2, 2, 2, 2]))
    path = _save(ref, tmp_path / "pc.pt")
    model = load_teacher(str(path), "cifar10", arch="resnet18", normalize="0.5/0.25")
    assert model.origin["normalize"]["source"] == "--normalize"
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), ref((x - 0.5) / 0.25), rtol=1e-4, atol=1e-4)
    model = load_teacher(str(path), "cifar10", arch="resnet18", normalize="dataset")
    assert model.origin["normalize"]["mean"] == [0.4914, 0.4822, 0.4465]


def test_failures_name_the_layouts_tried_and_the_closest(tmp_path):
    ref = _randomise_bn(PcResNet([2, 2, 2, 2]))
    path = _save(ref, tmp_path / "pc.pt")
    with pytest.raises(DfrdError, match=r"does not fit --arch preactresnet18 in any layout it accepts "
                                        r"\(tried .*dfrd-bench.*ferd.*\); closest: layout \w+ with"):
        load_teacher(str(path), "cifar10", arch="preactresnet18")
    with pytest.raises(DfrdError, match=r"in layout pytorch-cifar; closest: layout pytorch-cifar with 2 of another "
                                        r"shape \(e.g. head.linear.weight: checkpoint \(10, 512\) vs model \(100, 512\)"):
        load_teacher(str(path), "cifar100", arch="resnet18", layout="pytorch-cifar")
    with pytest.raises(DfrdError, match=r"--layout trades: --arch resnet18 has no such layout \(trades is a layout of "
                                        r"wrn-.*\); its layouts: dfrd-bench, pytorch-cifar"):
        load_teacher(str(path), "cifar10", arch="resnet18", layout="trades")


def test_a_checkpoint_of_the_sibling_architecture_is_named(tmp_path):
    path = _save(_randomise_bn(PcMobileNetV2()), tmp_path / "mb.pt")
    with pytest.raises(DfrdError, match=r"but fits --arch mobilenetv2-pytorch-cifar in layout pytorch-cifar: "
                                        r"pass --arch mobilenetv2-pytorch-cifar"):
        load_teacher(str(path), "cifar10", arch="mobilenetv2")


def test_same_keys_in_two_layouts_that_normalise_differently_ask_which(tmp_path):
    ref = _randomise_bn(TradesWRN(16, 2, sub_block1=False))  # RobustBench/FERD: TRADES minus sub_block1
    path = _save(ref, tmp_path / "wrn.pt")
    with pytest.raises(DfrdError, match=r"fits --teacher-arch wrn-16-2 in layouts dfrd-bench \(normalisation: "
                                        r"dataset\) and trades \(normalisation: none\).*pass --teacher-layout trades"):
        load_teacher(str(path), "cifar10", arch="wrn-16-2", flags="teacher-")
    model = load_teacher(str(path), "cifar10", arch="wrn-16-2", layout="trades")
    assert model.origin["normalize"]["spec"] == "none"
    _same_logits(model, ref)
    assert load_teacher(str(path), "cifar10", arch="wrn-16-2", normalize="none").origin["normalize"]["spec"] == "none"


def test_our_checkpoints_keep_their_own_normalisation(tmp_path):
    model = build_model("resnet8", 10, 32, mean=(0.1, 0.2, 0.3), std=(0.3, 0.3, 0.3))
    save_model(model, tmp_path / "m.pt", "cifar10", 32)
    again = load_teacher(str(tmp_path / "m.pt"), "cifar10")
    norm = again.origin["normalize"]
    assert again.origin["layout"] == "dfrd-bench" and (norm["spec"], norm["source"]) == ("checkpoint", "the checkpoint")
    assert norm["mean"] == pytest.approx([0.1, 0.2, 0.3]) and norm["std"] == pytest.approx([0.3] * 3)
    with pytest.raises(DfrdError, match="whose keys need no layout: drop --layout"):
        load_teacher(str(tmp_path / "m.pt"), "cifar10", layout="pytorch-cifar")
    # a bare state dict in our names still gets the dataset's normalisation, as before layouts
    torch.save(model.net.state_dict(), tmp_path / "bare.pt")
    bare = load_teacher(str(tmp_path / "bare.pt"), "cifar10", arch="resnet8")
    assert bare.origin["normalize"]["spec"] == "dataset"


@pytest.mark.parametrize("text,spec,mean,std", [
    ("none", "none", (0, 0, 0), (1, 1, 1)),
    ("dataset", "dataset", (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)),
    ("0.5,0.4,0.3/0.2,0.2,0.25", "0.5,0.4,0.3/0.2,0.2,0.25", (0.5, 0.4, 0.3), (0.2, 0.2, 0.25)),
    ("0.5/0.5", "0.5,0.5,0.5/0.5,0.5,0.5", (0.5,) * 3, (0.5,) * 3),
])
def test_normalize_syntax(text, spec, mean, std):
    n = parse_normalize(text, (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616))
    assert (n.spec, n.mean, n.std) == (spec, tuple(map(float, mean)), tuple(map(float, std)))


@pytest.mark.parametrize("text,message", [
    ("imagenet", "write none, dataset, or MEAN/STD"),
    ("0.5,0.5/0.2", "give 1 or 3 numbers"),
    ("0.5/0", "every std must be above 0"),
    ("a/b", "write none, dataset, or MEAN/STD"),
])
def test_normalize_errors_are_one_line(text, message):
    with pytest.raises(DfrdError, match=re.escape(message)):
        parse_normalize(text, (0.5,) * 3, (0.5,) * 3)


def test_robustbench_models_refuse_normalize():
    with pytest.raises(DfrdError, match="robustbench models normalise inside: drop --normalize"):
        load_teacher("robustbench:Chen2024Data_WRN_34_10", "cifar10", normalize="none")


def test_run_settings_take_paths_and_normalisations_as_text():
    from dfrd_bench.config import resolve_config
    from dfrd_bench.method import METHODS, load_plugins

    load_plugins()
    cfg = resolve_config(METHODS.get("dfhl"), "tinyimagenet", "paper",
                         {"teacher": "runs/a/teacher.pt", "teacher_normalize": "0.5,0.5,0.5/0.25,0.25,0.25"})
    assert cfg.teacher == "runs/a/teacher.pt" and cfg.teacher_normalize == "0.5,0.5,0.5/0.25,0.25,0.25"


# ------------------------------------------------------------------------------------------------
# py: factories and TorchScript
# ------------------------------------------------------------------------------------------------
FACTORY = '''
import torch
from torch import nn


def build(num_classes=10):
    torch.manual_seed(3)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))


def build_staged():
    from dfrd_bench.models import build_model
    return build_model("resnet8", 10).net
'''


@pytest.fixture
def user_code(tmp_path):
    (tmp_path / "net.py").write_text(FACTORY)
    np.savez(tmp_path / "d.npz", x=random_images(20), y=np.arange(20) % 10)
    return tmp_path


def _eval(tmp_path, *args):
    res = CliRunner().invoke(main, ["eval", *args, "--dataset", "cifar10", "--source", str(tmp_path / "d.npz"),
                                    "--attacks", "clean,fgsm", "--batch-size", "10", "--device", "cpu",
                                    "--out", str(tmp_path / "r.json")])
    return res


def test_py_factory_with_a_checkpoint_evaluates_and_is_recorded(user_code):
    import importlib.util

    spec = importlib.util.spec_from_file_location("user_net", user_code / "net.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    net = _randomise_bn(mod.build())
    torch.save({"model": net.state_dict()}, user_code / "w.pt")
    res = _eval(user_code, "--model", str(user_code / "w.pt"), "--arch", f"py:{user_code / 'net.py'}:build")
    assert res.exit_code == 0, res.output
    model = json.loads((user_code / "r.json").read_text())["model"]
    assert model["arch"] == f"py:{user_code / 'net.py'}:build" and model["factory_sha256"]
    assert model["checkpoint_sha256"] and model["normalize"]["spec"] == "none"
    loaded = load_teacher(str(user_code / "w.pt"), "cifar10", arch=f"py:{user_code / 'net.py'}:build")
    _same_logits(loaded, net)


def test_py_module_factory_alone_and_its_errors(user_code, monkeypatch):
    monkeypatch.syspath_prepend(str(user_code))
    model = load_teacher("py:net:build_staged", "cifar10")
    assert model.feature_layer == "layer3"  # a StagedNet keeps its stages
    with pytest.raises(DfrdError, match="has no function 'nope'; it has: build, build_staged"):
        load_teacher("py:net:nope", "cifar10")
    with pytest.raises(DfrdError, match=r"write py:path/to/file.py:factory or py:package.module:factory"):
        load_teacher("py:net.py", "cifar10")
    with pytest.raises(DfrdError, match=r"returns \(1, 10\) for one image, not \(1, 100\) logits"):
        load_teacher(f"py:{user_code / 'net.py'}:build_staged", "cifar100")
    torch.save({"w": torch.zeros(1)}, user_code / "bad.pt")
    with pytest.raises(DfrdError, match=r"does not fit the model py:.*:build builds: .* missing keys"):
        load_teacher(str(user_code / "bad.pt"), "cifar10", arch=f"py:{user_code / 'net.py'}:build")


def test_torchscript_file_evaluates_but_cannot_teach_bn_methods(user_code):
    from dfrd_bench.method import METHODS, check_teacher, load_plugins
    from dfrd_bench.teachers import describe_loaded

    net = _randomise_bn(build_model("resnet8", 10).net)
    torch.jit.save(torch.jit.trace(net, torch.rand(1, 3, 32, 32)), user_code / "ts.pt")
    res = _eval(user_code, "--model", str(user_code / "ts.pt"))
    assert res.exit_code == 0, res.output
    result = json.loads((user_code / "r.json").read_text())
    assert result["model"]["arch"] == "torchscript" and result["model"]["format"] == "torchscript"
    teacher = load_teacher(str(user_code / "ts.pt"), "cifar10")
    _same_logits(teacher, net)
    assert describe_loaded(teacher) == ("model torchscript, TorchScript, inputs not normalised "
                                        "(default for external models)")
    load_plugins()
    with pytest.raises(DfrdError, match=r"^ferd needs the teacher's BatchNorm layers, and teacher torchscript is a "
                                        r"TorchScript model, whose layers cannot be hooked: load its weights"):
        check_teacher(METHODS.get("ferd")(), teacher, {})
    check_teacher(METHODS.get("dfhl")(), teacher, {})  # logits only: fine
    opaque = load_teacher(f"py:{user_code / 'net.py'}:build", "cifar10")
    with pytest.raises(DfrdError, match=r"ferd needs the teacher's intermediate layer \(layer l\), and teacher "
                                        r"py:.*:build exposes none"):
        check_teacher(METHODS.get("ferd")(), opaque, {})
    with pytest.raises(DfrdError, match="drop --arch"):
        load_teacher(str(user_code / "ts.pt"), "cifar10", arch="resnet8")


def test_run_checks_the_teacher_before_training_and_records_how_it_was_fed(user_code):
    net = build_model("resnet8", 10).net.eval()
    torch.jit.save(torch.jit.trace(net, torch.rand(1, 3, 32, 32)), user_code / "ts.pt")
    res = CliRunner().invoke(main, ["run", "--method", "fast", "--dataset", "cifar10", "--preset", "smoke",
                                    "--teacher", str(user_code / "ts.pt"), "--source", str(user_code / "d.npz"),
                                    "--out", str(user_code / "runs"), "--device", "cpu"])
    assert res.exit_code == 1
    assert "Error: fast needs the teacher's BatchNorm layers" in res.output and "Traceback" not in res.output
    # a logits-only method runs with it, and the run records how the teacher was fed
    res = CliRunner().invoke(main, ["run", "--method", "dfhl", "--dataset", "cifar10", "--preset", "smoke",
                                    "--teacher", str(user_code / "ts.pt"), "--teacher-normalize", "dataset",
                                    "--source", str(user_code / "d.npz"), "--out", str(user_code / "runs"),
                                    "--device", "cpu", "--set", "epochs=1", "--set", "attacks=clean"])
    assert res.exit_code == 0, res.output
    result = json.loads(next((user_code / "runs").glob("*dfhl*/result.json")).read_text())
    assert result["teacher"]["format"] == "torchscript" and result["teacher"]["normalize"]["spec"] == "dataset"
    assert result["config"]["teacher_normalize"] == "dataset"
    from dfrd_bench.report.collect import Run

    assert Run(result).setup.teacher == str(user_code / "ts.pt")  # the dataset's: the same setup as before


# ------------------------------------------------------------------------------------------------
# The page users read
# ------------------------------------------------------------------------------------------------
def test_models_md_table_is_generated_from_the_layouts():
    text = (DOCS / "models.md").read_text()
    block = text.split("<!-- layouts:start -->\n")[1].split("<!-- layouts:end -->")[0]
    assert block.strip() == layouts_markdown().strip(), "regenerate the table from dfrd_bench.models.layouts"


def test_models_md_commands_use_existing_options():
    for line in (DOCS / "models.md").read_text().splitlines():
        line = line.strip().rstrip("\\").strip()
        if not line.startswith("dfrd-bench "):
            continue
        cmd = main.commands[line.split()[1]]
        known = {o for p in cmd.params for o in getattr(p, "opts", [])}
        for opt in re.findall(r"(?<![\w-])--[a-z][a-z-]*", line):
            assert opt in known, f"`{line}` uses {opt}"


def test_a_resumed_evaluation_knows_the_normalisation(user_code):
    from dfrd_bench.attacks import AttackSettings
    from dfrd_bench.data import load_split
    from dfrd_bench.eval_progress import evaluation_identity

    path = _save(_randomise_bn(TradesWRN(16, 2, sub_block1=False)), user_code / "wrn.pt")
    data = load_split("cifar10", "test", str(user_code / "d.npz"))

    def identity(**kw):
        model = load_teacher(str(path), "cifar10", arch="wrn-16-2", **kw)
        return evaluation_identity(model, data, ["clean"], AttackSettings(), 10, {}, torch.device("cpu"))

    # same weights, fed differently: stored progress of one must not be reused by the other
    assert identity(layout="trades") != identity(layout="dfrd-bench")
    assert identity(layout="trades") == identity(normalize="none")
