"""The Python API for notebooks: the same runs, evaluations and results as the command line.

    import dfrd_bench
    result = dfrd_bench.run("ferd", preset="smoke", teacher="random:resnet8", out="runs")
    frame = dfrd_bench.load_results("runs")          # one row per run x attack x class
    model = dfrd_bench.load_model("runs/<run>/student.pt")
    report = dfrd_bench.evaluate(model, attacks="clean,pgd20", limit=200)

Every function is a thin layer over what the CLI calls, so a result made here is the same file a
`dfrd-bench run` makes (docs/api.md).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Union

from .config import DEFAULT_EPS
from .report.collect import Folders, load_runs

# the settings of `run` that are not --set keys (RunRequest fields)
_REQUEST_KEYS = ("source", "data_root", "out", "run_name", "resume", "device", "model_dir", "tensorboard")


def run(method: str, dataset: str = "cifar10", preset: str = "quick", seed: int = 0, *,
        log: Optional[Callable[[str], None]] = None, **settings: Any) -> Dict[str, Any]:
    """Distil and evaluate one student, as `dfrd-bench run`; returns the result (also written to
    <out>/<run>/result.json). Keyword arguments are RunRequest fields (source, data_root, out, run_name,
    resume, device, model_dir, tensorboard) or any setting `--set` takes (teacher, student, epochs,
    gamma, ...), with Python values: `run("ferd", preset="smoke", teacher="random:resnet8", gamma=0.1)`."""
    from .config import parse_overrides, setting_text
    from .runner import RunRequest, run as run_request

    request = {k: settings.pop(k) for k in _REQUEST_KEYS if k in settings}
    # the same parsing as --set, so 8/255 or "on" mean what they mean on the command line
    overrides = parse_overrides([f"{k}={setting_text(v)}" for k, v in settings.items()])
    req = RunRequest(method=method, dataset=dataset, preset=preset, seed=seed, overrides=overrides, **request)
    return run_request(req, log=log or print)


def load_model(spec: str, dataset: str = "cifar10", *, arch: Optional[str] = None, layout: Optional[str] = None,
               normalize: Optional[str] = None, model_dir: Optional[str] = None) -> "Classifier":  # noqa: F821
    """A model from any spec `eval --model` takes (a checkpoint path, a bundled teacher, robustbench:NAME,
    py:FILE.py:FACTORY, a TorchScript file; docs/models.md), as the suite's Classifier in eval mode:
    `model(x)` takes images in [0, 1] and returns logits."""
    from .teachers import load_teacher

    return load_teacher(spec, dataset, arch=arch, model_dir=model_dir, layout=layout, normalize=normalize)


def evaluate(model: Union[str, Any], dataset: str = "cifar10", *, attacks: str = "clean,fgsm,pgd20,cw,aa",
             eps: float = DEFAULT_EPS, limit: Optional[int] = None, aa_limit: Optional[int] = None, seed: int = 0,
             source: Optional[str] = None, data_root: Optional[str] = None, device: str = "auto",
             batch_size: int = 256, out: Optional[str] = None, **load: Any) -> Dict[str, Any]:
    """Evaluate a model per class, as `dfrd-bench eval`; returns the result (written to `out` when
    given). `model` is a spec (loaded with `load_model(model, dataset, **load)`) or a model from
    `load_model`; a plain nn.Module is wrapped as a model that takes [0, 1] images. `limit` and
    `aa_limit` evaluate class-stratified subsets drawn with `seed`."""
    import torch

    from .evaluator import evaluate_model, parse_attacks
    from .store import write_result
    from .teachers import describe_spec

    if isinstance(model, str):
        spec, model = model, load_model(model, dataset, **load)
        block = describe_spec(spec, model)
    elif isinstance(model, torch.nn.Module):
        model = _as_classifier(model, dataset)
        block = {"spec": f"python:{type(model).__name__}"}
    else:
        raise TypeError(f"evaluate takes a model spec (str) or a torch.nn.Module, got {type(model).__name__}")
    result = evaluate_model(model.eval(), block, dataset, source, data_root, limit, ",".join(parse_attacks(attacks)),
                            eps, seed, device, batch_size, aa_limit)
    if out:
        write_result(result, out)
    return result


def _as_classifier(model: Any, dataset: str) -> Any:
    """The suite's Classifier as it is; any other nn.Module wrapped (it gets [0, 1] images, as a
    `py:` model loaded with --normalize none)."""
    from .data.specs import get_dataset_spec
    from .external import wrap_external
    from .models import Classifier

    if isinstance(model, Classifier):
        return model
    return wrap_external(model, get_dataset_spec(dataset).num_classes, f"python:{type(model).__name__}")


def load_results(folders: Folders) -> "pandas.DataFrame":  # noqa: F821
    """Every run result under `folders` as a pandas DataFrame with one row per run x attack x class.

    The runs are the ones the tables use (`report.collect.load_runs`: a re-run of the same seed
    replaces the older result, and of a method whose defaults moved only the runs at its newest
    `method_defaults_version` are kept). Columns: the setup (dataset, teacher, teacher_sha256, preset,
    defaults_version: the core's), the run's method_defaults_version, the run (method, variant, settings: the method settings changed with --set, as
    text; student, seed, run_dir), the attack and its run-level metrics (n, avg, worst, worst10, nsd,
    target_entropy_norm), the class (class_index, class_name, class_n, accuracy in percent) and the
    run's cost (train_seconds, eval_seconds, threads, device), and the per-image outcomes where the
    result has them: `correct`, a boolean array over the class's images in evaluation order, and
    `images_sha256`, equal for rows whose images pair one for one (None for older results). A file that should be a result and
    fails validation (docs/results-schema.md) is left out with a warning naming it and the reason."""
    import warnings

    import pandas as pd

    from .data.specs import get_dataset_spec
    from .metrics import decode_outcomes
    from .report.collect import unreadable_results

    for path, reason in unreadable_results(folders):
        warnings.warn(f"load_results: skipped {path}: {reason}", stacklevel=2)
    rows = []
    for r in load_runs(folders):
        setup = r.setup
        names = get_dataset_spec(setup.dataset).class_names or ()
        wall = r.result.get("wall_seconds") or {}
        prov = r.result.get("provenance") or {}
        settings = ", ".join(f"{k}={v}" for k, v in sorted(r.method_overrides.items()))
        base = {"dataset": setup.dataset, "teacher": setup.teacher, "teacher_sha256": setup.teacher_sha256,
                "preset": setup.preset, "defaults_version": setup.defaults_version,
                "method_defaults_version": r.defaults_version, "method": r.method,
                "variant": r.variant, "settings": settings, "student": r.student, "seed": r.seed,
                "run_dir": r.result.get("run_dir"), "train_seconds": wall.get("train"), "eval_seconds": wall.get("eval"),
                "threads": prov.get("torch_threads"), "device": prov.get("device")}
        for attack, entry in r.result["attacks"].items():
            metrics = {k: entry.get(k) for k in ("n", "avg", "worst", "worst10", "nsd", "target_entropy_norm")}
            outcomes = entry.get("outcomes")
            bits = decode_outcomes(outcomes, entry["per_class_n"]) if outcomes else None
            images = outcomes.get("images_sha256") if outcomes else None
            for c, (acc, n) in enumerate(zip(entry.get("per_class") or [], entry.get("per_class_n") or [])):
                rows.append({**base, "attack": attack, **metrics, "class_index": c,
                             "class_name": names[c] if c < len(names) else str(c), "class_n": n, "accuracy": acc,
                             "images_sha256": images, "correct": None if bits is None else bits[c]})
    return pd.DataFrame(rows)
