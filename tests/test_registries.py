"""Issue 30, step 3: the closed lists are registries a plugin extends: presets (config.register_preset),
the student's optimiser and schedule (dfrd_bench/optim.py) and the evaluation attacks (one AttackSpec
each: attacks.register_attack). Every registration here is removed again, so other tests see the
built-ins only."""
import inspect
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import dfrd_bench.attacks as attacks_mod
import dfrd_bench.config as config
from dfrd_bench.attacks import (ATTACKS, AttackSettings, AttackSpec, register_attack, sign_ascent, ce_objective,
                                skip_random_start, unregister_attack)
from dfrd_bench.cli import main
from dfrd_bench.config import (DEFAULT_EPS, RUNNER_DEFAULTS, ConfigError, preset_names, register_preset, resolve_config,
                               unregister_preset)
from dfrd_bench.data import from_arrays
from dfrd_bench.evaluator import evaluate, parse_attacks
from dfrd_bench.method import get_method
from dfrd_bench.models import build_model
from dfrd_bench.optim import (create_optimizer, optimizer_names, register_optimizer, register_schedule, schedule_names,
                              unregister_optimizer, unregister_schedule)
from dfrd_bench.runner import RunRequest, run, student_lr_at
from tests.conftest import random_images

BUILT_IN_PRESETS = ["paper", "gpu", "standard", "quick", "smoke"]
BUILT_IN_ATTACKS = ("clean", "fgsm", "pgd20", "cw", "aa")


class ToyMethod:
    """Enough of a method for resolve_config: its own setting, and its own layer for the plugin preset."""

    name = "toy"
    defaults = {"toy_k": 1}
    presets = {"tiny": {"*": {"toy_k": 2}, "cifar10": {"gen_iters": 1}}}


@pytest.fixture
def tiny_preset():
    """A plugin's preset, registered as a plugin does at import time: `smoke` with 3 epochs."""
    register_preset("tiny", {"*": {"epochs": 3}}, parent="smoke", help="smoke with one more epoch")
    yield "tiny"
    unregister_preset("tiny")
    assert preset_names() == BUILT_IN_PRESETS and config.PRESET_NAMES == tuple(BUILT_IN_PRESETS)


def test_builtin_presets_are_registered_in_their_order():
    assert preset_names() == BUILT_IN_PRESETS and config.PRESET_NAMES == tuple(BUILT_IN_PRESETS)
    assert config.PRESET_PARENTS == {"standard": "quick"} and config.preset_chain("standard") == ["quick", "standard"]


def test_a_plugin_preset_resolves_lists_and_refuses_a_duplicate(tiny_preset, tmp_path):
    assert preset_names() == BUILT_IN_PRESETS + ["tiny"] and config.PRESET_NAMES[-1] == "tiny"
    cfg = resolve_config(get_method("cmi"), "cifar10", "tiny")
    smoke = resolve_config(get_method("cmi"), "cifar10", "smoke")
    assert cfg.epochs == 3 and cfg.preset == "tiny"
    assert {k: v for k, v in cfg.items() if k not in ("epochs", "preset")} == \
        {k: v for k, v in smoke.items() if k not in ("epochs", "preset")}  # the parent's layers, method's included
    toy = resolve_config(ToyMethod, "cifar10", "tiny")   # a method's own layers for the plugin's preset
    assert (toy.toy_k, toy.gen_iters, toy.epochs) == (2, 1, 3)
    for name in ("tiny", "quick"):
        with pytest.raises(ConfigError, match=f"preset '{name}' is already registered") as err:
            register_preset(name, {"*": {"epochs": 1}})
        assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="cannot be removed: tiny"):
        unregister_preset("smoke")
    out = CliRunner().invoke(main, ["list", "presets"])
    assert out.exit_code == 0 and "tiny (on smoke)" in out.output and "epochs=3" in out.output
    # the command line takes it (checked after the plugins are loaded) and names the registered ones otherwise
    res = CliRunner().invoke(main, ["sweep", "--method", "cmi", "--dataset", "cifar10", "--preset", "tiny",
                                    "--out", str(tmp_path), "--dry-run"])
    assert res.exit_code == 0 and "tiny" in res.output, res.output
    res = CliRunner().invoke(main, ["sweep", "--method", "cmi", "--dataset", "cifar10", "--preset", "tinny",
                                    "--out", str(tmp_path), "--dry-run"])
    assert res.exit_code == 2
    assert "unknown preset 'tinny'; registered presets: paper, gpu, standard, quick, smoke, tiny" in res.output


