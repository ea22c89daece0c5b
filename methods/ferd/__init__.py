"""FERD: Fairness-Enhanced Data-Free Robustness Distillation (arXiv 2509.20793).

Per epoch (Algorithm 1):
1. Generation stage: labels y ~ p; the generator synthesises Fairness-Aware Examples x_F trained on
   L_gen = l_adv L_adv + l_bn L_bn + l_oh L_oh + l_uni L_uni (Eq. 9); the lowest-loss batch joins
   the pool; then the class sampling weights p are recomputed from teacher PGD-20 margins (Eq. 1-2,
   softmax) on that batch.
2. Distillation stage (pool batches crop+flip augmented by the runner, `student_augment`):
   Uniform-Target Adversarial Examples x_U from x_F crafted on the STUDENT, maximising
   KL(T(x_F) || S(x_U)) - gamma KL(U || S(x_U)) (Eq. 10 as the authors' code runs it; the printed
   equation crafts them on the teacher: `--set variant=paper-literal` or `utae_on=teacher`), and
   L_stu = l_1 KL(T(x_F) || S(x_F)) + l_2 KL(T(x_F) || S(x_U)) with l_1 = 5/6, l_2 = 1/6 (Eq. 11).

See docs/methods/ferd.md for every default and the evidence behind it, and the variants
`paper-literal`, `released` and `rslad-weights`.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from dfrd_bench.acceleration import randn_in_layout
from dfrd_bench.attacks import ce_objective, cw_margin, kl_objective, sign_ascent
from dfrd_bench.augment import random_crop_flip
from dfrd_bench.config import ConfigError, Range, count
from dfrd_bench.generators import GENERATOR_INITS, Generator, dcgan_init_
from dfrd_bench.hooks import bn_statistics_loss
from dfrd_bench.losses import kl_div, kl_uniform, soft_cross_entropy
from dfrd_bench.method import (Batch, LowestLossBatch, Method, MethodContext, MethodInfo, Samples, frozen,
                               in_eval_mode, register_method)
from dfrd_bench.metrics import entropy_bits
from dfrd_bench.robust_kd import student_adversarial

REWEIGHT_STRATEGIES = ("margin-softmax", "power", "linear", "sigmoid", "tanh", "minmax")


# ------------------------------------------------------------------------------------------------
# 1. Robustness-guided class reweighting (Eq. 1-2 and Table 6), as pure functions
# ------------------------------------------------------------------------------------------------
def adversarial_margins(logits_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """m_i = f(x_adv)_y - max_{j != y} f(x_adv)_j (Eq. 1); negative once the attack succeeds."""
    return -cw_margin(logits_adv, y)


def class_means(values: torch.Tensor, y: torch.Tensor, num_classes: int, previous: torch.Tensor) -> torch.Tensor:
    """Per-class mean of `values` (fp32, on the CPU); classes absent from the batch keep their previous value.

    Computed on the CPU in fp32 whatever the inputs' device and dtype (precision rule 3,
    dfrd_bench/acceleration.py): `index_add_` on CUDA adds with atomics in no fixed order, and bf16
    margins carry 3 significant digits, so p could differ in its last bits between the processes of a
    data-parallel run (whose state check then stops the run) and between reruns."""
    values, y = values.detach().float().cpu(), y.detach().cpu()
    sums = torch.zeros(num_classes, dtype=values.dtype).index_add_(0, y, values)
    counts = torch.bincount(y, minlength=num_classes).to(values.dtype)
    prev = previous.detach().float().cpu()
    return torch.where(counts > 0, sums / counts.clamp_min(1), prev)


def class_vulnerability(margins: torch.Tensor, y: torch.Tensor, num_classes: int, previous: torch.Tensor) -> torch.Tensor:
    """D_c = mean over class c of -m_i (Eq. 2)."""
    return class_means(-margins, y, num_classes, previous)


def softmax_weights(vulnerability: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """p = softmax(D / T): the paper's sampling probabilities (T = 1)."""
    return F.softmax(vulnerability / temperature, 0)


def minmax_weights(vulnerability: torch.Tensor, low: float = 0.05, high: float = 0.2) -> torch.Tensor:
    """The released code: D min-max scaled to [low, high], then renormalised."""
    span = (vulnerability.max() - vulnerability.min()).clamp_min(1e-12)
    w = low + (vulnerability - vulnerability.min()) / span * (high - low)
    return w / w.sum()


