"""Speed and precision settings in one place: torch.compile for attack passes, bf16 autocast, layouts,
host-to-device copies, and every precision rule of the suite.

Every attack step of every method is the same computation: a forward pass of a FROZEN model (the
teacher, or the student in eval mode with its parameters frozen for the attack) and a backward pass
to the input only. That pass is what `attack_model(model)` compiles: one graph per model and input
shape, compiled on first use and cached, gradients equal to the eager ones to ~1e-8 (tested). The
compile time (tens of seconds per graph on a 2-core CPU) only pays back in long runs, so the setting
`compile` is `auto` by default: on when the run's student takes at least `COMPILE_MIN_STUDENT_STEPS`
steps, off for `quick`, `smoke` and the tests; `on` / `off` force it. A compilation that fails (no
host C compiler, an Inductor or Triton error) falls back to the eager pass with one warning, for the
rest of the run; the result records it (`speed.compile_fallback`).

Precision rules (decided here and nowhere else):
1. Model passes of training (teacher and student in generation, distillation and the training-time
   attacks) run under `Accelerator.autocast()`: bf16 autocast where `precision` resolves to bf16
   (`auto`: on CUDA), IEEE fp32 otherwise (`ieee_fp32`: no TF32, so `precision=fp32` on a GPU
   computes what a CPU computes, up to summation order).
2. Pixels are fp32: generators run outside autocast (`fp32_region`), every attack steps and
   projects in fp32 (`attacks.sign_ascent` casts its input), the pool quantises fp32 values. An
   adversarial example never leaves its eps ball by bf16 rounding.
3. Statistics that decide something are fp32: FERD's reweighting margins come from an fp32 forward
   (`Accelerator.fp32()`), class statistics are computed on the CPU in fp32 (deterministic, so every
   process of a data-parallel run gets the same bits).
4. The final evaluation is IEEE fp32 and eager (`ieee_fp32()` around it: TF32 off for cuDNN
   convolutions and cuBLAS matmuls, whose defaults would run a GPU's fp32 convolutions in TF32),
   whatever `precision` and `compile` say, so reduced precision can never weaken a reported attack.

`precision` is part of a run's resume identity (runner.py): a run trained in fp32 on a CPU is not
continued in bf16 on a GPU.
"""
from __future__ import annotations

import contextlib
import functools
import warnings
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Set, Tuple

import torch

from .config import ConfigError, student_steps
# About 50 s of compilation per graph on 2 CPU cores, 1.3-1.4x faster attack steps afterwards: below
# this many student steps (quick: 320) the compile time is not paid back.
COMPILE_MIN_STUDENT_STEPS = 4000


def compile_wanted(cfg: Mapping[str, Any]) -> bool:
    """Whether the training-time attack passes are compiled under cfg['compile']."""
    mode = cfg["compile"]
    if mode == "auto":
        return student_steps(cfg) >= COMPILE_MIN_STUDENT_STEPS
    return mode == "on"


