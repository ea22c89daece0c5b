"""The one evaluator: clean, FGSM, PGD-20, CW-inf and AutoAttack, per class, for every model.

The evaluation is IEEE fp32 and eager (no autocast, no TF32: `acceleration.ieee_fp32`), whatever a
run trained with. Each attack runs batch by batch on the model's device; the perturbation of every batch is checked
against the eps ball and [0, 1] (a violation is a bug and raises). Each attack draws its random
starts from its own generator seeded by (seed, attack name), so a number does not depend on which
other attacks ran. The model is evaluated in eval mode with frozen parameters (restored afterwards).

Robust accuracy follows AutoAttack's convention: a point counts as robust only if the model classifies
it correctly both clean and under the attack, so points misclassified clean are not attacked (they
count as errors). Besides being the standard definition, this makes a weak model's evaluation several
times cheaper. `AttackSettings(attack_misclassified=True)` attacks every point instead.

With a progress file (`evaluate(..., progress_path=...)`, dfrd_bench/eval_progress.py) the evaluation
is resumable at the granularity of one batch: a killed run continues at its first unfinished batch.

In a data-parallel run (`shard=`, dfrd_bench.distributed.EvalShard) batch b is attacked by rank
b % N only; the others draw the random numbers it would draw, so every number equals the single
process's, and rank 0 saves the same progress file after every round of N batches.
"""
from __future__ import annotations

import contextlib
import time
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

from .acceleration import fp32_region, ieee_fp32
from .errors import DfrdError
from .attacks import ATTACKS, BATCH_DRAWS, AttackSettings, attack_order, attack_spec
from .data import ImageSet
from .eval_progress import AttackCursor, EvalProgress, evaluation_identity
from .metrics import encode_outcomes, summarize
from .modes import frozen
from .utils import pick_device, progress

if TYPE_CHECKING:
    from .distributed import EvalShard

PROJECTION_TOLERANCE = 1e-5


class EvaluationError(DfrdError, RuntimeError):
    pass


def parse_attacks(text: str | Sequence[str]) -> List[str]:
    """'all' or a comma list -> attack names in canonical order; unknown names fail with a hint."""
    if text is None:
        text = ""
    order = attack_order()  # the declared attacks (plugins' included), in canonical order
    names = list(order) if text in ("all", ["all"]) else (
        [t.strip() for t in text.split(",") if t.strip()] if isinstance(text, str) else list(text))
    if not names:
        raise EvaluationError(f"no attack given: pass a comma list of {', '.join(order)} or all")
    for n in names:
        ATTACKS.get(n)  # raises with suggestions
    return [n for n in order if n in names] + [n for n in names if n not in order]


def _perturbs(name: str) -> bool:
    """Whether attack `name` moves the images (all but clean; an undeclared attack is taken to)."""
    spec = attack_spec(name)
    return spec is None or spec.perturbs


# The model-mode switch lives in dfrd_bench.modes; `frozen_eval` is its old name here.
frozen_eval = frozen


@contextlib.contextmanager
def channels_last(model: torch.nn.Module, enabled: bool = True):
    """Run `model` with channels-last weights (1.4-1.8x faster convolutions on CPU); restored afterwards.

    The input keeps its layout: a convolution with channels-last weights returns channels-last output.
    """
    if not enabled:
        yield model
        return
    model.to(memory_format=torch.channels_last)
    try:
        yield model
    finally:
        model.to(memory_format=torch.contiguous_format)


def check_perturbation(x_adv: torch.Tensor, x: torch.Tensor, eps: float, attack: str) -> float:
    linf = float((x_adv - x).abs().max()) if x.numel() else 0.0
    if linf > eps + PROJECTION_TOLERANCE or float(x_adv.min()) < -PROJECTION_TOLERANCE or float(x_adv.max()) > 1 + PROJECTION_TOLERANCE:
        raise EvaluationError(f"{attack} left the eps ball or [0,1] (linf {linf:.6f} > eps {eps:.6f}): this is a bug")
    return linf


def _attack_seed(seed: int, name: str) -> int:
    return (int(seed) * 1_000_003 + zlib.crc32(name.encode())) % (2**31)


def non_finite_parameters(model: torch.nn.Module) -> Tuple[int, int]:
    """(non-finite entries, all entries) over a model's parameters and floating-point buffers."""
    bad = total = 0
    for t in list(model.parameters()) + [b for b in model.buffers() if b.is_floating_point()]:
        bad += int((~torch.isfinite(t.detach())).sum())
        total += t.numel()
    return bad, total


