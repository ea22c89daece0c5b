"""The CUDA path, exercised on a CPU (issue 28): each mechanism that a GPU run depends on, with the
CUDA-only conditions faked where needed (device counts, RNG setters, a failing compiler, an old
driver), and the precision rules of dfrd_bench/acceleration.py checked on bf16 autocast on the CPU."""
from __future__ import annotations

import json
from unittest import mock

import pytest
import torch
from click.testing import CliRunner

from dfrd_bench.acceleration import Accelerator, ieee_fp32, tf32_enabled, to_device
from dfrd_bench.attacks import ce_objective, sign_ascent
from dfrd_bench.method import get_method
from tests.conftest import method_context


# ------------------------------------------------------------------------------ crash risks
def test_cuda_rng_restore_takes_only_the_runs_gpu(monkeypatch):
    """A state saved with 4 GPUs visible resumes with 1: only the run's GPU's state is restored
    (set_rng_state_all over the saved list raised IndexError)."""
    from dfrd_bench import runner

    restored = []

    def set_rng_state(state, device="cuda"):
        index = torch.device(device).index or 0
        if index >= 1:  # one GPU visible: what torch raises for a device that does not exist
            raise IndexError("device index out of range")
        restored.append((int(state[0]), index))

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_rng_state", set_rng_state)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all",
                        lambda states: [set_rng_state(s, i) for i, s in enumerate(states)])
    saved_under_four = [torch.tensor([i], dtype=torch.uint8) for i in range(4)]  # written before issue 28
    runner._restore_cuda_rng(torch.device("cuda"), {"cuda": saved_under_four})
    assert restored == [(0, 0)]
    restored.clear()
    runner._restore_cuda_rng(torch.device("cuda", 0), {"cuda_device": torch.tensor([7], dtype=torch.uint8)})
    assert restored == [(7, 0)]
    restored.clear()
    runner._restore_cuda_rng(torch.device("cpu"), {"cuda": saved_under_four, "cuda_device": saved_under_four[0]})
    assert restored == []  # a CPU run restores no GPU state


def test_cuda_rng_state_is_saved_for_the_runs_gpu_only(monkeypatch):
    from dfrd_bench import runner

    ctx = method_context(get_method("cmi"))
    states = runner._rng_states(ctx)
    assert "cuda" not in states and "cuda_device" not in states  # a CPU run keeps no GPU state
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: torch.tensor([int(torch.device(device).index or 0)]))
    ctx.device = torch.device("cuda", 0)
    assert torch.equal(runner._rng_states(ctx)["cuda_device"], torch.tensor([0]))


def _compile_failing_with(message: str):
    """A stand-in for torch.compile whose compiled model fails at its first call with `message`."""
    def broken_compile(model, **kwargs):
        def call(x):
            raise RuntimeError(message)
        return call

    return broken_compile


def test_compile_failure_falls_back_to_eager_with_one_warning(monkeypatch):
    """A compiler that fails when the graph is first run (no C compiler, an Inductor error): the
    eager pass runs instead, one warning, and the accelerator records why."""
    monkeypatch.setattr(torch, "compile", _compile_failing_with("InductorError: CppCompileError: no working C compiler found"))
    warnings = []
    accel = Accelerator(torch.device("cpu"), compile_attacks=True, warn=warnings.append)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)).eval().requires_grad_(False)
    x = torch.rand(4, 3, 2, 2)
    y = torch.tensor([0, 1, 2, 0])
    eager = sign_ascent(ce_objective(model, y), x, 0.1, 0.02, 3, rand_init=False)
    for _ in range(2):
        attacked = accel.attack_model(model)
        assert torch.equal(sign_ascent(ce_objective(attacked, y), x, 0.1, 0.02, 3, rand_init=False), eager)
    assert len(warnings) == 1 and "InductorError" in warnings[0] and "compile=off" in warnings[0]
    assert accel.describe()["compile_fallback"].startswith("torch.compile failed")
    assert accel.attack_model(model) is model  # from now on the plain model


