import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dfrd_bench.attacks import ATTACKS, AttackSettings, cw_margin, project, sign_ascent, ce_objective
from dfrd_bench.evaluator import EvaluationError, check_perturbation, evaluate, parse_attacks
from dfrd_bench.data import from_arrays
from dfrd_bench.models import build_model
from tests.conftest import TinyLinear, random_images


def test_cw_margin_hand_computed():
    logits = torch.tensor([[3.0, 1.0, 2.5], [0.0, 4.0, -1.0]])
    y = torch.tensor([0, 2])
    assert torch.allclose(cw_margin(logits, y), torch.tensor([2.5 - 3.0, 4.0 - (-1.0)]))


def test_fgsm_is_one_signed_gradient_step_of_eps():
    model = TinyLinear(3, 4)
    x = torch.rand(5, 3, 4, 4) * 0.5 + 0.25  # away from the box edges
    y = torch.tensor([0, 1, 2, 0, 1])
    s = AttackSettings(eps=0.03)
    x_adv = ATTACKS.get("fgsm")(model, x, y, s, None)
    xr = x.clone().requires_grad_(True)
    grad, = torch.autograd.grad(F.cross_entropy(model(xr), y, reduction="sum"), xr)
    assert torch.allclose(x_adv, (x + 0.03 * grad.sign()).clamp(0, 1))


@pytest.mark.parametrize("name", ["fgsm", "pgd20", "cw"])
def test_attacks_stay_in_the_ball_and_box_and_raise_the_loss(name):
    torch.manual_seed(0)
    model = build_model("resnet8", 10, 32).eval()
    x = torch.rand(16, 3, 32, 32)
    x[:4] = 0.0  # pixels at the box edges must stay inside [0,1]
    x[4:8] = 1.0
    y = torch.randint(0, 10, (16,))
    s = AttackSettings(eps=8 / 255, pgd_steps=5, cw_steps=5)
    x_adv = ATTACKS.get(name)(model, x, y, s, torch.Generator().manual_seed(0))
    assert (x_adv - x).abs().max() <= 8 / 255 + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        assert F.cross_entropy(model(x_adv), y) > F.cross_entropy(model(x), y)


def test_pgd_is_seeded():
    model = build_model("resnet8", 10, 32).eval()
    x, y = torch.rand(4, 3, 32, 32), torch.tensor([1, 2, 3, 4])
    s = AttackSettings(pgd_steps=2)
    a = ATTACKS.get("pgd20")(model, x, y, s, torch.Generator().manual_seed(5))
    b = ATTACKS.get("pgd20")(model, x, y, s, torch.Generator().manual_seed(5))
    c = ATTACKS.get("pgd20")(model, x, y, s, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_attack_leaves_model_parameters_without_gradients():
    model = build_model("resnet8", 10, 32).eval()
    sign_ascent(ce_objective(model, torch.tensor([0, 1])), torch.rand(2, 3, 32, 32), 0.03, 0.01, 2)
    assert all(p.grad is None for p in model.parameters())


def test_unbounded_ascent_only_keeps_the_box():
    model = TinyLinear(3, 4)
    x = torch.rand(2, 3, 4, 4)
    out = sign_ascent(ce_objective(model, torch.tensor([0, 1])), x, eps=0.01, step=0.1, steps=3, bounded=False,
                      rand_init=False)
    assert (out - x).abs().max() > 0.05 and out.min() >= 0 and out.max() <= 1


def test_projection_check_catches_a_broken_attack():
    x = torch.rand(2, 3, 4, 4) * 0.5
    with pytest.raises(EvaluationError, match="left the eps ball"):
        check_perturbation(x + 0.1, x, 0.03, "broken")
    assert project(x + 0.1, x, 0.03).sub(x).abs().max() <= 0.03 + 1e-7


def test_parse_attacks():
    assert parse_attacks("all") == ["clean", "fgsm", "pgd20", "cw", "aa"]
    assert parse_attacks("pgd20,clean") == ["clean", "pgd20"]
    with pytest.raises(KeyError, match="did you mean pgd20"):
        parse_attacks("pgd")


def test_evaluator_restores_model_state_and_reports_every_attack():
    model = build_model("resnet8", 10, 32).train()
    data = from_arrays(random_images(20), np.arange(20) % 10, "cifar10")
    out = evaluate(model, data, ["clean", "fgsm", "pgd20", "cw"], AttackSettings(pgd_steps=2, cw_steps=2))
    assert model.training and all(p.requires_grad for p in model.parameters())
    for name in ("clean", "fgsm", "pgd20", "cw"):
        m = out["attacks"][name]
        assert m["n"] == 20 and len(m["per_class"]) == 10 and m["max_linf"] <= 8 / 255 + 1e-6
        assert np.array(m["confusion"]).sum() == 20


def test_class_count_mismatch_is_refused():
    model = build_model("resnet8", 100, 32)
    data = from_arrays(random_images(4), np.arange(4), "cifar10")
    with pytest.raises(EvaluationError, match="100 classes"):
        evaluate(model, data, ["clean"])


def test_points_wrong_on_clean_inputs_are_errors_and_not_attacked(monkeypatch):
    """AutoAttack's convention: robust = right clean AND under attack; only clean-right points are attacked."""
    model = build_model("resnet8", 10, 32)
    data = from_arrays(random_images(40), np.arange(40) % 10, "cifar10")
    clean = evaluate(model, data, ["clean"])["attacks"]["clean"]
    right = int(np.trace(np.array(clean["confusion"])))
    seen = []
    original = ATTACKS.get("fgsm")

    def counting(model, x, y, s, gen=None):
        seen.append(len(y))
        return original(model, x, y, s, gen)

    monkeypatch.setitem(ATTACKS._items, "fgsm", counting)
    out = evaluate(model, data, ["clean", "fgsm"])["attacks"]
    assert sum(seen) == right == out["fgsm"]["attacked"]
    assert out["fgsm"]["avg"] <= out["clean"]["avg"]
    seen.clear()
    out_all = evaluate(model, data, ["fgsm"], AttackSettings(attack_misclassified=True))["attacks"]
    assert sum(seen) == 40 and out_all["fgsm"]["attacked"] == 40


def test_channels_last_evaluation_gives_the_same_predictions_and_restores_the_layout():
    model = build_model("resnet8", 10, 32)
    data = from_arrays(random_images(30), np.arange(30) % 10, "cifar10")
    fast = evaluate(model, data, ["clean", "pgd20"], AttackSettings(pgd_steps=3, channels_last=True))["attacks"]
    slow = evaluate(model, data, ["clean", "pgd20"], AttackSettings(pgd_steps=3, channels_last=False))["attacks"]
    assert fast["clean"]["confusion"] == slow["clean"]["confusion"]
    assert abs(fast["pgd20"]["avg"] - slow["pgd20"]["avg"]) <= 100 / 30 + 1e-9  # at most one image may flip
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous()
