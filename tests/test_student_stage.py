"""The runner's student stage shared by every method: the equal student budget of the `paper`
presets, student-stage augmentation (applied, seeded, per-method defaults) and the schedules."""
import pytest
import torch

from dfrd_bench.config import ConfigError, resolve_config, student_steps
from dfrd_bench.method import MethodContext, get_method, load_plugins
from dfrd_bench.models import build_model
from dfrd_bench.pool import SamplePool
from dfrd_bench.runner import RunRequest, run, student_batch, student_lr_at
from tests.conftest import same_students

BUILT_IN = ("ferd", "zskt", "cmi", "deepinv", "fast", "dfhl")


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100", "tinyimagenet"])
def test_paper_presets_give_every_method_ferds_student_budget(dataset):
    # FERD Sec. 5.1: 220 epochs x 400 student iterations; ZSKT as 8,800 pseudo-batches x 10 steps,
    # DFHL on that schedule instead of its own 300 x 500, Fast with its warm-up in front
    steps = {m: student_steps(resolve_config(get_method(m), dataset, "paper")) for m in BUILT_IN}
    assert steps == {m: 220 * 400 for m in BUILT_IN}
    for m in BUILT_IN:
        cfg = resolve_config(get_method(m), dataset, "paper")
        assert (cfg.student_lr, cfg.student_momentum, cfg.student_weight_decay) == (0.1, 0.9, 5e-4), m
        assert cfg.batch_size == (256 if dataset == "cifar10" else 512), m
        if m != "dfhl":  # DFHL's student learns from hard labels on High-Entropy Examples, not RSLAD
            attack = (cfg.utae_steps, cfg.utae_step) if m == "ferd" else (cfg.rslad_steps, cfg.rslad_step)
            assert attack == (10, pytest.approx(2 / 255)), m


def test_quick_presets_give_every_method_the_same_student_steps():
    steps = {m: student_steps(resolve_config(get_method(m), "cifar10", "quick")) for m in BUILT_IN}
    assert set(steps.values()) == {320}, steps
    released = resolve_config(get_method("ferd"), "cifar10", "quick", {"variant": "released"})
    assert student_steps(released) == 320


def test_standard_preset_is_quick_with_five_times_the_steps_and_a_larger_pool():
    for m in BUILT_IN:
        quick = resolve_config(get_method(m), "cifar10", "quick")
        standard = resolve_config(get_method(m), "cifar10", "standard")
        assert student_steps(standard) == 5 * student_steps(quick) == 1600, m
        # everything else as in quick: the parent's method layers (attack steps, bank sizes) carry over
        same = {k for k in quick if k not in ("preset", "epochs", "synthesis_batch_size", "pool_max", "aa_limit", "cpu_auto_precision",
                                              "generator_channels_last",
                                              "checkpoint_every_epochs", "log_every_epochs")}
        assert {k: standard[k] for k in same} == {k: quick[k] for k in same}, m
        pool = (standard.epochs - standard.warmup_epochs) * standard.synthesis_batch_size
        assert pool >= 5120 and (m == "zskt" or standard.pool_max >= pool), m   # ZSKT: a fresh 64 per pseudo-batch
    released = resolve_config(get_method("ferd"), "cifar10", "standard", {"variant": "released"})
    assert student_steps(released) == 1600 and released.warmup_epochs == 1


def test_null_only_where_the_default_is_null():
    from dfrd_bench.config import ConfigError, parse_overrides

    assert resolve_config(get_method("fast"), "cifar10", "quick", parse_overrides(["pool_max=null"])).pool_max is None
    for key in ("epochs", "student_augment"):
        with pytest.raises(ConfigError, match=f"{key} needs a value"):
            resolve_config(get_method("fast"), "cifar10", "quick", parse_overrides([f"{key}=null"]))