def test_a_failing_backward_compile_also_falls_back(monkeypatch):
    """The backward graph compiles at the first backward: the trial pass catches that too."""
    class FailsInBackward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, grad):
            raise RuntimeError("BackendCompilerFailed: triton not found")

    monkeypatch.setattr(torch, "compile", lambda model, **kw: (lambda x: model(FailsInBackward.apply(x))))
    warnings = []
    accel = Accelerator(torch.device("cpu"), compile_attacks=True, warn=warnings.append)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)).eval().requires_grad_(False)
    x = torch.rand(2, 3, 2, 2)
    out = sign_ascent(ce_objective(accel.attack_model(model), torch.tensor([0, 1])), x, 0.1, 0.02, 2, rand_init=False)
    assert out.shape == x.shape and len(warnings) == 1 and "triton" in warnings[0]


@pytest.mark.slow
def test_a_run_records_the_compile_fallback(tmp_path, test_npz, monkeypatch):
    from dfrd_bench.runner import RunRequest, run

    monkeypatch.setattr(torch, "compile", _compile_failing_with("InductorError: no C compiler"))
    lines = []
    req = RunRequest(method="cmi", dataset="cifar10", preset="smoke", source=test_npz, out=str(tmp_path),
                     overrides={"teacher": "random:resnet8", "compile": "on", "epochs": 1, "attacks": "clean"})
    result = run(req, log=lines.append)
    assert sum("torch.compile failed" in line for line in lines) == 1
    assert "InductorError" in result["speed"]["compile_fallback"]
    assert result["provenance"]["sessions"][-1]["compile_fallback"] == result["speed"]["compile_fallback"]


def test_device_cuda_says_the_driver_is_too_old(monkeypatch):
    """torch built for CUDA 13 on a driver of the CUDA 12 era: one line saying why and what to do."""
    from dfrd_bench import cuda_driver  # where pick_device reads the driver from
    from dfrd_bench.errors import DfrdError
    from dfrd_bench.utils import pick_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(cuda_driver, "driver_version", lambda: "550.54.15")
    with pytest.raises(DfrdError) as err:
        pick_device("cuda")
    text = str(err.value)
    assert "\n" not in text and "550.54.15" in text and ">= 580.65.06" in text and "update the driver" in text
    monkeypatch.setattr(cuda_driver, "driver_version", lambda: None)
    with pytest.raises(DfrdError, match="no NVIDIA driver is loaded"):
        pick_device("cuda:0")
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(DfrdError, match="built without CUDA"):
        pick_device("cuda")


def test_driver_requirements_by_cuda_version():
    from dfrd_bench.cuda_driver import driver_fits, required_driver

    assert required_driver("13.0") == "580.65.06" and required_driver("12.4") == "525.60.13"
    assert driver_fits("580.82.07", "13.0") and not driver_fits("575.57.08", "13.0")
    assert driver_fits("535.104.05", "12.8") and driver_fits(None, "13.0") is None


