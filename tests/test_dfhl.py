"""DFHL's components against hand-computed values on tiny tensors, and one smoke run."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

import methods.dfhl  # noqa: F401  (registers "dfhl")
from dfrd_bench.config import resolve_config
from dfrd_bench.losses import entropy
from dfrd_bench.method import Batch
from dfrd_bench.models import build_model
from dfrd_bench.runner import RunRequest, run
from methods.dfhl import (DFHL, HardLabelOracle, class_balance, dfhl_generator_loss, high_entropy_examples,
                          smooth_one_hot, strong_augment)
from tests.conftest import TinyLinear, method_context, same_students


def _ctx(teacher=None, **overrides):
    return method_context(DFHL, teacher, pool_max=64, **overrides)


# -- the generator's loss ------------------------------------------------------------------------
def test_smooth_one_hot_hand_computed():
    t = smooth_one_hot(torch.tensor([2, 0]), 4, 0.2)
    off = 0.2 / 3
    assert torch.allclose(t, torch.tensor([[off, off, 0.8, off], [0.8, off, off, off]]))
    assert torch.allclose(t.sum(1), torch.ones(2))
    assert torch.equal(smooth_one_hot(torch.tensor([1]), 3, 0.0), torch.tensor([[0.0, 1.0, 0.0]]))


def test_class_balance_hand_computed():
    # probabilities (softmax of log p) [0.5, 0.5, 0] and [0.5, 0.25, 0.25] -> pbar = [0.5, 0.375, 0.125]
    logits = torch.tensor([[0.5, 0.5, 1e-30], [0.5, 0.25, 0.25]]).log()
    pbar = [0.5, 0.375, 0.125]
    expected = sum(p * math.log(p) for p in pbar)
    assert class_balance(logits).item() == pytest.approx(expected, rel=1e-5)
    assert class_balance(logits, log10=True).item() == pytest.approx(expected / math.log(10), rel=1e-5)
    # lowest, -log C, when the batch is spread evenly; 0 when every sample says the same class
    assert class_balance(torch.eye(4) * 50).item() == pytest.approx(-math.log(4), abs=1e-4)
    assert class_balance(torch.tensor([[50.0, 0.0, 0.0]] * 3)).item() == pytest.approx(0.0, abs=1e-4)


def test_generator_loss_is_smoothed_kl_plus_three_balance():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    y = torch.tensor([0, 2])
    q = F.softmax(logits, 1)
    p = torch.tensor([[0.8, 0.1, 0.1], [0.1, 0.1, 0.8]])  # smoothing 0.2 over 3 classes
    kl_hand = (p * (p.log() - q.log())).sum(1).mean()
    pbar = q.mean(0)
    bal_hand = (pbar * pbar.log()).sum()
    total, kl, bal = dfhl_generator_loss(logits, smooth_one_hot(y, 3, 0.2), 3.0)
    assert kl.item() == pytest.approx(kl_hand.item(), rel=1e-5)
    assert bal.item() == pytest.approx(bal_hand.item(), rel=1e-5)
    assert total.item() == pytest.approx((kl_hand + 3 * bal_hand).item(), rel=1e-5)


# -- High-Entropy Examples -------------------------------------------------------------------------
def test_hee_raise_the_students_entropy_without_an_eps_ball():
    torch.manual_seed(0)
    model = TinyLinear(5, 4)
    x = torch.rand(32, 3, 4, 4)
    with torch.no_grad():
        before = entropy(model(x))
    x_hee = high_entropy_examples(model, x, steps=10, step=0.03)
    with torch.no_grad():
        after = entropy(model(x_hee))
    assert after.mean() > before.mean() + 0.2
    assert (after >= before - 1e-6).float().mean() > 0.9
    # unconstrained: far beyond any 8/255 ball, but inside the image box
    assert (x_hee - x).abs().max() > 0.2 > 8 / 255
    assert x_hee.min() >= 0.0 and x_hee.max() <= 1.0
    assert model.w.grad is None and model.training  # no parameter gradient, mode restored


def test_hee_take_exactly_sign_steps_clamped_to_the_box():
    model = TinyLinear(3, 1)
    x = torch.full((4, 3, 1, 1), 0.99)
    x_hee = high_entropy_examples(model, x, steps=1, step=0.03)
    moved = (x_hee - x).abs()
    # every coordinate moves by one step of 0.03, except where the step up is cut at 1
    up = x_hee > x
    assert torch.allclose(moved[~up], torch.full_like(moved[~up], 0.03))
    assert torch.allclose(x_hee[up], torch.ones_like(x_hee[up]))


def test_strong_augmentation_is_mild_and_batched():
    x = torch.rand(16, 3, 32, 32)
    g = torch.Generator().manual_seed(0)
    out = strong_augment(x, 0.95, 15.0, True, g)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert not torch.allclose(out, x)
    same = strong_augment(x, 1.0, 0.0, False, torch.Generator().manual_seed(0))
    # crop scale 1 with aspect 1, no rotation and no vertical flip: the image or its horizontal mirror
    assert all(torch.allclose(s, xi, atol=1e-5) or torch.allclose(s, xi.flip(2), atol=1e-5)
               for s, xi in zip(same, x))


# -- the teacher as a hard-label black box ---------------------------------------------------------
def test_oracle_returns_only_labels_and_counts_queries():
    teacher = TinyLinear(4, 2).requires_grad_(True)
    oracle = HardLabelOracle(teacher)
    x = torch.rand(5, 3, 2, 2, requires_grad=True)
    y = oracle(x)
    assert y.dtype == torch.long and y.shape == (5,) and not y.requires_grad
    assert torch.equal(y, teacher(x).argmax(1))
    assert oracle.queries == 5
    assert teacher.w.grad is None
    assert [k for k in vars(oracle) if isinstance(getattr(oracle, k), torch.nn.Module)] == []


def test_method_reaches_the_teacher_only_through_hard_labels():
    teacher = build_model("resnet8", 10, 32).eval().requires_grad_(True)  # unfrozen on purpose
    seen = []
    teacher.register_forward_hook(lambda m, i, o: seen.append((torch.is_grad_enabled(), o.requires_grad)))
    ctx = _ctx(teacher=teacher)
    method = DFHL()
    method.setup(ctx)
    samples = method.generate(ctx)
    ctx.pool.add(samples.x, samples.y)
    ctx.student.train()
    x, y = ctx.pool.sample(8, ctx.rng)
    loss, logs = method.student_loss(ctx, Batch(x, y))
    loss.backward()
    assert seen and all(not grad_on and not needs for grad_on, needs in seen)  # every query under no_grad
    assert all(p.grad is None for p in teacher.parameters())
    assert samples.y.dtype == torch.long and torch.equal(samples.y, HardLabelOracle(teacher)(samples.x))
    # one pool batch labelled in generate, one HEE batch in the student step
    assert method.oracle.queries == 8 + 8 and method.end_epoch(ctx) == {"queries": 8, "pool_queries": 8}


# -- the generator is never reset ------------------------------------------------------------------
def test_generator_is_built_once_and_carries_over_epochs(monkeypatch):
    built = []
    original = methods.dfhl.Generator

    class Counting(original):
        def __init__(self, *a, **k):
            built.append(1)
            super().__init__(*a, **k)

    monkeypatch.setattr(methods.dfhl, "Generator", Counting)
    ctx = _ctx()
    method = DFHL()
    method.setup(ctx)
    at_start = []
    method.generator.register_forward_pre_hook(
        lambda m, i: at_start.append(copy.deepcopy(m.state_dict())) if len(at_start) < ctx.epoch + 1 else None)
    ends = []
    for epoch in range(3):
        ctx.epoch = epoch
        method.generate(ctx)
        ends.append(copy.deepcopy(method.generator.state_dict()))
    assert len(built) == 1
    for epoch in (1, 2):  # each epoch starts from the weights the previous one ended with
        assert all(torch.equal(at_start[epoch][k], ends[epoch - 1][k]) for k in ends[0])
    assert not torch.equal(ends[0]["l1.0.weight"], ends[2]["l1.0.weight"])
    # and resume restores it exactly
    again = DFHL()
    again.setup(_ctx())
    again.load_state_dict(method.state_dict())
    assert all(torch.equal(again.generator.state_dict()[k], v) for k, v in method.generator.state_dict().items())


# -- settings and one run ---------------------------------------------------------------------------
def test_presets_carry_the_papers_settings():
    cfg = resolve_config(DFHL, "cifar10", "paper")
    # the student on the suite's equal budget (FERD's 220 x 400, SGD 0.1 / 5e-4); synthesis DFHL's own
    assert (cfg.epochs, cfg.gen_iters, cfg.student_iters, cfg.batch_size, cfg.synthesis_batch_size) == (220, 10, 400, 256, 256)
    assert (cfg.student_lr, cfg.student_weight_decay, cfg.student_schedule) == (0.1, 5e-4, "cosine")
    assert cfg.balance_log10 and not cfg.student_augment  # log10 as in the authors' code; its own augmentation
    authors = resolve_config(DFHL, "cifar10", "paper", {"variant": "authors"})
    assert (authors.epochs, authors.student_iters, authors.student_weight_decay) == (300, 500, 1e-4)
    assert (cfg.gen_lr, cfg.lr_z, cfg.label_smoothing, cfg.lambda_balance) == (2e-3, 1e-2, 0.2, 3.0)
    assert (cfg.hee_steps, cfg.hee_step, cfg.hee_crop_scale, cfg.hee_rotation) == (10, 0.03, 0.95, 15.0)
    c100 = resolve_config(DFHL, "cifar100", "paper")
    assert (c100.gen_iters, c100.gen_lr, c100.lr_z, c100.batch_size, c100.label_smoothing) == (15, 5e-3, 0.015, 512, 0.02)
    assert resolve_config(DFHL, "cifar100", "quick").lr_z == 0.015
    assert resolve_config(DFHL, "cifar10", "quick").student_weight_decay == 5e-4


def test_smoke_run(tmp_path, test_npz):
    req = RunRequest(method="dfhl", dataset="cifar10", preset="smoke", seed=0, source=test_npz,
                     out=str(tmp_path / "runs"), overrides={"teacher": "random:resnet8"})
    result = run(req, log=lambda s: None)
    assert result["method"] == "dfhl" and set(result["attacks"]) == {"clean", "pgd20"}
    h = result["history"]
    assert len(h) == 2 and h[1]["pool"] == 16
    assert {"gen/kl", "gen/balance", "student/ce_hee", "student/hee_entropy", "queries"} <= set(h[0])
    assert h[1]["queries"] == 2 * 2 * 8 and h[1]["pool_queries"] == 16  # 2 epochs x 2 steps x batch 8
    assert result["config"]["hee_steps"] == 2 and result["config"]["lambda_balance"] == 3.0


def test_resume_after_an_epoch_gives_the_same_student(tmp_path, test_npz):
    def req(name, resume=False):
        return RunRequest(method="dfhl", dataset="cifar10", preset="smoke", seed=0, source=test_npz, run_name=name,
                          out=str(tmp_path / "runs"), resume=resume,
                          overrides={"teacher": "random:resnet8", "attacks": "clean"})

    full = run(req("full"), log=lambda s: None)

    def stop(epoch):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(req("split"), log=lambda s: None, after_epoch=stop)
    resumed = run(req("split", resume=True), log=lambda s: None)
    assert same_students(tmp_path / "runs")
    assert [h["queries"] for h in resumed["history"]] == [h["queries"] for h in full["history"]]
