import pytest
import torch

from dfrd_bench.checkpoints import CheckpointError, load_model, save_model
from dfrd_bench.models import MODEL_INFO, MODELS, build_model

# The paper-scale models are slow to build and run on 2 cores; check them at batch size 1.
ALL = MODELS.names()


@pytest.mark.parametrize("arch", ALL)
def test_shapes_split_and_batchnorm(arch):
    size = 32
    model = build_model(arch, 10, size, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)).eval()
    x = torch.rand(1, 3, size, size)
    with torch.no_grad():
        logits = model(x)
        feats = model.features(x)
        rest = model.forward_from(feats, x)
    assert logits.shape == (1, 10)
    assert feats.dim() == 4, "layer l must be a convolutional block"
    assert torch.allclose(rest, logits, atol=1e-4), "features + forward_from must equal forward"
    assert model.feature_layer in model.stage_names and "head" not in model.stage_names
    n_bn = len(model.bn_layers())
    assert (n_bn == 0) == arch.startswith(("resnet4b", "resnet2b"))


def test_normalisation_is_inside_the_model():
    model = build_model("resnet8", 10, 32, mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.2)).eval()
    x = torch.rand(2, 3, 32, 32)
    manual = model.net((x - torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)) / 0.2)
    assert torch.allclose(model(x), manual, atol=1e-5)


@pytest.mark.parametrize("arch", ["preactresnet18", "resnet18-w16", "mobilenetv2-x0.25"])
def test_64px_models_for_tinyimagenet(arch):
    model = build_model(arch, 200, 64).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 64, 64)).shape == (1, 200)


def test_every_intermediate_stage_can_be_the_split_point():
    model = build_model("resnet20", 10, 32).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        for layer in model.stage_names:
            assert torch.equal(model.forward_from(model.features(x, layer), x, layer), ref)
        # any module path is a layer, not only the stages
        assert torch.equal(model.forward_from(model.features(x, "layer2.1"), x, "layer2.1"), ref)
    with pytest.raises(ValueError, match="no layer 'layer9'.*top-level modules: stem, layer1"):
        model.features(x, "layer9")


def test_reference_models_refuse_other_sizes_and_classes():
    with pytest.raises(ValueError, match="10 classes"):
        build_model("resnet4b", 100, 32)
    with pytest.raises(ValueError, match="pixel images"):
        build_model("resnet4b", 10, 64)


def test_unknown_arch_suggests_names():
    with pytest.raises(KeyError, match="did you mean resnet18"):
        build_model("resnet-18", 10, 32)


def test_timm_models_are_adapted():
    model = build_model("timm:resnet10t", 10, 32).eval()
    with torch.no_grad():
        x = torch.rand(1, 3, 32, 32)
        assert torch.allclose(model.forward_from(model.features(x), x), model(x), atol=1e-4)
    assert model.stage_names == ("act1", "layer1", "layer2", "layer3", "layer4")  # timm's feature_info
    assert len(model.bn_layers()) > 0


def test_checkpoint_roundtrip_and_corrupt_file(tmp_path):
    model = build_model("resnet8", 10, 32, mean=(0.1, 0.2, 0.3), std=(0.3, 0.3, 0.3)).eval()
    save_model(model, tmp_path / "m.pt", "cifar10", 32, meta={"note": "x"})
    again = load_model(tmp_path / "m.pt")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(again(x), model(x))
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_model(tmp_path / "bad.pt", arch="resnet8", num_classes=10)
    torch.save({"state_dict": model.net.state_dict()}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="does not fit --arch resnet20"):
        load_model(tmp_path / "foreign.pt", arch="resnet20", num_classes=10)


def test_models_page_lists_the_stage_patterns():
    from pathlib import Path

    from dfrd_bench.models.stages import stages_markdown

    text = (Path(__file__).resolve().parents[1] / "docs" / "models.md").read_text()
    block = text.split("<!-- stages:start -->\n")[1].split("<!-- stages:end -->")[0]
    assert block.strip() == stages_markdown().strip(), "regenerate the table from dfrd_bench.models.stages"


def test_layer_hooks_refuse_layers_that_are_not_one_feature_map():
    """A layer that runs twice, one the forward changes in place, and a continuation across a skip."""
    from torch import nn

    from dfrd_bench.models import Classifier

    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.shared, self.b = nn.Conv2d(3, 3, 1), nn.Conv2d(3, 3, 1), nn.Conv2d(3, 3, 1)
            self.relu = nn.ReLU(inplace=True)
            self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 10))

        def forward(self, x):
            h = self.relu(self.a(x))           # changes a's output in place
            g = self.shared(self.shared(h))    # shared runs twice
            return self.head(self.b(g) + g)    # a skip across b

    model = Classifier(Odd(), 10).eval()
    with pytest.raises(ValueError, match="layer shared ran 2 times in one forward pass"):
        model.check_layers(32, ["shared"])
    with pytest.raises(ValueError, match="changes layer a's output in place"):
        model.forward_hooked(torch.rand(2, 3, 32, 32), ["a"])
    with pytest.raises(ValueError, match="cannot be continued from layer b .*a skip across it"):
        model.check_layers(32, ["b"], continue_from="b")
    model.check_layers(32, ["b"])  # b itself is a fine feature map
    assert model.stage_names == () and model.feature_layer is None  # opaque: no pattern fits


def test_forward_from_a_stage_or_the_head_norm_runs_directly_and_equals_the_hooked_forward():
    """Issue 31: a StagedNet continues from a stage or its head's BN without hooks (FERD's bottleneck
    calls it 10-50 times per generator step); the numbers are the hooked forward's, bit for bit."""
    import torch

    from dfrd_bench.models import build_model

    for arch, layers in (("wrn-16-1", ("block2", "block3", "bn1")), ("preactresnet18", ("layer4", "head.bn")),
                         ("resnet20", ("layer2", "layer3"))):
        model = build_model(arch, 10, 32).eval()
        x = torch.rand(3, 3, 32, 32)
        for layer in layers:
            logits, h = model.forward_features(x, layer)
            assert model.net.continue_from(layer, h) is not None, (arch, layer)
            assert torch.equal(model.forward_from(h, x, layer), model.forward_hooked(x[:0], replace=(layer, h))[0])
            assert torch.allclose(model.forward_from(h, x, layer), logits, atol=1e-5)
    wrn = build_model("wrn-16-1", 10, 32).eval()
    assert wrn.net.continue_from("block1.layer.0", torch.zeros(1)) is None  # not a stage: hooks are used
