"""Fast: Up to 100x Faster Data-free Knowledge Distillation (Fang et al., AAAI 2022), made a robustness
distillation baseline with the RSLAD student stage (FERD, Appendix A.8).

Per epoch (one synthesis round):
1. A clone of the meta generator g_meta is fine-tuned for `gen_iters` Adam steps (with z) on
   L = l_bn L_bn^mmt(T, v) + l_oh CE(T(v), y) + l_adv L_adv,   v = crop+flip(g(z)),
   L_bn^mmt comparing the teacher's running statistics with m * (past statistics) + (1 - m) * (batch
   statistics), and L_adv CMI's agreement-masked -KL(T || S), switched on after the warm-up epochs.
   The batch of the lowest L joins the pool.
2. Meta update of g_meta with Adam at lr gen_lr * gen_iters: first-order MAML (the sum of the
   clone's gradients over the inner steps) or Reptile (gradient g_meta - g_clone: towards the clone).
3. Late in training (`reinit_after_warmup` epochs after the warm-up) the first linear and BN layers
   of g_meta are re-initialised once.
4. Student stage: RobustKDMethod (RSLAD by default; `rslad=false` is Fast's KD at T = 20).

See docs/methods/fast.md for every default and where it comes from.
"""
from __future__ import annotations

import copy
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from dfrd_bench.augment import random_crop_flip
from dfrd_bench.config import ConfigError
from dfrd_bench.generators import Generator
from dfrd_bench.hooks import BNStatistics, bn_statistics_loss
from dfrd_bench.losses import decision_adversarial_loss
from dfrd_bench.method import LowestLossBatch, MethodContext, MethodInfo, Samples, frozen, register_method
from dfrd_bench.robust_kd import RSLAD_DEFAULTS, RobustKDMethod

META_UPDATES = ("maml", "reptile")
MOMENTUM_UPDATES = ("round", "step")


# ------------------------------------------------------------------------------------------------
# Pieces (tested on tiny models in tests/test_fast.py)
# ------------------------------------------------------------------------------------------------
def fomaml_accumulate_(meta: nn.Module, clone: nn.Module) -> None:
    """First-order MAML: add the clone's current gradients to the meta model's .grad."""
    for p, q in zip(meta.parameters(), clone.parameters()):
        if q.grad is None:
            continue
        if p.grad is None:
            p.grad = q.grad.detach().clone()
        else:
            p.grad.add_(q.grad.detach())


def reptile_gradient_(meta: nn.Module, clone: nn.Module, scale: float = 1.0) -> None:
    """Reptile: set the meta model's .grad to scale * (theta_meta - theta_clone), so that a descent
    step moves it towards the fine-tuned clone."""
    for p, q in zip(meta.parameters(), clone.parameters()):
        p.grad = (p.detach() - q.detach()) * scale


