"""CMI's components on tiny tensors, the RSLAD switch, and a smoke run with exact resume."""
import math

import pytest
import torch
import torch.nn.functional as F

import methods.cmi as cmi_module  # registers "cmi"
from dfrd_bench.config import resolve_config
from dfrd_bench.losses import kl_div
from dfrd_bench.method import Batch, MethodContext, get_method
from dfrd_bench.runner import RunRequest, run
from dfrd_bench.losses import decision_adversarial_loss
from methods.cmi import CMI, MemoryBank, MLPHead, contrastive_logits, contrastive_loss, dcgan_init_
from tests.conftest import interrupt_then_resume, method_context, same_students

unit = lambda f: F.normalize(f, dim=1)  # noqa: E731  (an identity "head" for hand-computed values)


def tiny_ctx(**overrides) -> MethodContext:
    return method_context(CMI, pool_max=None, **{"latent_dim": 16, "gen_width": 8, **overrides})


# -- the contrastive term --------------------------------------------------------------------------
def test_positive_pair_is_on_the_diagonal_and_identical_views_score_lower_than_shuffled():
    feats = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
    logits = contrastive_logits(unit(feats), unit(feats), 0.2)
    assert torch.equal(logits.argmax(1), torch.arange(6))
    assert torch.allclose(logits.diagonal(), torch.full((6,), 1 / 0.2))  # cosine 1 at temperature 0.2
    empty = feats[:0]
    same = contrastive_loss(unit, feats, feats, empty, empty, 0.2)
    shuffled = contrastive_loss(unit, feats, feats[torch.tensor([1, 2, 3, 4, 5, 0])], empty, empty, 0.2)
    assert same < shuffled


def test_contrastive_loss_hand_computed_with_and_without_bank():
    e = torch.eye(3)
    # two orthogonal instances, no bank: logits [[5, 0], [0, 5]], each row CE = log(1 + e^-5)
    loss = contrastive_loss(unit, e[:2], e[:2], e[:0], e[:0], 0.2)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-5)), rel=1e-5)
    # one bank row: 3 x 3 logits, every row CE = log(1 + 2 e^-5); mean(batch rows) + mean(bank rows)
    loss = contrastive_loss(unit, e[:2], e[:2], e[2:], e[2:], 0.2)
    assert loss.item() == pytest.approx(2 * math.log(1 + 2 * math.exp(-5)), rel=1e-5)


def test_gradient_flows_through_the_local_view_and_head_only():
    torch.manual_seed(0)
    head = MLPHead(4, 3)
    local = torch.randn(5, 4, requires_grad=True)
    glob = torch.randn(5, 4, requires_grad=True)
    contrastive_loss(head, local, glob, torch.randn(2, 4), torch.randn(2, 4), 0.2).backward()
    assert local.grad is not None and local.grad.abs().sum() > 0
    assert glob.grad is None or not glob.grad.any()  # the global side is detached, as in the authors' code
    assert all(p.grad is not None for p in head.parameters())


def test_mlp_head_shapes_and_l2_norm():
    head = MLPHead(12, 256)
    assert [tuple(m.weight.shape) for m in head.head if hasattr(m, "weight")] == [(12, 12), (256, 12)]
    out = head(torch.randn(7, 12))
    assert out.shape == (7, 256) and torch.allclose(out.norm(dim=1), torch.ones(7), atol=1e-5)


# -- the memory bank ---------------------------------------------------------------------------------
def rows(*values):
    return torch.tensor(values, dtype=torch.float32).view(-1, 1).repeat(1, 2)


