"""DFHL: Data-Free Hard-Label Robustness Stealing (Yuan et al., AAAI 2024, arXiv 2312.05924).

The teacher is a black box that answers with its top-1 label only; here it is reached solely
through `HardLabelOracle`, so no teacher logit or gradient can reach the method. Per epoch:

1. Substitute data generation: one generator, never re-initialised, is trained for `gen_iters`
   steps against the STUDENT (the teacher is never queried while it trains) on
   L_G = KL(smooth_onehot(y) || S(aug(G(z)))) + lambda_balance * sum_c pbar_c log pbar_c,
   with y ~ U(classes), pbar the batch-mean student prediction. The step with the lowest L_G gives
   the batch that joins the pool, labelled by the teacher's top-1 label.
2. Clone training: for each pool batch, crop+flip, then strong augmentation (random resized crop of
   scale 0.95-1, horizontal and vertical flips, rotation of up to 15 degrees), then High-Entropy
   Examples: `hee_steps` sign steps of `hee_step` ASCENDING the student's prediction entropy, with no
   eps ball (only [0,1]); the teacher labels the HEEs and the student minimises CE(S(x_hee), T_top1(x_hee)).

See docs/methods/dfhl.md for every default, where it comes from, and where we differ from the
authors' code.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from dfrd_bench.attacks import sign_ascent
from dfrd_bench.augment import random_crop_flip, random_resized_crop, random_rotation
from dfrd_bench.config import ConfigError
from dfrd_bench.generators import Generator
from dfrd_bench.losses import entropy, kl_div
from dfrd_bench.method import (Batch, LowestLossBatch, Method, MethodContext, MethodInfo, Samples, frozen,
                               in_eval_mode, register_method)
from dfrd_bench.pool import SamplePool


# ------------------------------------------------------------------------------------------------
# 1. The hard-label black box
# ------------------------------------------------------------------------------------------------
class HardLabelOracle:
    """The method's only access to the teacher: images in, top-1 labels (int64, shape [N]) out.

    The teacher runs under no_grad on a detached input, so neither its logits nor any gradient
    through it leave this object; `queries` counts the images it has labelled.
    """

    def __init__(self, teacher: torch.nn.Module) -> None:
        def query(x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return teacher(x.detach()).argmax(1)

        self._query = query  # the teacher lives only in this closure
        self.queries = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        labels = self._query(x)
        self.queries += int(x.shape[0])
        return labels


# ------------------------------------------------------------------------------------------------
# 2. The generator's loss
# ------------------------------------------------------------------------------------------------
def smooth_one_hot(y: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """1 - smoothing on the label, smoothing / (C - 1) on every other class (the authors' code)."""
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
    off = smoothing / (num_classes - 1) if num_classes > 1 else 0.0
    target = torch.full((len(y), num_classes), off, device=y.device)
    return target.scatter_(1, y[:, None], 1.0 - smoothing)


def class_balance(logits: torch.Tensor, log10: bool = False) -> torch.Tensor:
    """sum_c pbar_c log pbar_c with pbar the batch-mean softmax: minus the entropy of the mean
    prediction, lowest (-log C) when the batch covers the classes evenly."""
    pbar = F.softmax(logits, 1).mean(0)
    log_p = pbar.clamp_min(1e-12).log()
    if log10:
        log_p = log_p / torch.log(torch.tensor(10.0, device=logits.device))
    return (pbar * log_p).sum()


def dfhl_generator_loss(student_logits: torch.Tensor, soft_targets: torch.Tensor, lambda_balance: float,
                        log10: bool = False) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """L_G = KL(soft_targets || S(x)) + lambda_balance * class_balance(S(x)); returns (L_G, KL, balance)."""
    kl = kl_div(soft_targets, student_logits, p_is_probs=True)
    balance = class_balance(student_logits, log10)
    return kl + lambda_balance * balance, kl, balance


# ------------------------------------------------------------------------------------------------
# 3. Strong augmentation and High-Entropy Examples
# ------------------------------------------------------------------------------------------------
def strong_augment(x: torch.Tensor, crop_scale: float = 0.95, degrees: float = 15.0, vflip: bool = True,
                   generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Random resized crop (area crop_scale..1, aspect crop_scale..1/crop_scale) with horizontal
    flips, vertical flips, and a rotation uniform in [-degrees, degrees]; each image its own draw."""
    x = random_resized_crop(x, scale=(crop_scale, 1.0), ratio=(crop_scale, 1.0 / crop_scale), flip=True,
                            generator=generator)
    if vflip:
        flip = (torch.rand(x.shape[0], generator=generator) < 0.5).to(x.device)
        x = torch.where(flip[:, None, None, None], x.flip(2), x)
    if degrees:
        x = random_rotation(x, degrees, generator=generator)
    return x


def high_entropy_examples(model: torch.nn.Module, x: torch.Tensor, steps: int, step: float,
                          start: Optional[torch.Tensor] = None) -> torch.Tensor:
    """`steps` sign steps of `step` maximising the model's prediction entropy, with no eps ball:
    the examples are only kept in [0,1]. Crafted with the model in eval mode; its parameters get no
    gradient."""
    with in_eval_mode(model):
        return sign_ascent(lambda xa: entropy(model(xa)), x, eps=float("inf"), step=step, steps=steps,
                           start=start, rand_init=False, bounded=False)


# ------------------------------------------------------------------------------------------------
# 4. The method
# ------------------------------------------------------------------------------------------------
# CIFAR-100 generator settings (the authors' README command); they hold in every preset.
_CIFAR100 = {"gen_lr": 5e-3, "lr_z": 0.015, "label_smoothing": 0.02}


@register_method("dfhl")
class DFHL(Method):
    summary = "DFHL: hard-label robustness stealing with a student-driven generator and High-Entropy Examples"
    info = MethodInfo(label="DFHL", family="hard-label", order=50, color="tab:olive",
                      paper="Yuan et al., Data-Free Hard-Label Robustness Stealing Attack, AAAI 2024 "
                            "(arXiv 2312.05924)")
    defaults: Dict[str, Any] = {
        # generator (never reset; Adam on the generator and on z, both restarted each epoch as in the authors' code)
        "gen_lr": 2e-3, "lr_z": 1e-2, "gen_beta1": 0.5, "gen_beta2": 0.999, "latent_dim": 256, "gen_width": 64,
        # L_G = KL(smooth one-hot || S) + lambda_balance * sum_c pbar_c log pbar_c
        "label_smoothing": 0.2, "lambda_balance": 3.0,
        "balance_log10": True,        # the authors' code takes log10 in the balance term (= lambda 3/ln 10 in nats)
        "augment": True,              # crop(pad 4)+flip before the student, in both stages (authors' code)
        # High-Entropy Examples
        "hee_steps": 10, "hee_step": 0.03, "hee_start_noise": 1e-3,
        "strong_augment": True, "hee_crop_scale": 0.95, "hee_rotation": 15.0, "hee_vflip": True,
        # extra CE on the (crop+flipped) pool batch with its stored teacher labels; 0 = HEEs only (authors' code)
        "pool_weight": 0.0,
    }
    presets = {
        # The suite's budget policy (docs/methods.md): the student trains on FERD's schedule (220 epochs
        # x 400 iterations, SGD 0.1 / 0.9 / 5e-4); the synthesis keeps DFHL's own settings. The authors'
        # 300 x 500 epochs, weight decay 1e-4: variant `authors`.
        "paper": {"*": {"gen_iters": 10},
                  "cifar100": {**_CIFAR100, "gen_iters": 15}},
        "gpu": {"*": {"gen_iters": 10}, "cifar100": {**_CIFAR100, "gen_iters": 15}},
        "quick": {"cifar100": dict(_CIFAR100)},
        "smoke": {"*": {"hee_steps": 2}, "cifar100": dict(_CIFAR100)},
    }
    data_parallel = True  # the generator's gradients and BN statistics are averaged over the processes
    variants: Dict[str, Dict[str, Any]] = {
        "authors": {"*": {}, "paper": {"epochs": 300, "student_iters": 500, "student_weight_decay": 1e-4}},
    }

    # ------------------------------------------------------------------------------------------
    def setup(self, ctx: MethodContext) -> None:
        cfg = ctx.cfg
        if not 0.0 <= cfg.label_smoothing < 1.0:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {cfg.label_smoothing}")
        if not 0.0 < cfg.hee_crop_scale <= 1.0:
            raise ConfigError(f"hee_crop_scale must be in (0, 1], got {cfg.hee_crop_scale}")
        if cfg.hee_steps < 0:
            raise ConfigError(f"hee_steps must be >= 0, got {cfg.hee_steps}")
        if cfg.student_augment and cfg.augment:
            raise ConfigError("dfhl crops and flips its pool batches itself before building High-Entropy Examples "
                              "(augment=true): student_augment=true would do it twice; set one of them to false")
        self.oracle = HardLabelOracle(ctx.teacher)  # from here on the method never touches ctx.teacher
        self.pool_queries = 0
        self.generator = ctx.place_generator(Generator(cfg.latent_dim, cfg.gen_width, ctx.image_size))

    # -- generation stage ------------------------------------------------------------------------
    def generate(self, ctx: MethodContext) -> Samples:
        cfg, student = ctx.cfg, ctx.student
        n, c = cfg.synthesis_batch_size, ctx.num_classes
        y = ctx.randint(c, n)
        targets = smooth_one_hot(y, c, cfg.label_smoothing)
        z = ctx.randn(n, cfg.latent_dim).requires_grad_(True)
        opt = torch.optim.Adam([{"params": self.generator.parameters()}, {"params": [z], "lr": cfg.lr_z}],
                               lr=cfg.gen_lr, betas=(cfg.gen_beta1, cfg.gen_beta2))
        self.generator.train()
        best = LowestLossBatch(ctx.device)
        best_x: Optional[torch.Tensor] = None
        sums: Dict[str, torch.Tensor] = {}
        with frozen(student):  # the student is read, not trained: eval mode, no weight gradients
            for _ in range(cfg.gen_iters):
                x = self.generator(z)
                view = random_crop_flip(x, generator=ctx.rng) if cfg.augment else x
                total, kl, balance = dfhl_generator_loss(student(view), targets, cfg.lambda_balance, cfg.balance_log10)
                # keep the batch of the lowest loss (measured before this step's update, as the authors do)
                best_x = best.update(total, x)
                opt.zero_grad(set_to_none=True)
                total.backward()
                ctx.average_gradients(self.generator.parameters())  # data-parallel; z is per sample
                opt.step()
                for k, v in {"total": total, "kl": kl, "balance": balance}.items():
                    sums[k] = sums.get(k, 0) + v.detach()
        if best_x is None:  # gen_iters = 0: the generator as it stands
            with torch.no_grad():
                best_x = self.generator(z)
        ctx.average_buffers(self.generator)
        # label the images as the pool stores them (uint8), so the stored label is the teacher's on the stored image
        x_pool = SamplePool.quantize(best_x).float().div_(255.0)
        labels = self.oracle(x_pool)
        self.pool_queries += n
        logs: Dict[str, Any] = {k: v / max(1, cfg.gen_iters) for k, v in sums.items()}
        logs["teacher_agrees_with_y"] = (labels == y).float().mean()
        logs["label_hist"] = torch.bincount(labels.cpu(), minlength=c).tolist()
        return Samples(x_pool, labels, logs)

    # -- clone (student) training ----------------------------------------------------------------
    def student_loss(self, ctx: MethodContext, batch: Batch):
        cfg, student = ctx.cfg, ctx.student
        x = random_crop_flip(batch.x, generator=ctx.rng) if cfg.augment else batch.x
        x_s = (strong_augment(x, cfg.hee_crop_scale, cfg.hee_rotation, cfg.hee_vflip, ctx.rng)
               if cfg.strong_augment else x)
        start = (x_s + cfg.hee_start_noise * ctx.randn(*x_s.shape)).clamp(0, 1) if cfg.hee_start_noise else x_s
        x_hee = high_entropy_examples(student, x_s, cfg.hee_steps, cfg.hee_step, start=start)
        y_hee = self.oracle(x_hee)
        logits = student(x_hee)
        ce_hee = F.cross_entropy(logits, y_hee)
        logs = {"ce_hee": ce_hee.detach(), "hee_entropy": entropy(logits.detach()).mean(),
                "hee_agreement": (logits.detach().argmax(1) == y_hee).float().mean()}
        loss = ce_hee
        if cfg.pool_weight:
            ce_pool = F.cross_entropy(student(x), batch.y)
            loss = loss + cfg.pool_weight * ce_pool
            logs["ce_pool"] = ce_pool.detach()
        return loss, logs

    def end_epoch(self, ctx: MethodContext) -> Dict[str, Any]:
        # queries of the clone-training stage (the paper's query budget) and of the pool labels; each
        # process of a data-parallel run counts its equal share
        n = ctx.world_size
        return {"queries": n * (self.oracle.queries - self.pool_queries), "pool_queries": n * self.pool_queries}

    def bench_passes(self, cfg, ctx: MethodContext) -> Dict[str, Dict[str, float]]:
        # generator step: through the frozen student only (the teacher is never differentiated); the batch
        # kept is labelled by one teacher forward; a student step: HEE steps on the student, the oracle's
        # labels, the student's training pass (and one on the pool batch with pool_weight)
        return {"generator iteration": {"student_input_grad": 1}, "generation overhead": {"teacher_forward": 1},
                "student iteration": {"student_input_grad": cfg.hee_steps, "teacher_forward": 1,
                                      "student_train": 2 if cfg.pool_weight else 1}}

    # -- resume ----------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        return {"generator": self.generator.state_dict(), "queries": self.oracle.queries,
                "pool_queries": self.pool_queries}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.generator.load_state_dict(state["generator"])
        self.oracle.queries = int(state["queries"])
        self.pool_queries = int(state["pool_queries"])