def test_a_preset_without_runner_settings_is_listed_and_a_missing_parent_is_one_line():
    register_preset("bare", help="only a method's layers")
    register_preset("orphan", {"*": {"epochs": 3}}, parent="nowhere")
    try:
        out = CliRunner().invoke(main, ["list", "presets"])
        assert out.exit_code == 0 and any(line.split()[:3] == ["bare", "runner", "*"] for line in out.output.splitlines())
        assert resolve_config(get_method("cmi"), "cifar10", "bare").epochs == RUNNER_DEFAULTS["epochs"]
        with pytest.raises(ConfigError, match="builds on 'nowhere', which is not a registered preset"):
            resolve_config(get_method("cmi"), "cifar10", "orphan")
        with pytest.raises(ConfigError, match="preset name"):
            register_preset("a/b")
    finally:
        unregister_preset("orphan")
        unregister_preset("bare")
    with pytest.raises(ConfigError, match="unknown preset 'bare'; choose paper, gpu, standard, quick, smoke"):
        resolve_config(get_method("cmi"), "cifar10", "bare")


# ------------------------------------------------------------------------------------------------ optimisers
def test_default_sgd_makes_exactly_torch_sgd_s_update():
    cfg = resolve_config(get_method("cmi"), "cifar10", "quick")
    assert cfg.student_optimizer == "sgd" and optimizer_names()[0] == "sgd"
    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.BatchNorm1d(5), torch.nn.Linear(5, 3))
    b = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.BatchNorm1d(5), torch.nn.Linear(5, 3))
    b.load_state_dict(a.state_dict())
    ours = create_optimizer("sgd", a.parameters(), cfg)
    theirs = torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)  # the runner's before issue 30
    assert type(ours) is torch.optim.SGD
    assert {k: v for k, v in ours.defaults.items()} == {k: v for k, v in theirs.defaults.items()}
    g = torch.Generator().manual_seed(1)
    for step in range(4):
        x, y = torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)
        for model, opt in ((a, ours), (b, theirs)):
            for group in opt.param_groups:
                group["lr"] = 0.1 * (0.5 ** step)   # as the runner sets each epoch's rate
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(pa, pb)
    for sa, sb in zip(ours.state_dict()["state"].values(), theirs.state_dict()["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])


def test_a_registered_optimizer_is_chosen_by_name_and_runs(tmp_path, test_npz):
    made = []

    @register_optimizer("adam-test", help="Adam at student_lr (a test's)")
    def adam(params, cfg):
        made.append(cfg["student_lr"])
        return torch.optim.Adam(params, lr=cfg["student_lr"])

    try:
        assert "adam-test" in optimizer_names()
        cfg = resolve_config(get_method("cmi"), "cifar10", "smoke", {"student_optimizer": "adam-test", "student_lr": 1e-3})
        assert isinstance(create_optimizer(cfg.student_optimizer, torch.nn.Linear(2, 2).parameters(), cfg), torch.optim.Adam)
        with pytest.raises(ConfigError, match="'adam-test' is already registered"):
            register_optimizer("adam-test")(adam)
        made.clear()
        result = run(RunRequest(method="cmi", dataset="cifar10", preset="smoke", source=test_npz, out=str(tmp_path),
                                overrides={"teacher": "random:resnet8", "student_optimizer": "adam-test",
                                           "student_lr": 1e-3, "attacks": "clean"}), log=lambda line: None)
        assert made == [1e-3] and result["config"]["student_optimizer"] == "adam-test"
    finally:
        unregister_optimizer("adam-test")
    assert optimizer_names() == ["sgd"]


def test_a_registered_schedule_sets_each_epoch_s_rate():
    @register_schedule("halving-test")
    def halving(cfg, epoch):
        """student_lr halved every epoch."""
        return cfg["student_lr"] * 0.5 ** epoch

    try:
        cfg = resolve_config(get_method("cmi"), "cifar10", "quick", {"student_schedule": "halving-test"})
        assert [student_lr_at(cfg, e) for e in range(3)] == [0.1, 0.05, 0.025]
    finally:
        unregister_schedule("halving-test")
    assert schedule_names() == ["cosine", "cosine-through-warmup", "constant"]


@pytest.mark.parametrize("key, value, choices", [
    ("student_optimizer", "adamw", "sgd"),
    ("student_schedule", "linear", "cosine, cosine-through-warmup, constant"),
])
def test_an_unknown_optimizer_or_schedule_is_one_line_naming_the_choices(key, value, choices):
    with pytest.raises(ConfigError) as err:
        resolve_config(get_method("cmi"), "cifar10", "quick", {key: value})
    assert str(err.value) == f"{key} must be one of {choices}, got {value!r}"


def test_a_state_written_before_student_optimizer_existed_still_resumes():
    from dfrd_bench.runner import _check_same_run

    cfg = resolve_config(get_method("cmi"), "cifar10", "smoke", {"teacher": "random:resnet8"})
    old = {k: v for k, v in json.loads(json.dumps(cfg.to_dict(), default=str)).items() if k != "student_optimizer"}
    _check_same_run({"config": json.dumps(old)}, "state.pt", cfg, {}, lambda line: None)   # no error
    other = resolve_config(get_method("cmi"), "cifar10", "smoke", {"teacher": "random:resnet8", "student_optimizer": "sgd",
                                                                   "student_schedule": "constant"})
    with pytest.raises(Exception, match="student_schedule"):
        _check_same_run({"config": json.dumps(old)}, "state.pt", other, {}, lambda line: None)


# ------------------------------------------------------------------------------------------------ attacks
def _noise(model, x, y, s, gen=None):
    """A random-start PGD with 2 steps: drawn like pgd20, so it can be dealt out."""
    return sign_ascent(ce_objective(model, y), x, s.eps, s.eps / 2, int(s.extra.get("noise_steps", 2)), generator=gen)


def test_builtin_attacks_derive_today_s_names_and_settings():
    assert attacks_mod.ATTACK_ORDER == BUILT_IN_ATTACKS
    assert attacks_mod.ATTACK_LABELS == {"clean": "Clean", "fgsm": "FGSM", "pgd20": "PGD-20", "cw": "CW-inf", "aa": "AA"}
    assert list(attacks_mod.BATCH_DRAWS) == list(BUILT_IN_ATTACKS) and sorted(ATTACKS.names()) == sorted(BUILT_IN_ATTACKS)
    assert list(AttackSettings().resolved()) == ["eps", "robust_requires_clean_correct", "fgsm", "pgd20", "cw", "aa"]


def test_an_attack_declared_once_appears_everywhere():
    spec = register_attack(AttackSpec("noise", _noise, label="Noise-2", order=25, help="a test's attack",
                                      draws=skip_random_start,
                                      settings=lambda s: {"steps": int(s.extra.get("noise_steps", 2)), "step": s.eps / 2}))
    try:
        assert attacks_mod.ATTACK_ORDER == ("clean", "fgsm", "pgd20", "noise", "cw", "aa")
        assert attacks_mod.attack_order() == attacks_mod.ATTACK_ORDER
        assert list(attacks_mod.ATTACK_LABELS.items())[3] == ("noise", "Noise-2")
        assert attacks_mod.BATCH_DRAWS["noise"] is skip_random_start and ATTACKS.get("noise") is _noise
        assert ATTACKS.describe("noise") == "a test's attack"
        assert AttackSettings().resolved()["noise"] == {"steps": 2, "step": DEFAULT_EPS / 2}
        assert parse_attacks("all") == list(attacks_mod.ATTACK_ORDER) and parse_attacks("cw,noise") == ["noise", "cw"]
        with pytest.raises(Exception, match="duplicate attack name 'noise'"):
            register_attack(spec)
        torch.manual_seed(0)
        model = build_model("resnet8", 10, 32)
        data = from_arrays(random_images(20), np.arange(20) % 10, "cifar10")
        out = evaluate(model, data, ["clean", "noise"], AttackSettings(attack_misclassified=True), batch_size=8)
        assert out["attacks"]["noise"]["n"] == 20 and out["attacks"]["noise"]["attacked"] == 20
        assert 0 < out["attacks"]["noise"]["max_linf"] <= DEFAULT_EPS + 1e-6 and "noise" in out["settings"]
        out = CliRunner().invoke(main, ["list", "attacks"])
        assert "a test's attack" in out.output
    finally:
        unregister_attack("noise")
    assert attacks_mod.ATTACK_ORDER == BUILT_IN_ATTACKS and "noise" not in attacks_mod.ATTACK_LABELS
    assert "noise" not in attacks_mod.BATCH_DRAWS and "noise" not in ATTACKS and "noise" not in AttackSettings().resolved()


# ------------------------------------------------------------------------------------------------ eps
def test_the_eps_default_and_range_live_in_config():
    from dfrd_bench.api import evaluate as api_evaluate
    from dfrd_bench.teacher_training import TeacherTrainConfig

    assert DEFAULT_EPS == 8 / 255 and config.parse_fraction(config.DEFAULT_EPS_TEXT) == DEFAULT_EPS
    assert RUNNER_DEFAULTS["eps"] == AttackSettings().eps == DEFAULT_EPS
    assert inspect.signature(api_evaluate).parameters["eps"].default == DEFAULT_EPS
    assert TeacherTrainConfig.__dataclass_fields__["eps"].default == DEFAULT_EPS
    assert config.RUNNER_RANGES["eps"] is config.EPS_RANGE
    with pytest.raises(ConfigError, match="write 8/255"):
        config.check_eps(8.0)
    res = CliRunner().invoke(main, ["eval", "--model", "random:resnet8", "--dataset", "cifar10", "--eps", "8"])
    assert res.exit_code == 2 and "--eps must be > 0 and <= 1, got 8.0" in res.output
