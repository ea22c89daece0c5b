"""BN-Prior: the worked example of docs/adding-a-method.md, a whole data-free robustness
distillation method in one file, installed as a plugin with an entry point.

Generation: a generator turns noise into images whose statistics match the teacher's BatchNorm
running statistics, which the teacher puts in sampled classes, and on which the student agrees with
the teacher but diverges from its distribution (CMI's and Fast's adversarial term). Student: the
shared RSLAD stage (adversarial examples against the student, `dfrd_bench.robust_kd`).
"""
from dataclasses import replace
from typing import Any, Dict

import torch
import torch.nn.functional as F

from dfrd_bench.attacks import AttackSpec, pgd20, register_attack, skip_random_start
from dfrd_bench.config import Range, register_preset
from dfrd_bench.generators import Generator
from dfrd_bench.hooks import bn_statistics_loss
from dfrd_bench.losses import decision_adversarial_loss
from dfrd_bench.method import LowestLossBatch, MethodContext, MethodInfo, Samples, frozen, register_method
from dfrd_bench.report.tables import TABLES, RowSpec, TableSpec
from dfrd_bench.robust_kd import RSLAD_DEFAULTS, RSLAD_RANGES, RobustKDMethod


@register_method("bnprior")
class BNPrior(RobustKDMethod):
    summary = "generator on the teacher's BN statistics, adversarial to the student; RSLAD student"
    info = MethodInfo(label="BN-Prior", family="generator", rslad_stage=True,
                      paper="the worked example of dfrd-bench's docs/adding-a-method.md")
    defaults = {**RSLAD_DEFAULTS, "gen_lr": 1e-3, "latent_dim": 256, "lambda_bn": 1.0, "lambda_adv": 1.0}
    ranges = {**RSLAD_RANGES, "gen_lr": Range(0.0, low_open=True), "lambda_bn": Range(0.0), "lambda_adv": Range(0.0)}
    presets = {"quick": {"*": {"rslad_steps": 5}}, "smoke": {"*": {"rslad_steps": 2}}}
    report_module = "bnprior"  # this module also declares BN-Prior's own table (below)

    def setup(self, ctx: MethodContext) -> None:
        self.generator = ctx.place_generator(Generator(ctx.cfg.latent_dim, image_size=ctx.image_size))
        self.opt = torch.optim.Adam(self.generator.parameters(), lr=ctx.cfg.gen_lr, betas=(0.5, 0.999))

    def generate(self, ctx: MethodContext) -> Samples:
        cfg = ctx.cfg
        y = ctx.randint(ctx.num_classes, cfg.synthesis_batch_size)  # every draw from ctx: resume is exact
        z = ctx.randn(cfg.synthesis_batch_size, cfg.latent_dim)
        best = LowestLossBatch(ctx.device)
        self.generator.train()
        with frozen(ctx.student) as student:  # read, not trained: eval mode, no weight gradients
            for _ in range(max(1, cfg.gen_iters)):
                x = self.generator(z)
                with bn_statistics_loss(ctx.teacher) as bn:  # its hooks are removed when the block ends
                    t_logits = ctx.teacher(x)
                adv, agree = decision_adversarial_loss(t_logits, student(x))
                loss = cfg.lambda_bn * bn.loss() + F.cross_entropy(t_logits, y) + cfg.lambda_adv * adv
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                self.opt.step()
                best.update(loss, x)  # keep the batch of the lowest loss, compared on the device
        return Samples(best.x, y, {"loss": best.loss, "agree_frac": agree.mean()})

    def state_dict(self) -> Dict[str, Any]:
        return {"generator": self.generator.state_dict(), "opt": self.opt.state_dict()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.generator.load_state_dict(state["generator"])
        self.opt.load_state_dict(state["opt"])


# Beyond the method, none of which needs a core edit (docs/adding-a-method.md, sections 7 and 9):
# a preset of its own (`--preset bnprior-tiny`: smoke's budget with 4 epochs) ...
register_preset("bnprior-tiny", {"*": {"epochs": 4}}, parent="smoke", help="BN-Prior's own: smoke with 4 epochs")
# ... an evaluation attack (`--attacks clean,pgd50`: PGD with 50 steps of eps/4), in every table and figure ...
register_attack(AttackSpec("pgd50", lambda m, x, y, s, g: pgd20(m, x, y, replace(s, pgd_steps=50), g),
                           label="PGD-50", order=25, draws=skip_random_start,
                           settings=lambda s: {"steps": 50, "step": s.eps / 4}))
# ... and a table (`dfrd-bench table --table bnprior-lambda`): BN-Prior over its BN-statistics weight.
TABLES.register("bnprior-lambda", help="BN-Prior over lambda_bn")(TableSpec(
    "bnprior-lambda", "BN-Prior over its BN-statistics weight lambda_bn", None, None, ("avg", "worst"),
    tuple(RowSpec(f"bn{w:g}", f"lambda_bn = {w:g}", "bnprior", {"lambda_bn": w}) for w in (0.5, 1.0, 2.0)),
    in_all=False))