def check_finite_model(model: torch.nn.Module, what: str = "the model") -> None:
    """Refuse a model with NaN or infinite weights: it would 'evaluate' to chance-level numbers."""
    bad, total = non_finite_parameters(model)
    if bad:
        from .errors import DivergenceError

        raise DivergenceError(f"{what} has {bad:,} non-finite weights of {total:,}: it diverged or the checkpoint is "
                              "corrupt, so no result is written (retrain with a lower learning rate)")


PROBE_IMAGES = 8  # images of the evaluation data that check_finite_outputs feeds the model


def probe_images(data: ImageSet, n: int = PROBE_IMAGES) -> torch.Tensor:
    """The first `n` images of `data` as float32 [0,1] NCHW: the probe batch of check_finite_outputs."""
    return torch.from_numpy(data.x[:n].copy()).permute(0, 3, 1, 2).float().div_(255.0).contiguous()


def non_finite_outputs(model: torch.nn.Module, x_probe: torch.Tensor) -> Tuple[int, int]:
    """(non-finite entries, all entries) of the model's outputs, in eval mode, on a probe batch."""
    if not len(x_probe):
        return 0, 0
    dev = next((t.device for t in list(model.parameters()) + list(model.buffers())), x_probe.device)
    with frozen(model), torch.no_grad():
        out = model(x_probe.to(dev))
    return int((~torch.isfinite(out.detach().float())).sum()), out.numel()


def check_finite_outputs(model: torch.nn.Module, x_probe: torch.Tensor, what: str = "the model") -> None:
    """Refuse a model whose outputs (in eval mode) on a probe batch are NaN or infinite: finite but
    huge weights can overflow every logit, and argmax of NaN is class 0 (a chance-level 'result')."""
    bad, total = non_finite_outputs(model, x_probe)
    if bad:
        from .errors import DivergenceError

        raise DivergenceError(f"{what} gives {bad:,} non-finite outputs of {total:,} on {len(x_probe)} probe "
                              "images: it diverged (its weights overflow), so no result is written (retrain with a "
                              "lower learning rate)")


def evaluate(
    model: torch.nn.Module,
    data: ImageSet,
    attacks: Sequence[str] = ("clean", "pgd20"),
    settings: Optional[AttackSettings] = None,
    device: Optional[str] = None,
    batch_size: int = 256,
    attack_limits: Optional[Dict[str, int]] = None,
    log: Optional[Callable[[str], None]] = None,
    progress_path: Optional[Union[str, Path]] = None,
    shard: Optional["EvalShard"] = None,
) -> Dict[str, Any]:
    """Evaluate `model` on `data` under each attack; returns {'attacks': {name: metrics}, 'settings': ...}.

    attack_limits maps an attack name to a stratified subset size (e.g. {'aa': 2000}) for attacks
    too slow for the whole split; the subset is drawn with the evaluation seed and recorded.
    `log`, when given, gets one line per finished attack (long evaluations in background logs).
    `progress_path`, when given, makes the evaluation resumable (dfrd_bench/eval_progress.py): the
    progress is saved there after every batch and a rerun continues at the first unfinished batch
    with the same numbers; a file of another evaluation is refused. The file is left in place when
    the evaluation ends (a rerun then returns at once): the caller removes it once the result is saved.
    `shard` (a data-parallel run, every rank calling this) deals the batches to the ranks; the numbers
    and the progress file are the single process's.
    """
    settings = settings or AttackSettings()
    dev = pick_device(device)
    # IEEE fp32 and eager whatever the training used (precision rule 4, dfrd_bench/acceleration.py): no
    # autocast, and no TF32 in cuDNN convolutions or cuBLAS matmuls (torch's default runs a GPU's fp32
    # convolutions in TF32); the switches are restored afterwards
    with ieee_fp32(), fp32_region(dev):
        return _evaluate(model, data, attacks, settings, dev, batch_size, attack_limits, log, progress_path, shard)


