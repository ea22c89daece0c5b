"""ZSKT: Zero-shot Knowledge Transfer via Adversarial Belief Matching (Micaelli & Storkey, NeurIPS 2019).

Per pseudo-batch (Algorithm 1), which is one runner "epoch" here:
1. z ~ N(0, I) (dim 100); `gen_iters` (n_g = 1) generator steps MAXIMISING KL(T(G(z)) || S(G(z))),
   the adversarial belief matching against the STUDENT (a popular reimplementation passes the
   teacher as the student, so the divergence is identically 0 and its generator never trains);
   then the images of the updated generator, G(z), join the pool.
2. `student_iters` (n_s = 10) student steps on that same batch (pool_sampling=latest) minimising
   the RSLAD loss (the FERD paper's conversion, Appendix A.8; `rslad=false`: ZSKT's KL) plus
   `at_beta` (250) x attention transfer between student and teacher block outputs.

See docs/methods/zskt.md for every default, where it comes from, and what differs from the
authors' code.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from dfrd_bench.config import ConfigError
from dfrd_bench.losses import attention_transfer, kl_div, rslad_student_loss
from dfrd_bench.method import Batch, MethodContext, MethodInfo, Samples, frozen, register_method
from dfrd_bench.runner import cosine_lr  # the runner's schedule: CosineAnnealingLR(T_max = pseudo-batches)
from dfrd_bench.robust_kd import RSLAD_DEFAULTS, RobustKDMethod, student_adversarial


class ZSKTGenerator(nn.Module):
    """ZSKT's generator: Linear -> BN -> [upsample x2, conv, BN, LeakyReLU(0.2)] x 2 -> conv -> BN(3).

    As in the authors' current code (`models/generator.py` since 2019-08-20) the first map is 8 x 8
    on 32-pixel images (image_size / 4, then x2, x2) and the last BN keeps its affine parameters;
    their first commit had a 10 x 10 start (x1.6, x2) and BN(3, affine=False). The authors'
    generator stops at that BN and feeds the teacher normalised-space images; ours must produce
    [0,1] images (normalisation lives inside our models), so a sigmoid follows: sigmoid(h) ~ 0.5 + h/4
    for the unit-variance h the last BN emits, close to the authors' mean + std * h on CIFAR
    (std ~ 0.2-0.25) where it matters.
    """

    def __init__(self, latent_dim: int = 100, image_size: int = 32, width: int = 128, channels: int = 3) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.init_size = max(1, image_size // 4)
        self.layers = nn.Sequential(
            nn.Linear(latent_dim, width * self.init_size ** 2),
            nn.Unflatten(1, (width, self.init_size, self.init_size)),
            nn.BatchNorm2d(width),
            nn.Upsample(size=image_size // 2),
            nn.Conv2d(width, width, 3, 1, 1),
            nn.BatchNorm2d(width),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Upsample(size=image_size),
            nn.Conv2d(width, width // 2, 3, 1, 1),
            nn.BatchNorm2d(width // 2),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(width // 2, channels, 3, 1, 1),
            nn.BatchNorm2d(channels, affine=True),
            nn.Sigmoid(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.layers(z).contiguous()  # contiguous images whatever the weights' layout (ctx.place_generator)


# ------------------------------------------------------------------------------------------------
# The losses, as pure functions
# ------------------------------------------------------------------------------------------------
def belief_mismatch(teacher_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(T(x) || S(x)): the generator ascends it (adversarial belief matching), the student descends it."""
    return kl_div(teacher_logits, student_logits, temperature)


