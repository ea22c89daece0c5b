"""FERD's components against hand-computed values on tiny tensors."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pathlib import Path

import yaml

from dfrd_bench.attacks import kl_objective, sign_ascent
from dfrd_bench.config import resolve_config, student_steps
from dfrd_bench.losses import kl_div, kl_uniform
from dfrd_bench.robust_kd import student_adversarial
from dfrd_bench.utils import parse_fraction
from methods.ferd import (FERD, adversarial_margins, class_vulnerability, decoupled_kd_divergence, ferd_student_loss,
                          ib_regularizer, least_pgd_steps, lps_weights, minmax_weights, non_robust_channels,
                          softmax_weights, utae_objective)
from tests.conftest import TinyLinear, method_context


def test_margins_and_class_vulnerability():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.5, 4.0], [2.0, 2.5, 0.0]])
    y = torch.tensor([0, 1, 0, 1])
    m = adversarial_margins(logits, y)
    assert torch.allclose(m, torch.tensor([1.0, 2.0, -3.0, 0.5]))  # z_y - max_{j != y} z_j
    prev = torch.tensor([0.0, 0.0, 7.0])
    d = class_vulnerability(m, y, 3, prev)
    # class 0: mean(-1, 3) = 1; class 1: mean(-2, -0.5) = -1.25; class 2 absent: keeps 7
    assert torch.allclose(d, torch.tensor([1.0, -1.25, 7.0]))
    p = softmax_weights(d)
    e = np.exp([1.0, -1.25, 7.0])
    assert torch.allclose(p, torch.tensor(e / e.sum(), dtype=torch.float32))
    assert p.argmax() == 2  # the most vulnerable class gets sampled most


def test_table6_strategies_hand_computed():
    kappa = torch.tensor([0.0, 5.0, 10.0, 20.0])
    k, beta = 20, 2.0
    power = 1 / torch.tensor([1.0, 5.0, 10.0, 20.0]) ** beta
    assert torch.allclose(lps_weights(kappa, "power", k, beta), power / power.sum())
    linear = 1 - kappa / (k + 1)
    assert torch.allclose(lps_weights(kappa, "linear", k), linear / linear.sum())
    sig = torch.sigmoid(0 + 5 * (1 - 2 * kappa / k))
    assert torch.allclose(lps_weights(kappa, "sigmoid", k), sig / sig.sum())
    tanh = (1 + torch.tanh(5 * (1 - 2 * kappa / k))) / 2
    assert torch.allclose(lps_weights(kappa, "tanh", k), tanh / tanh.sum())
    for s in ("power", "linear", "sigmoid", "tanh"):
        w = lps_weights(kappa, s, k)
        assert w[0] > w[-1], f"{s}: the least robust class (smallest kappa) must weigh most"


def test_minmax_weights_of_the_released_code():
    d = torch.tensor([-2.0, 0.0, 2.0])
    w = minmax_weights(d, 0.05, 0.2)
    raw = torch.tensor([0.05, 0.125, 0.2])
    assert torch.allclose(w, raw / raw.sum())


def test_least_pgd_step_counts_steps_until_misclassified():
    model = TinyLinear(2, 1)
    with torch.no_grad():
        model.w.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))  # logit0 = red, logit1 = green
    x = torch.zeros(3, 3, 1, 1)
    x[0, :2] = torch.tensor([0.5, 0.2]).view(2, 1, 1)   # margin 0.3 > 2 * eps: never flips -> K
    x[1, :2] = torch.tensor([0.3, 0.24]).view(2, 1, 1)  # one step of 0.05 each way flips it -> 1
    x[2, :2] = torch.tensor([0.5, 0.2]).view(2, 1, 1)   # label 1: wrong already when clean -> 0
    y = torch.tensor([0, 0, 1])
    steps = least_pgd_steps(model, x, y, eps=0.1, step=0.05, steps=4)
    assert steps.tolist() == [4, 1, 0]


def test_ib_regulariser_and_mask_rule():
    s2 = torch.tensor([1.0, 2.0])
    v = torch.tensor([2.0, 2.0])
    expected = (2 / 1 + math.log(1 / 2) - 1) + (2 / 2 + math.log(2 / 2) - 1)
    assert ib_regularizer(s2, v).item() == pytest.approx(expected)
    assert ib_regularizer(v, v).item() == pytest.approx(0.0)  # minimum at s^2 = v
    mask = non_robust_channels(torch.tensor([0.5, 3.0, 1.0]), torch.tensor([0.2, 1.5, 0.7]))
    assert mask.tolist() == [True, False, True]  # robust when s^2 exceeds the largest variance (1.5)


def test_literal_eq6_on_noisy_features_marks_every_channel_non_robust():
    # Var(Z_I^k) = Var(Z^k) + s_k^2 >= s_k^2, so s_k^2 < max_c Var(Z_I^c) always holds: the reason
    # the default compares with the clean features' variance (documented in docs/methods/ferd.md).
    torch.manual_seed(0)
    z = torch.randn(512, 6, 2, 2) * torch.tensor([0.1, 0.5, 1.0, 2.0, 0.01, 3.0]).view(1, 6, 1, 1)
    s = torch.tensor([0.05, 5.0, 0.3, 10.0, 1.0, 0.2])
    from methods.ferd import channel_var

    noisy = channel_var(z + s.view(1, 6, 1, 1) * torch.randn_like(z))
    assert non_robust_channels(s ** 2, noisy).all()
    clean = non_robust_channels(s ** 2, channel_var(z))
    assert clean.tolist() == [True, False, True, False, True, True]


def test_utae_with_gamma_zero_is_plain_kl_pgd():
    torch.manual_seed(0)
    model = TinyLinear(4, 3)
    x = torch.rand(6, 3, 3, 3)
    with torch.no_grad():
        p = F.softmax(model(x), 1)
    start = (x + 0.001 * torch.randn_like(x)).clamp(0, 1)
    a = sign_ascent(utae_objective(model, p, 0.0), x, 8 / 255, 2 / 255, 5, start=start)
    b = sign_ascent(kl_objective(model, p), x, 8 / 255, 2 / 255, 5, start=start)
    assert torch.equal(a, b)
    c = sign_ascent(utae_objective(model, p, 0.5), x, 8 / 255, 2 / 255, 5, start=start)
    assert not torch.equal(a, c)


def _student_ctx(model, overrides=None, seed=0):
    """A MethodContext whose student is `model` (FERD's quick settings) for the student-side attacks."""
    return method_context(FERD, model, model, seed=seed, image_size=4, **(overrides or {}))


def test_utae_on_the_student_with_gamma_zero_is_the_rslad_attack():
    # the default UTAE (on the student) with gamma = 0 crafts exactly RSLAD's adversarial examples
    torch.manual_seed(0)
    student = TinyLinear(4, 4)
    x = torch.rand(8, 3, 4, 4)
    with torch.no_grad():
        probs = F.softmax(TinyLinear(4, 4, seed=5)(x), 1)  # a "teacher"
    over = {"gamma": 0.0, "utae_steps": 5, "utae_step": 2 / 255}
    x_u, attacked = FERD.utaes(_student_ctx(student, over), x, probs)
    x_rslad = student_adversarial(_student_ctx(student, over), x, probs, 5, 2 / 255)
    assert attacked is student and torch.equal(x_u, x_rslad)
    assert (x_u - x).abs().max() <= 8 / 255 + 1e-6 and x_u.min() >= 0 and x_u.max() <= 1
    # utae=false (Table 3's w/o UTAEs) is gamma = 0 whatever gamma says
    x_off, _ = FERD.utaes(_student_ctx(student, {**over, "gamma": 0.5, "utae": False}), x, probs)
    assert torch.equal(x_off, x_rslad)
    x_g, _ = FERD.utaes(_student_ctx(student, {**over, "gamma": 0.5}), x, probs)
    assert not torch.equal(x_g, x_rslad)
    # the student is attacked in eval mode and left as it was
    student.train()
    FERD.utaes(_student_ctx(student, over), x, probs)
    assert student.training


def test_paper_literal_attacks_the_teacher():
    torch.manual_seed(0)
    teacher, student = TinyLinear(4, 4, seed=1), TinyLinear(4, 4, seed=2)
    x = torch.rand(8, 3, 4, 4)
    with torch.no_grad():
        probs = F.softmax(teacher(x), 1)
    ctx = _student_ctx(student, {"variant": "paper-literal"})
    ctx.teacher = teacher
    _, attacked = FERD.utaes(ctx, x, probs)
    assert attacked is teacher


def test_uniform_term_moves_the_attacked_prediction_towards_uniform():
    # The uniform term pulls each adversarial prediction S(x_U) towards U: KL(U || S(x_U)) falls as
    # gamma grows. (On this linear model it does NOT spread the arg-max targets of flipped examples;
    # whether it does on real students is measured per epoch, `utae_target_entropy_norm`.)
    torch.manual_seed(1)
    student = TinyLinear(5, 4)
    x = torch.rand(64, 3, 4, 4)
    with torch.no_grad():
        probs = F.softmax(student(x), 1)
    kl_u = []
    for gamma in (0.0, 0.5, 0.9):
        x_u = student_adversarial(_student_ctx(student, seed=3), x, probs, 10, 0.02, uniform_weight=gamma)
        with torch.no_grad():
            kl_u.append(kl_uniform(student(x_u)).item())
            assert kl_div(probs, student(x_u), p_is_probs=True).item() > 0.01  # still an attack
    assert kl_u[0] > kl_u[1] > kl_u[2]


def test_decoupled_kd_divergence_by_hand():
    # two classes: one gap per ordered pair; p = softmax(t / 100) outer itself
    t = torch.tensor([[2.0, 0.0]])
    s = torch.tensor([[0.0, 1.0]])
    sn = F.softmax(t / 100, 1)[0]
    gap = (2.0 - 0.0) - (0.0 - 1.0)  # (t0 - t1) - (s0 - s1) = 3
    mse = 0.25 * (sn[0] * sn[1] * gap ** 2 * 2) / 1.0  # the (0,1) and (1,0) entries; sum p = 1
    ce = -(F.softmax(t, 1) * F.log_softmax(s, 1)).sum()
    assert decoupled_kd_divergence(t, s).item() == pytest.approx((mse + ce).item(), rel=1e-5)
    assert decoupled_kd_divergence(t, t).item() == pytest.approx(-(F.softmax(t, 1) * F.log_softmax(t, 1)).sum().item())


def test_student_loss_eq11():
    t = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    s_clean = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    s_adv = torch.tensor([[0.0, 2.0], [1.0, 0.0]])

    def kl(p_logits, q_logits):
        p = F.softmax(p_logits, 1)
        return (p * (p.log() - F.log_softmax(q_logits, 1))).sum(1).mean()

    loss, kc, ka = ferd_student_loss(t, s_clean, s_adv, 5 / 6, 1 / 6)
    assert kc.item() == pytest.approx(kl(t, s_clean).item())
    assert loss.item() == pytest.approx((5 / 6 * kl(t, s_clean) + 1 / 6 * kl(t, s_adv)).item())


def test_released_variant_differs_where_the_code_differs():
    default = resolve_config(FERD, "cifar10", "paper")
    released = resolve_config(FERD, "cifar10", "paper", {"variant": "released"})
    diff = {k for k in default if default[k] != released[k]}
    assert diff == {"variant", "gamma", "reweight_strategy", "reinit_generator", "conditional", "warmup_epochs",
                    "student_schedule", "gen_adv_loss", "latent_dim", "lr_z", "gen_init"}
    assert released.utae_on == "student" and released.gamma == 0.0 and released.warmup_epochs == 20
    assert released.epochs == 220 and released.student_augment
    # the CPU presets add one warm-up epoch in front, so the student takes the same steps as the others
    quick = resolve_config(FERD, "cifar10", "quick", {"variant": "released"})
    assert (quick.warmup_epochs, quick.epochs) == (1, 9)
    assert student_steps(quick) == student_steps(resolve_config(FERD, "cifar10", "quick"))
    # explicit --set values still win over the variant
    assert resolve_config(FERD, "cifar10", "paper", {"variant": "released", "gamma": 0.3}).gamma == 0.3


def _docs_variant_table():
    """The variant table of docs/methods/ferd.md: {variant: {setting: value as written}}."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "methods" / "ferd.md").read_text()
    block = text.split("<!-- variant-table -->")[1].strip().splitlines()
    rows = block[:next((i for i, r in enumerate(block) if not r.startswith("|")), len(block))]
    header = [c.strip().strip("`") for c in rows[0].strip("|").split("|")]
    table = {name: {} for name in header[1:]}
    for row in rows[2:]:
        cells = [c.strip() for c in row.strip("|").split("|")]
        key = cells[0].strip("`")
        for name, cell in zip(header[1:], cells[1:]):
            table[name][key] = cell.strip("`")
    return table


def test_each_variant_resolves_to_the_settings_its_docs_table_lists():
    table = _docs_variant_table()
    assert set(table) == {"default", "paper-literal", "released", "rslad-weights", "ib-printed"}
    for variant, settings in table.items():
        cfg = resolve_config(FERD, "cifar10", "paper", {} if variant == "default" else {"variant": variant})
        for key, written in settings.items():
            value = yaml.safe_load(written)
            if isinstance(value, str) and "/" in value:
                value = parse_fraction(value)
            expected = pytest.approx(value) if isinstance(value, float) else value
            assert cfg[key] == expected, (variant, key)


def test_paper_preset_has_the_papers_settings():
    cfg = resolve_config(FERD, "cifar10", "paper")
    assert (cfg.epochs, cfg.gen_iters, cfg.student_iters, cfg.batch_size) == (220, 200, 400, 256)
    assert (cfg.gen_lr, cfg.gen_beta1, cfg.gen_beta2) == (2e-3, 0.5, 0.999)
    assert (cfg.student_lr, cfg.student_momentum, cfg.student_weight_decay) == (0.1, 0.9, 5e-4)
    assert (cfg.lambda_adv, cfg.lambda_bn, cfg.lambda_oh, cfg.lambda_uni) == (1.0, 5.0, 1.0, 5.0)
    assert cfg.gamma == 0.5 and cfg.lambda_1 == pytest.approx(5 / 6) and cfg.eps == pytest.approx(8 / 255)
    # the default reading: UTAEs on the student, 10 steps of 2/255, student-stage crop+flip
    assert (cfg.utae_on, cfg.utae_steps, cfg.utae_step, cfg.student_augment) == ("student", 10, pytest.approx(2 / 255), True)
    assert cfg.teacher == "robustbench:Chen2024Data_WRN_34_10" and cfg.student == "resnet18"
    assert resolve_config(FERD, "cifar100", "paper").batch_size == 512


# ------------------------------------------------------------------------------------------------
# Issue 29: the bottleneck as the authors' IFP.py runs it, and the printed reading as ib-printed
# ------------------------------------------------------------------------------------------------
def test_ib_penalty_mean_is_the_authors_half_mean_and_sum_is_eq5():
    torch.manual_seed(0)
    s2, v = torch.rand(4, 6) + 0.1, torch.rand(4, 6) + 0.1
    terms = v / s2 + torch.log(s2 / v) - 1
    assert ib_regularizer(s2, v, "mean").item() == pytest.approx(0.5 * terms.mean().item())   # IFP.kl_div
    assert ib_regularizer(s2, v, "sum").item() == pytest.approx(terms.sum(1).mean().item())   # Eq. 5 per sample
    # relative to the cross-entropy, the printed sum is 2 x C times the authors' penalty
    assert ib_regularizer(s2, v, "sum").item() == pytest.approx(2 * 6 * ib_regularizer(s2, v, "mean").item())


def _mask(overrides, z, seed=0, steps=3):
    from dfrd_bench.models import build_model

    torch.manual_seed(0)
    teacher = build_model("resnet8", 10, 32).eval().requires_grad_(False)
    ctx = method_context(FERD, teacher, build_model("resnet8", 10, 32), ib_steps=steps, **overrides)
    method = FERD()
    method.setup(ctx)
    x = torch.rand(z.shape[0], 3, 32, 32)
    y = torch.arange(z.shape[0]) % 10
    torch.manual_seed(seed)
    carried = None
    if ctx.cfg.ib_noise == "per-channel":
        scale = torch.zeros(z.shape[1], requires_grad=True)
        carried = (scale, torch.optim.Adam([scale], lr=ctx.cfg.ib_lr))
    return method._non_robust_mask(ctx, teacher, x, z, y, carried), carried


def test_per_sample_bottleneck_masks_each_sample_and_starts_afresh_every_call():
    from dfrd_bench.models import build_model

    torch.manual_seed(1)
    teacher = build_model("resnet8", 10, 32).eval()
    z = teacher.features(torch.rand(6, 3, 32, 32)).detach()
    mask, carried = _mask({}, z)
    assert carried is None and mask.shape == (6, z.shape[1], 1, 1)  # one decision per sample and channel
    again, _ = _mask({}, z)
    assert torch.equal(mask, again)  # nothing carried over: the same features and noise give the same mask
    printed, scale = _mask({"variant": "ib-printed"}, z)
    assert printed.shape == (1, z.shape[1], 1, 1) and scale[0].abs().sum() > 0  # the per-channel scale moved


def test_sample_threshold_is_the_largest_per_sample_spatial_variance():
    from methods.ferd import sample_channel_var

    z = torch.zeros(2, 3, 2, 2)
    z[0, 1] = torch.tensor([[0.0, 2.0], [0.0, 2.0]])   # spatial variance 4/3 (unbiased): the largest
    z[1, 2] = torch.tensor([[1.0, 1.0], [1.0, 0.0]])   # 0.25
    v = sample_channel_var(z)
    assert v[0, 1].item() == pytest.approx(4 / 3) and v[1, 2].item() == pytest.approx(0.25)
    noise_var = torch.tensor([[1.0, 2.0, 0.1], [1.5, 1.0, 1.0]])
    assert non_robust_channels(noise_var, v).tolist() == [[True, False, True], [False, True, True]]


def test_layer_l_is_cut_after_the_final_bn_where_the_head_starts_with_one():
    from dfrd_bench.models import build_model

    for arch, after_norm, block in (("wrn-16-1", "bn1", "block3"), ("preactresnet18", "head.bn", "layer4"),
                                    ("resnet20", "layer3", "layer3")):
        teacher = build_model(arch, 10, 32).eval()
        for reading, want in (("after-norm", after_norm), ("block", block)):
            cfg = resolve_config(FERD, "cifar10", "smoke", {"ib_layer": reading})
            assert FERD().feature_layer(cfg, teacher) == want, (arch, reading)
        x = torch.rand(2, 3, 32, 32)
        logits, h = teacher.forward_features(x, after_norm)
        assert torch.allclose(teacher.forward_from(h, x, after_norm), logits)  # f_{l+} continues from there
    cfg = resolve_config(FERD, "cifar10", "smoke", {"layer": "block2"})
    assert FERD().feature_layer(cfg, build_model("wrn-16-1", 10, 32)) == "block2"  # an explicit layer wins


def test_ib_printed_is_the_v2_reading_and_settings_are_checked_before_anything_runs():
    cfg = resolve_config(FERD, "cifar10", "quick", {"variant": "ib-printed"})
    assert (cfg.ib_noise, cfg.ib_penalty, cfg.ib_layer, cfg.ib_mask_variance) == ("per-channel", "sum", "block", "clean")
    default = resolve_config(FERD, "cifar10", "quick")
    assert (default.ib_noise, default.ib_penalty, default.ib_layer, default.ib_mask_variance) == \
        ("per-sample", "mean", "after-norm", "sample")
    from dfrd_bench.config import ConfigError

    for key in ("ib_noise", "ib_penalty", "ib_layer", "ib_mask_variance", "gen_init", "utae_on"):
        with pytest.raises(ConfigError, match=key):
            resolve_config(FERD, "cifar10", "quick", {key: "nonsense"})


def test_released_generator_gets_the_authors_reset_model_init():
    released = method_context(FERD, variant="released")
    method = FERD()
    method.setup(released)
    bn = [m for m in method.generator.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    w = torch.cat([m.weight.detach().flatten() for m in bn])
    assert 0.005 < w.std().item() < 0.04 and abs(w.mean().item() - 1) < 0.01  # N(1, 0.02), not all ones
    default = method_context(FERD)
    method = FERD()
    method.setup(default)
    assert all(torch.equal(m.weight, torch.ones_like(m.weight))
               for m in method.generator.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_runs_record_the_method_defaults_version_and_tables_keep_a_methods_newest():
    from dfrd_bench.config import DEFAULTS_VERSION, run_defaults_version
    from dfrd_bench.method import get_method
    from dfrd_bench.report.collect import Run, newest_method_defaults

    assert run_defaults_version(FERD) == 3 and run_defaults_version(get_method("cmi")) == DEFAULTS_VERSION

    def result(method, version, seed):
        return {"kind": "run", "method": method, "dataset": "cifar10", "preset": "standard", "seed": seed,
                "teacher": {"spec": "t", "checkpoint_sha256": "a"}, "student": {"arch": "resnet8"},
                "config": {"student_augment": True}, "defaults_version": version,
                **({"core_defaults_version": 2} if version > 2 else {}), "attacks": {}}

    runs = [Run(result("ferd", 2, 0)), Run(result("ferd", 3, 0)), Run(result("cmi", 2, 0))]
    assert len({r.setup for r in runs}) == 1  # FERD v3 and CMI v2 share the setup (the core's v2)
    kept, superseded = newest_method_defaults(runs)
    assert [(r.method, r.defaults_version) for r in kept] == [("ferd", 3), ("cmi", 2)]
    assert [(r.method, r.defaults_version) for r in superseded] == [("ferd", 2)]


def test_deepinv_paper_budget_follows_the_policy_and_ferd_sec51_is_a_variant():
    from dfrd_bench.method import get_method

    deepinv = get_method("deepinv")
    assert resolve_config(deepinv, "cifar10", "paper").gen_iters == 1000  # Fast-Datafree's deepinv_cifar.sh
    assert resolve_config(deepinv, "cifar10", "paper", {"variant": "ferd-sec5.1"}).gen_iters == 200
    assert resolve_config(deepinv, "cifar10", "standard").gen_iters == \
        resolve_config(deepinv, "cifar10", "standard", {"variant": "ferd-sec5.1"}).gen_iters  # CPU presets unchanged


def test_a_result_from_before_the_bottleneck_settings_reproduces_the_v2_reading():
    import json

    from dfrd_bench.config import with_added_settings
    from dfrd_bench.reproduce import recorded_overrides

    old = json.loads(json.dumps(resolve_config(FERD, "cifar10", "quick", {"variant": "ib-printed"}).to_dict(), default=str))
    for key in FERD.settings_added:
        old.pop(key)                       # a v2 config: the settings did not exist yet
    old.pop("variant")
    old["variant"] = "paper"
    result = {"method": "ferd", "dataset": "cifar10", "preset": "quick", "config": old, "overrides": {}}
    overrides, _ = recorded_overrides(result, ["clean"])
    assert {k: overrides[k] for k in ("ib_noise", "ib_penalty", "ib_layer")} == \
        {"ib_noise": "per-channel", "ib_penalty": "sum", "ib_layer": "block"}
    assert with_added_settings(old, FERD)["gen_init"] == "default"
    assert with_added_settings({**old, "ib_noise": "per-sample"}, FERD)["ib_noise"] == "per-sample"  # recorded wins
