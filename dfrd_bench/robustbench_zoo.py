"""RobustBench's CIFAR-10/100 Linf model zoo: names, where each entry's weights must lie, and what each
entry can do here.

robustbench (1.1.x) builds every entry and loads its weights itself (`robustbench.utils.load_model`),
downloading them unless the files are already where it looks:

- one checkpoint: <model_dir>/<dataset>/Linf/<name>.pt (downloaded from Google Drive);
- an ensemble: <name>.pt_m0.pt, <name>.pt_m1.pt, ... in the same folder;
- the XCiT entries: a timm model whose weights timm fetches from a URL into torch's hub cache
  (<torch hub dir>/checkpoints/<file name of the URL>); robustbench 1.1.1 has no timm model for the
  M12 and L12 sizes on CIFAR, so those cannot be loaded at all.

robustbench records no checksum for any of these files. The teacher is the module robustbench
returns, used as it is (its forward normalises); its stages are read by hooks (models/stages.py).
"""
from __future__ import annotations

import contextlib
import difflib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from .errors import DfrdError, first_line

DATASETS = ("cifar10", "cifar100")
THREAT = "Linf"


class ZooError(DfrdError, ValueError):
    """A robustbench name or entry that cannot be used as asked (the message says what to do)."""


def models(dataset: str) -> Dict[str, Dict[str, Any]]:
    """The Linf zoo of `dataset`: name -> robustbench's entry ({'model': constructor, 'gdrive_id': ...})."""
    if dataset not in DATASETS:
        raise ZooError(f"robustbench has no Linf {dataset} models here (only {', '.join(DATASETS)}); "
                       "use a checkpoint with --arch")
    from ._compat import import_robustbench

    import_robustbench()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    return model_dicts[BenchmarkDataset(dataset)][ThreatModel(THREAT)]


def entry(name: str, dataset: str) -> Dict[str, Any]:
    """robustbench's entry for `name`, or one line suggesting the closest names."""
    zoo = models(dataset)
    if name in zoo:
        return zoo[name]
    lower = {n.lower(): n for n in zoo}
    close = ([lower[name.lower()]] if name.lower() in lower else []) + difflib.get_close_matches(name, list(zoo), n=3,
                                                                                              cutoff=0.6)
    close = list(dict.fromkeys(close))[:3]
    others = [d for d in DATASETS if d != dataset and name in models(d)]
    where = f" (it is a {others[0]} model: pass --dataset {others[0]})" if others else ""
    hint = f"did you mean {', '.join(close)}?" if close else "see `dfrd-bench list teachers --robustbench`"
    raise ZooError(f"robustbench has no Linf {dataset} model {name!r}{where}; {hint}")


def timm_name(name: str, dataset: str) -> str:
    """The timm model robustbench.utils.load_model tries first for `name`."""
    return f"{name.lower().replace('-', '_')}_{dataset}_{THREAT.lower()}"


@dataclass(frozen=True)
class Weights:
    """Where robustbench reads an entry's weights, and where it would download them from."""

    files: Tuple[Path, ...]
    source: str

    def missing(self) -> List[Path]:
        return [f for f in self.files if not f.is_file()]


def weights(name: str, dataset: str, folder: Path) -> Weights:
    """The files robustbench reads for `name` (model folder `folder`), or why it cannot load the entry."""
    gdrive = entry(name, dataset)["gdrive_id"]
    base = folder / dataset / THREAT
    if isinstance(gdrive, str):
        return Weights((base / f"{name}.pt",), f"Google Drive file {gdrive}")
    if isinstance(gdrive, list):
        return Weights(tuple(base / f"{name}.pt_m{i}.pt" for i in range(len(gdrive))),
                       f"Google Drive files {', '.join(gdrive)}")
    import timm

    tname = timm_name(name, dataset)
    if not timm.is_model(tname):
        raise ZooError(f"robustbench:{name} cannot be loaded by robustbench itself: its entry has no download id "
                       f"and timm has no model {tname}; pick another entry")
    from urllib.parse import urlparse

    url = timm.models.get_pretrained_cfg(tname).url
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    return Weights((hub / os.path.basename(urlparse(url).path),), url)