def test_memory_bank_is_a_fifo_ring():
    bank = MemoryBank(5, 2)
    assert len(bank) == 0 and bank.sample(3).shape == (0, 2)
    bank.add(rows(0, 1, 2))
    assert len(bank) == 3 and bank.ptr == 3
    bank.add(rows(3, 4, 5))  # wraps: 5 overwrites the oldest row (0)
    assert len(bank) == 5 and bank.ptr == 1 and bank.n_updates == 6
    assert bank.data[:, 0].tolist() == [5, 1, 2, 3, 4]
    bank.add(rows(*range(10, 17)))  # more rows than the bank holds: the last 5 stay
    assert sorted(bank.data[:, 0].tolist()) == [12, 13, 14, 15, 16]
    assert bank.ptr == (1 + 7) % 5 and bank.n_updates == 13


def test_memory_bank_samples_distinct_written_rows_reproducibly():
    bank = MemoryBank(10, 2)
    bank.add(rows(1, 2, 3, 4))
    s = bank.sample(3, torch.Generator().manual_seed(1))
    assert s.shape == (3, 2) and len(set(s[:, 0].tolist())) == 3 and set(s[:, 0].tolist()) <= {1, 2, 3, 4}
    assert torch.equal(s, bank.sample(3, torch.Generator().manual_seed(1)))
    assert sorted(bank.sample(100)[:, 0].tolist()) == [1, 2, 3, 4]  # k above the filled rows: all of them
    clone = MemoryBank(10, 2)
    clone.load_state_dict(bank.state_dict())
    assert torch.equal(clone.data, bank.data) and (clone.ptr, clone.n_updates) == (4, 4)
    assert torch.equal(clone.sample(3, torch.Generator().manual_seed(5)), bank.sample(3, torch.Generator().manual_seed(5)))


# -- the adversarial term ------------------------------------------------------------------------------
def test_adversarial_term_is_masked_to_agreeing_samples():
    t = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0]])
    s = torch.tensor([[1.0, 0.5, 0.0], [2.0, 0.0, 0.0], [0.0, 1.0, 1.5]])  # agree, disagree, agree
    loss, mask = decision_adversarial_loss(t, s)
    assert mask.tolist() == [1.0, 0.0, 1.0]

    def kl(p_logits, q_logits):
        p = F.softmax(p_logits, 0)
        return float((p * (p.log() - F.log_softmax(q_logits, 0))).sum())

    assert loss.item() == pytest.approx(-(kl(t[0], s[0]) + kl(t[2], s[2])) / 3, rel=1e-5)  # mean over all 3


# -- the generation stage -----------------------------------------------------------------------------
def test_dcgan_init_matches_the_authors_reset_model():
    from dfrd_bench.generators import Generator

    torch.manual_seed(0)
    g = Generator(64, 32, 32)
    dcgan_init_(g)
    assert g.l1[0].weight.std().item() == pytest.approx(0.02, rel=0.05) and g.l1[0].bias.abs().max() == 0
    bn = g.conv_blocks[0]
    assert bn.weight.mean().item() == pytest.approx(1.0, abs=0.01) and bn.bias.abs().max() == 0


