"""CMI: Contrastive Model Inversion for Data-Free Knowledge Distillation (Fang et al., IJCAI 2021),
made a robustness distillation baseline with the RSLAD student stage (FERD, Appendix A.8).

Per epoch (one synthesis round):
1. The generator is re-initialised; z ~ N(0, I), labels y uniform. For `gen_iters` Adam steps on the
   generator and z, with a global view v_g = crop+flip(g(z)) and a local view v_l = resized-crop(g(z)):
   L = l_bn L_bn(T, v_g) + l_oh CE(T(v_g), y) + l_adv L_adv + l_cr L_cr
   L_adv = -mean_i [T and S agree on v_g,i] KL(T(v_g,i) || S(v_g,i))    (decision-adversarial, masked)
   L_cr  = InfoNCE between h(f(v_l)) and h(f(v_g)): f = per-sample means of every teacher BN input,
           h = MLP head (D -> D -> head_dim) + L2 norm, positive = the other view of the same sample,
           negatives = the batch's other samples and `n_neg` features drawn from a memory bank.
   The head is trained with the generator; the batch of the lowest L joins the pool and its
   (local, global) features join the bank (a FIFO ring buffer on the training device).
2. Student stage: RobustKDMethod (RSLAD by default; `rslad=false` is CMI's KD at T = 20).

See docs/methods/cmi.md for every default and where it comes from.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from dfrd_bench.augment import random_crop_flip, random_resized_crop
from dfrd_bench.config import ConfigError
from dfrd_bench.generators import GENERATOR_INITS, Generator, dcgan_init_, reinit_generator_  # noqa: F401 (re-exported)
from dfrd_bench.hooks import bn_input_means, bn_statistics_loss
from dfrd_bench.losses import decision_adversarial_loss
from dfrd_bench.method import LowestLossBatch, MethodContext, MethodInfo, Samples, frozen, register_method
from dfrd_bench.robust_kd import RSLAD_DEFAULTS, RobustKDMethod

FEATURE_SOURCES = ("bn", "stages")


# ------------------------------------------------------------------------------------------------
# Pieces (pure functions and small classes, tested on tiny tensors in tests/test_cmi.py)
# ------------------------------------------------------------------------------------------------
class MLPHead(nn.Module):
    """The contrastive projection head: Linear(D, D) -> ReLU -> Linear(D, out), L2-normalised."""

    def __init__(self, dim_in: int, dim_out: int = 256, dim_hidden: Optional[int] = None) -> None:
        super().__init__()
        dim_hidden = dim_hidden or dim_in
        self.head = nn.Sequential(nn.Linear(dim_in, dim_hidden), nn.ReLU(inplace=True), nn.Linear(dim_hidden, dim_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(x), dim=1, p=2)


class MemoryBank:
    """A FIFO ring buffer of feature rows on the training device (CMI's bank of past instances).

    `add` overwrites the oldest rows once full; `sample(k)` draws k distinct rows of those written so
    far (all of them when fewer) with the run's generator, so a resumed run draws the same rows.
    """

    def __init__(self, size: int, dim: int, device: torch.device | str = "cpu") -> None:
        if size < 1:
            raise ValueError("the memory bank needs a positive size")
        self.size, self.dim = int(size), int(dim)
        self.data = torch.zeros(self.size, self.dim, device=device)
        self.ptr = 0          # the next row to write
        self.n_updates = 0    # rows written in total

    def __len__(self) -> int:
        return min(self.n_updates, self.size)

    def add(self, feats: torch.Tensor) -> None:
        feats = feats.detach().to(self.data)
        n_total = len(feats)
        feats = feats[-self.size:]  # a batch larger than the bank keeps its last rows
        skipped = n_total - len(feats)
        start = (self.ptr + skipped) % self.size
        idx = (start + torch.arange(len(feats), device=self.data.device)) % self.size
        self.data[idx] = feats
        self.ptr = (self.ptr + n_total) % self.size
        self.n_updates += n_total

    def sample(self, k: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        valid = len(self)
        if valid == 0 or k <= 0:
            return self.data[:0]
        idx = torch.randperm(valid, generator=generator)[:k]
        return self.data[idx.to(self.data.device)]

    def state_dict(self) -> Dict[str, Any]:
        return {"data": self.data[: len(self)].cpu(), "ptr": self.ptr, "n_updates": self.n_updates}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        rows = state["data"].to(self.data)
        if rows.shape[1] != self.dim or len(rows) > self.size:
            raise ValueError(f"memory bank state of shape {tuple(rows.shape)} does not fit a bank of {self.size} x {self.dim}")
        self.data.zero_()
        self.data[: len(rows)] = rows
        self.ptr, self.n_updates = int(state["ptr"]), int(state["n_updates"])


def contrastive_logits(local_proj: torch.Tensor, global_proj: torch.Tensor, temperature: float) -> torch.Tensor:
    """Row i: cosine similarities of local view i with every global view, / temperature.

    The positive of row i is column i (the same instance); the global side is detached, as in the
    authors' code, so gradients flow through the local views only.
    """
    return local_proj @ global_proj.detach().t() / temperature


def contrastive_loss(head: Callable[[torch.Tensor], torch.Tensor], local_feat: torch.Tensor, global_feat: torch.Tensor,
                     bank_local: torch.Tensor, bank_global: torch.Tensor, temperature: float) -> torch.Tensor:
    """CMI's InfoNCE over the batch and the sampled bank rows (N + N' instances).

    Every instance (batch or bank) is a row whose positive is its own other view; the loss is the
    mean over the batch rows plus the mean over the bank rows (when there are any).

    Written for speed, with the values and gradients of projecting all 2(N + N') rows with
    gradients and dividing the (N + N')^2 logits by the temperature (the plain version in
    tests/test_speed.py, which checks both agree): the global side is detached in the logits, so its projections are computed
    without a graph, and the temperature divides the (N + N') x head_dim global projections
    instead of the logits (1.005 -> 0.865 s per CMI generator step on 2 CPU cores).
    """
    n = len(local_feat)
    p_local = head(torch.cat([local_feat, bank_local]))
    with torch.no_grad():
        p_global = head(torch.cat([global_feat, bank_global])) / temperature
    logits = p_local @ p_global.t()
    per_row = F.cross_entropy(logits, torch.arange(len(logits), device=logits.device), reduction="none")
    if len(bank_local):
        return per_row[:n].mean() + per_row[n:].mean()
    return per_row.mean()


# ------------------------------------------------------------------------------------------------
@register_method("cmi")
class CMI(RobustKDMethod):
    summary = "CMI: contrastive model inversion (re-initialised generator + memory bank) with an RSLAD student"
    info = MethodInfo(label="CMI", family="generator", rslad_stage=True, order=20, color="tab:purple",
                      paper="Fang et al., Contrastive Model Inversion for Data-Free Knowledge Distillation, IJCAI 2021")
    defaults: Dict[str, Any] = {
        **RSLAD_DEFAULTS,
        "kd_temperature": 20.0,       # the plain-KD student (rslad=false) at CMI's temperature
        # generator (authors' code: nz 256, ngf 64, Adam on generator and z, re-initialised each round)
        "gen_lr": 1e-3, "gen_beta1": 0.5, "gen_beta2": 0.999, "latent_dim": 256, "gen_width": 64,
        "gen_init": "dcgan",          # authors' reset_model; 'default' = PyTorch's initialisation
        # inversion loss weights (authors' scripts/cmi_cifar.sh)
        "lambda_bn": 1.0, "lambda_oh": 1.0, "lambda_adv": 0.5,
        # contrastive term
        "lambda_cr": 0.8, "cr_temperature": 0.2, "head_dim": 256, "head_lr": 1e-3,
        "bank_size": 40960, "n_neg": 4096,
        "cmi_features": "bn",         # 'bn': every teacher BN input; 'stages': every stage output (smaller D)
        "local_scale_min": 0.25,      # the local view's random resized crop covers 25-100 % of the image
    }
    runner_defaults = {"student_augment": True}  # CMI's (Fast-Datafree's) KD loop crops and flips every pool batch
    data_parallel = True  # generator, head and memory bank kept the same on every process
    choices = {"cmi_features": FEATURE_SOURCES, "gen_init": GENERATOR_INITS}  # checked when settings resolve
    presets = {
        "quick": {"*": {"bank_size": 4096, "n_neg": 512, "rslad_steps": 5}},
        "smoke": {"*": {"bank_size": 12, "n_neg": 8, "rslad_steps": 2}},
    }

    # ------------------------------------------------------------------------------------------
    def teacher_needs(self, cfg: Any) -> Tuple[str, ...]:
        # BN-statistics loss; CMI's features are BN inputs or stage outputs
        return ("batchnorm", "stages") if cfg.cmi_features == "stages" else ("batchnorm",)

    def setup(self, ctx: MethodContext) -> None:
        cfg = ctx.cfg
        if not 0 < cfg.local_scale_min <= 1:
            raise ConfigError("local_scale_min must lie in (0, 1]")
        if cfg.bank_size < 1 or cfg.n_neg < 0:
            raise ConfigError("bank_size must be positive and n_neg non-negative")
        if cfg.gen_iters < 1:
            raise ConfigError("gen_iters must be at least 1")
        self.generator = ctx.place_generator(Generator(cfg.latent_dim, cfg.gen_width, ctx.image_size))
        dim = self._feature_dim(ctx)
        self.feature_dim = dim
        self.head = MLPHead(dim, cfg.head_dim).to(ctx.device)
        self.head_opt = torch.optim.Adam(self.head.parameters(), lr=cfg.head_lr)  # authors' code: default betas
        self.bank = MemoryBank(cfg.bank_size, 2 * dim, ctx.device)  # rows: [local features, global features]

    def _features(self, ctx: MethodContext, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(logits, instance features) of the teacher on x; BN-statistics hooks, if any, see this pass."""
        teacher = ctx.teacher
        if ctx.cfg.cmi_features == "stages":
            logits, acts = teacher.forward_stages(x)
            feats = [a.mean(dim=list(range(2, a.dim()))) if a.dim() > 2 else a for a in acts.values()]
            return logits, torch.cat(feats, 1)
        with bn_input_means(teacher) as means:
            logits = teacher(x)
        return logits, torch.cat(means, 1)

    def _feature_dim(self, ctx: MethodContext) -> int:
        with torch.no_grad():
            probe = torch.zeros(2, 3, ctx.image_size, ctx.image_size, device=ctx.device)
            return int(self._features(ctx, probe)[1].shape[1])

    # -- generation stage ------------------------------------------------------------------------
    def generate(self, ctx: MethodContext) -> Samples:
        cfg, teacher, student = ctx.cfg, ctx.teacher, ctx.student
        n = cfg.synthesis_batch_size
        reinit_generator_(self.generator, cfg.gen_init)  # CMI synthesises every round from scratch
        ctx.sync_module(self.generator)  # data-parallel: the re-initialisation is drawn per process
        self.generator.train()
        y = ctx.randint(ctx.num_classes, n)
        z = ctx.randn(n, cfg.latent_dim).requires_grad_(True)
        opt = torch.optim.Adam([{"params": self.generator.parameters()}, {"params": [z]}], lr=cfg.gen_lr,
                               betas=(cfg.gen_beta1, cfg.gen_beta2))
        use_cr, use_adv = cfg.lambda_cr > 0, cfg.lambda_adv > 0
        best = LowestLossBatch(ctx.device)
        best_x: Optional[torch.Tensor] = None
        best_feat: Optional[torch.Tensor] = None
        sums: Dict[str, torch.Tensor] = {}
        zero = torch.zeros((), device=ctx.device)
        with frozen(student):  # the student is read, not trained: eval mode, no weight gradients
            for _ in range(cfg.gen_iters):
                x = self.generator(z)
                global_view = random_crop_flip(x, generator=ctx.rng)
                # BN features: one hook per layer gives both the BN-statistics term and the instance means
                shared_hook = use_cr and cfg.cmi_features == "bn"
                with bn_statistics_loss(teacher, instance_means=shared_hook) as bn:
                    if use_cr and not shared_hook:
                        t_logits, global_feat = self._features(ctx, global_view)
                    else:
                        t_logits = teacher(global_view)
                    loss_bn = bn.loss()
                if shared_hook:
                    global_feat = torch.cat(bn.instance_means, 1)
                terms = {"bn": loss_bn, "oh": F.cross_entropy(t_logits, y)}
                if use_adv:
                    terms["adv"], mask = decision_adversarial_loss(t_logits, student(global_view))
                    terms["agree_frac"] = mask.mean()
                if use_cr:
                    local_view = random_resized_crop(x, scale=(cfg.local_scale_min, 1.0), generator=ctx.rng)
                    _, local_feat = self._features(ctx, local_view)
                    bank_local, bank_global = self.bank.sample(cfg.n_neg, ctx.rng).chunk(2, dim=1)
                    terms["cr"] = contrastive_loss(self.head, local_feat, global_feat, bank_local, bank_global,
                                                   cfg.cr_temperature)
                total = (cfg.lambda_bn * terms["bn"] + cfg.lambda_oh * terms["oh"]
                         + cfg.lambda_adv * terms.get("adv", zero) + cfg.lambda_cr * terms.get("cr", zero))
                opt.zero_grad(set_to_none=True)
                self.head_opt.zero_grad(set_to_none=True)
                total.backward()
                # data-parallel: generator and head are shared by the global batch, z is per sample
                ctx.average_gradients(list(self.generator.parameters()) + list(self.head.parameters()))
                opt.step()
                if use_cr:
                    self.head_opt.step()
                # keep the batch (and its features) of the lowest loss, without a host sync per step
                with torch.no_grad():
                    best_x = best.update(total, x)
                    if use_cr:
                        feat = torch.cat([local_feat, global_feat], 1).detach()
                        best_feat = feat if best_feat is None else torch.where(best.improved, feat, best_feat)
                for k, v in {"total": total, **terms}.items():
                    sums[k] = sums.get(k, 0) + v.detach()
        if best_feat is not None:
            self.bank.add(ctx.gather(best_feat))  # every process's rows, in the order of the pool
        logs: Dict[str, Any] = {k: v / max(1, cfg.gen_iters) for k, v in sums.items()}
        logs["bank"] = len(self.bank)
        return Samples(best_x, y, logs)

    def bench_passes(self, cfg, ctx: MethodContext) -> Dict[str, Dict[str, float]]:
        generator = {"teacher_input_grad": 2 if cfg.lambda_cr > 0 else 1}  # global view (+ local view)
        if cfg.lambda_adv > 0:
            generator["student_input_grad"] = 1
        return {**super().bench_passes(cfg, ctx), "generator iteration": generator}

    # -- resume ----------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        # The generator is re-initialised at the start of every round: nothing of it to keep.
        return {"head": self.head.state_dict(), "head_opt": self.head_opt.state_dict(), "bank": self.bank.state_dict()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.head.load_state_dict(state["head"])
        self.head_opt.load_state_dict(state["head_opt"])
        self.bank.load_state_dict(state["bank"])