def missing_message(name: str, dataset: str, folder: Path, w: Weights, why: str) -> str:
    """One line: which file to put where, and where robustbench would fetch it."""
    first = w.missing()[0]
    more = f" (and {len(w.missing()) - 1} more: {w.missing()[1].name}, ...)" if len(w.missing()) > 1 else ""
    return (f"robustbench:{name} ({dataset}) is not in {first.parent} and {why}: put its checkpoint at {first}{more}; "
            f"robustbench fetches it from {w.source} and records no checksum for it")


# ------------------------------------------------------------------------------------------------
# What each entry is and can do (for `dfrd-bench list teachers --robustbench`)
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EntryInfo:
    name: str
    dataset: str
    family: str                # the class of the network robustbench builds ('?' when it cannot be built here)
    params_m: Optional[float]  # millions of parameters
    can: Tuple[str, ...]       # teacher needs it meets: batchnorm, layer, stages
    note: str


def inspect_entry(name: str, dataset: str, image_size: int = 32) -> EntryInfo:
    """Build the entry on the meta device (no memory, no weights) and see what it exposes."""
    from .models import Classifier

    e = entry(name, dataset)
    if e["gdrive_id"] is None:
        import timm

        if not timm.is_model(timm_name(name, dataset)):
            return EntryInfo(name, dataset, "?", None, (), "robustbench 1.1.1 cannot load it (no download id, no "
                                                          "timm model of its name)")
        build = lambda: timm.create_model(timm_name(name, dataset), pretrained=False)  # noqa: E731
    else:
        build = e["model"]
    try:
        with torch.device("meta"), contextlib.redirect_stdout(io.StringIO()):  # some constructors print
            net = build()
            model = Classifier(net, 10 if dataset == "cifar10" else 100, arch=f"robustbench:{name}")
    except Exception as exc:  # robustbench's constructors run arbitrary code (CUDA calls, .item())
        return EntryInfo(name, dataset, "?", None, (), f"cannot be inspected without loading it ({first_line(exc, 60)})")
    can, checked = capabilities(model, image_size)
    note = _note(e, model) or ("" if checked else "layers tried at run time (its forward needs real tensors)")
    return EntryInfo(name, dataset, family(net), sum(p.numel() for p in net.parameters()) / 1e6, can, note)


def family(net: torch.nn.Module) -> str:
    """The class robustbench builds; for a Sequential (a normalisation in front, a head behind) its parts."""
    if isinstance(net, torch.nn.Sequential):
        return "+".join(type(c).__name__ for c in net.children())
    return type(net).__name__


def capabilities(model: Any, image_size: int) -> Tuple[Tuple[str, ...], bool]:
    """The teacher needs (method.NEEDS) `model` meets, and whether its stages could be tried on a probe
    (values unused: on the meta device a forward that reads values cannot run, and is not held against it)."""
    from .errors import InputError

    can = ["batchnorm"] if model.bn_layers() else []
    if not model.stage_names:
        return tuple(can), True
    try:
        model.check_layers(image_size, model.stage_names)
    except InputError:
        return tuple(can), True
    except (RuntimeError, NotImplementedError):
        return tuple(can + ["layer", "stages"]), False
    return tuple(can + ["layer", "stages"]), True


def _note(e: Dict[str, Any], model: Any) -> str:
    notes = []
    if isinstance(e["gdrive_id"], list):
        notes.append(f"an ensemble of {len(e['gdrive_id'])} checkpoints: its layers are not one network's")
    elif not model.stage_names:
        notes.append("no stages known (models/stages.py)")
    if e["gdrive_id"] is None:
        notes.append("weights in timm's hub cache (the offline error names the file)")
    return "; ".join(notes)


def supported_methods(can: Sequence[str], dataset: str) -> List[str]:
    """The registered methods whose default settings need no more than `can` of the teacher."""
    from .config import resolve_config
    from .method import METHODS, load_plugins, table_order

    out = []
    for method in table_order(load_plugins()):
        cls = METHODS.get(method)
        needs = cls().teacher_needs(resolve_config(cls, dataset, "smoke", {}))
        if set(needs) <= set(can):
            out.append(method)
    return out
