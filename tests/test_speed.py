"""Every optimised piece gives the values of the plain one; speed settings, bench and ETA behave."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from dfrd_bench.acceleration import Accelerator, autocast_dtype, compile_wanted, randn_in_layout
from dfrd_bench.attacks import kl_objective
from dfrd_bench.config import ConfigError, resolve_config
from dfrd_bench.hooks import bn_input_means, bn_statistics_loss
from dfrd_bench.method import get_method
from dfrd_bench.models import build_model
from dfrd_bench.runner import training_eta


def _net(arch: str = "resnet8", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(arch, 10, 32, (0.5,) * 3, (0.25,) * 3)


# ------------------------------------------------------------------------------------------------ CMI
def contrastive_loss_plain(head, local_feat: torch.Tensor, global_feat: torch.Tensor, bank_local: torch.Tensor,
                           bank_global: torch.Tensor, temperature: float) -> torch.Tensor:
    """methods.cmi.contrastive_loss written the straightforward way: the reference it must equal."""
    from methods.cmi import contrastive_logits

    n = len(local_feat)
    proj = head(torch.cat([local_feat, bank_local, global_feat, bank_global]))
    p_local, p_global = proj.chunk(2)
    logits = contrastive_logits(p_local, p_global, temperature)
    per_row = F.cross_entropy(logits, torch.arange(len(logits), device=logits.device), reduction="none")
    if len(bank_local):
        return per_row[:n].mean() + per_row[n:].mean()
    return per_row.mean()


def test_cmi_contrastive_loss_equals_plain_in_value_and_gradients():
    from methods.cmi import MLPHead, contrastive_loss

    torch.manual_seed(0)
    head = MLPHead(12, 8)
    local, glob = torch.randn(6, 12, requires_grad=True), torch.randn(6, 12, requires_grad=True)
    for bank in (torch.randn(10, 24), torch.zeros(0, 24)):
        bank_local, bank_global = bank.chunk(2, dim=1)
        values, grads = [], []
        for fn in (contrastive_loss, contrastive_loss_plain):
            head.zero_grad()
            local.grad = glob.grad = None
            loss = fn(head, local, glob, bank_local, bank_global, 0.2)
            loss.backward()
            values.append(loss.detach())
            grads.append([p.grad.clone() for p in head.parameters()] + [local.grad.clone()])
            assert glob.grad is None or glob.grad.abs().max() == 0  # the global side is detached in both
        assert torch.allclose(values[0], values[1], rtol=1e-6, atol=1e-6)
        for a, b in zip(*grads):
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)


def test_bn_hook_with_instance_means_gives_both_results_of_the_two_hooks():
    net = _net().eval()
    x = torch.rand(5, 3, 32, 32)
    with bn_statistics_loss(net) as plain:
        net(x)
        loss_plain = plain.loss()
    with bn_input_means(net) as means:
        net(x)
    with bn_statistics_loss(net, instance_means=True) as shared:
        net(x)
        loss_shared = shared.loss()
    assert torch.allclose(loss_plain, loss_shared, rtol=1e-5)
    assert len(shared.instance_means) == len(means)
    for a, b in zip(shared.instance_means, means):
        assert torch.allclose(a, b, atol=1e-6)


# ------------------------------------------------------------------------------------------------ FERD
def test_ferd_ib_loss_equals_the_plain_formula_for_the_same_noise():
    from methods.ferd import ib_loss, ib_regularizer

    net = _net().eval().requires_grad_(False).to(memory_format=torch.channels_last)
    layer = net.feature_layer
    x = torch.rand(4, 3, 32, 32)
    z = net.features(x, layer).detach()
    y = torch.randint(0, 10, (4,))
    noise = randn_in_layout(z)
    feature_var = z.var(dim=[0, 2, 3], unbiased=False).clamp_min(1e-6)
    scale_param = torch.randn(z.shape[1], requires_grad=True)
    fast = ib_loss(lambda h: net.forward_from(h, x, layer), z, y, scale_param, noise, feature_var, 0.3)
    (g_fast,) = torch.autograd.grad(fast, [scale_param])
    noise_var = F.softplus(scale_param) ** 2
    z_i = z + F.softplus(scale_param).view(1, -1, 1, 1) * noise
    plain = F.cross_entropy(net.forward_from(z_i, x, layer), y) + 0.3 * ib_regularizer(noise_var, feature_var)
    (g_plain,) = torch.autograd.grad(plain, [scale_param])
    assert torch.allclose(fast, plain, rtol=1e-6)
    assert torch.allclose(g_fast, g_plain, rtol=1e-5, atol=1e-8)


def test_randn_in_layout_keeps_shape_layout_and_distribution():
    like = torch.zeros(64, 32, 8, 8).to(memory_format=torch.channels_last)
    gen = torch.Generator().manual_seed(0)
    noise = randn_in_layout(like, gen)
    assert noise.shape == like.shape and noise.is_contiguous(memory_format=torch.channels_last)
    assert abs(float(noise.mean())) < 0.02 and abs(float(noise.std()) - 1) < 0.02
    # channels differ in their draws (a layout bug would repeat one block across channels)
    assert not torch.equal(noise[:, 0], noise[:, 1])
    again = randn_in_layout(like, torch.Generator().manual_seed(0))
    assert torch.equal(noise, again)
    plain = randn_in_layout(torch.zeros(3, 4, 5, 6))
    assert plain.is_contiguous() and plain.shape == (3, 4, 5, 6)


# ------------------------------------------------------------------------------------------------ compile
@pytest.mark.slow
def test_compiled_attack_pass_gives_the_eager_input_gradient():
    """torch.compile of a frozen model's forward: the attack step's input gradient is unchanged."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 8 * 8, 10)).eval().requires_grad_(False)
    accel = Accelerator(torch.device("cpu"), compile_attacks=True)
    compiled = accel.attack_model(model)
    assert compiled is not model and accel.attack_model(model) is compiled  # cached per model
    x = torch.rand(6, 3, 8, 8)
    probs = F.softmax(torch.randn(6, 10), 1)
    grads = []
    for m in (model, compiled):
        xa = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(kl_objective(m, probs, 0.5)(xa).sum(), [xa])
        grads.append(g)
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-7)
    assert torch.equal(grads[0].sign(), grads[1].sign()) or (grads[0].sign() != grads[1].sign()).float().mean() < 1e-3


