"""Fast's components on tiny models, the RSLAD switch, and smoke runs with exact resume."""
import copy

import pytest
import torch
from torch import nn

import methods.fast  # noqa: F401  (registers "fast")
from dfrd_bench.config import resolve_config
from dfrd_bench.generators import Generator
from dfrd_bench.losses import kl_div
from dfrd_bench.method import Batch, MethodContext, get_method
from dfrd_bench.runner import RunRequest, run
from methods.fast import Fast, MomentumBNLoss, fomaml_accumulate_, reptile_gradient_
from tests.conftest import interrupt_then_resume, method_context, same_students


def tiny_ctx(epoch: int = 5, **overrides) -> MethodContext:
    return method_context(Fast, epoch=epoch, pool_max=None, **{"latent_dim": 16, "gen_width": 8, **overrides})


def flat(module):
    return torch.cat([p.detach().flatten() for p in module.parameters()])


# -- the meta update -----------------------------------------------------------------------------------
def test_fomaml_accumulates_the_clone_gradients_and_reptile_points_away_from_the_clone():
    meta = nn.Linear(3, 2)
    clone = copy.deepcopy(meta)
    g1, g2 = [torch.randn_like(p) for p in clone.parameters()], [torch.randn_like(p) for p in clone.parameters()]
    for grads in (g1, g2):
        for q, g in zip(clone.parameters(), grads):
            q.grad = g.clone()
        fomaml_accumulate_(meta, clone)
    for p, a, b in zip(meta.parameters(), g1, g2):
        assert torch.allclose(p.grad, a + b)
    with torch.no_grad():
        for q in clone.parameters():
            q.add_(0.5)
    reptile_gradient_(meta, clone, scale=2.0)
    for p in meta.parameters():
        assert torch.allclose(p.grad, torch.full_like(p, -1.0))  # 2 * (theta_meta - theta_clone)


def test_maml_with_one_inner_step_lands_the_meta_generator_on_the_clone():
    # same gradient, same Adam (lr_g * 1 = lr_g, betas): the meta step reproduces the clone's step
    ctx = tiny_ctx(gen_iters=1, meta="maml")
    method = Fast()
    method.setup(ctx)
    before = flat(method.generator)
    clone, *_ = method.adapt(ctx)
    assert torch.equal(flat(method.generator), before)  # the clone is fine-tuned, not the meta generator
    method.meta_step(ctx, clone)
    assert torch.allclose(flat(method.generator), flat(clone), atol=1e-7)
    assert all(p.grad is None for p in method.generator.parameters())


@pytest.mark.parametrize("meta", ["maml", "reptile"])
def test_meta_update_moves_the_meta_generator_towards_the_clone(meta):
    ctx = tiny_ctx(gen_iters=3, meta=meta)
    method = Fast()
    method.setup(ctx)
    before = flat(method.generator)
    clone, *_ = method.adapt(ctx)
    method.meta_step(ctx, clone)
    step, target = flat(method.generator) - before, flat(clone) - before
    cos = torch.dot(step, target) / (step.norm() * target.norm())
    assert cos > 0.5, f"{meta}: the meta step is not along the clone's displacement (cos {cos:.3f})"
    if meta == "reptile":  # Adam's first step on g = 67 (meta - clone): every moved weight moves towards the clone
        moved = target.abs() > 1e-6
        assert torch.equal(torch.sign(step[moved]), torch.sign(target[moved]))


# -- momentum BN statistics --------------------------------------------------------------------------------
def bn_model():
    bn = nn.BatchNorm2d(2)
    bn.running_mean.copy_(torch.tensor([0.5, -1.0]))
    bn.running_var.copy_(torch.tensor([2.0, 0.5]))
    return nn.Sequential(bn).eval()


def stats(x):
    return x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False)


def expected_loss(mean, var):
    return (torch.norm(mean - torch.tensor([0.5, -1.0])) + torch.norm(var - torch.tensor([2.0, 0.5]))).item()


