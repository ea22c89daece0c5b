"""Every gradient attack in the suite is one projected sign-gradient loop with a pluggable objective.

`sign_ascent` is the loop (L-inf ball of radius eps around x, intersected with [0,1]); FGSM, PGD-CE
and CW-inf below are thin configurations of it, and the method plugins (RSLAD, UTAE, the
reweighting PGD) reuse it with their own objectives. AutoAttack is the authors' code (`pyautoattack`).
The attacked model is never put into train mode here and its parameters receive no gradients.

The evaluator's attacks are declared once each (`AttackSpec`, `register_attack`; a plugin declares
its own the same way: docs/running.md).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from .acceleration import to_device
from .config import DEFAULT_EPS
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
# The evaluator's attacks: name -> fn(model, x, y, settings, generator) -> x_adv, each declared once
# with an AttackSpec (register_attack): ATTACKS, ATTACK_ORDER, ATTACK_LABELS, BATCH_DRAWS and the
# blocks of AttackSettings.resolved() are derived from the declarations.
# ------------------------------------------------------------------------------------------------
@dataclass
class AttackSettings:
    eps: float = DEFAULT_EPS
    pgd_steps: int = 20
    pgd_step: Optional[float] = None   # default eps / 4
    cw_steps: int = 30
    cw_step: Optional[float] = None    # default eps / 4
    aa_version: str = "standard"
    seed: int = 0
    batch_size: int = 256
    attack_misclassified: bool = False  # False: points wrong on clean inputs count as errors, unattacked
    channels_last: bool = True          # evaluate with channels-last weights (faster on CPU and GPU)
    extra: Dict[str, object] = field(default_factory=dict)  # a plugin attack's own parameters

    def resolved(self) -> Dict[str, object]:
        """The settings a result records: eps, the robust-accuracy convention, and the block of every
        declared attack that has one (AttackSpec.settings), in declaration order."""
        out: Dict[str, object] = {"eps": self.eps, "robust_requires_clean_correct": not self.attack_misclassified}
        for spec in ATTACK_SPECS.values():
            if spec.settings is not None:
                out[spec.name] = spec.settings(self)
        return out


AttackFn = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor, AttackSettings, Optional[torch.Generator]], torch.Tensor]
# draws(shape, settings, generator): draw (and drop) what the attack draws from its generator for a batch of `shape`
BatchDraws = Callable[[Tuple[int, ...], AttackSettings, Optional[torch.Generator]], None]


@dataclass(frozen=True)
class AttackSpec:
    """One evaluation attack, declared once (register_attack): everything the evaluator, the results
    and the tables need to know about it."""

    name: str                  # --attacks NAME, the key of its numbers in results
    fn: AttackFn               # fn(model, x, y, settings, generator) -> x_adv (in the eps ball and [0, 1])
    label: str                 # its name in tables and figures (ATTACK_LABELS)
    order: float               # its place in ATTACK_ORDER ('all', table columns); equal orders keep declaration order
    help: str = ""             # `dfrd-bench list attacks`
    # what fn draws from its generator per batch, so a data-parallel evaluation can skip another
    # process's batch and keep the stream (BATCH_DRAWS); None: every process runs the attack whole
    draws: Optional[BatchDraws] = None
    # its block in AttackSettings.resolved() (recorded in results and checked on resume); None: none
    settings: Optional[Callable[[AttackSettings], Dict[str, object]]] = None
    perturbs: bool = True      # False (clean): checked against a budget of 0, and points wrong on clean inputs are not set aside
    own_batch_size: bool = False  # True (AutoAttack): batches of AttackSettings.batch_size, not the evaluator's


ATTACKS: Registry[AttackFn] = Registry("attack")
ATTACK_SPECS: Dict[str, AttackSpec] = {}    # name -> declaration, in declaration order
# Derived from the declarations at every register_attack (kept importable with their first values):
ATTACK_ORDER: Tuple[str, ...] = ()          # rebound: read attack_order() (or attacks.ATTACK_ORDER) for plugins' too
ATTACK_LABELS: Dict[str, str] = {}          # name -> label in ATTACK_ORDER's order (updated in place)
BATCH_DRAWS: Dict[str, BatchDraws] = {}     # name -> draws, for the attacks that declare them (updated in place)


def register_attack(spec: AttackSpec) -> AttackSpec:
    """Declare an evaluation attack (a plugin does it at import time); a name already taken is refused."""
    if not isinstance(spec, AttackSpec):
        raise TypeError(f"register_attack takes an AttackSpec, got {type(spec).__name__}")
    ATTACKS.add(spec.name, spec.fn, help=spec.help)  # refuses a duplicate before anything else changes
    ATTACK_SPECS[spec.name] = spec
    _derive()
    return spec


def unregister_attack(name: str) -> None:
    """Remove a declared attack (a test's, an unloaded plugin's)."""
    ATTACKS.get(name)  # an unknown name fails with the known ones
    ATTACK_SPECS.pop(name, None)
    ATTACKS._items.pop(name, None)
    ATTACKS._help.pop(name, None)
    _derive()


def _derive() -> None:
    global ATTACK_ORDER
    specs = sorted(ATTACK_SPECS.values(), key=lambda s: s.order)  # stable: equal orders keep declaration order
    ATTACK_ORDER = tuple(s.name for s in specs)
    ATTACK_LABELS.clear()
    ATTACK_LABELS.update((s.name, s.label) for s in specs)
    BATCH_DRAWS.clear()
    BATCH_DRAWS.update((s.name, s.draws) for s in specs if s.draws is not None)


def attack_order() -> Tuple[str, ...]:
    """The declared attacks in canonical order (what 'all' means; plugins' included)."""
    return ATTACK_ORDER


def attack_spec(name: str) -> Optional[AttackSpec]:
    """The declaration of `name`; None for an attack registered in ATTACKS alone (no declaration)."""
    return ATTACK_SPECS.get(name)


def skip_random_start(shape, s: AttackSettings, gen: Optional[torch.Generator]) -> None:
    """Draw (and drop) what `random_start` draws for a batch of `shape` (PGD-20, CW-inf)."""
    if gen is not None and s.eps > 0:
        torch.rand(shape, generator=gen, device="cpu")


def draws_nothing(shape, s: AttackSettings, gen: Optional[torch.Generator]) -> None:
    """An attack that draws nothing from its generator (clean, FGSM, AutoAttack, which seeds itself)."""


def _clean(model, x, y, s: AttackSettings, gen=None):
    return x


def fgsm(model, x, y, s: AttackSettings, gen=None):
    return sign_ascent(ce_objective(model, y), x, s.eps, s.eps, 1, rand_init=False)


def pgd20(model, x, y, s: AttackSettings, gen=None):
    return sign_ascent(ce_objective(model, y), x, s.eps, s.pgd_step or s.eps / 4, s.pgd_steps, generator=gen)


def cw_inf(model, x, y, s: AttackSettings, gen=None):
    return sign_ascent(cw_objective(model, y), x, s.eps, s.cw_step or s.eps / 4, s.cw_steps, generator=gen)


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


# The built-in attacks. `draws` is what each draws from its generator per batch, so that a
# data-parallel evaluation can skip another process's batch and keep the stream where the
# single-process evaluation has it (dfrd_bench.distributed.EvalShard); AutoAttack seeds itself at
# every call. Their `settings` blocks are the ones every result has recorded.
register_attack(AttackSpec("clean", _clean, label="Clean", order=0, help="no attack", draws=draws_nothing,
                           perturbs=False))
register_attack(AttackSpec("fgsm", fgsm, label="FGSM", order=10,
                           help="FGSM: one sign step of size eps on CE, no random start", draws=draws_nothing,
                           settings=lambda s: {"step": s.eps, "random_start": False}))
register_attack(AttackSpec("pgd20", pgd20, label="PGD-20", order=20,
                           help="PGD-20 on CE, step eps/4, uniform random start", draws=skip_random_start,
                           settings=lambda s: {"steps": s.pgd_steps, "step": s.pgd_step or s.eps / 4,
                                               "random_start": True, "loss": "ce"}))
register_attack(AttackSpec("cw", cw_inf, label="CW-inf", order=30,
                           help="CW-inf: PGD on the CW margin loss, 30 steps of eps/4, random start",
                           draws=skip_random_start,
                           settings=lambda s: {"steps": s.cw_steps, "step": s.cw_step or s.eps / 4,
                                               "random_start": True, "loss": "cw-margin"}))
register_attack(AttackSpec("aa", autoattack, label="AA", order=40,
                           help="AutoAttack standard (APGD-CE, APGD-T, FAB-T, Square) from pyautoattack",
                           draws=draws_nothing, own_batch_size=True,
                           settings=lambda s: {"version": s.aa_version, "norm": "Linf", "implementation": "pyautoattack"}))


class _quiet_stdout:
    """pyautoattack prints progress with print(); keep it out of our progress bars and logs."""

    def __enter__(self):
        import contextlib
        import io

        self._ctx = contextlib.redirect_stdout(io.StringIO())
        return self._ctx.__enter__()

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)