def _evaluate(model: torch.nn.Module, data: ImageSet, attacks: Sequence[str], settings: AttackSettings,
              dev: torch.device, batch_size: int, attack_limits: Optional[Dict[str, int]],
              log: Optional[Callable[[str], None]], progress_path: Optional[Union[str, Path]],
              shard: Optional["EvalShard"]) -> Dict[str, Any]:
    model = model.to(dev)
    num_classes = data.num_classes
    if getattr(model, "num_classes", num_classes) != num_classes:
        raise EvaluationError(f"the model has {model.num_classes} classes but the data has {num_classes}")
    check_finite_model(model)
    if len(data) == 0:
        raise EvaluationError("the evaluation data holds no image: check --source / --limit")
    check_finite_outputs(model, probe_images(data))
    for name, n in (attack_limits or {}).items():
        if n is not None and n < 1:
            raise EvaluationError(f"the {name} subset must hold at least 1 image, got {n}")
    attack_limits = attack_limits or {}
    names = parse_attacks(list(attacks))
    identity = {} if progress_path is None else evaluation_identity(model, data, names, settings, batch_size,
                                                                      attack_limits, dev)
    tracker = EvalProgress.open(progress_path, identity)
    if shard is not None and not shard.world.is_main:
        tracker.path = None  # every rank reads the progress; rank 0 alone writes it
    if tracker.resumed and log is not None:
        log(f"resuming evaluation: {tracker.describe()}")
    results: Dict[str, Any] = {}
    images_sha: Dict[str, str] = {}
    x_all, y_all = data.tensors()
    with frozen(model), channels_last(model, enabled=settings.channels_last):
        for name in names:
            entry = tracker.finished(name)
            if entry is None:
                subset = data.subset(attack_limits[name], seed=settings.seed) if name in attack_limits else None
                x, y = subset.tensors() if subset is not None else (x_all, y_all)
                spec = attack_spec(name)  # AutoAttack's batches are AttackSettings.batch_size (AttackSpec.own_batch_size)
                bs = settings.batch_size if spec is not None and spec.own_batch_size else batch_size
                cursor = tracker.cursor(name) or _start_attack(name, model, x, y, subset is None, settings, dev,
                                                              batch_size, bs, tracker, shard)
                # an attack whose draws are unknown (BATCH_DRAWS) runs whole on every rank
                _run_batches(name, model, x, y, cursor, settings, dev, bs, tracker,
                             shard if name in BATCH_DRAWS else None)
                if name == "clean" and subset is None:
                    tracker.clean_pred = cursor.pred.clone()  # reused by the attacks that follow
                entry = _entry(y, cursor, num_classes, subset, _images_sha256(subset, data, images_sha))
                tracker.attack_done(name, entry)
                if log is not None:
                    attacked = "" if name == "clean" else f"{entry['attacked']} attacked, "
                    log(f"eval {name}: avg {entry['avg']:.2f} %, worst {entry['worst']:.2f} % on {entry['n']} images "
                        f"({attacked}{entry['seconds']:.0f} s)")
            results[name] = entry
    return {"attacks": results, "settings": settings.resolved()}


