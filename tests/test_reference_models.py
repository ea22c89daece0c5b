"""The evaluator against externally trained models with published numbers (ResNet-4B/2B,
alpha-beta-CROWN benchmark; adversarially trained at eps 2/255 on exact CIFAR-10 pixels)."""
import pytest

from dfrd_bench.attacks import AttackSettings
from dfrd_bench.data import load_split
from dfrd_bench.evaluator import evaluate
from dfrd_bench.teachers import load_teacher

PUBLISHED = {"resnet4b": (77.20, 61.41), "resnet2b": (69.25, 54.82)}


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["resnet4b"])
def test_reproduces_published_clean_and_pgd_at_2_255(assets, arch):
    model = load_teacher(str(assets / "reference-models" / f"{arch}.pth"), "cifar10", arch=arch)
    data = load_split("cifar10", "test", source=str(assets / "cifar10-test-first1017.npz"))
    out = evaluate(model, data, ["clean", "pgd20"], AttackSettings(eps=2 / 255, seed=0), batch_size=512)["attacks"]
    clean, pgd = PUBLISHED[arch]
    assert abs(out["clean"]["avg"] - clean) <= 3.0, out["clean"]["avg"]
    assert abs(out["pgd20"]["avg"] - pgd) <= 3.0, out["pgd20"]["avg"]
    assert out["pgd20"]["avg"] < out["clean"]["avg"]


@pytest.mark.slow
def test_autoattack_is_never_above_pgd_beyond_noise(assets):
    model = load_teacher(str(assets / "reference-models" / "resnet2b.pth"), "cifar10", arch="resnet2b")
    data = load_split("cifar10", "test", source=str(assets / "cifar10-test-first1017.npz")).subset(100, seed=0)
    out = evaluate(model, data, ["clean", "pgd20", "aa"], AttackSettings(eps=2 / 255, seed=0), batch_size=100)["attacks"]
    # On the same images AA can only be at most PGD plus a couple of images of noise.
    assert out["aa"]["avg"] <= out["pgd20"]["avg"] + 2.0
    assert out["aa"]["max_linf"] <= 2 / 255 + 1e-6
    assert out["aa"]["avg"] < out["clean"]["avg"]
