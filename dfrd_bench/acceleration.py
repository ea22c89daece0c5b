"""Speed settings in one place: torch.compile for attack passes, bf16 autocast on CUDA, layouts.

Every attack step of every method is the same computation: a forward pass of a FROZEN model (the
teacher, or the student in eval mode with its parameters frozen for the attack) and a backward pass
to the input only. That pass is what `attack_model(model)` compiles: one graph per model and input
shape, compiled on first use and cached, gradients equal to the eager ones to ~1e-8 (tested). The
compile time (tens of seconds per graph on a 2-core CPU) only pays back in long runs, so the setting
`compile` is `auto` by default: on when the run's student takes at least `COMPILE_MIN_STUDENT_STEPS`
steps, off for `quick`, `smoke` and the tests; `on` / `off` force it.

`precision` = `auto` runs the teacher and student in bf16 autocast on CUDA (generation, distillation
and the training-time attacks) and fp32 everywhere else; `fp32` / `bf16` force it. The final
evaluation never uses either: it runs the plain fp32 model (evaluate.py), so reduced precision can
never weaken a reported attack.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Dict, Mapping, Optional

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


def autocast_dtype(cfg: Mapping[str, Any], device: torch.device) -> Optional[torch.dtype]:
    """bf16 where cfg['precision'] asks for it (auto: on CUDA only), else None (fp32)."""
    precision = cfg["precision"]
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError("this GPU has no bf16: pass --set precision=fp32")
        return torch.bfloat16
    return None


class Accelerator:
    """What a run's speed settings mean for its models: `autocast()` around training passes,
    `attack_model(model)` for the forward of attack steps (compiled when enabled)."""

    def __init__(self, device: torch.device, compile_attacks: bool = False,
                 dtype: Optional[torch.dtype] = None) -> None:
        self.device = torch.device(device)
        self.compile_attacks = compile_attacks
        self.dtype = dtype
        self._compiled: Dict[int, Callable[[torch.Tensor], torch.Tensor]] = {}

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], device: torch.device) -> "Accelerator":
        return cls(device, compile_wanted(cfg), autocast_dtype(cfg, torch.device(device)))

    def describe(self) -> Dict[str, Any]:
        return {"compile_attacks": self.compile_attacks,
                "training_precision": "bf16" if self.dtype == torch.bfloat16 else "fp32"}

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast for generation and distillation passes; a no-op in fp32."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def attack_model(self, model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        """The callable attack steps run: the model itself, or its compiled forward (cached per model).
        The model must be frozen and in eval mode while it is attacked (`dfrd_bench.modes.frozen`)."""
        if not self.compile_attacks:
            return model
        key = id(model)
        if key not in self._compiled:
            # dynamic=False: batches have one or two shapes (full and last); each compiles once.
            self._compiled[key] = torch.compile(model, dynamic=False)
        return self._compiled[key]


def randn_in_layout(like: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Standard normal noise shaped and laid out like `like`, drawn as one contiguous block.

    `torch.randn_like` on a channels-last tensor takes a strided slow path (15 ms against 1.7 ms for
    a 64 x 128 x 8 x 8 batch on 2 CPU cores, half of FERD's generator iteration); drawing the block in
    memory order and permuting gives the same distribution and layout at contiguous speed."""
    if like.dim() == 4 and like.is_contiguous(memory_format=torch.channels_last) and not like.is_contiguous():
        n, c, h, w = like.shape
        noise = torch.randn(n, h, w, c, generator=generator, dtype=like.dtype,
                            device="cpu" if generator is not None else like.device)
        return noise.to(like.device).permute(0, 3, 1, 2)
    noise = torch.randn(like.shape, generator=generator, dtype=like.dtype,
                        device="cpu" if generator is not None else like.device)
    return noise.to(like.device)