class MomentumBNLoss:
    """Fast's BN-statistics loss on a momentum blend of batch statistics, with core `BNStatistics`.

    The loss compares each BN layer's running statistics with m * s_past + (1 - m) * s_batch. The
    authors' code moves s_past once per synthesis round, to the blend of the round's LAST step
    (`update='round'`); `update='step'` moves it after every forward pass (core BNStatistics' own
    behaviour). momentum 0 is the plain DeepInversion loss.
    """

    def __init__(self, model: nn.Module, momentum: float, update: str = "round") -> None:
        if update not in MOMENTUM_UPDATES:
            raise ValueError(f"update must be one of {', '.join(MOMENTUM_UPDATES)}")
        self.model = model
        self.layers = list(model.bn_layers()) if hasattr(model, "bn_layers") else [
            m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self.stats = BNStatistics(self.layers, momentum if momentum > 0 else None)
        self.update = update

    def __call__(self, forward: Callable[[], torch.Tensor], commit: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
        """Run forward() under the hooks; return (BN loss, its output). With update='round', only a
        committing call (the round's last step) moves the past statistics."""
        self.stats.commit = commit or self.update != "round"
        try:
            with bn_statistics_loss(self.model, state=self.stats) as bn:
                out = forward()
            loss = bn.loss()
        finally:
            self.stats.commit = True
        return loss, out

    def past(self) -> List[Optional[Tuple[torch.Tensor, torch.Tensor]]]:
        """Per BN layer (model order), the (mean, var) that the next loss blends with, or None."""
        return self.stats.ema_state()

    def average_past(self, average: Callable[[List[torch.Tensor]], None]) -> None:
        """Replace the past statistics by `average` of them (their mean over the processes of a
        data-parallel run: exact for the means, the within-process variances for the variances)."""
        self.stats.average_ema(average)

    def state_dict(self) -> Dict[str, Any]:
        return {"past": self.stats.ema_state()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.stats.load_ema_state(state["past"])


# ------------------------------------------------------------------------------------------------
@register_method("fast")
class Fast(RobustKDMethod):
    summary = "Fast: meta-learned generator (MAML / Reptile), few steps per round, with an RSLAD student"
    info = MethodInfo(label="Fast", family="generator", rslad_stage=True, order=40, color="tab:pink",
                      paper="Fang et al., Up to 100x Faster Data-free Knowledge Distillation, AAAI 2022")
    defaults: Dict[str, Any] = {
        **RSLAD_DEFAULTS,
        "kd_temperature": 20.0,       # the plain-KD student (rslad=false) at Fast's temperature
        # generator and its inner loop (authors' scripts/fast_cifar.sh, the Fast-10 line)
        "gen_lr": 2e-3, "lr_z": 0.01, "gen_beta1": 0.5, "gen_beta2": 0.999, "latent_dim": 256, "gen_width": 64,
        # meta update: first-order MAML (authors' default, --is_maml 1) or Reptile
        "meta": "maml", "reptile_scale": 67.0,
        # loss weights (authors' scripts, WRN teachers): bn 10, oh 0.4, adv 1.1 after the warm-up
        "lambda_bn": 10.0, "lambda_oh": 0.4, "lambda_adv": 1.1,
        "bn_momentum": 0.9, "bn_momentum_update": "round",
        "augment": True,              # crop+flip views for the teacher and student
        # re-initialise the first linear and BN layers once, 120 epochs after the warm-up
        "reinit_first_layers": True, "reinit_after_warmup": 120,
    }
    runner_defaults = {"student_augment": True}  # Fast-Datafree's KD loop crops and flips every pool batch
    data_parallel = True  # meta generator, clone and BN-momentum statistics kept the same on every process
    choices = {"meta": META_UPDATES, "bn_momentum_update": MOMENTUM_UPDATES}  # checked when settings resolve
    presets = {
        # Fast-10 with the authors' 20 warm-up epochs (generation only) in front of the suite's 220
        # student epochs (budget policy, docs/methods.md; the authors' 220 include the warm-up)
        "paper": {"*": {"gen_iters": 10, "warmup_epochs": 20, "epochs": 240}},
        "quick": {"*": {"gen_iters": 10, "epochs": 10, "warmup_epochs": 2, "reinit_after_warmup": 5,
                        "rslad_steps": 5}},
        # gpu: 2 warm-up epochs in front of the 20 student epochs every method gets there; the late
        # re-initialisation at 11 of the 20 (paper: 120 of 220)
        "gpu": {"*": {"gen_iters": 10, "warmup_epochs": 2, "epochs": 22, "reinit_after_warmup": 11}},
        # standard builds on quick (2 warm-up epochs) with 40 student epochs, as every method
        "standard": {"*": {"epochs": 42}},
        "smoke": {"*": {"epochs": 3, "warmup_epochs": 1, "reinit_after_warmup": 1, "rslad_steps": 2}},
    }
    variants = {
        # the three settings of the authors' scripts (inner steps, generator lr, z lr)
        "fast2": {"gen_iters": 2, "gen_lr": 5e-3, "lr_z": 0.015},
        "fast5": {"gen_iters": 5, "gen_lr": 3e-3, "lr_z": 0.01},
        "fast10": {"gen_iters": 10, "gen_lr": 2e-3, "lr_z": 0.01},
    }

    # ------------------------------------------------------------------------------------------
    def teacher_needs(self, cfg: Any) -> Tuple[str, ...]:
        # the momentum BN-statistics loss
        return ("batchnorm",)

    def setup(self, ctx: MethodContext) -> None:
        cfg = ctx.cfg
        if not 0 <= cfg.bn_momentum < 1:
            raise ConfigError("bn_momentum must lie in [0, 1)")
        if cfg.gen_iters < 1:
            raise ConfigError("gen_iters must be at least 1")
        if not ctx.teacher.bn_layers():
            raise ConfigError(f"teacher {ctx.teacher.arch} has no BatchNorm layer: Fast's BN-statistics loss needs one")
        self.generator = ctx.place_generator(Generator(cfg.latent_dim, cfg.gen_width, ctx.image_size)).train()
        # the authors' meta optimiser: Adam at lr_g * g_steps, betas (0.5, 0.999)
        self.meta_opt = torch.optim.Adam(self.generator.parameters(), lr=cfg.gen_lr * cfg.gen_iters,
                                         betas=(cfg.gen_beta1, cfg.gen_beta2))
        self.bn_loss = MomentumBNLoss(ctx.teacher, cfg.bn_momentum, cfg.bn_momentum_update)

    def reinit_epoch(self, cfg) -> Optional[int]:
        """The (0-based) epoch whose generation stage starts by re-initialising the first layers."""
        if not cfg.reinit_first_layers or cfg.reinit_after_warmup < 1:
            return None
        return cfg.warmup_epochs + cfg.reinit_after_warmup - 1

    # -- generation stage ------------------------------------------------------------------------
    def generate(self, ctx: MethodContext) -> Samples:
        reinit = ctx.epoch == self.reinit_epoch(ctx.cfg)
        if reinit:
            self.generator.reinit_first_layers(generator=ctx.rng)
            ctx.sync_module(self.generator)  # data-parallel: each process drew its own; rank 0's are kept
        clone, best_x, y, logs = self.adapt(ctx)
        self.bn_loss.average_past(ctx.average)  # data-parallel: each process blended its own batch statistics
        self.meta_step(ctx, clone)
        logs["reinit"] = float(reinit)
        return Samples(best_x, y, logs)

    def adapt(self, ctx: MethodContext) -> Tuple[Generator, torch.Tensor, torch.Tensor, Dict[str, Any]]:
        """Fine-tune a clone of the meta generator for gen_iters steps; with MAML, accumulate its
        gradients into the meta generator's .grad. Returns (clone, best batch, labels, logs)."""
        cfg, teacher, student = ctx.cfg, ctx.teacher, ctx.student
        n = cfg.synthesis_batch_size
        y = ctx.randint(ctx.num_classes, n)
        z = ctx.randn(n, cfg.latent_dim).requires_grad_(True)
        self.meta_opt.zero_grad(set_to_none=True)
        clone = copy.deepcopy(self.generator).train()
        opt = torch.optim.Adam([{"params": clone.parameters()}, {"params": [z], "lr": cfg.lr_z}], lr=cfg.gen_lr,
                               betas=(cfg.gen_beta1, cfg.gen_beta2))
        adv_on = cfg.lambda_adv > 0 and ctx.epoch >= cfg.warmup_epochs
        maml = cfg.meta == "maml"
        best = LowestLossBatch(ctx.device)
        best_x: Optional[torch.Tensor] = None
        sums: Dict[str, torch.Tensor] = {}
        zero = torch.zeros((), device=ctx.device)
        with frozen(student):  # the student is read, not trained: eval mode, no weight gradients
            for it in range(cfg.gen_iters):
                x = clone(z)
                view = random_crop_flip(x, generator=ctx.rng) if cfg.augment else x
                loss_bn, t_logits = self.bn_loss(lambda: teacher(view), commit=it == cfg.gen_iters - 1)
                terms = {"bn": loss_bn, "oh": F.cross_entropy(t_logits, y)}
                if adv_on:
                    terms["adv"], mask = decision_adversarial_loss(t_logits, student(view))
                    terms["agree_frac"] = mask.mean()
                total = cfg.lambda_bn * terms["bn"] + cfg.lambda_oh * terms["oh"] + cfg.lambda_adv * terms.get("adv", zero)
                opt.zero_grad(set_to_none=True)
                total.backward()
                ctx.average_gradients(clone.parameters())  # before MAML reads them; z is per sample
                if maml:
                    fomaml_accumulate_(self.generator, clone)
                opt.step()
                with torch.no_grad():
                    best_x = best.update(total, x)
                for k, v in {"total": total, **terms}.items():
                    sums[k] = sums.get(k, 0) + v.detach()
        logs: Dict[str, Any] = {k: v / cfg.gen_iters for k, v in sums.items()}
        return clone, best_x, y, logs

    def meta_step(self, ctx: MethodContext, clone: Generator) -> None:
        """One Adam step of the meta generator: along the accumulated MAML gradient, or towards the clone."""
        if ctx.cfg.meta == "reptile":
            self.meta_opt.zero_grad(set_to_none=True)
            reptile_gradient_(self.generator, clone, ctx.cfg.reptile_scale)
        self.meta_opt.step()
        self.meta_opt.zero_grad(set_to_none=True)

    def bench_passes(self, cfg, ctx: MethodContext) -> Dict[str, Dict[str, float]]:
        # a clone step: through the teacher (BN statistics, CE) and, after the warm-up, the frozen student
        step = {"teacher_input_grad": 1, **({"student_input_grad": 1} if cfg.lambda_adv > 0 else {})}
        return {**super().bench_passes(cfg, ctx), "generator iteration": step}

    # -- resume ----------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        return {"generator": self.generator.state_dict(), "meta_opt": self.meta_opt.state_dict(),
                "bn_momentum": self.bn_loss.state_dict()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.generator.load_state_dict(state["generator"])
        self.meta_opt.load_state_dict(state["meta_opt"])
        self.bn_loss.load_state_dict(state["bn_momentum"])
