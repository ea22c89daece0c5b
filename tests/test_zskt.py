"""ZSKT's pieces against hand-computed values on tiny tensors, plus one smoke run."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import methods.zskt  # noqa: F401  (registers 'zskt')
from dfrd_bench.config import ConfigError, resolve_config
from dfrd_bench.losses import attention_map, attention_transfer
from dfrd_bench.method import Batch
from dfrd_bench.models import build_model
from dfrd_bench.models.base import Classifier, StagedNet
from dfrd_bench.runner import RunRequest, run
from methods.zskt import ZSKT, ZSKTGenerator, cosine_lr, generator_loss
from tests.conftest import interrupt_then_resume, method_context, random_images, same_students


class TwoStage(StagedNet):
    """feat (any module) -> flatten -> linear: a Classifier with one block output to transfer."""

    stage_names = ("feat", "head")
    feature_layer = "feat"

    def __init__(self, feat: nn.Module, in_features: int, num_classes: int = 3, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.feat = feat
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(in_features, num_classes))


def channel_select(weights) -> nn.Conv2d:
    conv = nn.Conv2d(len(weights[0]), len(weights), 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor(weights, dtype=torch.float32).view(len(weights), -1, 1, 1))
    return conv


def _ctx(teacher, student, overrides=None, preset="smoke"):
    return method_context(ZSKT, teacher, student, preset=preset, **(overrides or {}))


def test_attention_map_and_transfer_hand_computed():
    # one sample, 2 channels, 1 x 2 map: channel-mean of squares [(1+9)/2, (4+0)/2] = [5, 2], L2-normalised
    a = torch.tensor([[[[1.0, 2.0]], [[3.0, 0.0]]]])
    assert torch.allclose(attention_map(a), torch.tensor([[5.0, 2.0]]) / math.sqrt(29))
    b = torch.tensor([[[[0.0, 1.0]], [[0.0, 1.0]]]])  # map [0, 1]
    expected = ((5 / math.sqrt(29) - 0) ** 2 + (2 / math.sqrt(29) - 1) ** 2) / 2  # mean over the 2 positions
    assert attention_transfer([a], [b]).item() == pytest.approx(expected)
    # stages pair by spatial size, the last of each size on both sides (a deeper student still pairs)
    s_acts = [torch.randn(2, 4, 4, 4), a.repeat(2, 1, 1, 1), torch.randn(2, 5, 1, 1)]
    t_acts = [b.repeat(2, 1, 1, 1), torch.randn(2, 3, 1, 1)]
    pair_12 = (attention_map(a.repeat(2, 1, 1, 1)) - attention_map(b.repeat(2, 1, 1, 1))).pow(2).mean()
    pair_11 = (attention_map(s_acts[2]) - attention_map(t_acts[1])).pow(2).mean()
    assert attention_transfer(s_acts, t_acts).item() == pytest.approx((pair_12 + pair_11).item())


def test_generator_is_zskts_and_makes_images():
    g = ZSKTGenerator(latent_dim=100, image_size=32)
    kinds = [type(m).__name__ for m in g.layers]
    assert kinds == ["Linear", "Unflatten", "BatchNorm2d", "Upsample", "Conv2d", "BatchNorm2d", "LeakyReLU",
                     "Upsample", "Conv2d", "BatchNorm2d", "LeakyReLU", "Conv2d", "BatchNorm2d", "Sigmoid"]
    assert g.init_size == 8 and g.layers[0].out_features == 128 * 8 * 8  # the authors' current code
    assert g.layers[6].negative_slope == 0.2 and g.layers[12].affine
    x = g(torch.randn(4, 100))
    assert x.shape == (4, 3, 32, 32) and x.min() >= 0 and x.max() <= 1
    assert ZSKTGenerator(100, image_size=64)(torch.randn(2, 100)).shape == (2, 3, 64, 64)


def test_generator_loss_is_minus_kl_teacher_student_and_vanishes_when_student_is_teacher():
    t = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    s = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    p, q = F.softmax(t, 1), F.softmax(s, 1)
    kl = (p * (p.log() - q.log())).sum(1).mean()
    assert generator_loss(t, s).item() == pytest.approx(-kl.item())
    assert generator_loss(t, t).item() == pytest.approx(0.0, abs=1e-7)

    # through a generator: the gradient reaches it only because the student differs from the teacher
    torch.manual_seed(0)
    teacher = Classifier(TwoStage(nn.Identity(), 12, seed=1), 3).eval().requires_grad_(False)
    student = Classifier(TwoStage(nn.Identity(), 12, seed=2), 3)
    gen = nn.Sequential(nn.Linear(5, 12), nn.Sigmoid(), nn.Unflatten(1, (3, 2, 2)))
    z = torch.randn(6, 5)

    def grad_norm(s_model):
        gen.zero_grad()
        x = gen(z)
        loss = generator_loss(teacher(x), s_model(x))
        loss.backward()
        return loss.item(), sum(p.grad.norm() ** 2 for p in gen.parameters()).sqrt().item()

    loss_s, g_s = grad_norm(student)
    loss_t, g_t = grad_norm(teacher)  # the reimplementation's mistake: student = teacher
    assert loss_s < 0 and g_s > 1e-4
    assert loss_t == pytest.approx(0.0, abs=1e-7) and g_t == pytest.approx(0.0, abs=1e-7)
    with torch.no_grad():
        student.net.head[1].weight.mul_(3)
    assert grad_norm(student)[0] != pytest.approx(loss_s)  # the loss depends on the student


def test_generate_trains_the_generator_against_the_student_only():
    teacher = build_model("resnet8", 10).eval().requires_grad_(False)
    student = build_model("resnet8", 10)
    ctx = _ctx(teacher, student)
    with pytest.raises(ConfigError, match="student is the teacher"):
        ZSKT().setup(_ctx(teacher, teacher))
    m = ZSKT()
    m.setup(ctx)
    g0 = {k: v.clone() for k, v in m.generator.state_dict().items()}
    s0 = {k: v.clone() for k, v in student.state_dict().items() if "running" not in k and "num_batches" not in k}
    t0 = {k: v.clone() for k, v in teacher.state_dict().items()}
    samples = m.generate(ctx)
    assert samples.x.shape == (8, 3, 32, 32) and 0 <= samples.x.min() and samples.x.max() <= 1
    assert samples.logs["kl_t_s"] > 0
    assert any(not torch.equal(g0[k], v) for k, v in m.generator.state_dict().items() if "weight" in k)
    assert all(torch.equal(s0[k], v) for k, v in student.state_dict().items() if k in s0)  # only BN running stats move
    assert all(torch.equal(t0[k], v) for k, v in teacher.state_dict().items())
    assert student.training and all(p.requires_grad for p in student.parameters()) and not teacher.training
    assert all(p.grad is None for p in student.parameters())
    # the generator's lr follows the authors' cosine over all pseudo-batches
    assert samples.logs["lr"] == pytest.approx(cosine_lr(1e-3, 0, ctx.cfg.epochs)) == pytest.approx(1e-3)
    assert cosine_lr(1e-3, 40000, 80000) == pytest.approx(5e-4)


def test_student_loss_is_kl_plus_beta_attention_transfer_by_hand():
    # teacher block output = the image; student block output = 2 x channel 0 (channel 1 and 2 ignored)
    teacher = Classifier(TwoStage(nn.Identity(), 12, seed=1), 3).eval().requires_grad_(False)
    student = Classifier(TwoStage(channel_select([[2.0, 0.0, 0.0]]), 4, seed=2), 3)
    ctx = _ctx(teacher, student, {"rslad": False})
    m = ZSKT()
    m._teacher_cache = None
    x = torch.rand(2, 3, 2, 2, generator=torch.Generator().manual_seed(3))
    loss, logs = m.student_loss(ctx, Batch(x, torch.full((2,), -1)))

    t_logits, s_logits = teacher(x), student(x)
    p = F.softmax(t_logits, 1)
    kl = (p * (p.log() - F.log_softmax(s_logits, 1))).sum(1).mean()
    a_t = x.pow(2).mean(1).flatten(1)
    a_t = a_t / a_t.norm(dim=1, keepdim=True)
    a_s = (2 * x[:, :1]).pow(2).mean(1).flatten(1)
    a_s = a_s / a_s.norm(dim=1, keepdim=True)
    at = (a_s - a_t).pow(2).mean()
    assert logs["at"].item() == pytest.approx(at.item(), rel=1e-5)
    assert loss.item() == pytest.approx((kl + 250 * at).item(), rel=1e-5)
    # at_beta = 0 leaves plain KD
    loss0, _ = m.student_loss(_ctx(teacher, student, {"rslad": False, "at_beta": 0.0}), Batch(x, torch.full((2,), -1)))
    assert loss0.item() == pytest.approx(kl.item(), rel=1e-5)


def test_rslad_switch_changes_the_student_loss():
    torch.manual_seed(0)
    teacher = build_model("resnet8", 10).eval().requires_grad_(False)
    student = build_model("resnet8", 10)
    x = torch.rand(4, 3, 32, 32)
    batch = Batch(x, torch.full((4,), -1))
    out = {}
    for rslad in (True, False):
        m = ZSKT()
        ctx = _ctx(teacher, student, {"rslad": rslad})
        m.setup(ctx)
        out[rslad] = m.student_loss(ctx, batch)
    (loss_r, logs_r), (loss_p, logs_p) = out[True], out[False]
    assert set(logs_r) == {"kl_clean", "kl_adv", "at"} and set(logs_p) == {"kd", "at"}
    assert logs_r["at"].item() == pytest.approx(logs_p["at"].item(), rel=1e-5)  # same AT term on clean x
    assert loss_r.item() != pytest.approx(loss_p.item())
    # RSLAD: 5/6 KL(T || S(x_adv)) + 1/6 KL(T || S(x)) + beta AT
    expected = 5 / 6 * logs_r["kl_adv"] + 1 / 6 * logs_r["kl_clean"] + 250 * logs_r["at"]
    assert loss_r.item() == pytest.approx(expected.item(), rel=1e-5)
    assert logs_r["kl_adv"] > logs_r["kl_clean"]  # the attack on the student raised the divergence


def test_presets_reproduce_the_papers_schedule():
    cfg = resolve_config(ZSKT, "cifar10", "paper")
    # 8,800 pseudo-batches x 10 student steps = FERD's 220 x 400 (the suite's equal budget)
    assert (cfg.epochs, cfg.gen_iters, cfg.student_iters, cfg.pool_sampling) == (8800, 1, 10, "latest")
    assert resolve_config(ZSKT, "cifar10", "paper", {"variant": "authors"}).epochs == 80000  # the authors' scripts
    assert cfg.batch_size == cfg.synthesis_batch_size == cfg.pool_max == 256
    assert cfg.checkpoint_every_epochs == 50
    assert (cfg.gen_lr, cfg.latent_dim, cfg.at_beta, cfg.rslad) == (1e-3, 100, 250.0, True)
    c100 = resolve_config(ZSKT, "cifar100", "paper")
    assert c100.batch_size == c100.synthesis_batch_size == c100.pool_max == 512
    for preset in ("quick", "smoke"):
        c = resolve_config(ZSKT, "cifar10", preset)
        assert c.batch_size == c.synthesis_batch_size == c.pool_max and c.pool_sampling == "latest"
    teacher = build_model("resnet8", 10).eval()
    with pytest.raises(ConfigError, match="batch_size"):
        ZSKT().setup(_ctx(teacher, build_model("resnet8", 10), {"batch_size": 4}))


def test_zskt_smoke_run_end_to_end(tmp_path, test_npz):
    req = RunRequest(method="zskt", dataset="cifar10", preset="smoke", seed=0, source=test_npz,
                     out=str(tmp_path / "runs"), overrides={"teacher": "random:resnet8"})
    result = run(req, log=lambda s: None)
    assert result["method"] == "zskt" and set(result["attacks"]) == {"clean", "pgd20"}
    hist = result["history"]
    assert len(hist) == 2 and all(h["pool"] == 8 for h in hist)  # the pool holds just the latest pseudo-batch
    assert all(h["gen/kl_t_s"] > 0 and "student/at" in h and "student/kl_adv" in h for h in hist)


def test_interrupted_zskt_run_resumes_to_the_same_student(tmp_path):
    test_npz = tmp_path / "test.npz"
    np.savez(test_npz, x=random_images(20, seed=3), y=np.arange(20) % 10)

    def req(name, resume=False):
        return RunRequest(method="zskt", dataset="cifar10", preset="smoke", seed=0, source=str(test_npz),
                          out=str(tmp_path / "runs"), run_name=name, resume=resume,
                          overrides={"teacher": "random:resnet8", "epochs": 3, "attacks": "clean", "rslad_steps": 1})

    full = run(req("full"), log=lambda s: None)
    resumed = interrupt_then_resume(ZSKT, req, lambda ctx: ctx.epoch == 2)
    assert same_students(tmp_path / "runs")
    assert [h["gen/kl_t_s"] for h in resumed["history"]] == [h["gen/kl_t_s"] for h in full["history"]]
