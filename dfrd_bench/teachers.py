"""Teachers (and models to evaluate) by spec:

- `robustbench:<name>`: a RobustBench model-zoo entry (Linf), loaded through the robustbench
  package as the network it builds (dfrd_bench/robustbench_zoo.py); a checkpoint already in the model
  folder (<models>/<dataset>/Linf/<name>.pt) is used without downloading. The paper's CIFAR-10/100
  teacher is `robustbench:Chen2024Data_WRN_34_10`.
- a checkpoint path, with `--arch NAME` unless it is a dfrd-bench checkpoint; its key layout is
  detected (or `--layout`), its normalisation is the checkpoint's or the layout's (or `--normalize`);
  `--arch py:FILE.py:FACTORY` builds the network with the user's code and loads the checkpoint into it;
- `py:FILE.py:FACTORY` alone: the network as the factory returns it (its own weights);
- a TorchScript file (torch.jit.save): evaluated as it is (docs/models.md);
- a bundled teacher: a name registered by a card `teachers/<name>.json` (architecture, dataset,
  file, sha256, recipe, the exact command that trained it, and its measured numbers).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .errors import DfrdError, first_line
from .checkpoints import CheckpointError, load_model, sha256_file
from .data import get_dataset_spec
from .external import PY_PREFIX, is_torchscript, load_py_model, load_torchscript, wrap_external
from .models import Classifier
from .models.layouts import Normalization, parse_normalize
from .utils import cache_dir

REPO_ROOT = Path(__file__).resolve().parents[1]


class TeacherError(DfrdError, RuntimeError):
    pass


def teachers_dir() -> Path:
    return Path(os.environ.get("DFRD_TEACHERS", REPO_ROOT / "teachers"))


def models_dir(model_dir: Optional[str] = None) -> Path:
    """--model-dir, else $DFRD_MODELS, else <cache>/models (robustbench's layout below it)."""
    if model_dir:
        return Path(model_dir).expanduser()
    return Path(os.environ.get("DFRD_MODELS", cache_dir() / "models")).expanduser()


def bundled_teachers() -> Dict[str, Dict[str, Any]]:
    cards: Dict[str, Dict[str, Any]] = {}
    folder = teachers_dir()
    if folder.is_dir():
        for card in sorted(folder.glob("*.json")):
            data = json.loads(card.read_text())
            data["_card"] = str(card)
            cards[data["name"]] = data
    return cards


def load_robustbench(name: str, dataset: str, model_dir: Optional[str] = None) -> Classifier:
    """The network robustbench builds and loads for `name`, used as it is (it normalises inside); its
    checkpoint must already be in the model folder when DFRD_OFFLINE is set."""
    from . import robustbench_zoo as zoo
    from ._compat import import_robustbench

    try:
        folder = models_dir(model_dir)
        w = zoo.weights(name, dataset, folder)
    except zoo.ZooError as exc:
        raise TeacherError(str(exc)) from None
    missing = w.missing()
    if missing and os.environ.get("DFRD_OFFLINE", "") not in ("", "0"):
        raise TeacherError(zoo.missing_message(name, dataset, folder, w, "DFRD_OFFLINE is set"))
    from .checkpoints import read_checkpoint

    for path in w.files:
        if path.is_file():
            # robustbench calls torch.load itself; read the file once with weights_only=True first, so a
            # checkpoint that carries code is refused here whatever torch's default is.
            read_checkpoint(path)
    rb = import_robustbench()
    try:
        net = rb.utils.load_model(model_name=name, model_dir=str(folder), dataset=dataset, threat_model=zoo.THREAT)
    except Exception as exc:
        if missing:
            raise TeacherError(zoo.missing_message(name, dataset, folder, w,
                                                   f"could not be downloaded ({first_line(exc, 80)})")) from None
        raise TeacherError(f"robustbench could not load {w.files[0]} ({first_line(exc, 160)}): check that it is "
                           f"the checkpoint of robustbench:{name} for {dataset}") from None
    model = wrap_external(net, get_dataset_spec(dataset).num_classes, f"robustbench:{name}").eval()
    model.origin = {"checkpoint_sha256": _files_sha256(w.files),
                    "robustbench": {"name": name, "family": zoo.family(net), "files": [str(f) for f in w.files]}}
    return model


def _files_sha256(files: Sequence[Path]) -> str:
    """sha256 of a checkpoint file; of an ensemble's files, the sha256 of their sha256s in order."""
    if len(files) == 1:
        return sha256_file(files[0])
    import hashlib

    return hashlib.sha256("".join(sha256_file(f) for f in files).encode()).hexdigest()


def load_teacher(spec: str, dataset: str, arch: Optional[str] = None, model_dir: Optional[str] = None,
                 layout: Optional[str] = None, normalize: Optional[str] = None, flags: str = "") -> Classifier:
    """Resolve a teacher (or any model) spec for `dataset`; see the module docstring. `flags` prefixes
    the option names errors mention (`teacher-` in a run)."""
    ds = get_dataset_spec(dataset)
    path = Path(spec).expanduser()
    external = spec.startswith(PY_PREFIX) or (arch or "").startswith(PY_PREFIX) or is_torchscript(path)
    if layout is not None and (external or spec.startswith(("robustbench:", "random:"))):
        raise TeacherError(f"--{flags}layout applies to checkpoints of registered architectures, not to {spec}: "
                           "drop it")
    if spec.startswith("random:"):
        # An untrained model, for plumbing tests only (never a real teacher); seeded by the global RNG.
        from .models import build_model

        if normalize is not None:
            raise TeacherError(f"{spec} is fed the dataset's normalisation: drop --{flags}normalize")
        model = build_model(spec.split(":", 1)[1], ds.num_classes, ds.image_size, ds.mean, ds.std)
    elif spec.startswith("robustbench:"):
        if normalize is not None:
            raise TeacherError(f"robustbench models normalise inside: drop --{flags}normalize for {spec}")
        model = load_robustbench(spec.split(":", 1)[1], dataset, model_dir)
    elif external:
        model = _load_external(spec, path, arch, ds, normalize, flags)
    elif spec in bundled_teachers():
        card = bundled_teachers()[spec]
        if card["dataset"] != dataset:
            raise TeacherError(f"bundled teacher {spec} is for {card['dataset']}, not {dataset}")
        file = Path(card["_card"]).parent / card["file"]
        if sha256_file(file) != card["sha256"]:
            raise TeacherError(f"{file} does not match its sha256 in {card['_card']}: re-checkout the file")
        model = load_model(file, mean=ds.mean, std=ds.std, normalize=normalize, flags=flags)
    elif path.exists():
        try:
            model = load_model(path, arch=arch, num_classes=ds.num_classes, image_size=ds.image_size,
                               mean=ds.mean, std=ds.std, layout=layout, normalize=normalize, flags=flags)
        except CheckpointError as exc:
            raise TeacherError(str(exc)) from None
    else:
        known = ", ".join(sorted(bundled_teachers())) or "none"
        raise TeacherError(
            f"no teacher {spec!r}: give robustbench:<name>, a checkpoint path (with --{flags}arch), a TorchScript "
            f"file, py:FILE.py:FACTORY, or a bundled teacher ({known})"
        )
    if model.num_classes != ds.num_classes:
        raise TeacherError(f"{spec} has {model.num_classes} classes but {dataset} has {ds.num_classes}")
    return model.eval()


def _load_external(spec: str, path: Path, arch: Optional[str], ds: Any, normalize: Optional[str],
                   flags: str) -> Classifier:
    """A py: factory (alone, or as --arch of a checkpoint) or a TorchScript file. They get [0, 1]
    images as they are unless --normalize says otherwise: their code, not ours, decides."""
    norm = (parse_normalize(normalize, ds.mean, ds.std, flag=f"--{flags}normalize") if normalize is not None
            else Normalization("none", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "default for external models"))
    if spec.startswith(PY_PREFIX):
        if arch is not None:
            raise TeacherError(f"{spec} names its own architecture: drop --{flags}arch")
        return load_py_model(spec, ds.num_classes, ds.image_size, norm)
    if is_torchscript(path):
        if arch is not None:
            raise TeacherError(f"{spec} is a TorchScript file, which carries its architecture: drop --{flags}arch")
        return load_torchscript(path, ds.num_classes, ds.image_size, norm)
    if not path.is_file():
        raise TeacherError(f"--{flags}arch {arch} needs a checkpoint file; {spec} is not one")
    return load_py_model(arch, ds.num_classes, ds.image_size, norm, weights=path)


def describe_spec(spec: str, model: Optional[Classifier] = None) -> Dict[str, Any]:
    """What goes into a result's `model` block for a spec (with the checkpoint's sha256 when a file),
    and, given the loaded model, how it was read (layout, normalisation, factory, format)."""
    out: Dict[str, Any] = {"spec": spec}
    cards = bundled_teachers()
    if spec in cards:
        out["checkpoint_sha256"] = cards[spec]["sha256"]
    elif Path(spec).expanduser().is_file():
        out["checkpoint_sha256"] = sha256_file(Path(spec).expanduser())
    if model is not None:
        out.update(getattr(model, "origin", {}))
    return out


def describe_loaded(model: Classifier) -> str:
    """One line on how a model was read, printed before it is used (what the result also records)."""
    origin = getattr(model, "origin", {})
    parts = [f"model {model.arch}"]
    if "layout" in origin:
        parts.append(f"key layout {origin['layout']}")
    if origin.get("format") == "torchscript":
        parts.append("TorchScript")
    norm = origin.get("normalize")
    if norm:
        what = {"none": "inputs not normalised", "dataset": "the dataset's mean/std"}.get(
            norm["spec"], f"mean {norm['mean']} std {norm['std']}")
        parts.append(f"{what} ({norm['source']})")
    return ", ".join(parts)


def robustbench_cards() -> Dict[str, Dict[str, Any]]:
    """The cards `dfrd-bench teacher card` wrote (<teachers>/robustbench/<name>-<dataset>.json)."""
    folder = teachers_dir() / "robustbench"
    return {c.stem: json.loads(c.read_text()) for c in sorted(folder.glob("*.json"))} if folder.is_dir() else {}


def list_teachers() -> List[Dict[str, Any]]:
    rows = [{"name": n, "arch": c["arch"], "dataset": c["dataset"], "kind": "bundled",
             "note": c.get("summary", "")} for n, c in bundled_teachers().items()]
    rows.append({"name": "robustbench:Chen2024Data_WRN_34_10", "arch": "wrn-34-10", "dataset": "cifar10, cifar100",
                 "kind": "robustbench", "note": "the paper's CIFAR teacher (needs its checkpoint offline)"})
    rows += [{"name": c["name"], "arch": c["arch"], "dataset": c["dataset"], "kind": "robustbench, card",
              "note": c.get("summary", "")} for c in robustbench_cards().values()]
    return rows


def robustbench_rows(datasets: Sequence[str]) -> List[Dict[str, Any]]:
    """Every Linf entry of `datasets`: its family, size, the methods it can teach, and why not the others."""
    from . import robustbench_zoo as zoo

    rows = []
    for dataset in datasets:
        for name in zoo.models(dataset):
            info = zoo.inspect_entry(name, dataset, get_dataset_spec(dataset).image_size)
            methods = zoo.supported_methods(info.can, dataset) if info.family != "?" else []
            rows.append({"name": name, "dataset": dataset, "family": info.family,
                         "params": "?" if info.params_m is None else f"{info.params_m:.1f}M",
                         "methods": ", ".join(methods) or "-", "note": info.note})
    return rows


CARD_ATTACKS = "clean,pgd20,aa"


def robustbench_card(spec: str, dataset: str, command: str, model_dir: Optional[str] = None,
                     out: Optional[str] = None, cards: Optional[str] = None, **evaluation: Any) -> Dict[str, Any]:
    """Evaluate a RobustBench entry (clean, PGD-20, AutoAttack; `evaluation` holds evaluator.evaluate_model's
    source, data_root, limit, eps, seed, device, batch_size, aa_limit) and write its result JSON (kind
    'teacher', to `out`, default results/teachers) and its card (to `cards`, default <teachers>/robustbench):
    the card a bundled teacher has, so a table can say which teacher a run used and how strong it is."""
    from .evaluator import evaluate_model
    from .store import write_result
    from .utils import atomic_write_json

    if not spec.startswith("robustbench:"):
        raise TeacherError(f"teacher card takes robustbench:<name>, not {spec!r}; a bundled teacher's card is "
                           "written by `dfrd-bench teacher bundle`")
    name = spec.split(":", 1)[1]
    model = load_robustbench(name, dataset, model_dir)
    result = evaluate_model(model, describe_spec(spec, model), dataset, attacks=CARD_ATTACKS, kind="teacher",
                            **evaluation)
    eval_path = write_result(result, Path(out or REPO_ROOT / "results" / "teachers") / f"robustbench-{name}-{dataset}.json")
    measured, summary = evaluation_block([eval_path], [result])
    origin = model.origin["robustbench"]
    card = {
        "name": spec,
        "arch": origin["family"],
        "dataset": dataset,
        "params": sum(p.numel() for p in model.parameters()),
        "files": origin["files"],
        "sha256": model.origin["checkpoint_sha256"],
        "size_bytes": sum(Path(f).stat().st_size for f in origin["files"]),
        "command": command,
        "source": "RobustBench model zoo, Linf (robustbench.utils.load_model)",
        "evaluation": measured,
        "summary": summary,
    }
    folder = Path(cards) if cards else teachers_dir() / "robustbench"
    atomic_write_json(folder / f"{name}-{dataset}.json", card)
    return card


def bundle_teacher(checkpoint: str, name: str, eval_json, command: str, dest: Optional[str] = None,
                   max_mb: float = 5.0) -> Dict[str, Any]:
    """Copy a dfrd-bench checkpoint into the teachers folder and write its card.

    The card's numbers are read from `eval_json` (one or more results of `dfrd-bench eval` on this
    very file, checked by sha256, e.g. the full split for most attacks and a subset for AutoAttack),
    never typed by hand.
    """
    import shutil

    from .checkpoints import read_checkpoint
    from .store import read_result
    from .utils import atomic_write_json

    src = Path(checkpoint)
    size = src.stat().st_size
    if size > max_mb * 1e6:
        raise TeacherError(f"{src} is {size / 1e6:.1f} MB, over the {max_mb} MB limit for bundled teachers")
    raw = read_checkpoint(src)
    if raw.get("format") != "dfrd-bench-model/1":
        raise TeacherError(f"{src} is not a dfrd-bench checkpoint")
    digest = sha256_file(src)
    paths = [eval_json] if isinstance(eval_json, (str, Path)) else list(eval_json)
    results = [read_result(p) for p in paths]
    for path, res in zip(paths, results):
        if res["model"].get("checkpoint_sha256") != digest:
            raise TeacherError(f"{path} evaluates another file (sha256 differs): evaluate {src} first")
        if res["data_source"].get("kind") != results[0]["data_source"].get("kind") or res["settings"].get("eps") != results[0]["settings"].get("eps"):
            raise TeacherError(f"{path} uses another data source or eps than {paths[0]}")
    folder = Path(dest) if dest else teachers_dir()
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{name}.pt"
    shutil.copyfile(src, target)
    meta = raw.get("meta", {})
    evaluation, summary = evaluation_block(paths, results)
    card = {
        "name": name,
        "arch": raw["arch"],
        "dataset": raw["dataset"],
        "file": target.name,
        "sha256": digest,
        "size_bytes": size,
        "command": command,
        "seed": meta.get("recipe", {}).get("seed"),
        "recipe": meta.get("recipe"),
        "train_source": meta.get("train_source"),
        "val_holdout": meta.get("val_holdout"),
        "history": meta.get("history"),
        "evaluation": evaluation,
        "summary": summary,
    }
    atomic_write_json(folder / f"{name}.json", card)
    render_cards(folder)
    return card


def evaluation_block(paths: Sequence[Any], results: Sequence[Dict[str, Any]]) -> Tuple[Dict[str, Any], str]:
    """A card's `evaluation` (per attack the evaluation on the most images, its data source, eps) and
    its one-line summary, from result JSONs of one model (read with store.read_result)."""
    attacks: Dict[str, Any] = {}
    sources: Dict[str, Any] = {}
    for res in results:
        for k, v in res["attacks"].items():
            if k in attacks and attacks[k]["n"] >= v["n"]:
                continue  # an attack in several files: keep the evaluation on more images
            attacks[k] = {m: v.get(m) for m in ("avg", "worst", "worst10", "nsd", "n")}
            # an attack run on a subset of the evaluated images (--aa-limit) records that subset itself
            sources[k] = {**res["data_source"], "n": v["n"], "subset": v.get("subset", res["data_source"].get("subset"))}
    result = results[0]
    evaluation = {
        "results_files": [str(p) for p in paths],
        "data_source": result["data_source"],
        "data_source_per_attack": {k: {"n": v.get("n"), "sha256": v.get("sha256"), "subset": v.get("subset")}
                                   for k, v in sources.items()},
        "eps": result["settings"].get("eps"),
        "attacks": attacks,
    }
    summary = ", ".join(f"{k} {v['avg']:.1f}%" for k, v in attacks.items()) + f" ({result['data_source']['kind']})"
    return evaluation, summary


def render_cards(folder: Path) -> None:
    """Rewrite the table between the markers in <folder>/README.md from the cards (never by hand)."""
    readme = folder / "README.md"
    if not readme.exists():
        return
    if "<!-- cards:start -->" not in readme.read_text():
        return
    rows = ["| teacher | arch | dataset | test source | eps | clean | FGSM | PGD-20 | CW-inf | AA | sha256 |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for card_file in sorted(folder.glob("*.json")):
        c = json.loads(card_file.read_text())
        ev = c["evaluation"]
        a = ev["attacks"]

        def cell(k: str) -> str:
            if k not in a:
                return "-"
            v = a[k]
            return f"{v['avg']:.2f} (worst {v['worst']:.1f}, n={v['n']})"

        eps = ev.get("eps")
        rows.append(f"| `{c['name']}` | {c['arch']} | {c['dataset']} | {ev['data_source']['kind']} "
                    f"| {round(eps * 255)}/255 | {cell('clean')} | {cell('fgsm')} | {cell('pgd20')} | {cell('cw')} | {cell('aa')} "
                    f"| `{c['sha256'][:12]}` |")
    from .utils import replace_between_markers

    replace_between_markers(readme, "cards", "\n".join(rows))
