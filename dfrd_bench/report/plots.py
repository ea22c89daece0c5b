"""The paper's figures from the results store, as PNG and PDF (matplotlib, no display needed).

fig1  per-class accuracy of the teacher and every method's student, one panel per attack (paper Fig. 1)
fig2  one student's confusion matrices under each attack (Fig. 2; the proposed method's student unless --method)
fig6  the synthetic samples each method's run saved (samples.png, sorted by class) side by side (Figs. 6/10)
fig8  training curves over epochs from each run's history (Fig. 8 shows test metrics per epoch; a run
      never looks at test data while training, so these are the training losses and the methods' own
      mechanism logs, contrib.register_history_keys)
fig9  every method's student's confusion matrix under PGD-20: how its attack targets spread (cf. Fig. 9)
A method's own figures (FERD's Figs. 4 and 5) come from its plugin's report module (`register_figure`).
One figure set per setup and student; names carry the student (and setup when there are several).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Union

import numpy as np

from ..errors import DfrdError
from .collect import Folders, Run, Setup, group_by_setup, load_model_evals, load_runs, matches, teacher_attacks
from .contrib import history_keys, load_contributions
from ..method import method_info, table_order
from ..registry import Registry
from ..attacks import ATTACK_LABELS
from .tables import method_label

# name -> fn(runs of one setup and student, evals, setup, out folder, file stem, method=...) -> files
PLOTTERS: Registry[Callable[..., List[Path]]] = Registry("figure")


def register_figure(name: str, help: str = "") -> Callable[[Callable[..., List[Path]]], Callable[..., List[Path]]]:
    """Declare a figure `name` (drawn as fig<name>-<student>.png/.pdf); a plugin's report module may add one."""
    return PLOTTERS.register(name, help=help)


def figure_names() -> List[str]:
    """Every registered figure, numbers in numeric order, then named ones."""
    load_contributions()
    return sorted(PLOTTERS.names(), key=lambda n: (0, int(n)) if n.isdigit() else (1, n))


class PlotError(DfrdError, ValueError):
    pass


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, out: Path, name: str) -> List[Path]:
    """Write `fig` as out/name.png and .pdf (atomic, no PDF date: unchanged results give identical bytes)."""
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
    pyplot().close(fig)
    return paths


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_")


def default_run(runs: Sequence[Run], method: str) -> Optional[Run]:
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
    plt = pyplot()
    attacks = _attacks_in(runs)
    teacher = teacher_attacks(evals, setup.teacher_sha256, setup.dataset)
    fig, axes = plt.subplots(1, len(attacks), figsize=(3.2 * len(attacks), 3.0), squeeze=False, sharey=True)
    for ax, attack in zip(axes[0], attacks):
        if attack in teacher:
            pc = teacher[attack]["per_class"]
            ax.plot(range(len(pc)), pc, "-o", color="tab:blue", lw=2.2, ms=3, label=f"teacher ({setup.teacher})")
        for method in _methods_in(runs):
            run = default_run(runs, method)
            if run is not None and attack in run.result["attacks"]:
                pc = run.result["attacks"][attack]["per_class"]
                ax.plot(range(len(pc)), pc, "--.", lw=1.2, color=_color(method),
                        label=method_label(method))
        ax.set_title(ATTACK_LABELS[attack])
        class_axis(ax, setup.dataset)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy (%)")
    axes[0][-1].legend(fontsize=7, loc="upper right")
    return save_figure(fig, out, name)


def class_axis(ax, dataset: str) -> None:
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


def _proposed_or_first(runs: Sequence[Run]) -> str:
    """The proposed method among the runs (MethodInfo.proposed; table order puts it last), else the first."""
    methods = _methods_in(runs)
    proposed = [m for m in methods if method_info(m).proposed]
    return proposed[0] if proposed else methods[0]


def fig2(runs: List[Run], evals, setup, out: Path, name: str, method: Optional[str] = None, **_) -> List[Path]:
    plt = pyplot()
    run = (default_run(runs, method) if method else None) or default_run(runs, _proposed_or_first(runs))
    attacks = _attacks_in([run])
    fig, axes = plt.subplots(1, len(attacks), figsize=(2.8 * len(attacks), 2.9), squeeze=False)
    for ax, attack in zip(axes[0], attacks):
        _confusion_panel(ax, run.result["attacks"][attack]["confusion"],
                         f"{method_label(run.method)}: {ATTACK_LABELS[attack]}")
    return save_figure(fig, out, f"{name}-{run.method}")


def fig9(runs: List[Run], evals, setup, out: Path, name: str, attack: str = "pgd20", **_) -> List[Path]:
    plt = pyplot()
    picked = [r for r in (default_run(runs, m) for m in _methods_in(runs)) if r and attack in r.result["attacks"]]
    if not picked:
        raise PlotError(f"no run has {attack} results")
    fig, axes = plt.subplots(1, len(picked), figsize=(2.8 * len(picked), 2.9), squeeze=False)
    for ax, run in zip(axes[0], picked):
        entry = run.result["attacks"][attack]
        spread = entry.get("target_entropy_norm")
        extra = f"\ntarget entropy {spread:.2f}" if spread is not None else ""
        _confusion_panel(ax, entry["confusion"], f"{method_label(run.method)} ({ATTACK_LABELS[attack]}){extra}")
    return save_figure(fig, out, name)


def fig6(runs: List[Run], evals, setup, out: Path, name: str, **_) -> List[Path]:
    plt = pyplot()
    panels = []
    for method in _methods_in(runs):
        run = default_run(runs, method)
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
    return save_figure(fig, out, name)


def fig8(runs: List[Run], evals, setup, out: Path, name: str, **_) -> List[Path]:
    plt = pyplot()
    keys = [k for k in history_keys() if any(k in h for r in runs for h in r.result.get("history", []))]
    if not keys:
        raise PlotError("no run has a history with the plotted keys")
    fig, axes = plt.subplots(1, len(keys), figsize=(3.4 * len(keys), 3.0), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for method in _methods_in(runs):
            run = default_run(runs, method)
            hist = [h for h in (run.result.get("history", []) if run else []) if h.get(key) is not None]
            if hist:
                ax.plot([h["epoch"] for h in hist], [h[key] for h in hist], "-", color=_color(method),
                        label=method_label(method))
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    return save_figure(fig, out, name)


for _name, _fn, _help in (("1", fig1, "per-class accuracy of the teacher and each student"),
                          ("2", fig2, "one student's confusion matrices"), ("6", fig6, "synthetic samples"),
                          ("8", fig8, "training curves"), ("9", fig9, "confusion matrices under PGD-20")):
    register_figure(_name, help=_help)(_fn)


def plot(figures: Sequence[str], results: Folders, out: Union[str, Path], method: Optional[str] = None,
         log: Callable[[str], None] = print) -> List[Path]:
    """Write the asked figures for every setup and student found under `results`; returns the files."""
    names = figure_names()
    for f in figures:
        if f not in PLOTTERS:
            raise PlotError(f"unknown figure {f!r}: choose from {', '.join(names)} or all")
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
                    written += PLOTTERS.get(f)(student_runs, evals, setup, Path(out), f"fig{f}-{stem}", method=method)
                except PlotError as exc:
                    log(f"fig{f} ({stem}) skipped: {exc}")
    return written