def lps_weights(kappa: torch.Tensor, strategy: str, steps: int = 20, beta: float = 2.0, lam: float = 0.0) -> torch.Tensor:
    """Fair-ARD's strategies on the class-mean least PGD step kappa_c (Table 6, Eq. 27-30), normalised."""
    k = kappa.float()
    if strategy == "power":
        w = 1.0 / k.clamp_min(1.0) ** beta  # kappa_c = 0 (misclassified when clean) is treated as 1
    elif strategy == "linear":
        w = 1.0 - k / (steps + 1)
    elif strategy == "sigmoid":
        w = torch.sigmoid(lam + 5.0 * (1.0 - 2.0 * k / steps))
    elif strategy == "tanh":
        w = (1.0 + torch.tanh(lam + 5.0 * (1.0 - 2.0 * k / steps))) / 2.0
    else:
        raise ValueError(f"unknown least-PGD-step strategy {strategy!r}")
    return w / w.sum()


def least_pgd_steps(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, step: float, steps: int) -> torch.Tensor:
    """Per sample, the first PGD step t in [0, K] at which it is misclassified (K if never)."""
    first = torch.full((len(y),), steps, dtype=torch.long, device=x.device)

    def record(t: int, x_adv: torch.Tensor) -> None:
        with torch.no_grad():
            wrong = model(x_adv).argmax(1) != y
        first.copy_(torch.where(wrong & (first == steps) & (t < steps), torch.full_like(first, t), first))

    sign_ascent(ce_objective(model, y), x, eps, step, steps, rand_init=False, on_step=record)
    return first


# ------------------------------------------------------------------------------------------------
# 2. Fairness-Aware Examples: information bottleneck on the teacher's layer l (Eq. 4-7)
# ------------------------------------------------------------------------------------------------
# How the bottleneck is read (docs/methods/ferd.md, "The information bottleneck"): the authors' code
# (IFP.py, wideresnet_ifd.py) is the default, Eq. 5 as printed the named variant `ib-printed`.
IB_NOISE = ("per-sample", "per-channel")       # s per sample and channel, reset each step | one s per channel
IB_PENALTY = ("mean", "sum")                   # 0.5 x mean over samples and channels | Eq. 5's sum over channels
IB_LAYERS = ("after-norm", "block")            # layer l after the teacher's final BN (pop=3) | the block output
IB_MASK_VARIANCES = ("sample", "clean", "noisy")