def test_compile_setting_auto_follows_the_run_length_and_is_checked():
    cls = get_method("cmi")
    assert not compile_wanted(resolve_config(cls, "cifar10", "quick"))
    assert not compile_wanted(resolve_config(cls, "cifar10", "smoke"))
    assert compile_wanted(resolve_config(cls, "cifar10", "paper"))
    assert not compile_wanted(resolve_config(cls, "cifar10", "paper", {"compile": "off"}))
    assert compile_wanted(resolve_config(cls, "cifar10", "smoke", {"compile": "on"}))
    from dfrd_bench.config import parse_overrides

    assert resolve_config(cls, "cifar10", "smoke", parse_overrides(["compile=off"]))["compile"] == "off"  # not False
    assert resolve_config(cls, "cifar10", "smoke", parse_overrides(["compile=on"]))["compile"] == "on"
    with pytest.raises(ConfigError, match="compile must be one of"):
        resolve_config(cls, "cifar10", "smoke", {"compile": "yes"})
    with pytest.raises(ConfigError, match="precision must be one of"):
        resolve_config(cls, "cifar10", "smoke", {"precision": "fp16"})


def test_precision_auto_is_bf16_only_on_cuda():
    cfg = resolve_config(get_method("cmi"), "cifar10", "smoke")
    assert autocast_dtype(cfg, torch.device("cpu")) is None
    assert autocast_dtype({"precision": "bf16"}, torch.device("cpu")) == torch.bfloat16
    assert autocast_dtype({"precision": "fp32"}, torch.device("cpu")) is None
    accel = Accelerator(torch.device("cpu"), dtype=torch.bfloat16)
    with accel.autocast():
        out = torch.nn.Linear(4, 4)(torch.rand(2, 4))
    assert out.dtype == torch.bfloat16


# ------------------------------------------------------------------------------------------------ runner
def test_training_eta_uses_recent_epochs_of_the_same_kind():
    records = [{"seconds": 5.0}, {"seconds": 20.0, "lr": 0.1}, {"seconds": 22.0, "lr": 0.1}, {"seconds": 30.0, "lr": 0.1}]
    assert training_eta(records, 10) == pytest.approx(220.0)  # median of 20, 22, 30 (the warm-up epoch left out)
    assert training_eta(records, 0) == 0.0


def test_bf16_training_run_on_cpu_evaluates_in_fp32(tmp_path, assets):
    from dfrd_bench.runner import RunRequest, run

    lines = []
    req = RunRequest(method="fast", dataset="cifar10", preset="smoke", overrides={"precision": "bf16"},
                     source=str(assets / "cifar10-test-first1017.npz"), out=str(tmp_path))
    result = run(req, log=lines.append)
    assert result["speed"] == {"compile_attacks": False, "training_precision": "bf16"}
    assert any(line.startswith("epoch ") and " · left " in line for line in lines)
    state = torch.load(result["model"]["spec"], map_location="cpu", weights_only=False)
    weights = state["state_dict"] if "state_dict" in state else state
    assert all(t.dtype == torch.float32 for t in weights.values() if torch.is_tensor(t) and t.is_floating_point())


# ------------------------------------------------------------------------------------------------ bench
def test_bench_times_every_stage_and_writes_json(tmp_path):
    from dfrd_bench.cli import main

    out = tmp_path / "bench.json"
    res = CliRunner().invoke(main, ["bench", "--method", "cmi", "--preset", "smoke", "--teacher", "random:resnet8",
                                    "--student", "resnet8", "--batch-size", "8", "--repeats", "1", "--warmup", "1",
                                    "--eval-images", "8", "--attacks", "clean,fgsm", "--out", str(out)])
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    stages = report["stages"]
    assert {"student iteration", "eval clean", "eval fgsm"} <= set(stages)
    for entry in stages.values():
        assert entry["seconds"] > 0 or entry.get("per") == "generation stage"
    student = stages["student iteration"]
    assert student["passes"] == {"teacher_forward": 1, "student_input_grad": 2, "student_train": 2}
    assert student["bound_seconds"] > 0 and student["ratio"] == pytest.approx(student["bound_seconds"] / student["seconds"])
    assert set(report["passes_seconds"]) >= {"teacher_forward", "teacher_input_grad", "student_input_grad", "student_train"}
    assert "student iteration" in res.output and "bound / measured" in res.output


def test_bench_refuses_bad_sizes():
    from dfrd_bench.bench import BenchError, BenchRequest, bench

    with pytest.raises(BenchError):
        bench(BenchRequest(method="cmi", repeats=0))