def _start_attack(name: str, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, full_split: bool,
                  settings: AttackSettings, dev: torch.device, batch_size: int, bs: int,
                  tracker: EvalProgress, shard: Optional["EvalShard"] = None) -> AttackCursor:
    """A fresh cursor: points wrong on clean inputs are filled in as errors and not attacked (the clean
    pass counts in the attack's seconds)."""
    t0 = time.time()
    pred = torch.full((len(y),), -1, dtype=torch.long)
    attacked = torch.ones(len(y), dtype=torch.bool)
    if _perturbs(name) and not settings.attack_misclassified:
        if full_split and tracker.clean_pred is None:
            # once per split, whichever attack comes first
            tracker.clean_pred = _predict(model, x, dev, batch_size, shard)
        clean_pred = tracker.clean_pred if full_split else _predict(model, x, dev, batch_size, shard)
        attacked = clean_pred == y
        pred[~attacked] = clean_pred[~attacked]  # already wrong: an error under every attack
    n_attacked = int(attacked.sum())
    return AttackCursor(pred, attacked, next_batch=0, n_batches=(n_attacked + bs - 1) // bs, seconds=time.time() - t0)


def _run_batches(name: str, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, cursor: AttackCursor,
                 settings: AttackSettings, dev: torch.device, bs: int, tracker: EvalProgress,
                 shard: Optional["EvalShard"] = None) -> None:
    """Attack the batches from cursor.next_batch on; after each one the cursor, with the generator state
    the next batch starts from, goes to the tracker (so a resumed attack draws the same random starts).
    With `shard`, a rank attacks its own batches, draws past the others', and the predictions are
    merged after every round of one batch per rank (then the cursor goes to the tracker)."""
    fn = ATTACKS.get(name)
    gen = torch.Generator().manual_seed(_attack_seed(settings.seed, name))
    if cursor.gen_state is not None:
        gen.set_state(cursor.gen_state)
    idx = cursor.attacked.nonzero().flatten()
    t0 = time.time() - cursor.seconds
    for b in progress(range(cursor.next_batch, cursor.n_batches), desc=f"{name}", unit="batch"):
        rows = idx[b * bs:(b + 1) * bs]
        if shard is None or shard.owns(b):
            xb, yb = x[rows].to(dev), y[rows].to(dev)
            x_adv = fn(model, xb, yb, settings, gen)
            linf = check_perturbation(x_adv, xb, settings.eps if _perturbs(name) else 0.0, name)
            with torch.no_grad():
                cursor.pred[rows] = model(x_adv).argmax(1).cpu()
            cursor.max_linf = max(cursor.max_linf, linf)
        else:
            BATCH_DRAWS[name]((len(rows),) + tuple(x.shape[1:]), settings, gen)  # as the batch's rank draws
        cursor.next_batch, cursor.gen_state, cursor.seconds = b + 1, gen.get_state(), time.time() - t0
        if shard is not None and shard.round_done(b, cursor.n_batches):
            cursor.pred, cursor.max_linf = shard.merge(cursor.pred), shard.max(cursor.max_linf)
        if shard is None or shard.round_done(b, cursor.n_batches):
            tracker.batch_done(name, cursor)
    cursor.seconds = time.time() - t0


def _images_sha256(subset: Optional[ImageSet], data: ImageSet, cache: Dict[str, str]) -> str:
    """The identity of the images evaluated, in order (what makes two evaluations' outcomes pair);
    the whole split's is computed once per evaluation."""
    from .data.sources import content_sha256

    if subset is not None:
        return content_sha256(subset.x, subset.y)
    if "split" not in cache:
        cache["split"] = content_sha256(data.x, data.y)
    return cache["split"]


def _entry(y: torch.Tensor, cursor: AttackCursor, num_classes: int, subset: Optional[ImageSet],
           images_sha256: str) -> Dict[str, Any]:
    """One attack's metrics from a finished cursor, with its per-image outcomes (metrics.encode_outcomes)."""
    entry = summarize(y.numpy(), cursor.pred.numpy(), num_classes)
    entry["outcomes"] = encode_outcomes(y.numpy(), (cursor.pred == y).numpy(), num_classes, images_sha256)
    entry["seconds"] = round(cursor.seconds, 2)
    entry["max_linf"] = cursor.max_linf
    entry["attacked"] = int(cursor.attacked.sum())
    if subset is not None:
        entry["subset"] = subset.source.get("subset")
    return entry


def _predict(model: torch.nn.Module, x: torch.Tensor, dev: torch.device, batch_size: int,
             shard: Optional["EvalShard"] = None) -> torch.Tensor:
    """Clean top-1 predictions (on CPU) of `model` for `x` (batches dealt to the ranks with `shard`)."""
    out = []
    with torch.no_grad():
        for b, i in enumerate(range(0, len(x), batch_size)):
            if shard is not None and not shard.owns(b):
                out.append(torch.full((min(batch_size, len(x) - i),), -1, dtype=torch.long))
                continue
            out.append(model(x[i:i + batch_size].to(dev)).argmax(1).cpu())
    pred = torch.cat(out) if out else torch.zeros(0, dtype=torch.long)
    return shard.merge(pred) if shard is not None else pred


def evaluate_model(model: torch.nn.Module, model_block: Dict[str, Any], dataset: str, source: Optional[str],
                   data_root: Optional[str], limit: Optional[int], attacks: str, eps: float, seed: int,
                   device: Optional[str], batch_size: int, aa_limit: Optional[int], kind: str = "eval",
                   extra: Optional[Dict[str, Any]] = None, pgd_steps: int = 20, cw_steps: int = 30,
                   progress_path: Optional[str] = None, log: Optional[Callable[[str], None]] = None) -> Dict[str, Any]:
    """Load the test split, evaluate `model`, and assemble a result dict of kind `kind` (what `eval`,
    `teacher train` and the Python API write). progress_path makes the evaluation resumable (see
    `evaluate`); the caller removes it once the result is safe."""
    from .attacks import AttackSettings
    from .config import check_seed
    from .data import load_split
    from .provenance import provenance
    from .utils import pick_device

    seed = check_seed(seed, "--seed")
    data = load_split(dataset, "test", source, data_root).subset(limit, seed=seed)
    settings = AttackSettings(eps=eps, seed=seed, pgd_steps=pgd_steps, cw_steps=cw_steps)
    limits = {"aa": aa_limit} if aa_limit else {}
    dev = pick_device(device)
    t0 = time.time()
    out = evaluate(model, data, attacks=attacks.split(",") if attacks != "all" else "all", settings=settings,
                   device=str(dev), batch_size=batch_size, attack_limits=limits, progress_path=progress_path, log=log)
    result = {
        "kind": kind,
        "dataset": dataset,
        "data_source": data.source,
        "model": {**model_block, "arch": getattr(model, "arch", None), "num_classes": model.num_classes},
        "attacks": out["attacks"],
        "settings": {**out["settings"], "limit": limit, "aa_limit": aa_limit, "batch_size": batch_size},
        "seed": seed,
        "wall_seconds": round(time.time() - t0, 1),
        "provenance": provenance(dev),
    }
    if extra:
        result.update(extra)
    return result