def test_momentum_bn_blends_past_statistics_once_per_round():
    g = torch.Generator().manual_seed(0)
    x1, x2, x3 = (torch.randn(4, 2, 3, 3, generator=g) * s + s for s in (1.0, 2.0, 3.0))
    model = bn_model()
    bn = MomentumBNLoss(model, 0.9, "round")
    loss, _ = bn(lambda: model(x1), commit=True)  # round 1: nothing to blend with yet
    m1, v1 = stats(x1)
    assert loss.item() == pytest.approx(expected_loss(m1, v1), rel=1e-5)
    saved = bn.state_dict()
    for x, commit in ((x2, False), (x3, True)):  # round 2: both steps blend with round 1's statistics
        loss, _ = bn(lambda: model(x), commit=commit)
        m, v = stats(x)
        assert loss.item() == pytest.approx(expected_loss(0.9 * m1 + 0.1 * m, 0.9 * v1 + 0.1 * v), rel=1e-5)
    m3, v3 = stats(x3)
    past_mean, past_var = bn.past()[0]
    assert torch.allclose(past_mean, 0.9 * m1 + 0.1 * m3) and torch.allclose(past_var, 0.9 * v1 + 0.1 * v3)

    per_step = MomentumBNLoss(model, 0.9, "step")  # the core's per-step blend, from the same past
    per_step.load_state_dict(saved)
    per_step(lambda: model(x2), commit=False)
    loss, _ = per_step(lambda: model(x3), commit=False)
    m2, v2 = stats(x2)
    assert loss.item() == pytest.approx(expected_loss(0.9 * (0.9 * m1 + 0.1 * m2) + 0.1 * m3,
                                                      0.9 * (0.9 * v1 + 0.1 * v2) + 0.1 * v3), rel=1e-5)
    plain = MomentumBNLoss(model, 0.0)
    plain(lambda: model(x1))
    loss, _ = plain(lambda: model(x3))
    assert loss.item() == pytest.approx(expected_loss(m3, v3), rel=1e-5) and plain.past() == [None]


# -- schedule: warm-up and the late re-initialisation ---------------------------------------------------------
def test_adversarial_term_only_after_warmup_and_reinit_once_late(monkeypatch):
    ctx = tiny_ctx(gen_iters=2, warmup_epochs=1, reinit_after_warmup=2, epochs=5)
    method = Fast()
    method.setup(ctx)
    reinits, student_calls = [], []
    monkeypatch.setattr(method.generator, "reinit_first_layers", lambda **kw: reinits.append(ctx.epoch))
    ctx.student.register_forward_hook(lambda *a: student_calls.append(ctx.epoch))
    for epoch in range(4):
        ctx.epoch = epoch
        logs = method.generate(ctx).logs
        assert ("adv" in logs) == (epoch >= 1)
        assert logs["reinit"] == float(epoch == 2)
    assert reinits == [2]  # the (warmup + reinit_after_warmup)-th generation stage
    assert student_calls == [1, 1, 2, 2, 3, 3]
    assert method.reinit_epoch(resolve_config(Fast, "cifar10", "paper")) == 139  # authors: ep == 120 + warmup


def test_reinit_first_layers_resets_only_the_first_linear_and_bn():
    torch.manual_seed(0)
    g = Generator(16, 8, 32)
    with torch.no_grad():
        for p in g.parameters():
            p.add_(1.0)
    later = [p.clone() for p in g.conv_blocks[2:].parameters()]
    g.reinit_first_layers(generator=torch.Generator().manual_seed(1))
    first_w = torch.cat([g.l1[0].weight.flatten(), g.conv_blocks[0].weight])
    # Fast-Datafree's reset_l0: weights ~ N(0, 0.02) (the BN scale too, not 1), biases 0
    assert abs(first_w.std().item() - 0.02) < 0.002 and abs(first_w.mean().item()) < 0.002
    assert torch.equal(g.l1[0].bias, torch.zeros_like(g.l1[0].bias)) and torch.equal(g.conv_blocks[0].bias, torch.zeros(16))
    assert all(torch.equal(a, b) for a, b in zip(later, g.conv_blocks[2:].parameters()))
    g2 = Generator(16, 8, 32)
    g2.reinit_first_layers(generator=torch.Generator().manual_seed(1))
    assert torch.equal(g2.l1[0].weight, g.l1[0].weight)  # seeded by the run's generator


