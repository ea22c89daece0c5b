"""Issue 31: bf16 training where the CPU has it (the preset says so), preset versions, the expected time."""
from __future__ import annotations

import torch

from dfrd_bench import acceleration
from dfrd_bench.acceleration import autocast_dtype
from dfrd_bench.config import (PRESET_CPU_MINUTES, preset_defaults_version, resolve_config, with_added_settings,
                               DEFAULTS_VERSION)
from dfrd_bench.method import get_method

CPU = torch.device("cpu")


def test_auto_precision_on_a_cpu_follows_the_preset_and_the_cpu(monkeypatch):
    cfg = {"precision": "auto", "cpu_auto_precision": "bf16-if-native"}
    monkeypatch.setattr(acceleration, "cpu_native_bf16", lambda: True)
    assert autocast_dtype(cfg, CPU) == torch.bfloat16
    assert autocast_dtype({**cfg, "cpu_auto_precision": "fp32"}, CPU) is None      # the preset keeps fp32
    assert autocast_dtype({**cfg, "precision": "fp32"}, CPU) is None               # an explicit fp32 wins
    monkeypatch.setattr(acceleration, "cpu_native_bf16", lambda: False)
    assert autocast_dtype(cfg, CPU) is None                                          # emulated bf16 is slower
    assert autocast_dtype({**cfg, "precision": "bf16"}, CPU) == torch.bfloat16       # asked for: given


def test_native_bf16_is_read_from_the_cpu_flags(monkeypatch, tmp_path):
    import builtins

    real_open = builtins.open
    for flags, want in (("fpu sse avx512f avx512_bf16", True), ("fpu sse amx_bf16", True), ("fpu sse avx2", False)):
        info = tmp_path / "cpuinfo"
        info.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        monkeypatch.setattr(builtins, "open", lambda p, *a, **k: real_open(info if p == "/proc/cpuinfo" else p, *a, **k))
        acceleration.cpu_native_bf16.cache_clear()
        assert acceleration.cpu_native_bf16() is want
    monkeypatch.setattr(builtins, "open", real_open)
    acceleration.cpu_native_bf16.cache_clear()


def test_the_committed_benchmark_preset_stays_fp32_and_quick_moved_to_its_own_version():
    fast = get_method("fast")
    standard = resolve_config(fast, "cifar10", "standard")
    assert standard.cpu_auto_precision == "fp32" and standard.aa_limit == 500
    assert preset_defaults_version("standard") == DEFAULTS_VERSION  # its runs stay one setup with the committed ones
    assert preset_defaults_version("quick") == 3 > DEFAULTS_VERSION  # quick's AA subset moved: a setup of its own
    quick = resolve_config(fast, "cifar10", "quick")
    assert quick.aa_limit == 500 and quick.cpu_auto_precision == "bf16-if-native"  # results/cpu-bf16/
    assert resolve_config(fast, "cifar10", "smoke").cpu_auto_precision == "fp32"   # tests keep fp32
    # an older result or checkpoint (no such setting) trained in fp32
    assert with_added_settings({"precision": "auto"})["cpu_auto_precision"] == "fp32"
    assert "quick" in PRESET_CPU_MINUTES and "standard" in PRESET_CPU_MINUTES


def test_a_quick_run_folder_and_its_setup_carry_the_preset_version():
    from dfrd_bench.runner import RunRequest, run_name_for

    for method, preset, suffix in (("cmi", "quick", "-v3"), ("cmi", "standard", ""), ("ferd", "standard", "-v3")):
        req = RunRequest(method=method, dataset="cifar10", preset=preset, seed=0, overrides={})
        cfg = resolve_config(get_method(method), "cifar10", preset, {})
        name = run_name_for(req, cfg)
        assert name.endswith(f"-s0{suffix}"), name


def test_the_first_line_says_how_long_a_cpu_run_takes():
    from types import SimpleNamespace

    from dfrd_bench.runner import _expected_time

    accel = SimpleNamespace(precision="bf16")
    run = SimpleNamespace(req=SimpleNamespace(preset="quick"), device=CPU, start_epoch=0, ctx=SimpleNamespace(accel=accel))
    assert _expected_time(run) == f"; expected {PRESET_CPU_MINUTES['quick']}, training in bf16"
    assert _expected_time(SimpleNamespace(**{**vars(run), "start_epoch": 3})) == ""   # a resumed run: no promise
    assert _expected_time(SimpleNamespace(**{**vars(run), "device": torch.device("cuda")})) == ""
    assert _expected_time(SimpleNamespace(**{**vars(run), "req": SimpleNamespace(preset="smoke")})) == ""


def _conv_weights(module: torch.nn.Module):
    return [m.weight for m in module.modules() if isinstance(m, torch.nn.Conv2d)]


def test_generators_are_channels_last_by_default_and_their_images_contiguous():
    """Issue 31: every built-in generator method places its generator through ctx.place_generator:
    channels-last conv weights by default (1.6x faster generator passes on a 2-core CPU), contiguous
    weights with generator_channels_last=false (the committed `standard` runs), contiguous images
    either way, equal up to float rounding at the same weights."""
    import copy

    from dfrd_bench.testing import method_context

    for name in ("ferd", "cmi", "fast", "dfhl", "zskt"):
        cls = get_method(name)
        placed = {}
        for flag in (True, False):
            method = cls()
            method.setup(method_context(cls, generator_channels_last=flag))
            convs = _conv_weights(method.generator)
            assert convs and all(w.is_contiguous(memory_format=torch.channels_last) is flag or w.shape[-1] == 1
                                 for w in convs), (name, flag)
            placed[flag] = method.generator
        # the same weights in both layouts give the same images (to rounding), both contiguous
        fast_gen = placed[True]
        plain = copy.deepcopy(fast_gen).to(memory_format=torch.contiguous_format)
        fast_gen.eval(), plain.eval()
        z = torch.randn(4, fast_gen.latent_dim, generator=torch.Generator().manual_seed(1))
        args = (torch.arange(4) % 10,) if getattr(fast_gen, "embed", None) is not None else ()
        with torch.no_grad():
            a, b = fast_gen(z, *args), plain(z, *args)
        assert a.is_contiguous() and b.is_contiguous(), name
        assert torch.allclose(a, b, atol=1e-5), (name, (a - b).abs().max())


def test_the_committed_benchmark_keeps_contiguous_generators_and_old_results_read_so():
    for name in ("ferd", "cmi", "fast"):
        cls = get_method(name)
        assert resolve_config(cls, "cifar10", "standard").generator_channels_last is False  # committed runs
        assert resolve_config(cls, "cifar10", "quick").generator_channels_last is True
    assert with_added_settings({"precision": "auto"})["generator_channels_last"] is False  # written before issue 31