def generator_loss(teacher_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """What the generator minimises: -KL(T || S). Identically zero when the student IS the teacher."""
    return -belief_mismatch(teacher_logits, student_logits, temperature)


def stage_list(acts: Dict[str, torch.Tensor]) -> List[torch.Tensor]:
    return list(acts.values())


# One runner epoch = one pseudo-batch: n_g = 1 generator step, then n_s = 10 student steps on it.
_PSEUDO_BATCH = {"gen_iters": 1, "student_iters": 10, "pool_sampling": "latest"}


@register_method("zskt")
class ZSKT(RobustKDMethod):
    summary = "ZSKT: adversarial belief matching generator + KL/RSLAD and attention transfer (Micaelli & Storkey 2019)"
    info = MethodInfo(label="ZSKT", family="generator", rslad_stage=True, order=10, color="tab:green",
                      paper="Zero-shot Knowledge Transfer via Adversarial Belief Matching, NeurIPS 2019")
    defaults: Dict[str, Any] = {
        **RSLAD_DEFAULTS,
        # generator (paper Sec. 3-4 and authors' code): z dim 100, Adam 1e-3, cosine over all pseudo-batches
        "latent_dim": 100, "gen_width": 128, "gen_lr": 1e-3, "gen_beta1": 0.9, "gen_beta2": 0.999,
        "gen_schedule": "cosine",     # cosine | constant
        "gen_grad_clip": 5.0,         # authors' code: clip_grad_norm_(generator, 5); 0 = off
        # student: + beta x attention transfer on the block outputs (paper: beta = 250)
        "at_beta": 250.0,
    }
    presets = {
        # The suite's budget policy (docs/methods.md): every method's student takes FERD's 220 x 400 =
        # 88,000 steps, so 8,800 pseudo-batches of n_g = 1 generator and n_s = 10 student steps (the
        # authors' CIFAR-10 scripts run 80,000 pseudo-batches, 800,000 student steps: variant `authors`).
        # One runner epoch = one pseudo-batch; the pool holds just that batch.
        "paper": {
            "*": {**_PSEUDO_BATCH, "epochs": 8800, "checkpoint_every_epochs": 50, "log_every_epochs": 100},
            "cifar10": {"batch_size": 256, "synthesis_batch_size": 256, "pool_max": 256},
            "cifar100": {"batch_size": 512, "synthesis_batch_size": 512, "pool_max": 512},
            "tinyimagenet": {"batch_size": 512, "synthesis_batch_size": 512, "pool_max": 512},
        },
        # gpu (one GPU run in ~5 minutes): 200 pseudo-batches x 10 = the 2,000 student steps of every method there
        "gpu": {
            "*": {**_PSEUDO_BATCH, "epochs": 200, "checkpoint_every_epochs": 20, "log_every_epochs": 10},
            "cifar10": {"batch_size": 256, "synthesis_batch_size": 256, "pool_max": 256},
            "cifar100": {"batch_size": 512, "synthesis_batch_size": 512, "pool_max": 512},
        },
        # 32 pseudo-batches x 10 student steps = the 320 student steps of the runner's quick preset
        # (8 epochs x 40), 5-step RSLAD attacks.
        "quick": {"*": {**_PSEUDO_BATCH, "epochs": 32, "batch_size": 64, "synthesis_batch_size": 64, "pool_max": 64,
                        "checkpoint_every_epochs": 8, "rslad_steps": 5}},
        # standard: 160 pseudo-batches x 10 = the 1,600 student steps of every method at standard; each
        # pseudo-batch stays quick's 64 fresh images (ZSKT trains on the latest batch, not a pool), so the
        # student sees 10,240 synthetic images in all.
        "standard": {"*": {"epochs": 160, "synthesis_batch_size": 64, "pool_max": 64, "checkpoint_every_epochs": 20,
                           "log_every_epochs": 4}},
        "smoke": {"*": {**_PSEUDO_BATCH, "student_iters": 2, "batch_size": 8, "synthesis_batch_size": 8, "pool_max": 8,
                        "rslad_steps": 2}},
    }

    data_parallel = True  # the generator's gradients and BN statistics are averaged over the processes
    variants = {
        # the authors' own schedule: 80,000 pseudo-batches (10x the suite's equal student budget)
        "authors": {"*": {}, "paper": {"epochs": 80000}},
    }

    # ------------------------------------------------------------------------------------------
    def teacher_needs(self, cfg: Any) -> Tuple[str, ...]:
        # attention transfer pairs teacher and student stage outputs
        return ("stages",)

    def setup(self, ctx: MethodContext) -> None:
        cfg = ctx.cfg
        if ctx.student is ctx.teacher:
            raise ConfigError("zskt: the student is the teacher, so KL(T || S) = 0 and the generator cannot train")
        if cfg.gen_schedule not in ("cosine", "constant"):
            raise ConfigError("gen_schedule must be cosine or constant")
        if cfg.pool_sampling == "latest":
            if cfg.batch_size != cfg.synthesis_batch_size:
                raise ConfigError(f"zskt trains the student on the pseudo-batch just generated: batch_size "
                                  f"({cfg.batch_size}) must equal synthesis_batch_size ({cfg.synthesis_batch_size})")
            if cfg.pool_max is None:
                raise ConfigError("zskt with pool_sampling=latest needs pool_max (e.g. = synthesis_batch_size); "
                                  "otherwise every pseudo-batch is kept in memory")
        self.generator = ctx.place_generator(ZSKTGenerator(cfg.latent_dim, ctx.image_size, cfg.gen_width))
        self.gen_opt = torch.optim.Adam(self.generator.parameters(), lr=cfg.gen_lr, betas=(cfg.gen_beta1, cfg.gen_beta2))
        self._teacher_cache: Optional[Tuple[int, torch.Tensor, torch.Tensor, List[torch.Tensor]]] = None

    # -- generation stage: adversarial belief matching -------------------------------------------
    def generate(self, ctx: MethodContext) -> Samples:
        cfg, teacher, student = ctx.cfg, ctx.teacher, ctx.student
        lr = cosine_lr(cfg.gen_lr, ctx.epoch, cfg.epochs) if cfg.gen_schedule == "cosine" else cfg.gen_lr
        for group in self.gen_opt.param_groups:
            group["lr"] = lr
        z = ctx.randn(cfg.synthesis_batch_size, cfg.latent_dim)
        self.generator.train()
        # The student stays in train mode (batch statistics), as in the authors' code; its
        # parameters are frozen so that only the input gradient is computed.
        mismatch = torch.zeros((), device=ctx.device)
        with frozen(student, eval_mode=False):
            for _ in range(cfg.gen_iters):
                x = self.generator(z)
                loss = generator_loss(teacher(x), student(x), cfg.kd_temperature)
                self.gen_opt.zero_grad(set_to_none=True)
                loss.backward()
                ctx.average_gradients(self.generator.parameters())  # data-parallel: before clipping its norm
                if cfg.gen_grad_clip:
                    torch.nn.utils.clip_grad_norm_(self.generator.parameters(), cfg.gen_grad_clip)
                self.gen_opt.step()
                mismatch = mismatch + (-loss.detach())
        with torch.no_grad():  # the student trains on the updated generator's images of the same z
            x = self.generator(z)
        ctx.average_buffers(self.generator)
        return Samples(x, None, {"kl_t_s": mismatch / max(1, cfg.gen_iters), "lr": lr})

    # -- distillation stage: KL (or RSLAD) + beta x attention transfer -----------------------------
    def _teacher_outputs(self, ctx: MethodContext, x: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """Teacher logits and block outputs, computed once per pseudo-batch (the batch repeats n_s times)."""
        cache = self._teacher_cache
        if cache is not None and cache[0] == ctx.epoch and cache[1].shape == x.shape and torch.equal(cache[1], x):
            return cache[2], cache[3]
        with torch.no_grad():
            t_logits, t_acts = ctx.teacher.forward_stages(x)
        self._teacher_cache = (ctx.epoch, x, t_logits, stage_list(t_acts))
        return t_logits, self._teacher_cache[3]

    def student_loss(self, ctx: MethodContext, batch: Batch):
        cfg, student = ctx.cfg, ctx.student
        x = batch.x
        t_logits, t_acts = self._teacher_outputs(ctx, x)
        s_logits, s_acts = student.forward_stages(x)
        at = attention_transfer(stage_list(s_acts), t_acts)
        if cfg.rslad:
            x_adv = student_adversarial(ctx, x, F.softmax(t_logits, 1), cfg.rslad_steps, cfg.rslad_step)
            s_adv = student(x_adv)
            kd = rslad_student_loss(t_logits, s_logits, s_adv, cfg.rslad_w_clean, cfg.rslad_w_adv)
            logs = {"kl_clean": kl_div(t_logits, s_logits).detach(), "kl_adv": kl_div(t_logits, s_adv).detach()}
        else:
            kd = belief_mismatch(t_logits, s_logits, cfg.kd_temperature)
            logs = {"kd": kd.detach()}
        logs["at"] = at.detach()
        return kd + cfg.at_beta * at, logs

    def bench_passes(self, cfg, ctx: MethodContext) -> Dict[str, Dict[str, float]]:
        # generator step: through the teacher and the (train-mode, frozen) student to the images
        return {**super().bench_passes(cfg, ctx), "generator iteration": {"teacher_input_grad": 1, "student_input_grad": 1}}

    # -- resume ----------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        return {"generator": self.generator.state_dict(), "gen_opt": self.gen_opt.state_dict()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.generator.load_state_dict(state["generator"])
        self.gen_opt.load_state_dict(state["gen_opt"])
