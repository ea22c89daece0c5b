"""Every gradient attack in the suite is one projected sign-gradient loop with a pluggable objective.

`sign_ascent` is the loop (L-inf ball of radius eps around x, intersected with [0,1]); FGSM, PGD-CE
and CW-inf below are thin configurations of it, and the method plugins (RSLAD, UTAE, the
reweighting PGD) reuse it with their own objectives. AutoAttack is the authors' code (`pyautoattack`).
The attacked model is never put into train mode here and its parameters receive no gradients.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional

import torch
import torch.nn.functional as F

from .acceleration import to_device
from .registry import Registry

# objective(x_adv) -> per-sample values to MAXIMISE (shape [N])
Objective = Callable[[torch.Tensor], torch.Tensor]


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Back into the eps ball around x and into the image box [0, 1]."""
    return torch.min(torch.max(x_adv, x - eps), x + eps).clamp_(0.0, 1.0)


def random_start(x: torch.Tensor, eps: float, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    noise = torch.rand(x.shape, generator=generator, device="cpu" if generator is not None else x.device)
    noise = to_device(noise, x.device).to(x.dtype).mul_(2 * eps).sub_(eps)
    return (x + noise).clamp_(0.0, 1.0)


def fp32_pixels(x: torch.Tensor) -> torch.Tensor:
    """Images in fp32 (precision rule 2, dfrd_bench/acceleration.py): a bf16 or fp16 batch (a
    generator's output under autocast) is widened; fp32 and fp64 are returned as they are."""
    return x.float() if x.dtype in (torch.bfloat16, torch.float16) else x


def sign_ascent(
    objective: Objective,
    x: torch.Tensor,
    eps: float,
    step: float,
    steps: int,
    start: Optional[torch.Tensor] = None,
    rand_init: bool = True,
    generator: Optional[torch.Generator] = None,
    bounded: bool = True,
    on_step: Optional[Callable[[int, torch.Tensor], None]] = None,
) -> torch.Tensor:
    """`steps` sign-gradient ascent steps of size `step` on objective(x_adv).sum().

    bounded=False drops the eps ball (only [0,1] is kept), for unconstrained examples such as
    DFHL's high-entropy examples. on_step(t, x_adv) is called with the start (t=0) and after
    every step (t=1..steps), e.g. to record when an example is first misclassified.

    The pixels, the steps and the projection are fp32 whatever the input's dtype and any autocast
    around the call (only the objective's model passes run in reduced precision): a bf16 image
    stepped in bf16 leaves the eps ball by rounding (8/255 + 1 ulp of bf16 near 1 is 0.0332).
    """
    x = fp32_pixels(x.detach())
    if start is not None:
        x_adv = fp32_pixels(start.detach()).clone()
    elif rand_init and eps > 0:
        x_adv = random_start(x, eps, generator)
    else:
        x_adv = x.clone()
    if on_step is not None:
        on_step(0, x_adv)
    for t in range(steps):
        x_adv.requires_grad_(True)
        loss = objective(x_adv).sum()
        (grad,) = torch.autograd.grad(loss, [x_adv])
        with torch.no_grad():
            x_adv = x_adv + step * grad.sign()
            x_adv = project(x_adv, x, eps) if bounded else x_adv.clamp_(0.0, 1.0)
        if on_step is not None:
            on_step(t + 1, x_adv)
    return x_adv.detach()


# ------------------------------------------------------------------------------------------------
# Objectives
# ------------------------------------------------------------------------------------------------
def ce_objective(model: torch.nn.Module, y: torch.Tensor) -> Objective:
    return lambda xa: F.cross_entropy(model(xa), y, reduction="none")


def cw_margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """max_{j != y} z_j - z_y (positive once misclassified); the CW loss used by CW-inf."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.clone()
    other.scatter_(1, y[:, None], float("-inf"))
    return other.max(1).values - true


def cw_objective(model: torch.nn.Module, y: torch.Tensor) -> Objective:
    return lambda xa: cw_margin(model(xa), y)


def kl_objective(model: torch.nn.Module, target_probs: torch.Tensor, uniform_weight: float = 0.0) -> Objective:
    """KL(target || model(x_adv)) - uniform_weight * KL(U || model(x_adv)) per sample.

    uniform_weight = 0: the TRADES / RSLAD inner maximisation. uniform_weight = gamma: FERD's
    Uniform-Target Adversarial Examples (Eq. 10), which also keep the attacked model's prediction
    close to uniform so that the attack does not pile up on a few target classes.
    """
    log_target = target_probs.clamp_min(1e-12).log()
    num_classes = target_probs.shape[1]

    def objective(xa: torch.Tensor) -> torch.Tensor:
        log_q = F.log_softmax(model(xa), 1)
        value = (target_probs * (log_target - log_q)).sum(1)
        if uniform_weight:
            value = value - uniform_weight * (-log_q.mean(1) - math.log(num_classes))  # KL(U || q)
        return value

    return objective


# ------------------------------------------------------------------------------------------------
# The evaluator's attacks: name -> fn(model, x, y, settings) -> x_adv
# ------------------------------------------------------------------------------------------------
@dataclass
class AttackSettings:
    eps: float = 8 / 255
    pgd_steps: int = 20
    pgd_step: Optional[float] = None   # default eps / 4
    cw_steps: int = 30
    cw_step: Optional[float] = None    # default eps / 4
    aa_version: str = "standard"
    seed: int = 0
    batch_size: int = 256
    attack_misclassified: bool = False  # False: points wrong on clean inputs count as errors, unattacked
    channels_last: bool = True          # evaluate with channels-last weights (faster on CPU and GPU)
    extra: Dict[str, object] = field(default_factory=dict)

    def resolved(self) -> Dict[str, object]:
        return {
            "eps": self.eps,
            "robust_requires_clean_correct": not self.attack_misclassified,
            "fgsm": {"step": self.eps, "random_start": False},
            "pgd20": {"steps": self.pgd_steps, "step": self.pgd_step or self.eps / 4, "random_start": True, "loss": "ce"},
            "cw": {"steps": self.cw_steps, "step": self.cw_step or self.eps / 4, "random_start": True, "loss": "cw-margin"},
            "aa": {"version": self.aa_version, "norm": "Linf", "implementation": "pyautoattack"},
        }


AttackFn = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor, AttackSettings, Optional[torch.Generator]], torch.Tensor]
ATTACKS: Registry[AttackFn] = Registry("attack")
ATTACK_ORDER = ("clean", "fgsm", "pgd20", "cw", "aa")


@ATTACKS.register("clean", help="no attack")
def _clean(model, x, y, s: AttackSettings, gen=None):
    return x


@ATTACKS.register("fgsm", help="FGSM: one sign step of size eps on CE, no random start")
def fgsm(model, x, y, s: AttackSettings, gen=None):
    return sign_ascent(ce_objective(model, y), x, s.eps, s.eps, 1, rand_init=False)


@ATTACKS.register("pgd20", help="PGD-20 on CE, step eps/4, uniform random start")
def pgd20(model, x, y, s: AttackSettings, gen=None):
    return sign_ascent(ce_objective(model, y), x, s.eps, s.pgd_step or s.eps / 4, s.pgd_steps, generator=gen)


@ATTACKS.register("cw", help="CW-inf: PGD on the CW margin loss, 30 steps of eps/4, random start")
def cw_inf(model, x, y, s: AttackSettings, gen=None):
    return sign_ascent(cw_objective(model, y), x, s.eps, s.cw_step or s.eps / 4, s.cw_steps, generator=gen)


@ATTACKS.register("aa", help="AutoAttack standard (APGD-CE, APGD-T, FAB-T, Square) from pyautoattack")
def autoattack(model, x, y, s: AttackSettings, gen=None):
    import logging

    from pyautoattack import AutoAttack

    logging.getLogger("auto-attack").setLevel(logging.WARNING)
    adversary = AutoAttack(model, norm="Linf", eps=s.eps, version=s.aa_version, device=x.device, seed=s.seed)
    n_classes = int(getattr(model, "num_classes", 10))
    # The authors' standard setting targets 9 classes; fewer exist only for tiny label sets.
    adversary.apgd_targeted.n_target_classes = min(9, n_classes - 1)
    adversary.fab.n_target_classes = min(9, n_classes - 1)
    with _quiet_stdout():
        x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=s.batch_size)
    return x_adv


def _skip_random_start(shape, s: AttackSettings, gen: Optional[torch.Generator]) -> None:
    """Draw (and drop) what `random_start` draws for a batch of `shape`."""
    if gen is not None and s.eps > 0:
        torch.rand(shape, generator=gen, device="cpu")


def _draws_nothing(shape, s: AttackSettings, gen: Optional[torch.Generator]) -> None:
    pass


# What each evaluator attack draws from its generator per batch, so that a data-parallel evaluation
# can skip another process's batch and keep the stream where the single-process evaluation has it
# (dfrd_bench.distributed.EvalShard). AutoAttack seeds itself at every call. An attack missing here
# is not dealt out: every process runs it whole.
BATCH_DRAWS: Dict[str, Callable[..., None]] = {
    "clean": _draws_nothing, "fgsm": _draws_nothing, "pgd20": _skip_random_start, "cw": _skip_random_start,
    "aa": _draws_nothing,
}


class _quiet_stdout:
    """pyautoattack prints progress with print(); keep it out of our progress bars and logs."""

    def __enter__(self):
        import contextlib
        import io

        self._ctx = contextlib.redirect_stdout(io.StringIO())
        return self._ctx.__enter__()

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)