# ------------------------------------------------------------------------------ wrong results
def test_sign_ascent_on_bf16_pixels_stays_in_the_ball():
    """A bf16 image stepped in bf16 left the ball (0.0332 against 8/255): pixels are fp32 now."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10)).eval().requires_grad_(False)
    x = torch.rand(16, 3, 8, 8).clamp(0.9, 1.0).bfloat16()  # near 1, where bf16's spacing is largest
    y = torch.randint(0, 10, (16,))
    eps = 8 / 255
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x_adv = sign_ascent(ce_objective(model, y), x, eps, eps / 4, 20, generator=torch.Generator().manual_seed(0))
    assert x_adv.dtype == torch.float32
    assert float((x_adv - x.float()).abs().max()) <= eps + 1e-7


@pytest.mark.slow
def test_ferd_generation_in_bf16_keeps_fp32_pixels_margins_and_weights(monkeypatch):
    """FERD's generation under the run's bf16 autocast: the reweighting PGD stays in the eps ball,
    the samples are fp32, and so are the margins, vulnerabilities and class weights p."""
    import methods.ferd as ferd

    ctx = method_context(get_method("ferd"), reweight_pgd_steps=5)
    ctx.accel = Accelerator(torch.device("cpu"), dtype=torch.bfloat16)
    attacks, margins = [], []
    real_ascent, real_vuln = ferd.sign_ascent, ferd.class_vulnerability

    def spy_ascent(objective, x, eps, *args, **kwargs):
        out = real_ascent(objective, x, eps, *args, **kwargs)
        attacks.append((x, out, eps))
        return out

    def spy_vuln(m, *args):
        margins.append(m)
        return real_vuln(m, *args)

    monkeypatch.setattr(ferd, "sign_ascent", spy_ascent)
    monkeypatch.setattr(ferd, "class_vulnerability", spy_vuln)
    method = ferd.FERD()
    method.setup(ctx)
    with ctx.accel.autocast():
        samples = method.generate(ctx)
    assert samples.x.dtype == torch.float32
    assert attacks, "the reweighting PGD did not run"
    for x, x_adv, eps in attacks:
        assert x_adv.dtype == torch.float32 and float((x_adv - x.float()).abs().max()) <= eps + 1e-7
    assert margins and all(m.dtype == torch.float32 for m in margins)
    for t in (method.p, method.vulnerability):
        assert t.dtype == torch.float32 and t.device.type == "cpu"
    assert abs(float(method.p.sum()) - 1) < 1e-6


def test_class_means_are_fp32_on_the_cpu_whatever_the_input():
    from methods.ferd import class_means

    values = torch.tensor([0.5, 1.25, -2.0, 3.0]).bfloat16()
    y = torch.tensor([0, 0, 2, 2])
    out = class_means(values, y, 3, torch.full((3,), 9.0))
    assert out.dtype == torch.float32 and out.device.type == "cpu"
    assert out.tolist() == [0.875, 9.0, 0.5]


def test_evaluation_runs_with_tf32_off_and_restores_it():
    """torch's cuDNN default is TF32 for fp32 convolutions: the evaluator turns it off (and matmuls'),
    and puts back what it found."""
    from dfrd_bench.attacks import AttackSettings
    from dfrd_bench.data import ImageSet
    from dfrd_bench.evaluator import evaluate
    from tests.conftest import TinyLinear, random_images

    seen = []

    class Recorder(TinyLinear):
        def forward(self, x):
            seen.append((tf32_enabled(), torch.is_autocast_enabled("cpu")))
            return super().forward(x)

    import numpy as np

    data = ImageSet(random_images(8, size=4), np.arange(8) % 3, ["a", "b", "c"], source={"kind": "test"})
    before = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = True, True
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):  # even inside a training autocast
            evaluate(Recorder(), data, ["clean", "fgsm"], AttackSettings(eps=0.1, channels_last=False),
                     device="cpu", batch_size=4)
        assert seen and all(flags == ((False, False), False) for flags in seen)
        assert tf32_enabled() == (True, True)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def test_fp32_training_precision_is_ieee_and_bf16_is_autocast():
    accel = Accelerator(torch.device("cpu"))
    with accel.autocast():
        assert tf32_enabled() == (False, False)
    with Accelerator(torch.device("cpu"), dtype=torch.bfloat16).autocast():
        assert torch.is_autocast_enabled("cpu")
    with ieee_fp32():
        assert tf32_enabled() == (False, False)


@pytest.mark.slow
def test_resume_refuses_to_continue_in_another_precision(tmp_path, test_npz, monkeypatch):
    """A run started in fp32 (on a CPU) is not continued in bf16 (precision=auto on a GPU)."""
    import dfrd_bench.runner as runner
    from dfrd_bench.runner import RunError, RunRequest, run

    def request(resume=False):
        return RunRequest(method="cmi", dataset="cifar10", preset="smoke", source=test_npz, out=str(tmp_path),
                          run_name="r", resume=resume, overrides={"teacher": "random:resnet8", "attacks": "clean"})

    def stop(epoch):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(request(), log=lambda s: None, after_epoch=stop)
    state = torch.load(tmp_path / "r" / "state.pt", weights_only=True)
    assert state["identity"]["training_precision"] == "fp32"
    real = Accelerator.from_config.__func__
    # what precision=auto resolves to on CUDA, faked on the CPU
    monkeypatch.setattr(runner.Accelerator, "from_config",
                        classmethod(lambda cls, cfg, device: Accelerator(device, False, torch.bfloat16)))
    with pytest.raises(RunError, match=r"trained in fp32 .* continue it in bf16.*--device cpu"):
        run(request(resume=True), log=lambda s: None)
    monkeypatch.setattr(runner.Accelerator, "from_config", classmethod(real))
    # a state written before the precision was recorded still resumes
    del state["identity"]["training_precision"]
    torch.save(state, tmp_path / "r" / "state.pt")
    assert run(request(resume=True), log=lambda s: None)["kind"] == "run"


def test_bench_eval_bound_uses_the_evaluators_fp32_eager_passes():
    from dfrd_bench.attacks import AttackSettings
    from dfrd_bench.bench import eval_bound, measure_eval_passes

    passes = {"student_forward": 1.0, "student_input_grad": 2.0, "eval_student_forward": 10.0,
              "eval_student_input_grad": 20.0}
    assert eval_bound("pgd20", AttackSettings(), passes, 64, 64) == 20 * 20.0 + 10.0
    legacy = {"student_forward": 1.0, "student_input_grad": 2.0}
    assert eval_bound("pgd20", AttackSettings(), legacy, 64, 64) == 20 * 2.0 + 1.0

    ctx = method_context(get_method("cmi"))
    modes = []
    ctx.student.register_forward_hook(lambda m, i, o: modes.append((torch.is_autocast_enabled("cpu"), tf32_enabled())))
    x = torch.rand(2, 3, 32, 32)
    same = measure_eval_passes(ctx, x, 1, 0, {"student_forward": 1.0, "student_input_grad": 2.0})
    assert same == {"eval_student_forward": 1.0, "eval_student_input_grad": 2.0} and not modes  # fp32 eager: reused
    ctx.accel = Accelerator(torch.device("cpu"), dtype=torch.bfloat16)
    with ctx.accel.autocast():
        timed = measure_eval_passes(ctx, x, 1, 0, {"student_forward": 1.0, "student_input_grad": 2.0})
    assert set(timed) == {"eval_student_forward", "eval_student_input_grad"} and timed["eval_student_forward"] != 1.0
    assert modes and all(m == (False, (False, False)) for m in modes)


# ------------------------------------------------------------------------------ host syncs
def test_to_device_copies_through_pinned_memory_without_blocking():
    t = mock.MagicMock()
    t.device = torch.device("cpu")
    to_device(t, torch.device("cuda", 0))
    t.pin_memory.assert_called_once_with()
    t.pin_memory.return_value.to.assert_called_once_with(torch.device("cuda", 0), non_blocking=True)
    cpu = torch.arange(3)
    assert to_device(cpu, "cpu") is cpu  # nothing on a CPU


def test_the_training_step_draws_reach_the_device_through_to_device(monkeypatch):
    """Every CPU draw of a student step and a generator iteration goes through to_device (so none is a
    blocking copy on a GPU); counted on the CPU by wrapping it."""
    import dfrd_bench.acceleration as acc
    import dfrd_bench.augment as augment
    import dfrd_bench.method as method_mod
    import dfrd_bench.pool as pool_mod
    from dfrd_bench.runner import student_batch

    calls = []
    real = acc.to_device

    def counting(t, device):
        calls.append(tuple(t.shape))
        return real(t, device)

    for module in (acc, augment, method_mod, pool_mod):
        monkeypatch.setattr(module, "to_device", counting)
    ctx = method_context(get_method("ferd"), student_augment=True)
    ctx.pool.add(torch.rand(8, 3, 32, 32), torch.arange(8) % 10)
    batch = student_batch(ctx.pool, ctx.cfg, ctx.rng)
    assert len(calls) == 4  # pool indices, crop offsets (2), flips
    calls.clear()
    method = get_method("ferd")()
    method.setup(ctx)
    method.student_loss(ctx, batch)
    assert calls  # the UTAE start noise


def test_kl_uniform_keeps_its_bits_without_a_device_tensor():
    from dfrd_bench.losses import kl_uniform

    logits = torch.randn(16, 10)
    old = (-torch.log_softmax(logits, 1).mean(1) - torch.log(torch.tensor(10.0))).mean()
    assert torch.equal(kl_uniform(logits), old)


# ------------------------------------------------------------------------------ presets, estimate, doctor
def test_gpu_preset_is_listed_and_gives_every_method_the_same_student_steps():
    from dfrd_bench.acceleration import compile_wanted
    from dfrd_bench.cli import main
    from dfrd_bench.config import resolve_config, student_steps

    out = CliRunner().invoke(main, ["list", "presets"])
    assert out.exit_code == 0 and "gpu" in out.output and "gpu-resnet18-cifar10" in out.output
    steps = set()
    for name in ("ferd", "zskt", "cmi", "deepinv", "fast", "dfhl"):
        cfg = resolve_config(get_method(name), "cifar10", "gpu")
        steps.add(student_steps(cfg))
        assert cfg.student == "resnet18" and cfg.aa_limit == 1000 and cfg.eval_limit is None
        assert not compile_wanted(cfg)  # no minute of compilation inside a 5-minute run
    assert steps == {2000}


@pytest.mark.slow
def test_estimate_counts_every_part_and_writes_json(tmp_path):
    from dfrd_bench.cli import main

    out = tmp_path / "e.json"
    res = CliRunner().invoke(main, ["estimate", "--method", "ferd", "--preset", "smoke", "--teacher", "random:resnet8",
                                    "--device", "h100,a100", "--out", str(out)])
    assert res.exit_code == 0, res.output
    r = json.loads(out.read_text())
    assert set(r["parts"]) == {"generation", "generation_overhead", "student_stage"}
    assert set(r["evaluation"]) == {"clean", "pgd20"}
    assert r["total_flops"] == pytest.approx(sum(p["flops"] for p in r["parts"].values())
                                             + sum(p["flops"] for p in r["evaluation"].values()))
    student = r["parts"]["student_stage"]
    f = r["pass_gflops_per_image"]
    per_image = (f["teacher_forward"] + 2 * f["student_input_grad"] + 2 * f["student_train"]) * 1e9
    assert student["flops"] == pytest.approx(per_image * 8 * 2 * 2, rel=1e-3)  # batch 8 x (2 epochs x 2 iters)
    assert r["times"]["a100"]["pessimistic"]["total_seconds"] > r["times"]["h100"]["pessimistic"]["total_seconds"]
    assert "ESTIMATE" in res.output


@pytest.mark.slow
def test_estimate_of_a_paper_ferd_run_is_about_an_exaflop(tmp_path):
    """The review's count: ~1.3 EFLOP for paper FERD (WRN-34-10 -> ResNet-18)."""
    from dfrd_bench.estimate import EstimateRequest, estimate

    r = estimate(EstimateRequest(method="ferd", preset="paper"))
    assert 0.9e18 <= r["total_flops"] <= 2.0e18
    assert r["parts"]["student_stage"]["flops"] == pytest.approx(951e15, rel=0.02)
    assert r["parts"]["generation"]["flops"] == pytest.approx(333e15, rel=0.03)
    assert r["parts"]["generation_overhead"]["flops"] == pytest.approx(31e15, rel=0.03)


