"""The paper's figures from the results store, as PNG and PDF (matplotlib, no display needed).

fig1  per-class accuracy of the teacher and every method's student, one panel per attack (paper Fig. 1)
fig2  one student's confusion matrices under each attack (Fig. 2; FERD's student unless --method)
fig4  FERD per-class robustness with and without reweighting, and the final sampling weights p_c (Fig. 4)
fig5  FERD over gamma: average and worst-class accuracy, clean and PGD-20 (Fig. 5)
fig6  the synthetic samples each method's run saved (samples.png, sorted by class) side by side (Figs. 6/10)
fig8  training curves over epochs from each run's history (Fig. 8 shows test metrics per epoch; a run
      never looks at test data while training, so these are the training losses and FERD's mechanism logs)
fig9  every method's student's confusion matrix under PGD-20: how its attack targets spread (cf. Fig. 9)
One figure set per setup and student; names carry the student (and setup when there are several).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Union

import numpy as np

from ..errors import DfrdError
from .collect import Folders, Run, Setup, group_by_setup, load_model_evals, load_runs, matches, teacher_attacks
from ..method import method_info, table_order
from .tables import ATTACK_LABELS, method_label

FIGURES = ("1", "2", "4", "5", "6", "8", "9")
HISTORY_KEYS = ("student/loss", "student/kl_adv", "gen/total", "utae_target_entropy_norm", "gen/nonrobust_frac")


class PlotError(DfrdError, ValueError):
    pass


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: Path, name: str) -> List[Path]:
    out.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()  # side-by-side panels otherwise overlap one panel's y label with its neighbour
    paths = []
    for ext in ("png", "pdf"):
        path = out / f"{name}.{ext}"
        tmp = path.with_suffix(f".tmp.{ext}")
        # No creation date in the PDF: re-rendering unchanged results gives byte-identical files, so a
        # commit of the benchmark shows only the figures whose runs changed.
        metadata = {"CreationDate": None} if ext == "pdf" else None
        fig.savefig(tmp, dpi=130, bbox_inches="tight", metadata=metadata)
        tmp.replace(path)  # atomic: a reader never sees half a figure
        paths.append(path)
    _plt().close(fig)
    return paths


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_")


def _default_run(runs: Sequence[Run], method: str) -> Optional[Run]:
    """The run of `method` with default settings (lowest seed), else any run of it."""
    plain = sorted([r for r in runs if matches(r, method, {})], key=lambda r: r.seed)
    anyrun = sorted([r for r in runs if r.method == method], key=lambda r: r.seed)
    return (plain or anyrun or [None])[0]


def _methods_in(runs: Sequence[Run]) -> List[str]:
    """The methods of these runs in table order (MethodInfo: baselines by order, the proposed one last)."""
    return table_order(r.method for r in runs)


def _color(method: str) -> Optional[str]:
    return method_info(method).color  # None: matplotlib's next colour


def _attacks_in(runs: Sequence[Run]) -> List[str]:
    names = {a for r in runs for a in r.result["attacks"]}
    return [a for a in ATTACK_LABELS if a in names]


def fig1(runs: List[Run], evals: List[dict], setup: Setup, out: Path, name: str, **_) -> List[Path]:
    plt = _plt()
    attacks = _attacks_in(runs)
    teacher = teacher_attacks(evals, setup.teacher_sha256, setup.dataset)
    fig, axes = plt.subplots(1, len(attacks), figsize=(3.2 * len(attacks), 3.0), squeeze=False, sharey=True)
    for ax, attack in zip(axes[0], attacks):
        if attack in teacher:
            pc = teacher[attack]["per_class"]
            ax.plot(range(len(pc)), pc, "-o", color="tab:blue", lw=2.2, ms=3, label=f"teacher ({setup.teacher})")
        for method in _methods_in(runs):
            run = _default_run(runs, method)
            if run is not None and attack in run.result["attacks"]:
                pc = run.result["attacks"][attack]["per_class"]
                ax.plot(range(len(pc)), pc, "--.", lw=1.2, color=_color(method),
                        label=method_label(method))
        ax.set_title(ATTACK_LABELS[attack])
        _class_axis(ax, setup.dataset)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy (%)")
    axes[0][-1].legend(fontsize=7, loc="upper right")
    return _save(fig, out, name)


def _class_axis(ax, dataset: str) -> None:
    """Class names on the x axis when they fit (CIFAR-10), else indices."""
    from ..data.specs import get_dataset_spec

    names = get_dataset_spec(dataset).class_names
    if names and len(names) <= 10:
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=60, fontsize=7)
    else:
        ax.set_xlabel("class")


def _confusion_panel(ax, conf: Sequence[Sequence[int]], title: str) -> None:
    m = np.asarray(conf, dtype=float)
    m = m / np.maximum(m.sum(1, keepdims=True), 1)
    ax.imshow(m, cmap="Blues", vmin=0, vmax=1)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")


def fig2(runs: List[Run], evals, setup, out: Path, name: str, method: str = "ferd", **_) -> List[Path]:
    plt = _plt()
    run = _default_run(runs, method) or _default_run(runs, _methods_in(runs)[0])
    attacks = _attacks_in([run])
    fig, axes = plt.subplots(1, len(attacks), figsize=(2.8 * len(attacks), 2.9), squeeze=False)
    for ax, attack in zip(axes[0], attacks):
        _confusion_panel(ax, run.result["attacks"][attack]["confusion"],
                         f"{method_label(run.method)}: {ATTACK_LABELS[attack]}")
    return _save(fig, out, f"{name}-{run.method}")


def fig9(runs: List[Run], evals, setup, out: Path, name: str, attack: str = "pgd20", **_) -> List[Path]:
    plt = _plt()
    picked = [r for r in (_default_run(runs, m) for m in _methods_in(runs)) if r and attack in r.result["attacks"]]
    if not picked:
        raise PlotError(f"no run has {attack} results")
    fig, axes = plt.subplots(1, len(picked), figsize=(2.8 * len(picked), 2.9), squeeze=False)
    for ax, run in zip(axes[0], picked):
        entry = run.result["attacks"][attack]
        spread = entry.get("target_entropy_norm")
        extra = f"\ntarget entropy {spread:.2f}" if spread is not None else ""
        _confusion_panel(ax, entry["confusion"], f"{method_label(run.method)} ({ATTACK_LABELS[attack]}){extra}")
    return _save(fig, out, name)


def fig4(runs: List[Run], evals, setup, out: Path, name: str, attack: str = "pgd20", **_) -> List[Path]:
    plt = _plt()
    with_rw = _default_run([r for r in runs if r.config.get("reweight", True)], "ferd")
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
    _class_axis(axes[0], setup.dataset)
    axes[0].set_ylabel("accuracy (%)")
    axes[0].legend(fontsize=7)
    weights = [h.get("gen/p") for h in with_rw.result.get("history", []) if h.get("gen/p") is not None]
    if weights:
        axes[1].bar(np.arange(len(weights[-1])), weights[-1], color="tab:orange")
        axes[1].axhline(1.0 / len(weights[-1]), color="k", lw=0.8, ls="--", label="uniform")
        axes[1].legend(fontsize=7)
    axes[1].set_title("sampling weights p_c (last epoch)", fontsize=9)
    _class_axis(axes[1], setup.dataset)
    return _save(fig, out, name)


def fig5(runs: List[Run], evals, setup, out: Path, name: str, **_) -> List[Path]:
    plt = _plt()
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
    return _save(fig, out, name)


def fig6(runs: List[Run], evals, setup, out: Path, name: str, **_) -> List[Path]:
    plt = _plt()
    panels = []
    for method in _methods_in(runs):
        run = _default_run(runs, method)
        grid = Path(run.result["_path"]).parent / "samples.png" if run else None
        if grid is not None and grid.exists():
            panels.append((method, grid))
    if not panels:
        raise PlotError("no samples.png next to the result JSONs (the runner writes one per run)")
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4), squeeze=False)
    for ax, (method, grid) in zip(axes[0], panels):
        ax.imshow(plt.imread(str(grid)))
        ax.set_title(method_label(method))
        ax.axis("off")
    fig.suptitle("last synthetic batch of each method (rows sorted by class)", fontsize=9)
    return _save(fig, out, name)


def fig8(runs: List[Run], evals, setup, out: Path, name: str, **_) -> List[Path]:
    plt = _plt()
    keys = [k for k in HISTORY_KEYS if any(k in h for r in runs for h in r.result.get("history", []))]
    if not keys:
        raise PlotError("no run has a history with the plotted keys")
    fig, axes = plt.subplots(1, len(keys), figsize=(3.4 * len(keys), 3.0), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for method in _methods_in(runs):
            run = _default_run(runs, method)
            hist = [h for h in (run.result.get("history", []) if run else []) if h.get(key) is not None]
            if hist:
                ax.plot([h["epoch"] for h in hist], [h[key] for h in hist], "-", color=_color(method),
                        label=method_label(method))
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    return _save(fig, out, name)


PLOTTERS: Dict[str, Callable[..., List[Path]]] = {"1": fig1, "2": fig2, "4": fig4, "5": fig5, "6": fig6, "8": fig8, "9": fig9}


def plot(figures: Sequence[str], results: Folders, out: Union[str, Path], method: str = "ferd",
         log: Callable[[str], None] = print) -> List[Path]:
    """Write the asked figures for every setup and student found under `results`; returns the files."""
    for f in figures:
        if f not in PLOTTERS:
            raise PlotError(f"unknown figure {f!r}: choose from {', '.join(FIGURES)} or all")
    runs = load_runs(results)
    if not runs:
        raise PlotError(f"no run results under {results}: run `dfrd-bench run` or `dfrd-bench sweep` first")
    evals = load_model_evals(results)
    setups = group_by_setup(runs)
    written: List[Path] = []
    for setup, setup_runs in setups.items():
        for student in sorted({r.student for r in setup_runs}):
            student_runs = [r for r in setup_runs if r.student == student]
            stem = student if len(setups) == 1 else f"{_slug(setup.dataset)}-{_slug(setup.teacher)}-{setup.preset}-{student}"
            for f in figures:
                try:
                    written += PLOTTERS[f](student_runs, evals, setup, Path(out), f"fig{f}-{stem}", method=method)
                except PlotError as exc:
                    log(f"fig{f} ({stem}) skipped: {exc}")
    return written
