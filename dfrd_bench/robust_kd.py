"""The student stage that turns a data-free KD method into a data-free *robustness* distillation
method, as the FERD paper does for ZSKT, CMI, DeepInv and Fast (Appendix A.8): RSLAD (Zi et al. 2021).

With `rslad=true` (default): adversarial examples against the STUDENT, `rslad_steps` sign steps of
`rslad_step` in the eps ball from x + 0.001 N(0, I), maximising KL(T(x) || S(x')); loss
5/6 KL(T(x) || S(x_adv)) + 1/6 KL(T(x) || S(x)). With `rslad=false`: plain KD,
KL(T(x) || S(x)) at `kd_temperature` (the "DFKD" rows of Table 8).
"""
from __future__ import annotations

from typing import Any, Dict, Tuple

import torch
import torch.nn.functional as F

from .attacks import kl_objective, sign_ascent
from .config import Range, count
from .losses import kl_div, rslad_student_loss
from .method import Batch, Method, MethodContext
from .modes import frozen

RSLAD_RANGES = {"rslad_steps": count(1), "rslad_step": Range(0.0, 1.0, low_open=True),
                "rslad_w_adv": Range(0.0), "rslad_w_clean": Range(0.0), "kd_temperature": Range(0.0, low_open=True)}

RSLAD_DEFAULTS: Dict[str, Any] = {
    "rslad": True, "rslad_steps": 10, "rslad_step": 2 / 255, "rslad_w_adv": 5 / 6, "rslad_w_clean": 1 / 6,
    "kd_temperature": 1.0,
}


def student_adversarial(ctx: MethodContext, x: torch.Tensor, teacher_probs: torch.Tensor, steps: int, step: float,
                        uniform_weight: float = 0.0) -> torch.Tensor:
    """RSLAD's inner maximisation on the STUDENT: `steps` sign steps of `step` in the eps ball from
    x + 0.001 N(0, I), ascending KL(T(x) || S(x')) - uniform_weight * KL(U || S(x')).

    uniform_weight = 0 is RSLAD's attack (ZSKT, CMI, DeepInv, Fast); uniform_weight = gamma is FERD's
    UTAE on the student (Eq. 10 as the authors' code runs it). The student is put in eval mode for
    the attack (BatchNorm uses running statistics, as in RSLAD's and FERD's code) with frozen
    parameters (no weight gradient is computed), both restored after; the attack passes run compiled
    when the run's `compile` setting is on (dfrd_bench/acceleration.py).
    """
    start = (x + 0.001 * ctx.randn(*x.shape)).clamp(0, 1)
    with frozen(ctx.student) as student:
        attacked = ctx.accel.attack_model(student)
        return sign_ascent(kl_objective(attacked, teacher_probs, uniform_weight), x, ctx.cfg.eps, step, steps,
                           start=start)


def robust_kd_loss(ctx: MethodContext, x: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    cfg = ctx.cfg
    with torch.no_grad():
        t_logits = ctx.teacher(x)
    if not cfg.rslad:
        loss = kl_div(t_logits, ctx.student(x), cfg.kd_temperature)
        return loss, {"kd": loss.detach()}
    x_adv = student_adversarial(ctx, x, F.softmax(t_logits, 1), cfg.rslad_steps, cfg.rslad_step)
    s_clean, s_adv = ctx.student(x), ctx.student(x_adv)
    loss = rslad_student_loss(t_logits, s_clean, s_adv, cfg.rslad_w_clean, cfg.rslad_w_adv)
    return loss, {"kl_clean": kl_div(t_logits, s_clean).detach(), "kl_adv": kl_div(t_logits, s_adv).detach()}


class RobustKDMethod(Method):
    """Base for DFKD methods made robust with the RSLAD student stage; subclasses write `generate`.

    Subclasses extend `defaults` with `{**RSLAD_DEFAULTS, ...}`.
    """

    defaults = dict(RSLAD_DEFAULTS)
    ranges = dict(RSLAD_RANGES)

    def student_loss(self, ctx: MethodContext, batch: Batch):
        return robust_kd_loss(ctx, batch.x)

    def bench_passes(self, cfg, ctx: MethodContext) -> Dict[str, Dict[str, float]]:
        return {"student iteration": rslad_passes(cfg)}


def rslad_passes(cfg) -> Dict[str, float]:
    """Passes of one RSLAD student iteration: teacher forward, the attack's steps on the student,
    and the student's training forward + backward on the clean and the adversarial batch."""
    if not cfg.rslad:
        return {"teacher_forward": 1, "student_train": 1}
    return {"teacher_forward": 1, "student_input_grad": cfg.rslad_steps, "student_train": 2}