# -- the student stage and settings -------------------------------------------------------------------
def test_rslad_switch():
    torch.manual_seed(0)
    x = torch.rand(4, 3, 32, 32)
    ctx = tiny_ctx(rslad=False)
    loss, logs = Fast().student_loss(ctx, Batch(x, torch.full((4,), -1)))
    with torch.no_grad():
        expected = kl_div(ctx.teacher(x), ctx.student(x), 20.0)
    assert set(logs) == {"kd"} and loss.item() == pytest.approx(expected.item(), rel=1e-5)
    _, logs = Fast().student_loss(tiny_ctx(), Batch(x, torch.full((4,), -1)))
    assert set(logs) == {"kl_clean", "kl_adv"}


def test_paper_preset_and_variants():
    cfg = resolve_config(Fast, "cifar10", "paper")
    # 20 generator-only warm-up epochs in front of the suite's 220 student epochs
    assert (cfg.gen_iters, cfg.gen_lr, cfg.lr_z, cfg.warmup_epochs, cfg.epochs) == (10, 2e-3, 0.01, 20, 240)
    assert (cfg.lambda_bn, cfg.bn_momentum, cfg.lambda_oh, cfg.lambda_adv, cfg.meta) == (10.0, 0.9, 0.4, 1.1, "maml")
    assert cfg.rslad and cfg.kd_temperature == 20.0 and cfg.reinit_first_layers and cfg.reinit_after_warmup == 120
    f2 = resolve_config(Fast, "cifar10", "paper", {"variant": "fast2"})
    assert (f2.gen_iters, f2.gen_lr, f2.lr_z) == (2, 5e-3, 0.015)
    f5 = resolve_config(Fast, "cifar10", "paper", {"variant": "fast5"})
    assert (f5.gen_iters, f5.gen_lr, f5.lr_z) == (5, 3e-3, 0.01)
    quick = resolve_config(Fast, "cifar10", "quick")
    assert quick.warmup_epochs < quick.warmup_epochs + quick.reinit_after_warmup <= quick.epochs


# -- end to end ---------------------------------------------------------------------------------------
def req(tmp_path, test_npz, name, resume=False, **overrides):
    return RunRequest(method="fast", dataset="cifar10", preset="smoke", seed=0, source=test_npz,
                      out=str(tmp_path / "runs"), run_name=name, resume=resume,
                      overrides={"teacher": "random:resnet8", "attacks": "clean", **overrides})


@pytest.mark.slow
def test_smoke_run_and_exact_resume(tmp_path, test_npz):
    full = run(req(tmp_path, test_npz, "full"), log=lambda s: None)
    hist = full["history"]
    assert full["method"] == "fast" and set(full["attacks"]) == {"clean"} and len(hist) == 3
    assert "student/loss" not in hist[0] and "student/kl_adv" in hist[1]  # epoch 1 is the warm-up
    assert [h["gen/reinit"] for h in hist] == [0.0, 1.0, 0.0] and hist[-1]["pool"] == 24

    resumed = interrupt_then_resume(get_method("fast"), lambda name, resume=False: req(tmp_path, test_npz, name, resume=resume),
                                    lambda ctx: ctx.epoch == 2)
    assert same_students(tmp_path / "runs")
    assert [h["gen/bn"] for h in resumed["history"]] == [h["gen/bn"] for h in hist]


def test_reptile_per_step_momentum_and_plain_kd_run(tmp_path, test_npz):
    result = run(req(tmp_path, test_npz, "reptile", meta="reptile", bn_momentum_update="step", rslad=False, epochs=2),
                 log=lambda s: None)
    assert result["config"]["meta"] == "reptile" and "student/kd" in result["history"][1]