def ib_regularizer(noise_var: torch.Tensor, feature_var: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """The KL term of Eq. 5, v / s^2 + log(s^2 / v) - 1 per channel (and per sample when the scales are
    per sample: shapes [C] or [B, C]), reduced as Eq. 5 prints it ('sum' over channels, then the mean
    over samples) or as the authors' `IFP.kl_div` computes it ('mean': 0.5 x the mean over all terms)."""
    terms = feature_var / noise_var + torch.log(noise_var / feature_var) - 1
    if reduction == "mean":
        return 0.5 * terms.mean()
    return terms.sum(-1).mean()


def non_robust_channels(noise_var: torch.Tensor, reference_var: torch.Tensor) -> torch.Tensor:
    """Eq. 6: channel k (of each sample, for per-sample scales) is non-robust when s_k^2 < max Var."""
    return noise_var < reference_var.max()


def as_feature_map(scale: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Scales [C] (one per channel) or [B, C] (per sample and channel) shaped to broadcast over z [B, C, ...]."""
    lead = tuple(scale.shape) if scale.dim() == 2 else (1, -1)
    return scale.view(lead + (1,) * (z.dim() - 2))


def ib_loss(head, z: torch.Tensor, y: torch.Tensor, noise_scale: torch.Tensor, noise: torch.Tensor,
            feature_var: torch.Tensor, beta: float, reduction: str = "sum") -> torch.Tensor:
    """One step's information-bottleneck objective (Eq. 4-5): CE(f_{l+}(z + s * noise), y) + beta * KL,
    s = softplus(lambda); softplus is evaluated once and the noise added in one fused op."""
    scale = F.softplus(noise_scale)
    z_i = torch.addcmul(z, as_feature_map(scale, z), noise)
    return F.cross_entropy(head(z_i), y) + beta * ib_regularizer(scale * scale, feature_var, reduction)


def channel_var(z: torch.Tensor) -> torch.Tensor:
    """Each channel's variance over the batch and positions ([C]; the printed reading)."""
    return z.var(dim=[0] + list(range(2, z.dim())), unbiased=False)


def sample_channel_var(z: torch.Tensor) -> torch.Tensor:
    """Each sample's and channel's variance over positions ([B, C]), unbiased, as `IFP.py` takes it."""
    return z.var(dim=list(range(2, z.dim())))


# ------------------------------------------------------------------------------------------------
# 3. Uniform-Target Adversarial Examples (Eq. 10) and 4. the student loss (Eq. 11)
# ------------------------------------------------------------------------------------------------
def utae_objective(model: torch.nn.Module, target_probs: torch.Tensor, gamma: float):
    """Per sample KL(f_T(x_F) || f(x_U)) - gamma KL(U || f(x_U)) on the attacked model f (Eq. 10), to be
    maximised; the core's KL objective with a uniform term (gamma = 0: RSLAD's inner maximisation)."""
    return kl_objective(model, target_probs, uniform_weight=gamma)


def decoupled_kd_divergence(t_logits: torch.Tensor, s_logits: torch.Tensor, temperature: float = 100.0) -> torch.Tensor:
    """The released generator's divergence (`losses.dkl_loss` with its defaults, GI off):

        0.25 * sum_ij p_ij ((t_i - t_j) - (s_i - s_j))^2 / sum_ij p_ij  +  H(softmax(t).detach(), softmax(s))

    with p_ij = s_i s_j, s = softmax(t / temperature): a soft cross-entropy plus a weighted mean
    squared difference of all pairwise logit gaps. The generator maximises it (L_adv = -divergence).
    As in the released code the cross-entropy's teacher probabilities are detached (only the
    student side moves the generator there), while the gap term and its weights are not."""
    c = t_logits.shape[1]
    gap_t = t_logits.view(-1, c, 1) - t_logits.view(-1, 1, c)
    gap_s = s_logits.view(-1, c, 1) - s_logits.view(-1, 1, c)
    s_n = F.softmax(t_logits / temperature, 1)
    p_n = s_n.view(-1, c, 1) @ s_n.view(-1, 1, c)
    mse = 0.25 * ((gap_t - gap_s).pow(2) * p_n).sum() / p_n.sum()
    return mse + soft_cross_entropy(t_logits, s_logits)


def ferd_student_loss(t_clean: torch.Tensor, s_clean: torch.Tensor, s_adv: torch.Tensor,
                      lambda_1: float, lambda_2: float) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    kl_clean, kl_adv = kl_div(t_clean, s_clean), kl_div(t_clean, s_adv)
    return lambda_1 * kl_clean + lambda_2 * kl_adv, kl_clean, kl_adv


@register_method("ferd")
class FERD(Method):
    summary = "FERD: robustness-guided reweighting + Fairness-Aware Examples + Uniform-Target AEs"
    info = MethodInfo(label="FERD", family="generator", proposed=True, order=60, color="tab:red",
                      # the reading the paper's numbers came from (docs/methods/ferd.md): a run of the printed
                      # Eq. 10 (variant paper-literal) never fills FERD's row of Tables 1, 2 and 5
                      row_settings={"utae_on": "student", "student_augment": True},
                      paper="Fairness-Enhanced Data-Free Robustness Distillation, arXiv 2509.20793")
    defaults: Dict[str, Any] = {
        # generator (Sec. 5.1; latent size, lr_z and augmentation from the authors' code)
        "gen_lr": 2e-3, "gen_beta1": 0.5, "gen_beta2": 0.999, "lr_z": 0.01, "latent_dim": 256, "gen_width": 64,
        "conditional": True,          # g(z, y) as in Algorithm 1; the released code feeds noise only
        "reinit_generator": False,    # the released code re-initialises the generator every epoch
        "augment": True,              # crop+flip views of x_F for the teacher and student (CMI/authors' code)
        # L_gen weights (Sec. 5.1)
        "lambda_adv": 1.0, "lambda_bn": 5.0, "lambda_oh": 1.0, "lambda_uni": 5.0,
        # information bottleneck (authors' code: 50 Adam steps, lr 0.1, beta 0.3), read as the authors'
        # IFP.py runs it (defaults v3; Eq. 5 as printed: variant ib-printed, the defaults of v2):
        "ib_beta": 0.3, "ib_steps": 50, "ib_lr": 0.1,
        "ib_noise": "per-sample",     # a scale and a noise draw per sample and channel, fitted afresh each step
        "ib_penalty": "mean",         # 0.5 x the mean over samples and channels of the KL term (IFP.kl_div)
        "ib_layer": "after-norm",     # layer l after the teacher's final BN where its head starts with one (pop=3)
        # Eq. 6 compares s_k^2 with the largest variance: 'sample' = the largest per-sample spatial
        # variance of the clean features (IFP.py); 'clean' = the largest channel variance over the batch;
        # 'noisy' = of the noisy features Z_I, the literal formula, which no channel can exceed
        # (Var(Z_I^k) >= s_k^2), so every channel is non-robust.
        "ib_mask_variance": "sample",
        "layer": "",                  # '' = the teacher's last convolutional block (Sec. 5.1), see ib_layer
        "gen_init": "default",        # PyTorch's initialisation; 'dcgan' = the authors' reset_model (released)
        # reweighting
        "reweight": True, "reweight_strategy": "margin-softmax", "reweight_temperature": 1.0,
        "reweight_pgd_steps": 20, "lps_beta": 2.0, "lps_lambda": 0.0, "minmax_low": 0.05, "minmax_high": 0.2,
        # FAEs / UTAEs switches and settings (step size and count from the authors' code)
        "fae": True, "utae": True, "gamma": 0.5, "utae_steps": 10, "utae_step": 2 / 255,
        # which model the UTAEs attack: 'student' (the authors' code, and what transfers robustness;
        # docs/methods/ferd.md has the evidence) or 'teacher' (Eq. 10 as printed: variant paper-literal)
        "utae_on": "student",
        # the generator's adversarial term: 'kl' = -KL(T || S) (Eq. 8); 'dkd' = the released code's
        # decoupled-KD divergence (soft CE + logit-gap MSE at temperature dkd_temperature)
        "gen_adv_loss": "kl", "dkd_temperature": 100.0,
        # student loss (Eq. 11): 5/6 on the clean term, 1/6 on the adversarial term (paper and released
        # test.py); RSLAD's 1/6 / 5/6 is the diagnostic variant rslad-weights
        "lambda_1": 5 / 6, "lambda_2": 1 / 6,
    }
    runner_defaults = {"student_augment": True}  # the released distillation stage crops and flips every pool batch
    ranges = {
        "gamma": Range(0.0, 1.0), "utae_steps": count(1), "utae_step": Range(0.0, 1.0, low_open=True),
        "lambda_1": Range(0.0), "lambda_2": Range(0.0), "lambda_adv": Range(0.0), "lambda_bn": Range(0.0),
        "lambda_oh": Range(0.0), "lambda_uni": Range(0.0), "ib_steps": count(0), "ib_beta": Range(0.0),
        "ib_lr": Range(0.0, low_open=True), "reweight_pgd_steps": count(1), "reweight_temperature": Range(0.0, low_open=True),
        "gen_lr": Range(0.0, low_open=True), "lr_z": Range(0.0), "latent_dim": count(1), "gen_width": count(1),
        "dkd_temperature": Range(0.0, low_open=True), "minmax_low": Range(0.0), "minmax_high": Range(0.0),
    }
    choices = {
        "reweight_strategy": REWEIGHT_STRATEGIES, "ib_noise": IB_NOISE, "ib_penalty": IB_PENALTY,
        "ib_layer": IB_LAYERS, "ib_mask_variance": IB_MASK_VARIANCES, "utae_on": ("teacher", "student"),
        "gen_adv_loss": ("kl", "dkd"), "gen_init": GENERATOR_INITS,
    }
    presets = {
        "quick": {"*": {"ib_steps": 10, "reweight_pgd_steps": 10, "utae_steps": 5, "utae_step": 8 / 255 / 4}},
        "smoke": {"*": {"ib_steps": 2, "reweight_pgd_steps": 2, "utae_steps": 2}},
    }
    report_module = "methods.ferd.report"  # Tables 3, 6, 7, 9, Figs. 4-5, claims, published numbers
    # what a result or checkpoint from before these settings existed ran with: the v2 reading
    settings_added = {"ib_noise": "per-channel", "ib_penalty": "sum", "ib_layer": "block", "gen_init": "default"}
    defaults_version = 3  # issue 29: the bottleneck as IFP.py runs it; released's generator initialisation
    data_parallel = True  # generator, IB noise scale and class statistics are kept the same on every process
    variants = {
        # Eq. 10 as printed: UTAEs crafted on the TEACHER, no student-stage augmentation (the suite's
        # default before issue 9, kept so anyone can see what the printed equation does).
        "paper-literal": {"utae_on": "teacher", "student_augment": False},
        # The authors' released code where it differs from the default (docs/methods/ferd.md). Its
        # 20 warm-up epochs (generator only) are inside its 220; in the CPU presets one warm-up epoch
        # is added in front, so the student takes as many steps as every other method's.
        "released": {
            "*": {"utae_on": "student", "gamma": 0.0, "reweight_strategy": "minmax", "reinit_generator": True,
                  "conditional": False, "warmup_epochs": 20, "student_schedule": "cosine-through-warmup",
                  "student_augment": True, "gen_adv_loss": "dkd", "latent_dim": 100, "lr_z": 0.015,
                  "gen_init": "dcgan"},
            "quick": {"warmup_epochs": 1, "epochs": 9},
            "standard": {"warmup_epochs": 1, "epochs": 41},
            "smoke": {"warmup_epochs": 1, "epochs": 3},
            "gpu": {"warmup_epochs": 2, "epochs": 22},   # as Fast's warm-up at `gpu`: 20 student epochs after it
        },
        # Eq. 5 as printed (the defaults of v2): one noise scale per channel for the whole batch, carried
        # over the epoch's generator steps, per-pixel noise, the KL summed over channels, layer l at the
        # block output, the mask threshold from the channel variance over the batch.
        "ib-printed": {"ib_noise": "per-channel", "ib_penalty": "sum", "ib_layer": "block", "ib_mask_variance": "clean"},
        # DIAGNOSTIC, not FERD: RSLAD's weights (5/6 on the adversarial term) on the default.
        "rslad-weights": {"lambda_1": 1 / 6, "lambda_2": 5 / 6},
    }

    # ------------------------------------------------------------------------------------------
    def teacher_needs(self, cfg: Any) -> Tuple[str, ...]:
        # BN-statistics loss on the teacher; the bottleneck and UTAEs split it at layer l
        return ("batchnorm", "layer")

    def feature_layer(self, cfg: Any, teacher) -> Optional[str]:
        """Layer l: `layer` when set; else the teacher's last block, or (ib_layer=after-norm) the final
        BatchNorm right after it where the teacher's head starts with one (the authors' pop=3 split)."""
        if cfg.get("layer"):
            return cfg.get("layer")
        if cfg.get("ib_layer", "after-norm") == "after-norm" and getattr(teacher, "head_norm_layer", None):
            return teacher.head_norm_layer
        return teacher.feature_layer

    def setup(self, ctx: MethodContext) -> None:
        cfg = ctx.cfg  # its text settings were checked against `choices` when they were resolved
        self.layer = self.feature_layer(cfg, ctx.teacher)
        if self.layer is None:
            raise ConfigError(f"teacher {ctx.teacher.arch} exposes no intermediate layer; FERD needs layer l")
        c = ctx.num_classes
        self.p = torch.full((c,), 1.0 / c)
        self.vulnerability = torch.zeros(c)
        self.kappa = torch.full((c,), float(cfg.reweight_pgd_steps) / 2)
        self._build_generator(ctx)
        self._spread: Dict[str, Any] = {}

    def _build_generator(self, ctx: MethodContext) -> None:
        cfg = ctx.cfg
        self.generator = Generator(cfg.latent_dim, cfg.gen_width, ctx.image_size,
                                   num_classes=ctx.num_classes if cfg.conditional else None)
        if cfg.gen_init == "dcgan":
            dcgan_init_(self.generator)  # the released code's reset_model, at every re-initialisation
        self.generator = ctx.place_generator(self.generator)
        self.gen_opt = torch.optim.Adam(self.generator.parameters(), lr=cfg.gen_lr, betas=(cfg.gen_beta1, cfg.gen_beta2))
        ctx.sync_module(self.generator)  # data-parallel: a re-built generator is drawn per process

    # -- generation stage ------------------------------------------------------------------------
    def generate(self, ctx: MethodContext) -> Samples:
        cfg, teacher, student = ctx.cfg, ctx.teacher, ctx.student
        if cfg.reinit_generator and ctx.epoch > 0:
            self._build_generator(ctx)
        n = cfg.synthesis_batch_size
        y = ctx.multinomial(self.p, n) if cfg.reweight else ctx.randint(ctx.num_classes, n)
        z = ctx.randn(n, cfg.latent_dim).requires_grad_(True)
        z_opt = torch.optim.Adam([z], lr=cfg.lr_z, betas=(cfg.gen_beta1, cfg.gen_beta2))
        carried = None
        if cfg.ib_noise == "per-channel":  # one scale per channel, carried over this epoch's generator steps
            scale = torch.zeros(self._feature_channels(ctx), device=ctx.device, requires_grad=True)
            carried = (scale, torch.optim.Adam([scale], lr=cfg.ib_lr))
        self.generator.train()
        best = LowestLossBatch(ctx.device)
        best_x = None
        sums: Dict[str, torch.Tensor] = {}
        with frozen(student):  # the student is read, not trained: eval mode, no weight gradients
            for _ in range(cfg.gen_iters):
                x = self.generator(z, y if cfg.conditional else None)
                view = random_crop_flip(x, generator=ctx.rng) if cfg.augment else x
                with bn_statistics_loss(teacher) as bn:
                    t_logits, feats = teacher.forward_features(view, self.layer)
                terms = {"bn": bn.loss(), "oh": F.cross_entropy(t_logits, y),
                         "adv": -self._divergence(cfg, t_logits, student(view))}  # the generator seeks T-S divergence
                if cfg.fae and cfg.lambda_uni > 0:
                    mask = self._non_robust_mask(ctx, teacher, view, feats.detach(), y, carried)
                    terms["uni"] = kl_uniform(teacher.forward_from(feats * mask, view, self.layer))
                    terms["nonrobust_frac"] = mask.mean()
                total = (cfg.lambda_adv * terms["adv"] + cfg.lambda_bn * terms["bn"] + cfg.lambda_oh * terms["oh"]
                         + cfg.lambda_uni * terms.get("uni", torch.zeros((), device=ctx.device)))
                self.gen_opt.zero_grad(set_to_none=True)
                z_opt.zero_grad(set_to_none=True)
                total.backward()
                ctx.average_gradients(self.generator.parameters())  # z is per sample: its gradient stays
                self.gen_opt.step()
                z_opt.step()
                # select(x_F): keep the batch with the lowest generator loss (the authors' code)
                best_x = best.update(total, x)
                for k, v in {"total": total, **terms}.items():
                    sums[k] = sums.get(k, 0) + v.detach()
        ctx.average_buffers(self.generator)
        logs: Dict[str, Any] = {k: v / max(1, cfg.gen_iters) for k, v in sums.items()}
        if cfg.reweight:
            self._reweight(ctx, best_x, y)
        logs["p"] = [round(float(v), 5) for v in self.p]
        logs["label_hist"] = torch.bincount(y.cpu(), minlength=ctx.num_classes).tolist()
        return Samples(best_x, y, logs)

    @staticmethod
    def _divergence(cfg, t_logits: torch.Tensor, s_logits: torch.Tensor) -> torch.Tensor:
        if cfg.gen_adv_loss == "dkd":
            return decoupled_kd_divergence(t_logits, s_logits, cfg.dkd_temperature)
        return kl_div(t_logits, s_logits)

    def _feature_channels(self, ctx: MethodContext) -> int:
        with torch.no_grad():
            probe = torch.zeros(1, 3, ctx.image_size, ctx.image_size, device=ctx.device)
            return int(ctx.teacher.features(probe, self.layer).shape[1])

    def _non_robust_mask(self, ctx: MethodContext, teacher, x: torch.Tensor, z: torch.Tensor, y: torch.Tensor,
                         carried: Optional[Tuple[torch.Tensor, torch.optim.Optimizer]]) -> torch.Tensor:
        """Fit the noise scales (Eq. 5) on the features z the teacher gave images x at layer l, then mask
        the non-robust channels (Eq. 6): [B, C, 1, 1] for per-sample scales, [1, C, 1, 1] per channel.
        Per sample (the authors' IFP.find_features): the scales start at 0 with a fresh Adam at every
        call and the noise is one draw per sample and channel, constant over positions; per channel
        (`carried`): one scale per channel, its optimiser carried over the epoch, per-pixel noise."""
        cfg = ctx.cfg
        head = lambda h: teacher.forward_from(h, x, self.layer)  # noqa: E731  f_{l+}
        # the variance the penalty compares with: per sample and channel, or per channel over the batch;
        # the mask threshold reuses it when it is of the same kind (sample / clean)
        if carried is None:
            noise_scale = torch.zeros(z.shape[:2], device=z.device, requires_grad=True)
            opt: torch.optim.Optimizer = torch.optim.Adam([noise_scale], lr=cfg.ib_lr)
            raw_var, kind = sample_channel_var(z), "sample"
            draw = lambda: torch.randn(z.shape[:2] + (1,) * (z.dim() - 2), device=z.device, dtype=z.dtype)  # noqa: E731
        else:
            noise_scale, opt = carried
            raw_var, kind = channel_var(z), "clean"
            # noise drawn in z's memory layout: randn_like on channels-last is 9x slower (acceleration.py)
            draw = lambda: randn_in_layout(z)  # noqa: E731
        feature_var = raw_var.clamp_min(1e-6)
        # Eager on purpose: torch.compile made these 50 small steps slower on CPU (0.42 against 0.31 s).
        for _ in range(cfg.ib_steps):
            loss = ib_loss(head, z, y, noise_scale, draw(), feature_var, cfg.ib_beta, cfg.ib_penalty)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if carried is not None:
                ctx.average_gradients([noise_scale])  # one noise scale per channel, shared by the global batch
            opt.step()
        with torch.no_grad():
            scale = F.softplus(noise_scale)
            if cfg.ib_mask_variance == kind:
                reference_var = raw_var
            elif cfg.ib_mask_variance == "sample":
                reference_var = sample_channel_var(z)
            elif cfg.ib_mask_variance == "noisy":
                reference_var = channel_var(z + as_feature_map(scale, z) * draw())
            else:
                reference_var = channel_var(z)
            mask = non_robust_channels(scale ** 2, reference_var)
        return as_feature_map(mask.float(), z)

    def _reweight(self, ctx: MethodContext, x: torch.Tensor, y: torch.Tensor) -> None:
        """The class weights p from this epoch's batch; in a data-parallel run each process attacks its
        share and the class statistics are taken over the gathered global batch (same p everywhere)."""
        cfg, teacher = ctx.cfg, ctx.teacher
        c = ctx.num_classes
        if cfg.reweight_strategy in ("margin-softmax", "minmax"):
            attacked = ctx.accel.attack_model(teacher)
            # the PGD steps in fp32 pixels (sign_ascent), the margins from an fp32 forward (acceleration.py, rules 2-3)
            x_adv = sign_ascent(ce_objective(attacked, y), x, cfg.eps, cfg.eps / 4, cfg.reweight_pgd_steps, generator=ctx.rng)
            with torch.no_grad(), ctx.accel.fp32():
                margins = adversarial_margins(teacher(x_adv), y)
            margins, y = ctx.gather(margins), ctx.gather(y)
            self.vulnerability = class_vulnerability(margins, y, c, self.vulnerability)
            self.p = (softmax_weights(self.vulnerability, cfg.reweight_temperature) if cfg.reweight_strategy == "margin-softmax"
                      else minmax_weights(self.vulnerability, cfg.minmax_low, cfg.minmax_high))
            ctx.broadcast([self.vulnerability, self.p])  # rank 0's bits on every process (no-op in one)
        else:
            steps = least_pgd_steps(teacher, x, y, cfg.eps, cfg.eps / 4, cfg.reweight_pgd_steps)
            steps, y = ctx.gather(steps), ctx.gather(y)
            self.kappa = class_means(steps.float(), y, c, self.kappa)
            self.p = lps_weights(self.kappa, cfg.reweight_strategy, cfg.reweight_pgd_steps, cfg.lps_beta, cfg.lps_lambda)
            ctx.broadcast([self.kappa, self.p])

    # -- distillation stage ----------------------------------------------------------------------
    def student_loss(self, ctx: MethodContext, batch: Batch):
        cfg, teacher, student = ctx.cfg, ctx.teacher, ctx.student
        x_f = batch.x
        with torch.no_grad():
            t_clean = teacher(x_f)
        x_u, attacked = self.utaes(ctx, x_f, F.softmax(t_clean, 1))
        if self._spread.get("epoch") != ctx.epoch:
            self._record_spread(ctx, attacked, x_u, x_f)
        loss, kl_clean, kl_adv = ferd_student_loss(t_clean, student(x_f), student(x_u), cfg.lambda_1, cfg.lambda_2)
        return loss, {"kl_clean": kl_clean, "kl_adv": kl_adv}

    @staticmethod
    def utaes(ctx: MethodContext, x_f: torch.Tensor, teacher_probs: torch.Tensor) -> Tuple[torch.Tensor, torch.nn.Module]:
        """Eq. 10: `utae_steps` sign steps of `utae_step` in the eps ball from x_F + 0.001 N(0, I),
        ascending KL(T(x_F) || f(x_U)) - gamma KL(U || f(x_U)), f = the student (default) or the
        teacher (paper-literal). Returns (x_U, f). utae=false is gamma = 0 (Table 3's w/o UTAEs)."""
        cfg = ctx.cfg
        gamma = cfg.gamma if cfg.utae else 0.0
        if cfg.utae_on == "student":
            x_u = student_adversarial(ctx, x_f, teacher_probs, cfg.utae_steps, cfg.utae_step, uniform_weight=gamma)
            return x_u, ctx.student
        start = (x_f + 0.001 * ctx.randn(*x_f.shape)).clamp(0, 1)
        attacked = ctx.accel.attack_model(ctx.teacher)
        x_u = sign_ascent(utae_objective(attacked, teacher_probs, gamma), x_f, cfg.eps, cfg.utae_step, cfg.utae_steps,
                          start=start)
        return x_u, ctx.teacher

    def _record_spread(self, ctx: MethodContext, model: torch.nn.Module, x_u: torch.Tensor, x_f: torch.Tensor) -> None:
        """Which classes the attacked model assigns to UTAEs that flip its decision (Fig. 9's target
        spread), on the epoch's first batch; the model is read in eval mode."""
        with in_eval_mode(model), torch.no_grad():
            pred_u, pred_f = model(x_u).argmax(1), model(x_f).argmax(1)
        flipped = pred_u != pred_f
        hist = torch.bincount(pred_u[flipped].cpu(), minlength=ctx.num_classes)
        self._spread = {"epoch": ctx.epoch, "utae_flip_rate": float(flipped.float().mean()),
                        "utae_target_hist": hist.tolist(),
                        "utae_target_entropy_norm": entropy_bits(hist.numpy()) / math.log2(ctx.num_classes)}

    def bench_passes(self, cfg, ctx: MethodContext) -> Dict[str, Dict[str, float]]:
        attacked = "student_input_grad" if cfg.utae_on == "student" else "teacher_input_grad"
        generator = {"teacher_input_grad": 1, "student_input_grad": 1}  # L_bn/L_oh/L_adv through both models
        if cfg.fae and cfg.lambda_uni > 0:
            generator["teacher_head_grad"] = cfg.ib_steps + 1  # the bottleneck's steps and L_uni
        passes = {"generator iteration": generator,
                  "student iteration": {"teacher_forward": 1, attacked: cfg.utae_steps, "student_train": 2}}
        if cfg.reweight and cfg.reweight_strategy in ("margin-softmax", "minmax"):
            passes["generation overhead"] = {"teacher_input_grad": cfg.reweight_pgd_steps, "teacher_forward": 1}
        return passes

    def end_epoch(self, ctx: MethodContext) -> Dict[str, Any]:
        return {k: v for k, v in self._spread.items() if k != "epoch"}

    # -- resume ----------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        return {"generator": self.generator.state_dict(), "gen_opt": self.gen_opt.state_dict(), "p": self.p,
                "vulnerability": self.vulnerability, "kappa": self.kappa}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.generator.load_state_dict(state["generator"])
        self.gen_opt.load_state_dict(state["gen_opt"])
        self.p, self.vulnerability, self.kappa = state["p"], state["vulnerability"], state["kappa"]