@functools.lru_cache(maxsize=None)
def cpu_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (the avx512_bf16 or AMX-bf16 instructions, read from
    /proc/cpuinfo; False where that cannot be read): only there is bf16 training faster than fp32."""
    try:
        flags = next((line.split(":", 1)[1].split() for line in open("/proc/cpuinfo") if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_dtype(cfg: Mapping[str, Any], device: torch.device) -> Optional[torch.dtype]:
    """bf16 where cfg['precision'] asks for it (auto: on CUDA; on a CPU with native bf16 where
    cfg['cpu_auto_precision'] is 'bf16-if-native'), else None (fp32)."""
    precision = cfg["precision"]
    cpu_auto = (device.type == "cpu" and cfg.get("cpu_auto_precision", "fp32") == "bf16-if-native"
                and cpu_native_bf16())
    if precision == "bf16" or (precision == "auto" and (device.type == "cuda" or cpu_auto)):
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError("this GPU has no bf16: pass --set precision=fp32")
        return torch.bfloat16
    return None


def precision_name(dtype: Optional[torch.dtype]) -> str:
    """How results and resume identities name a training precision."""
    return "bf16" if dtype == torch.bfloat16 else "fp32"


# -------------------------------------------------------------------------------------- TF32 switches
def _tf32_state() -> Tuple[str, Any]:
    """The current TF32 switches of cuDNN convolutions and cuBLAS matmuls: through the legacy
    `allow_tf32` flags, or (when a program set the newer `fp32_precision` flags so that the legacy
    ones cannot be read) through those."""
    try:
        return "legacy", (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    except RuntimeError:  # torch >= 2.9 with a mix of the legacy and the new API set
        return "new", (torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision)


def _set_tf32(state: Tuple[str, Any]) -> None:
    api, (conv, matmul) = state
    if api == "legacy":
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = conv, matmul
    else:
        torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision = conv, matmul


def tf32_enabled() -> Tuple[bool, bool]:
    """(cuDNN convolutions, cuBLAS matmuls) may run fp32 work in TF32."""
    api, (conv, matmul) = _tf32_state()
    return (bool(conv), bool(matmul)) if api == "legacy" else (conv == "tf32", matmul == "tf32")


@contextlib.contextmanager
def ieee_fp32() -> Iterator[None]:
    """TF32 off for cuDNN convolutions and cuBLAS matmuls inside (torch's default runs a GPU's fp32
    convolutions in TF32, 10 mantissa bits); the switches are restored afterwards. No effect on CPU
    arithmetic."""
    saved = _tf32_state()
    _set_tf32((saved[0], (False, False) if saved[0] == "legacy" else ("ieee", "ieee")))
    try:
        yield
    finally:
        _set_tf32(saved)


def fp32_region(device: torch.device | str) -> contextlib.AbstractContextManager:
    """Autocast off inside (fp32 operands stay fp32): generators, pixel arithmetic, statistics.
    A no-op where no autocast is active."""
    return torch.autocast(device_type=torch.device(device).type, enabled=False)


def enable_cudnn_autotune(device: torch.device | str) -> None:
    """cuDNN benchmark mode on CUDA (picks the fastest convolution algorithm per shape; runs have a few
    fixed shapes). Nothing on a CPU."""
    if torch.device(device).type == "cuda":
        torch.backends.cudnn.benchmark = True


# -------------------------------------------------------------------------------------- host -> device
def to_device(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """`t` (drawn on the CPU, e.g. from a run's seeded CPU generator) on `device`, without waiting for
    the GPU: a plain `.to(cuda)` of a pageable CPU tensor synchronises the host with the GPU's stream,
    so a training step that draws its random numbers on the CPU would stall the GPU several times.
    The copy goes through pinned memory, asynchronously; the values are the same as `.to(device)`
    (on a CPU it is `.to(device)`, a no-op)."""
    device = torch.device(device)
    if device.type != "cuda" or t.device.type != "cpu":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


# -------------------------------------------------------------------------------------- compile
def _reraise(exc: BaseException) -> bool:
    """Failures that are not the compiler's: out of memory stays an error (eager would need the memory too)."""
    oom = getattr(torch.cuda, "OutOfMemoryError", ())
    return isinstance(exc, (MemoryError,) + ((oom,) if isinstance(oom, type) else ()))


class _CompiledPass:
    """A model's compiled forward that falls back to the model itself when compilation fails.

    torch.compile compiles lazily: the forward graph at the first call of each input shape, and the
    backward graph at the first backward through it. On the first call of each shape, a trial forward
    (and backward, when the input needs a gradient) runs on a detached copy of the input, so that both
    graphs compile inside this wrapper; a failure there makes the accelerator fall back to eager for
    the rest of the run, with one warning."""

    def __init__(self, model: torch.nn.Module, compiled: Callable[[torch.Tensor], torch.Tensor],
                 accel: "Accelerator") -> None:
        self.model, self.compiled, self.accel = model, compiled, accel
        self.checked: Set[Tuple[Any, ...]] = set()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.accel.compile_fallback is not None:
            return self.model(x)
        grad = x.requires_grad and torch.is_grad_enabled()
        key = (tuple(x.shape), x.dtype, x.device, grad, torch.is_autocast_enabled(x.device.type))
        if key not in self.checked:
            try:
                probe = x.detach().clone().requires_grad_(grad)
                out = self.compiled(probe)
                if grad:
                    torch.autograd.grad(out.float().sum(), [probe])
            except Exception as exc:  # noqa: BLE001 - any compiler failure; the eager pass then runs
                if _reraise(exc):
                    raise
                self.accel.fall_back(exc)
                return self.model(x)
            self.checked.add(key)
        return self.compiled(x)


class Accelerator:
    """What a run's speed settings mean for its models: `autocast()` around training passes,
    `attack_model(model)` for the forward of attack steps (compiled when enabled), `fp32()` for the
    passes whose numbers decide something (rule 3 above)."""

    def __init__(self, device: torch.device, compile_attacks: bool = False,
                 dtype: Optional[torch.dtype] = None, warn: Optional[Callable[[str], None]] = None) -> None:
        self.device = torch.device(device)
        self.compile_attacks = compile_attacks
        self.dtype = dtype
        self.warn = warn  # where the one compile-fallback warning goes (the run's log); None: warnings.warn
        self.compile_fallback: Optional[str] = None  # why compiled passes fell back to eager (once set, for good)
        self._compiled: Dict[int, _CompiledPass] = {}

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], device: torch.device) -> "Accelerator":
        return cls(device, compile_wanted(cfg), autocast_dtype(cfg, torch.device(device)))

    @property
    def precision(self) -> str:
        return precision_name(self.dtype)

    def describe(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"compile_attacks": self.compile_attacks, "training_precision": self.precision}
        if self.compile_fallback is not None:
            out["compile_fallback"] = self.compile_fallback
        return out

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast for generation and distillation passes; in fp32, IEEE fp32 (TF32 off)."""
        if self.dtype is None:
            return ieee_fp32()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def fp32(self) -> contextlib.AbstractContextManager:
        """Autocast off inside: an fp32 pass in a bf16 run (a no-op in an fp32 run)."""
        return fp32_region(self.device)

    def fall_back(self, exc: BaseException) -> None:
        """Compiled passes failed: eager from now on, one warning (the result records the reason)."""
        from .errors import first_line

        self.compile_fallback = f"torch.compile failed, attack passes run eager: {first_line(exc, 200)}"
        message = (f"warning: {self.compile_fallback} (the run goes on; --set compile=off skips the attempt, "
                   "`dfrd-bench doctor` checks compilation)")
        (self.warn or (lambda m: warnings.warn(m, RuntimeWarning, stacklevel=3)))(message)

    def attack_model(self, model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        """The callable attack steps run: the model itself, or its compiled forward (cached per model).
        The model must be frozen and in eval mode while it is attacked (`dfrd_bench.modes.frozen`)."""
        if not self.compile_attacks or self.compile_fallback is not None:
            return model
        key = id(model)
        if key not in self._compiled:
            try:
                # dynamic=False: batches have one or two shapes (full and last); each compiles once.
                compiled = torch.compile(model, dynamic=False)
            except Exception as exc:  # noqa: BLE001 - torch.compile itself refused (an unsupported Python)
                self.fall_back(exc)
                return model
            self._compiled[key] = _CompiledPass(model, compiled, self)
        return self._compiled[key]


@functools.lru_cache(maxsize=None)
def log_count(n: int) -> float:
    """log(n) as the fp32 number torch computes on the CPU, as a Python float: subtracting it from a
    tensor gives the bits that subtracting a 0-dim tensor would, without creating one on the device
    (`torch.tensor(..., device=cuda)` is a host-to-device copy that waits for the GPU)."""
    return float(torch.log(torch.tensor(float(n))))


def randn_in_layout(like: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Standard normal noise shaped and laid out like `like`, drawn as one contiguous block.

    `torch.randn_like` on a channels-last tensor takes a strided slow path (15 ms against 1.7 ms for
    a 64 x 128 x 8 x 8 batch on 2 CPU cores, half of FERD's generator iteration); drawing the block in
    memory order and permuting gives the same distribution and layout at contiguous speed."""
    if like.dim() == 4 and like.is_contiguous(memory_format=torch.channels_last) and not like.is_contiguous():
        n, c, h, w = like.shape
        noise = torch.randn(n, h, w, c, generator=generator, dtype=like.dtype,
                            device="cpu" if generator is not None else like.device)
        return to_device(noise, like.device).permute(0, 3, 1, 2)
    noise = torch.randn(like.shape, generator=generator, dtype=like.dtype,
                        device="cpu" if generator is not None else like.device)
    return to_device(noise, like.device)
