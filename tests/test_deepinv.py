"""DeepInversion's pieces against hand-computed values on tiny tensors, plus one smoke run."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import methods.deepinv  # noqa: F401  (registers 'deepinv')
from dfrd_bench.config import resolve_config
from dfrd_bench.hooks import bn_statistics_loss
from dfrd_bench.losses import kl_div
from dfrd_bench.method import Batch
from dfrd_bench.models import build_model
from dfrd_bench.models.base import Classifier, StagedNet
from dfrd_bench.runner import RunRequest, run
from methods.deepinv import (DeepInversion, clip_to_box_, competition_loss, fast_datafree_js, image_from_latent,
                             inversion_loss, jensen_shannon, jitter_flip, standardize, total_variation_l2)
from tests.conftest import method_context



class ScaleThenBN(StagedNet):
    """feat = (1x1 conv multiplying every channel by 2) -> BatchNorm with set running statistics."""

    stage_names = ("feat", "head")
    feature_layer = "feat"

    def __init__(self) -> None:
        super().__init__()
        conv = nn.Conv2d(3, 3, 1, bias=False)
        with torch.no_grad():
            conv.weight.copy_(2 * torch.eye(3).view(3, 3, 1, 1))
        bn = nn.BatchNorm2d(3)
        bn.running_mean.copy_(torch.tensor([0.5, 1.0, 0.0]))
        bn.running_var.copy_(torch.tensor([1.0, 0.25, 2.0]))
        self.feat = nn.Sequential(conv, bn)
        torch.manual_seed(0)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(3 * 2 * 2, 3))


def _ctx(teacher, student, overrides=None, image_size=32, num_classes=10):
    return method_context(DeepInversion, teacher, student, image_size=image_size, num_classes=num_classes,
                          **(overrides or {}))


def _hooks(model):
    return sum(len(m._forward_hooks) for m in model.modules())


def test_bn_statistics_loss_on_the_bn_input_by_hand():
    teacher = Classifier(ScaleThenBN(), 3).eval().requires_grad_(False)
    x = torch.arange(24, dtype=torch.float32).view(2, 3, 2, 2) / 24  # values 0 .. 23/24
    h = 2 * x  # what the BN layer receives (its INPUT), not x and not the BN output
    mean = h.mean(dim=(0, 2, 3))
    var = h.var(dim=(0, 2, 3), unbiased=False)
    # by hand for channel 0: h = 2/24 * {0,1,2,3, 12,13,14,15} -> mean 2/24 * 7.5 = 0.625
    assert mean[0].item() == pytest.approx(0.625)
    expected = (math.sqrt(((mean - torch.tensor([0.5, 1.0, 0.0])) ** 2).sum().item())
                + math.sqrt(((var - torch.tensor([1.0, 0.25, 2.0])) ** 2).sum().item()))
    y = torch.tensor([0, 2])
    weights = {"r_feature": 10.0, "tv_l2": 0.5, "l2_scale": 0.25, "compete_scale": 0.0}
    with bn_statistics_loss(teacher) as bn:
        logits = teacher(x)
        total, terms = inversion_loss(logits, y, bn, x, weights)
    assert _hooks(teacher) == 0
    assert terms["bn"].item() == pytest.approx(expected, rel=1e-5)
    assert terms["ce"].item() == pytest.approx(F.cross_entropy(logits, y).item())
    assert terms["l2"].item() == pytest.approx(x.norm().item())
    hand = terms["ce"] + 10 * expected + 0.5 * total_variation_l2(x) + 0.25 * x.norm()
    assert total.item() == pytest.approx(hand.item(), rel=1e-5)
    assert "compete" not in terms


def test_total_variation_l2_by_hand():
    x = torch.tensor([[[[0.0, 1.0], [3.0, 5.0]]]])
    # horizontal (0-1, 3-5), vertical (0-3, 1-5), diagonals (3-1) and (0-5)
    expected = math.sqrt(1 + 4) + math.sqrt(9 + 16) + 2 + 5
    assert total_variation_l2(x).item() == pytest.approx(expected)
    assert total_variation_l2(torch.full((2, 3, 4, 4), 0.7)).item() == 0.0


def test_competition_term_is_one_minus_js_by_hand():
    t = torch.tensor([[math.log(3.0), 0.0]])  # P = [3/4, 1/4]
    s = torch.tensor([[0.0, math.log(3.0)]])  # Q = [1/4, 3/4]; M = [1/2, 1/2]
    js = 0.5 * (0.75 * math.log(1.5) + 0.25 * math.log(0.5)) * 2
    assert jensen_shannon(t, s).item() == pytest.approx(js)
    assert competition_loss(t, s, temperature=1.0).item() == pytest.approx(1 - js)
    assert competition_loss(t, t, temperature=1.0).item() == pytest.approx(1.0)  # full agreement costs most
    assert competition_loss(3 * t, 3 * s, temperature=3.0).item() == pytest.approx(1 - js, rel=1e-5)


def test_fast_datafree_js_by_hand_and_its_sign():
    s = torch.tensor([[math.log(3.0), 0.0]])  # P = [3/4, 1/4]
    t = torch.tensor([[0.0, math.log(3.0)]])  # Q = [1/4, 3/4]; M = [1/2, 1/2]
    # KL(M || P) = KL(M || Q) = 1/2 log(1/2 / 3/4) + 1/2 log(1/2 / 1/4)
    kl_m = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    assert fast_datafree_js(s, t, temperature=1.0).item() == pytest.approx(kl_m, rel=1e-5)
    assert fast_datafree_js(s, s, temperature=1.0).item() == pytest.approx(0.0, abs=1e-7)
    # probabilities are clamped to [0.01, 0.99] as in Fast-Datafree: a certain disagreement stays finite
    assert math.isfinite(fast_datafree_js(torch.tensor([[50.0, -50.0]]), torch.tensor([[-50.0, 50.0]]), 1.0).item())


def test_clip_pixels_stay_in_the_image_box():
    mean, std = (0.5, 0.25, 0.0), (0.5, 0.25, 1.0)
    v = torch.tensor([-9.0, 9.0, 0.3]).view(1, 3, 1, 1).repeat(1, 1, 1, 1)
    clip_to_box_(v, mean, std)
    x = image_from_latent(v, "clip", mean, std)
    assert x.min() >= 0 and x.max() <= 1
    assert x.flatten().tolist() == pytest.approx([0.0, 1.0, 0.3])  # clamped, clamped, unchanged


def test_jitter_flip_and_unconstrained_pixels():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    assert torch.equal(jitter_flip(x, 1, -2, False), torch.roll(x, (1, -2), (2, 3)))
    assert torch.equal(jitter_flip(x, 0, 0, True), x.flip(3))
    v = torch.tensor([-50.0, -2.0, 0.0, 2.0, 50.0], requires_grad=True)
    img = image_from_latent(v)
    assert img.min() >= 0 and img.max() <= 1 and img[2].item() == 0.5
    img.sum().backward()
    assert (v.grad[1:4] > 0.1).all()  # gradients flow where images are not saturated
    z = standardize(torch.full((1, 3, 1, 1), 0.5), (0.5, 0.25, 0.0), (0.5, 0.25, 1.0))
    assert z.flatten().tolist() == [0.0, 1.0, 0.5]


def test_generate_removes_its_hooks_lowers_the_loss_and_is_reproducible():
    teacher = build_model("resnet8", 10).eval().requires_grad_(False)
    student = build_model("resnet8", 10)
    ctx = _ctx(teacher, student, {"gen_iters": 12, "synthesis_batch_size": 6})
    m = DeepInversion()
    m.setup(ctx)
    samples = m.generate(ctx)  # the default: Fast-Datafree's, with the student's BN hooks and competition
    assert _hooks(teacher) == 0 and _hooks(student) == 0
    assert samples.x.shape == (6, 3, 32, 32) and samples.x.min() >= 0 and samples.x.max() <= 1
    assert samples.y.shape == (6,) and set(samples.logs) >= {"ce", "bn", "bn_student", "compete", "total", "teacher_acc"}
    assert not teacher.training and student.training and all(p.requires_grad for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())

    # the pixel optimisation lowers the inversion loss: compare 0 and 12 steps from the same start
    def final_loss(iters):
        c = _ctx(teacher, student, {"variant": "nvlabs", "gen_iters": iters, "synthesis_batch_size": 6,
                                    "select": "last", "flip": False, "jitter": 0})
        s = m.generate(c)
        with bn_statistics_loss(teacher) as bn:
            return inversion_loss(teacher(s.x), s.y, bn, standardize(s.x, m.mean, m.std),
                                  {k: float(c.cfg[k]) for k in ("r_feature", "tv_l2", "l2_scale", "compete_scale")})[0]

    assert final_loss(12).item() < final_loss(0).item()
    # the same run stream gives the same images (exact resume relies on it)
    again = m.generate(_ctx(teacher, student, {"gen_iters": 12, "synthesis_batch_size": 6}))
    assert torch.equal(again.x, samples.x) and torch.equal(again.y, samples.y)
    # balanced labels: the reference's cyclic 0..C-1
    assert m._labels(_ctx(teacher, student, {"balanced_labels": True}), 12).tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]


def test_hooks_are_removed_even_when_the_synthesis_fails():
    teacher = build_model("resnet8", 10).eval().requires_grad_(False)
    student = build_model("resnet8", 10)
    ctx = _ctx(teacher, student, {"compete_scale": 10.0})
    m = DeepInversion()
    m.setup(ctx)

    def broken(x):
        raise RuntimeError("student failed")

    student.forward = broken  # fails inside the synthesis loop, after the teacher's hooks fired
    with pytest.raises(RuntimeError, match="student failed"):
        m.generate(ctx)
    del student.forward
    assert _hooks(teacher) == 0
    assert student.training and all(p.requires_grad for p in student.parameters())


def test_competition_makes_the_synthesis_depend_on_the_student():
    teacher = build_model("resnet8", 10).eval().requires_grad_(False)
    s1, s2 = build_model("resnet8", 10), build_model("resnet8", 10)
    over = {"gen_iters": 3, "synthesis_batch_size": 4}
    m = DeepInversion()
    m.setup(_ctx(teacher, s1, over))
    plain = [m.generate(_ctx(teacher, s, {**over, "variant": "nvlabs"})).x for s in (s1, s2)]
    assert torch.equal(plain[0], plain[1])  # NVlabs' DeepInversion ignores the student
    fd = [m.generate(_ctx(teacher, s, over)) for s in (s1, s2)]  # Fast-Datafree's competes with it
    assert not torch.equal(fd[0].x, fd[1].x) and fd[0].logs["compete"] <= 0
    adi = [m.generate(_ctx(teacher, s, {**over, "variant": "adi"})) for s in (s1, s2)]
    assert not torch.equal(adi[0].x, adi[1].x) and "compete" in adi[0].logs
    assert 0 <= adi[0].logs["compete"] <= 1


def test_rslad_switch_changes_the_student_loss():
    torch.manual_seed(0)
    teacher = build_model("resnet8", 10).eval().requires_grad_(False)
    student = build_model("resnet8", 10)
    x = torch.rand(4, 3, 32, 32)
    batch = Batch(x, torch.full((4,), -1))
    loss_r, logs_r = DeepInversion().student_loss(_ctx(teacher, student, {"rslad": True}), batch)
    loss_p, logs_p = DeepInversion().student_loss(_ctx(teacher, student, {"rslad": False}), batch)
    assert set(logs_r) == {"kl_clean", "kl_adv"} and set(logs_p) == {"kd"}
    with torch.no_grad():
        kd = kl_div(teacher(x), student(x))
    assert loss_p.item() == pytest.approx(kd.item(), rel=1e-5)
    assert loss_r.item() == pytest.approx((5 / 6 * logs_r["kl_adv"] + 1 / 6 * logs_r["kl_clean"]).item(), rel=1e-5)
    assert loss_r.item() != pytest.approx(loss_p.item())


def test_presets():
    # the default: Fast-Datafree's DeepInversion with its own script's 1,000 pixel steps per epoch (issue 29)
    paper = resolve_config(DeepInversion, "cifar10", "paper")
    assert (paper.gen_iters, paper.di_lr, paper.di_beta1, paper.di_beta2, paper.r_feature, paper.jitter) == (
        1000, 0.1, 0.5, 0.99, 10.0, 4)
    assert (paper.compete_scale, paper.compete_loss, paper.tv_l2, paper.l2_scale, paper.student_bn_weight) == (
        1.0, "fast-datafree", 0.0, 0.0, 0.001)
    assert paper.pixel_space == "clip" and paper.select == "last" and paper.student_augment
    assert paper.rslad and paper.synthesis_batch_size == 256
    nvlabs = resolve_config(DeepInversion, "cifar10", "paper", {"variant": "nvlabs"})
    assert (nvlabs.gen_iters, nvlabs.compete_scale, nvlabs.tv_l2, nvlabs.jitter, nvlabs.pixel_space) == (
        2000, 0.0, 2.5e-5, 2, "sigmoid")
    adi = resolve_config(DeepInversion, "cifar10", "paper", {"variant": "adi"})
    assert (adi.compete_scale, adi.compete_loss) == (10.0, "adi")
    assert resolve_config(DeepInversion, "tinyimagenet", "paper").jitter == 8
    assert resolve_config(DeepInversion, "tinyimagenet", "paper", {"variant": "nvlabs"}).jitter == 4
    assert resolve_config(DeepInversion, "cifar10", "quick").gen_iters == 30


def test_deepinv_smoke_run_end_to_end(tmp_path, test_npz):
    req = RunRequest(method="deepinv", dataset="cifar10", preset="smoke", seed=0, source=test_npz,
                     out=str(tmp_path / "runs"), overrides={"teacher": "random:resnet8"})
    result = run(req, log=lambda s: None)
    assert result["method"] == "deepinv" and set(result["attacks"]) == {"clean", "pgd20"}
    hist = result["history"]
    assert len(hist) == 2 and hist[1]["pool"] == 16
    assert all("gen/bn" in h and "student/kl_adv" in h for h in hist)
