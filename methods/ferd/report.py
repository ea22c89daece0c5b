"""FERD's part of the report (dfrd_bench/report/contrib.py): its ablation and settings tables (3, 6,
7, 9), its figures (4: reweighting, 5: gamma), its claims (reweighting, Fig. 4; UTAEs, Fig. 9), the
numbers its paper published (published.json, beside this file) and its training curves. The core
renders them; nothing in dfrd_bench names FERD. Imported when a table, figure or claim is drawn
(`FERD.report_module`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from dfrd_bench.data.specs import get_dataset_spec
from dfrd_bench.report.claims import (METRIC_WORDS, SIGNIFICANCE_LEVEL, Claim, class_name, compare, method_rows,
                                      one_sample, register_claims, too_few)
from dfrd_bench.report.collect import Run, matches
from dfrd_bench.report.contrib import register_history_keys, register_published
from dfrd_bench.report.plots import PlotError, class_axis, default_run, pyplot, register_figure, save_figure
from dfrd_bench.attacks import ATTACK_LABELS
from dfrd_bench.report.tables import TABLES, RowSpec, TableSpec
from dfrd_bench.inference import welch_test

from . import FERD

register_published(Path(__file__).with_name("published.json"))
register_history_keys("utae_target_entropy_norm", "gen/nonrobust_frac")

_AWN = ("avg", "worst", "nsd")


def _ferd(**config: Any) -> Dict[str, Any]:
    """A FERD row: the reading its table rows stand for (MethodInfo.row_settings) with `config` on top."""
    return {**FERD.info.row_settings, **config}


def _ferd_rows(runs: Sequence[Run], student: str, **config: Any) -> List[Run]:
    return method_rows(runs, student, "ferd", **config)


def _layer_rows(runs: List[Run]) -> Tuple[RowSpec, ...]:
    """Table 9: one row per FERD layer l found (the paper: block1..3 of a WRN; '' = the last block)."""
    layers = sorted({str(r.config.get("layer", "")) for r in runs if r.method == "ferd"}) or ["block1", "block2", "block3"]
    return tuple(RowSpec(layer or "block3", layer or "last block (default)", "ferd", _ferd(layer=layer)) for layer in layers)


for _spec in (
    TableSpec("3", "Ablation of FERD's components", None, ("clean", "pgd20"), ("avg", "worst"), (
        RowSpec("ferd", "FERD", "ferd", _ferd(reweight=True, fae=True, utae=True)),
        RowSpec("no-reweight", "w/o reweighting", "ferd", _ferd(reweight=False, fae=True, utae=True)),
        RowSpec("no-fae", "w/o FAEs", "ferd", _ferd(reweight=True, fae=False, utae=True)),
        RowSpec("no-utae", "w/o UTAEs", "ferd", _ferd(reweight=True, fae=True, utae=False)),
        RowSpec("no-fae-utae", "w/o FAEs, UTAEs", "ferd", _ferd(reweight=True, fae=False, utae=False)),
    ), test_against="ferd"),
    TableSpec("6", "FERD's reweighting strategies", None, ("clean", "fgsm", "pgd20"), _AWN, tuple(
        RowSpec(s, label, "ferd", _ferd(reweight_strategy=s)) for s, label in (
            ("power", "power"), ("sigmoid", "sigmoid"), ("linear", "linear"), ("tanh", "tanh"),
            ("margin-softmax", "FERD (margin softmax)")))),
    TableSpec("7", "FERD's generator loss weights (lambda_adv-bn-oh-uni)", None, None, _AWN, tuple(
        RowSpec(f"{a}-{b}-{o}-{u}", f"{a}-{b}-{o}-{u}", "ferd",
                _ferd(lambda_adv=float(a), lambda_bn=float(b), lambda_oh=float(o), lambda_uni=float(u)))
        for a, b, o, u in ((1, 1, 1, 1), (5, 1, 1, 1), (1, 5, 1, 1), (1, 1, 5, 1), (1, 1, 1, 5), (1, 3, 1, 3),
                           (1, 5, 1, 5), (1, 7, 1, 7), (1, 9, 1, 9)))),
    TableSpec("9", "FERD's intermediate layer l", None, ("clean", "fgsm", "pgd20"), ("avg", "worst"), _layer_rows),
):
    TABLES.register(_spec.number, help=_spec.caption)(_spec)


# ---------------------------------------------------------------------------------------------- claims
@register_claims("ferd")
def reweighting_claims(runs: Sequence[Run], student: str, dataset: str) -> List[Any]:
    """Fig. 4: does robustness-guided reweighting give the weakest class more weight, and more robustness?"""
    ferd = _ferd_rows(runs, student)
    plain = _ferd_rows(runs, student, reweight=False)
    if not ferd or not plain:
        missing = "FERD" if not ferd else "FERD without reweighting (`reweight=false`, Table 3)"
        return [f"- Reweighting (Fig. 4): no {missing} run for {student} in this setup."]
    # the weakest class of the student trained WITHOUT reweighting: the class reweighting should help
    per_class = np.nanmean([[np.nan if v is None else v for v in r.result["attacks"]["pgd20"]["per_class"]]
                            for r in plain if "pgd20" in r.result["attacks"]], axis=0)
    k = int(np.nanargmin(per_class))
    name = class_name(dataset, k)
    weights = [h["gen/p"] for r in ferd for h in r.result.get("history", [])[-1:] if h.get("gen/p") is not None]
    items: List[Any] = []
    if weights:
        w = np.asarray(weights, dtype=float)
        uniform = 1.0 / w.shape[1]
        question = "Does reweighting raise the weakest class's weight above uniform (Fig. 4)?"
        rank = int((w.mean(0) > w.mean(0)[k]).sum()) + 1
        detail = (f"{name}, the weakest class under PGD-20 without reweighting, its weight p in FERD's last "
                  f"epoch, uniform {uniform:.3f}, rank {rank} of {w.shape[1]}")
        if len(w) >= 2:
            t = one_sample(w[:, k], uniform)
            items.append(Claim(question, {"uniform": t}, "weight", True, a_label="p", detail=detail))
        else:
            items.append(f"- {question} {detail}: p = {w[0, k]:.3f} in one seed, cannot be tested.")
    c = compare(ferd, plain, "pgd20", "avg", class_index=k)
    question = f"Does reweighting raise the robustness of {name} (PGD-20)?"
    items.append(Claim(question, {"without": c}, "avg", True, a_label="with reweighting") if c is not None
                 else too_few(ferd, plain, question))
    worst = "worst10" if get_dataset_spec(dataset).num_classes >= 100 else "worst"
    c = compare(ferd, plain, "pgd20", worst)
    question = f"Does reweighting raise the {METRIC_WORDS[worst]} PGD-20 accuracy?"
    items.append(Claim(question, {"without": c}, worst, True, a_label="with reweighting") if c is not None
                 else too_few(ferd, plain, question))
    return items



@register_claims("ferd")
def utae_spread_claims(runs: Sequence[Run], student: str, dataset: str) -> List[Any]:
    """Fig. 9: do UTAEs spread the attack's targets? Target entropy of the student's PGD-20 errors (a
    per-run number: the test has the seed term only, the outcomes do not record the predicted class)."""
    ferd = _ferd_rows(runs, student)
    plain = _ferd_rows(runs, student, utae=False)
    if not ferd or not plain:
        return [f"- UTAEs (Fig. 9): no {'FERD' if not ferd else 'FERD without UTAEs (`utae=false`, Table 3)'} run for "
                f"{student} in this setup."]

    def entropies(group: Sequence[Run]) -> List[float]:
        return [float(r.result["attacks"]["pgd20"]["target_entropy_norm"]) for r in group
                if r.result["attacks"].get("pgd20", {}).get("target_entropy_norm") is not None]

    question = "Do UTAEs spread the attack's targets (Fig. 9)?"
    t = welch_test(entropies(ferd), entropies(plain), level=SIGNIFICANCE_LEVEL)
    if t is None:
        return [too_few(ferd, plain, question)]
    return [Claim(question, {"without": t}, "entropy", True, a_label="with UTAEs",
                  detail="normalised target entropy of the student's PGD-20 errors, 1 = spread evenly")]



# ---------------------------------------------------------------------------------------------- figures
@register_figure("4", help="FERD per class with and without reweighting, and p_c")
def fig4(runs: List[Run], evals, setup, out: Path, name: str, attack: str = "pgd20", **_) -> List[Path]:
    plt = pyplot()
    with_rw = default_run([r for r in runs if r.config.get("reweight", True)], "ferd")
    without = sorted([r for r in runs if matches(r, "ferd", {"reweight": False})], key=lambda r: r.seed)
    if with_rw is None:
        raise PlotError("fig4 needs a FERD run")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    width = 0.4
    pc = np.array(with_rw.result["attacks"][attack]["per_class"], dtype=float)
    x = np.arange(len(pc))
    if without:
        pc0 = np.array(without[0].result["attacks"][attack]["per_class"], dtype=float)
        axes[0].bar(x - width / 2, pc0, width, label="equal weights (reweight=false)", color="tab:gray")
    axes[0].bar(x + width / 2 if without else x, pc, width, label="robustness-guided reweighting", color="tab:orange")
    axes[0].set_title(f"FERD student per class ({ATTACK_LABELS[attack]})", fontsize=9)
    axes[0].set_ylim(bottom=0, top=max(5.0, float(np.nanmax(pc)) * 1.15 if np.isfinite(pc).any() else 5.0))
    if not without:
        axes[0].text(0.02, 0.9, "no reweight=false run to compare", transform=axes[0].transAxes, fontsize=7)
    class_axis(axes[0], setup.dataset)
    axes[0].set_ylabel("accuracy (%)")
    axes[0].legend(fontsize=7)
    weights = [h.get("gen/p") for h in with_rw.result.get("history", []) if h.get("gen/p") is not None]
    if weights:
        axes[1].bar(np.arange(len(weights[-1])), weights[-1], color="tab:orange")
        axes[1].axhline(1.0 / len(weights[-1]), color="k", lw=0.8, ls="--", label="uniform")
        axes[1].legend(fontsize=7)
    axes[1].set_title("sampling weights p_c (last epoch)", fontsize=9)
    class_axis(axes[1], setup.dataset)
    return save_figure(fig, out, name)


@register_figure("5", help="FERD over gamma")
def fig5(runs: List[Run], evals, setup, out: Path, name: str, **_) -> List[Path]:
    plt = pyplot()
    ferd = [r for r in runs if r.method == "ferd" and set(r.method_overrides) <= {"gamma"} and r.variant == "paper"]
    gammas = sorted({float(r.config.get("gamma", 0.5)) for r in ferd})
    if not gammas:
        raise PlotError("fig5 needs FERD runs (a gamma sweep: dfrd-bench sweep --method ferd --grid gamma=0,0.1,0.5)")
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.0))
    for ax, metric, title in ((axes[0], "avg", "average"), (axes[1], "worst", "worst class")):
        for attack in ("clean", "pgd20"):
            ys = []
            for g in gammas:
                vals = [r.metric(attack, metric) for r in ferd if float(r.config.get("gamma", 0.5)) == g]
                vals = [v for v in vals if v is not None]
                ys.append(np.mean(vals) if vals else np.nan)
            ax.plot(gammas, ys, "-o", label=ATTACK_LABELS[attack])
        ax.set_xlabel("gamma")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"FERD {title} accuracy over gamma")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return save_figure(fig, out, name)