def test_doctor_says_what_works(tmp_path, monkeypatch):
    from dfrd_bench import doctor
    from dfrd_bench.cli import main

    monkeypatch.setattr(doctor, "compile_check", lambda device: {"ok": False, "seconds": 0.1,
                                                                 "error": "InductorError: no C compiler"})
    out = tmp_path / "doctor.json"
    res = CliRunner().invoke(main, ["doctor", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "what will work here" in res.output and "[NO] compile=auto/on" in res.output
    facts = json.loads(out.read_text())
    assert {"torch", "torch_cuda", "driver", "gpus", "compile", "data", "models", "verdict"} <= set(facts)
    verdict = {what: ok for what, ok, _ in facts["verdict"]}
    assert verdict["compile=auto/on (paper preset)"] is False
    assert verdict["--device cuda"] is torch.cuda.is_available()


def test_compile_check_reports_a_failure(monkeypatch):
    from dfrd_bench.doctor import compile_check

    def broken(model, **kwargs):
        raise RuntimeError("Dynamo is not supported on Python 3.99")

    monkeypatch.setattr(torch, "compile", broken)
    result = compile_check("cpu")
    assert result["ok"] is False and "Dynamo" in result["error"]


# ------------------------------------------------------------------------------ teacher training
def test_teacher_training_in_bf16_runs_and_refuses_a_resume_in_fp32(tmp_path):
    import numpy as np

    from dfrd_bench.teacher_training import TeacherTrainConfig, train_teacher
    from tests.conftest import random_images

    src = tmp_path / "train.npz"
    np.savez(src, x=random_images(40, seed=1), y=np.arange(40) % 10)

    def cfg(**kw):
        return TeacherTrainConfig(arch="resnet8", source=str(src), epochs=1, batch_size=8, val_size=0,
                                  out=str(tmp_path / "t"), device="cpu", **kw)

    result = train_teacher(cfg(precision="bf16", max_steps=2), log=lambda s: None)
    assert all(p.dtype == torch.float32 for p in result["model"].parameters())
    with pytest.raises(ValueError, match="other settings"):
        train_teacher(cfg(precision="fp32"), log=lambda s: None)


# ------------------------------------------------------------------------------ data-parallel class weights
def _reweight_on_rank(rank: int, out_dir, perturb: bool) -> None:
    """FERD's class weights on one of 2 gloo ranks, each with its own share of the batch; with
    `perturb`, rank 1's class statistics differ in the last bits (as CUDA's atomic index_add_ may)."""
    import methods.ferd as ferd
    from dfrd_bench.distributed import World

    ctx = method_context(get_method("ferd"), reweight_pgd_steps=2)
    ctx.world = World(rank, 2)
    ctx.rng = torch.Generator().manual_seed(rank)
    method = ferd.FERD()
    method.setup(ctx)
    if perturb and rank == 1:
        real = ferd.class_vulnerability
        ferd.class_vulnerability = lambda *args: real(*args) * (1 + 1e-6)
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(10 + rank))
    y = (torch.arange(4) + 4 * rank) % 10
    method._reweight(ctx, x, y)
    torch.save({"p": method.p, "vulnerability": method.vulnerability}, out_dir / f"rank{rank}.pt")


@pytest.mark.slow
def test_ferd_class_weights_are_bit_identical_on_two_gloo_ranks(tmp_path):
    """Every rank ends with rank 0's p even when its own arithmetic differs in the last bit (the state
    check before each checkpoint compares exact sums: one differing bit stopped the run)."""
    from tests.test_distributed import _gloo, _spawn

    if not _gloo():
        pytest.skip("torch.distributed with gloo is not available")
    for perturb in (False, True):
        _spawn(_reweight_on_rank, tmp_path, perturb)
        a, b = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
        for key in ("p", "vulnerability"):
            assert a[key].dtype == torch.float32 and torch.equal(a[key], b[key]), key


def test_a_resnet18_checkpoint_of_the_suite_loads(tmp_path):
    """ResNet-18's keys also fit pytorch-cifar's layout: a dfrd-bench checkpoint (the gpu preset's
    teacher, a gpu run's student) must load as what it is, in its own normalisation."""
    from dfrd_bench.checkpoints import load_model, save_model
    from dfrd_bench.models import build_model

    torch.manual_seed(0)
    model = build_model("resnet18", 10, 32, (0.5, 0.4, 0.3), (0.2, 0.2, 0.2)).eval()
    save_model(model, tmp_path / "r18.pt", "cifar10", 32)
    loaded = load_model(tmp_path / "r18.pt")
    assert loaded.origin["layout"] == "dfrd-bench" and loaded.mean.flatten().tolist() == pytest.approx([0.5, 0.4, 0.3])
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


@pytest.mark.slow
def test_the_fp16_teacher_loads_into_fp32_and_halves_the_file(tmp_path):
    import importlib.util
    from pathlib import Path

    from dfrd_bench.checkpoints import load_model, save_model
    from dfrd_bench.models import build_model

    torch.manual_seed(0)
    model = build_model("resnet18", 10, 32, (0.5, 0.4, 0.3), (0.2, 0.2, 0.2)).eval()
    save_model(model, tmp_path / "r18.pt", "cifar10", 32)
    x = torch.rand(2, 3, 32, 32)
    spec = importlib.util.spec_from_file_location("halve", Path(__file__).resolve().parents[1] / "results/gpu/halve.py")
    halve = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(halve)
    halve.halve(str(tmp_path / "r18.pt"), str(tmp_path / "half.pt"))
    half = load_model(tmp_path / "half.pt")
    assert next(half.parameters()).dtype == torch.float32
    assert (tmp_path / "half.pt").stat().st_size < 0.6 * (tmp_path / "r18.pt").stat().st_size
    with torch.no_grad():
        assert torch.allclose(model(x), half(x), atol=0.05)


def test_device_auto_warns_when_a_gpu_is_there_but_unusable(monkeypatch):
    import dfrd_bench.utils as utils
    from dfrd_bench import cuda_driver  # where pick_device reads the driver from

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(cuda_driver, "driver_version", lambda: "550.54.15")
    monkeypatch.setattr(utils, "_WARNED_GPU", [])
    with pytest.warns(RuntimeWarning, match="runs on the CPU.*580.65.06"):
        assert utils.pick_device("auto").type == "cpu"
    monkeypatch.setattr(cuda_driver, "driver_version", lambda: None)
    monkeypatch.setattr(utils, "_WARNED_GPU", [])
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert utils.pick_device("auto").type == "cpu"  # a machine without a GPU: nothing to say


def test_every_method_and_variant_resolves_at_the_gpu_preset():
    """The `gpu` preset resolves for every built-in method and variant (FERD `released` included: its
    generator warm-up sits in front of the 20 student epochs, as Fast's does)."""
    from dfrd_bench.config import resolve_config
    from dfrd_bench.method import METHODS, load_plugins

    load_plugins()
    for name in ("ferd", "zskt", "cmi", "deepinv", "fast", "dfhl"):
        cls = METHODS.get(name)
        for variant in ["paper"] + [v for v in getattr(cls, "variants", {}) if v != "paper"]:
            cfg = resolve_config(cls, "cifar10", "gpu", {"variant": variant})
            assert cfg.epochs > getattr(cfg, "warmup_epochs", 0), (name, variant)


# ------------------------------------------------------------------------------------------------
# results/gpu/make.sh --slim / --unslim: the committed result files stay here during a GPU window
# ------------------------------------------------------------------------------------------------
def test_make_sh_slim_keeps_result_files_from_travelling_and_unslim_restores_them(tmp_path):
    import shutil
    import subprocess
    from pathlib import Path

    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    root = Path(__file__).resolve().parents[1]
    repo = tmp_path / "repo"
    (repo / "results" / "gpu").mkdir(parents=True)
    (repo / "results" / "runs" / "r0").mkdir(parents=True)
    shutil.copy(root / "results" / "gpu" / "make.sh", repo / "results" / "gpu" / "make.sh")
    heavy = ["results/runs/r0/student.pt", "results/runs/r0/samples.png", "results/fig.pdf"]
    for name in heavy + ["results/runs/r0/result.json"]:
        (repo / name).write_bytes(b"x" * 100)

    def git(*args, check=True):
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=check)

    def make(option):
        return subprocess.run(["bash", "results/gpu/make.sh", option], cwd=repo, capture_output=True, text=True)

    git("init", "-q")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "root")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "results")
    assert make("--slim").returncode == 0
    travelling = set(git("ls-files", "--cached", "--others", "--exclude-standard").stdout.split())
    assert travelling == {"results/gpu/make.sh", "results/runs/r0/result.json"}
    assert all((repo / name).exists() for name in heavy)  # still on disk
    assert make("--slim").returncode != 0  # twice is refused
    # a commit that would delete the slimmed files is refused; one with paths goes through
    (repo / "results" / "gpu" / "step.json").write_text("{}")
    git("add", "results/gpu/step.json")
    plain = git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "all", check=False)
    assert plain.returncode != 0 and "slim" in plain.stderr
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "gpu", "--", "results/gpu/step.json")
    assert set(git("show", "--name-only", "--format=", "HEAD").stdout.split()) == {"results/gpu/step.json"}
    assert make("--unslim").returncode == 0
    assert git("diff", "--cached", "--quiet", check=False).returncode == 0  # the index is HEAD's again
    assert set(heavy) <= set(git("ls-files").stdout.split())
    assert "dfrd-slim" not in (repo / ".git" / "info" / "exclude").read_text()
    assert not (repo / ".git" / "hooks" / "pre-commit").exists()