def test_student_augment_defaults_follow_each_reference():
    load_plugins()
    on = {m for m in BUILT_IN if resolve_config(get_method(m), "cifar10", "quick").student_augment}
    assert on == {"ferd", "cmi", "deepinv", "fast"}  # ZSKT: raw generator output; DFHL: its own HEE pipeline
    assert not resolve_config(get_method("cmi"), "cifar10", "quick", {"student_augment": False}).student_augment


def test_student_batches_are_augmented_and_seeded():
    pool = SamplePool(None)
    pool.add(torch.rand(32, 3, 8, 8))
    cfg_on = resolve_config(get_method("cmi"), "cifar10", "smoke", {"batch_size": 16})
    cfg_off = resolve_config(get_method("cmi"), "cifar10", "smoke", {"batch_size": 16, "student_augment": False})
    plain = student_batch(pool, cfg_off, torch.Generator().manual_seed(0)).x
    a = student_batch(pool, cfg_on, torch.Generator().manual_seed(0)).x
    b = student_batch(pool, cfg_on, torch.Generator().manual_seed(0)).x
    c = student_batch(pool, cfg_on, torch.Generator().manual_seed(1)).x
    assert a.shape == plain.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a, plain) and a.min() >= 0 and a.max() <= 1
    # each augmented image is a shifted (zero-padded) and possibly mirrored copy of its pool image
    for img, src in zip(a, plain):
        padded = torch.nn.functional.pad(src, (4, 4, 4, 4))
        views = [padded[:, dy:dy + 8, dx:dx + 8] for dy in range(9) for dx in range(9)]
        assert any(torch.equal(img, v) or torch.equal(img, v.flip(2)) for v in views)


@pytest.mark.slow
def test_student_augment_changes_training_and_resumes_exactly(tmp_path, test_npz):
    def req(name, resume=False, **over):
        return RunRequest(method="fast", dataset="cifar10", preset="smoke", seed=0, source=test_npz,
                          out=str(tmp_path / "runs"), run_name=name, resume=resume,
                          overrides={"teacher": "random:resnet8", **over})

    run(req("full"), log=lambda s: None)
    run(req("plain", student_augment=False), log=lambda s: None)
    assert not same_students(tmp_path / "runs", "full", "plain")
    from tests.conftest import interrupt_then_resume

    interrupt_then_resume(get_method("fast"), lambda name, resume=False: req(name, resume),
                          fail_when=lambda ctx: ctx.epoch == 2)
    assert same_students(tmp_path / "runs", "full", "split")


def test_cosine_through_warmup_keeps_stepping_in_the_warmup():
    ferd = get_method("ferd")
    restart = resolve_config(ferd, "cifar10", "paper", {"warmup_epochs": 20})
    through = resolve_config(ferd, "cifar10", "paper", {"warmup_epochs": 20, "student_schedule": "cosine-through-warmup"})
    assert student_lr_at(restart, 20) == pytest.approx(0.1)              # restarts after the warm-up
    assert student_lr_at(through, 20) == pytest.approx(0.05 * (1 + torch.cos(torch.tensor(torch.pi * 20 / 220)).item()))
    assert student_lr_at(through, 20) < student_lr_at(restart, 20)
    assert student_lr_at(through, 219) == pytest.approx(student_lr_at(restart, 219), rel=0.2)
    with pytest.raises(ConfigError, match="student_schedule"):
        resolve_config(ferd, "cifar10", "paper", {"student_schedule": "linear"})


def test_dfhl_refuses_double_augmentation():
    dfhl = get_method("dfhl")
    cfg = resolve_config(dfhl, "cifar10", "smoke", {"student_augment": True})
    teacher = build_model("resnet8", 10).eval()
    ctx = MethodContext(teacher=teacher, student=build_model("resnet8", 10), cfg=cfg, device=torch.device("cpu"),
                        rng=torch.Generator().manual_seed(0), pool=SamplePool(8), num_classes=10, image_size=32)
    with pytest.raises(ConfigError, match="twice"):
        dfhl().setup(ctx)