def test_generate_reinitialises_trains_the_head_and_fills_the_bank(monkeypatch):
    ctx = tiny_ctx(gen_iters=3)
    method = CMI()
    method.setup(ctx)
    dim = sum(b.num_features for b in ctx.teacher.bn_layers())
    assert method.feature_dim == dim and method.bank.dim == 2 * dim
    calls = []
    original = cmi_module.reinit_generator_
    monkeypatch.setattr(cmi_module, "reinit_generator_", lambda g, s: (calls.append(s), original(g, s)))
    head_before = [p.clone() for p in method.head.parameters()]
    teacher_before = [p.clone() for p in ctx.teacher.parameters()]
    s1 = method.generate(ctx)
    assert calls == ["dcgan"]
    assert s1.x.shape == (8, 3, 32, 32) and 0 <= s1.x.min() and s1.x.max() <= 1 and s1.y.shape == (8,)
    assert len(method.bank) == 8 and s1.logs["bank"] == 8
    assert {"bn", "oh", "adv", "cr", "agree_frac", "total"} <= set(s1.logs)
    assert any(not torch.equal(a, b) for a, b in zip(head_before, method.head.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(teacher_before, ctx.teacher.parameters()))
    assert ctx.student.training and all(p.requires_grad for p in ctx.student.parameters())
    method.generate(ctx)
    assert calls == ["dcgan", "dcgan"] and len(method.bank) == 12  # smoke bank: 12 rows, wrapped


def test_cr_off_skips_the_local_view_and_bank():
    ctx = tiny_ctx(gen_iters=1, lambda_cr=0.0, lambda_adv=0.0)
    method = CMI()
    method.setup(ctx)
    logs = method.generate(ctx).logs
    assert "cr" not in logs and "adv" not in logs and len(method.bank) == 0


def test_stage_features_give_a_smaller_instance_feature():
    ctx = tiny_ctx(gen_iters=1, cmi_features="stages")
    method = CMI()
    method.setup(ctx)
    assert method.feature_dim == 16 + 16 + 32 + 64  # resnet8: stem + three stages
    method.generate(ctx)
    assert len(method.bank) == 8


# -- the student stage and settings -------------------------------------------------------------------
def test_rslad_switch():
    torch.manual_seed(0)
    x = torch.rand(4, 3, 32, 32)
    ctx = tiny_ctx(rslad=False)
    loss, logs = CMI().student_loss(ctx, Batch(x, torch.full((4,), -1)))
    with torch.no_grad():
        expected = kl_div(ctx.teacher(x), ctx.student(x), 20.0)
    assert set(logs) == {"kd"} and loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss, logs = CMI().student_loss(tiny_ctx(), Batch(x, torch.full((4,), -1)))
    assert set(logs) == {"kl_clean", "kl_adv"} and loss.requires_grad


def test_paper_preset_has_the_papers_settings():
    cfg = resolve_config(CMI, "cifar10", "paper")
    assert (cfg.gen_iters, cfg.gen_lr, cfg.gen_beta1, cfg.gen_beta2) == (200, 1e-3, 0.5, 0.999)
    assert (cfg.lambda_bn, cfg.lambda_oh, cfg.lambda_adv, cfg.lambda_cr, cfg.cr_temperature) == (1.0, 1.0, 0.5, 0.8, 0.2)
    assert (cfg.bank_size, cfg.n_neg, cfg.head_dim) == (40960, 4096, 256)
    assert cfg.rslad and cfg.kd_temperature == 20.0 and cfg.rslad_steps == 10
    quick = resolve_config(CMI, "cifar10", "quick")
    assert quick.bank_size < 40960 and quick.n_neg < quick.bank_size


# -- end to end ---------------------------------------------------------------------------------------
def test_smoke_run_and_exact_resume(tmp_path, test_npz):
    def req(name, resume=False):
        return RunRequest(method="cmi", dataset="cifar10", preset="smoke", seed=0, source=test_npz,
                          out=str(tmp_path / "runs"), run_name=name, resume=resume,
                          overrides={"teacher": "random:resnet8", "attacks": "clean"})

    full = run(req("full"), log=lambda s: None)
    assert full["method"] == "cmi" and set(full["attacks"]) == {"clean"} and full["attacks"]["clean"]["n"] == 20
    assert [h["gen/bank"] for h in full["history"]] == [8, 12] and full["history"][-1]["pool"] == 16
    assert "student/kl_adv" in full["history"][0] and full["config"]["bank_size"] == 12

    calls = {"n": 0}

    def in_last_epoch(ctx):  # in the last epoch: the bank and head come from the checkpoint
        calls["n"] += 1
        return ctx.epoch == 1 and calls["n"] > 1

    resumed = interrupt_then_resume(get_method("cmi"), req, in_last_epoch)
    assert same_students(tmp_path / "runs")
    assert [h["gen/cr"] for h in resumed["history"]] == [h["gen/cr"] for h in full["history"]]
