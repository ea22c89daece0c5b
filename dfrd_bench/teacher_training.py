"""Robust teacher training: PGD-AT (Madry et al.), TRADES (Zhang et al.), FGSM with random start
(Wong et al., "fast" single-step AT) and N-FGSM (de Jorge et al. 2022, single-step without
catastrophic overfitting: the CPU recipe). Resumable from `<out>/train_state.pt`.

A stratified part of the *train* split is held out as a validation monitor (clean and PGD-10
accuracy each epoch, to see catastrophic overfitting); the test split is never looked at during
training and the final epoch's weights are the teacher (no checkpoint selection).

On CUDA the training passes run in bf16 autocast with channels-last weights by default (`precision`
auto, `channels_last` None: the rules of dfrd_bench/acceleration.py; on a CPU nothing changes, so a
CPU teacher retrains to the same bits), and the loss is checked for NaN on the device, read back only
at checkpoints and epoch ends (a per-step check would stall the GPU every step).
"""
from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F

from .acceleration import autocast_dtype, enable_cudnn_autotune, precision_name
from .config import DEFAULT_EPS
from .errors import DivergenceError, InputError
from .attacks import ce_objective, kl_objective, random_start, sign_ascent
from .augment import random_crop_flip
from .checkpoints import save_model
from .data import get_dataset_spec, load_split, stratified_indices
from .models import Classifier, build_model
from .utils import atomic_torch_save, atomic_write_json, pick_device, progress, seed_everything

METHODS = ("pgd", "trades", "fgsm-rs", "n-fgsm")


@dataclass
class TeacherTrainConfig:
    arch: str = "resnet20"
    dataset: str = "cifar10"
    source: Optional[str] = None
    data_root: Optional[str] = None
    method: str = "n-fgsm"
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.2               # peak lr of the one-cycle schedule
    schedule: str = "onecycle"    # onecycle | cosine | piecewise (x0.1 at 50% and 75%)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    eps: float = DEFAULT_EPS
    step: Optional[float] = None  # default: 2/255 (pgd, trades), 1.25 eps (fgsm-rs), eps (n-fgsm)
    attack_steps: int = 10        # pgd / trades inner steps
    trades_beta: float = 6.0
    val_size: int = 1000          # held out from train (stratified), never trained on
    val_pgd_steps: int = 10
    limit_train: Optional[int] = None  # stratified subset of the train split (tests, smoke runs)
    max_steps: Optional[int] = None    # stop after this many optimiser steps in total (tests)
    checkpoint_every: int = 100
    precision: str = "auto"       # auto (bf16 autocast on CUDA, fp32 elsewhere), fp32 or bf16
    channels_last: Optional[bool] = None  # None: on CUDA only (a CPU teacher keeps its bits)
    seed: int = 0
    device: str = "auto"
    out: str = "runs/teacher"

    def step_size(self) -> float:
        if self.step is not None:
            return self.step
        if self.method == "fgsm-rs":
            return 1.25 * self.eps
        return self.eps if self.method == "n-fgsm" else 2 / 255


def _adversarial_loss(cfg: TeacherTrainConfig, model: Classifier, x: torch.Tensor, y: torch.Tensor,
                      gen: torch.Generator) -> torch.Tensor:
    step = cfg.step_size()
    if cfg.method == "trades":
        model.eval()  # TRADES crafts its examples with the model in eval mode, as the authors do
        with torch.no_grad():
            p_clean = F.softmax(model(x), 1)
        start = (x + 0.001 * torch.randn(x.shape, generator=gen).to(x.device)).clamp(0, 1)
        x_adv = sign_ascent(kl_objective(model, p_clean), x, cfg.eps, step, cfg.attack_steps, start=start)
        model.train()
        logits = model(x)
        robust = F.kl_div(F.log_softmax(model(x_adv), 1), F.softmax(logits, 1), reduction="batchmean")
        return F.cross_entropy(logits, y) + cfg.trades_beta * robust
    if cfg.method == "pgd":
        model.eval()
        x_adv = sign_ascent(ce_objective(model, y), x, cfg.eps, step, cfg.attack_steps, generator=gen)
        model.train()
    elif cfg.method == "fgsm-rs":
        # one step from a uniform random start, in train mode (Wong et al. 2020)
        x_adv = sign_ascent(ce_objective(model, y), x, cfg.eps, step, 1, start=random_start(x, cfg.eps, gen))
    elif cfg.method == "n-fgsm":
        # N-FGSM (de Jorge et al. 2022): noise U(-2 eps, 2 eps), one step of eps, no projection back
        # to the eps ball; as cheap as FGSM-RS but avoids its catastrophic overfitting
        x_adv = sign_ascent(ce_objective(model, y), x, cfg.eps, step, 1, start=random_start(x, 2 * cfg.eps, gen),
                            bounded=False)
    else:
        raise InputError(f"unknown teacher training method {cfg.method!r}; choose from {', '.join(METHODS)}")
    return F.cross_entropy(model(x_adv), y)


def _lr_at(cfg: TeacherTrainConfig, progress_frac: float) -> float:
    if cfg.schedule == "onecycle":  # linear up for 40%, linear down to 0 (the fast-AT schedule)
        return cfg.lr * (progress_frac / 0.4 if progress_frac < 0.4 else max(0.0, (1 - progress_frac) / 0.6))
    if cfg.schedule == "cosine":
        return 0.5 * cfg.lr * (1 + math.cos(math.pi * progress_frac))
    if cfg.schedule == "piecewise":
        return cfg.lr * (0.1 if progress_frac >= 0.5 else 1.0) * (0.1 if progress_frac >= 0.75 else 1.0)
    raise InputError(f"unknown schedule {cfg.schedule!r}; choose onecycle, cosine or piecewise")


@torch.no_grad()
def _accuracy(model: Classifier, x: torch.Tensor, y: torch.Tensor, bs: int = 500) -> float:
    correct = sum(int((model(x[i:i + bs]).argmax(1) == y[i:i + bs]).sum()) for i in range(0, len(y), bs))
    return 100.0 * correct / max(1, len(y))


def _validate(cfg: TeacherTrainConfig, model: Classifier, xv: torch.Tensor, yv: torch.Tensor) -> Dict[str, float]:
    model.eval()
    gen = torch.Generator().manual_seed(cfg.seed + 17)
    adv = []
    for i in range(0, len(yv), 500):
        xb, yb = xv[i:i + 500], yv[i:i + 500]
        adv.append(sign_ascent(ce_objective(model, yb), xb, cfg.eps, cfg.eps / 4, cfg.val_pgd_steps, generator=gen))
    return {"val_clean": _accuracy(model, xv, yv), f"val_pgd{cfg.val_pgd_steps}": _accuracy(model, torch.cat(adv), yv)}


def train_teacher(cfg: TeacherTrainConfig, resume: bool = True, log=print) -> Dict[str, Any]:
    """Train (or resume) a robust teacher; writes <out>/teacher.pt and <out>/history.json."""
    if cfg.method not in METHODS:
        raise InputError(f"unknown teacher training method {cfg.method!r}; choose from {', '.join(METHODS)}")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    device = pick_device(cfg.device)
    spec = get_dataset_spec(cfg.dataset)
    gen = seed_everything(cfg.seed)

    train = load_split(cfg.dataset, "train", cfg.source, cfg.data_root)
    if cfg.limit_train:
        train = train.subset(cfg.limit_train, seed=cfg.seed)
    val_idx = stratified_indices(train.y, cfg.val_size, cfg.seed + 1, spec.num_classes) if cfg.val_size else np.array([], int)
    keep = np.setdiff1d(np.arange(len(train)), val_idx)
    x_all, y_all = train.tensors()
    x_tr, y_tr = x_all[keep].to(device), y_all[keep].to(device)
    x_val, y_val = x_all[val_idx].to(device), y_all[val_idx].to(device)

    model = build_model(cfg.arch, spec.num_classes, spec.image_size, spec.mean, spec.std).to(device)
    if cfg.precision not in ("auto", "fp32", "bf16"):
        raise InputError(f"precision must be auto, fp32 or bf16, got {cfg.precision!r}")
    dtype = autocast_dtype({"precision": cfg.precision}, device)
    layout = cfg.channels_last if cfg.channels_last is not None else device.type == "cuda"
    if layout:
        model.to(memory_format=torch.channels_last)
    enable_cudnn_autotune(device)
    resolved = {"training_precision": precision_name(dtype), "channels_last": bool(layout)}
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                          nesterov=False)
    steps_per_epoch = len(y_tr) // cfg.batch_size
    total_steps = steps_per_epoch * cfg.epochs  # the schedule's length; max_steps only stops early
    stop_at = min(total_steps, cfg.max_steps) if cfg.max_steps else total_steps
    state_file = out / "train_state.pt"
    history: List[Dict[str, Any]] = []
    epoch, step_in_epoch, global_step = 0, 0, 0
    if resume and state_file.exists():
        st = torch.load(state_file, map_location="cpu", weights_only=True)
        if not _same_config(st["config"], _config_for_resume(cfg, resolved)):
            raise InputError(f"{state_file} was written with other settings; use a new --out or the same settings")
        model.net.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        gen.set_state(st["gen"])
        epoch, step_in_epoch, global_step = st["epoch"], st["step_in_epoch"], st["global_step"]
        history = json.loads(st["history"])
        log(f"resumed from {state_file}: epoch {epoch}, step {step_in_epoch}/{steps_per_epoch}")

    def save_state() -> None:
        check_finite()  # a diverged model is never saved
        atomic_torch_save({
            "config": _config_for_resume(cfg, resolved), "model": model.net.state_dict(), "opt": opt.state_dict(),
            "gen": gen.get_state(), "epoch": epoch, "step_in_epoch": step_in_epoch,
            "global_step": global_step, "history": json.dumps(history),
        }, state_file)

    # the first step whose loss was not finite (-1: none), kept on the device and read at checkpoints
    bad_step = torch.full((), -1, dtype=torch.long, device=device)

    def check_finite() -> None:
        first = int(bad_step)
        if first >= 0:
            raise DivergenceError(f"the loss became non-finite at step {first} (epoch {first // max(1, steps_per_epoch) + 1}); "
                                  f"the last checkpoint before it is kept: lower --lr and train again in a new --out")

    def autocast() -> contextlib.AbstractContextManager:
        return torch.autocast(device_type=device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()

    started = time.time()
    while epoch < cfg.epochs and global_step < stop_at:
        # the epoch's order depends only on (seed, epoch): a resumed epoch replays the same batches
        order = torch.randperm(len(y_tr), generator=torch.Generator().manual_seed(cfg.seed * 7919 + epoch)).to(device)
        model.train()
        bar = progress(range(step_in_epoch, steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch")
        t0, losses = time.time(), []
        for i in bar:
            if global_step >= stop_at:
                break
            idx = order[i * cfg.batch_size:(i + 1) * cfg.batch_size]
            x = random_crop_flip(x_tr[idx], generator=gen)
            lr = _lr_at(cfg, global_step / max(1, total_steps))
            for group in opt.param_groups:
                group["lr"] = lr
            with autocast():
                loss = _adversarial_loss(cfg, model, x, y_tr[idx], gen)
            bad_step = torch.where((bad_step < 0) & ~torch.isfinite(loss.detach()), global_step, bad_step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.detach())
            global_step += 1
            step_in_epoch = i + 1
            if cfg.checkpoint_every and step_in_epoch % cfg.checkpoint_every == 0:
                save_state()
        check_finite()
        record: Dict[str, Any] = {"epoch": epoch + 1, "complete": step_in_epoch >= steps_per_epoch, "steps": global_step, "lr": lr,
                                  "train_loss": float(torch.stack(losses).mean()) if losses else float("nan"),
                                  "seconds": round(time.time() - t0, 1)}
        if len(y_val):
            record.update(_validate(cfg, model, x_val, y_val))
        history.append(record)
        log(json.dumps(record))
        _warn_if_overfitting(history, cfg, log)
        if step_in_epoch >= steps_per_epoch:
            epoch, step_in_epoch = epoch + 1, 0
        save_state()

    model.eval()
    meta = {"recipe": asdict(cfg), "history": history, "train_source": train.source,
            "val_holdout": {"n": int(len(val_idx)), "rule": "stratified from the train split", "seed": cfg.seed + 1},
            "train_seconds_this_call": round(time.time() - started, 1)}
    save_model(model, out / "teacher.pt", cfg.dataset, spec.image_size, meta=meta)
    atomic_write_json(out / "history.json", meta)
    return {"model": model, "history": history, "checkpoint": str(out / "teacher.pt")}


def _config_for_resume(cfg: TeacherTrainConfig, resolved: Optional[Dict[str, Any]] = None) -> str:
    """The settings a resume must share, with `precision` and `channels_last` as they resolved on the
    device (a run started in fp32 on a CPU is not continued in bf16 on a GPU)."""
    d = asdict(cfg)
    for k in ("device", "out", "checkpoint_every", "data_root", "max_steps", "precision", "channels_last"):
        d.pop(k, None)
    d.update(resolved or {})
    return json.dumps(d, sort_keys=True)


# what a resume state written before these settings existed trained with
_LEGACY_RESOLVED = {"training_precision": "fp32", "channels_last": False}


def _same_config(saved: str, current: str) -> bool:
    """Compare two resume configs, ignoring keys that do not change the training trajectory."""
    ignored = ("device", "out", "checkpoint_every", "data_root", "max_steps", "precision")
    a, b = {**_LEGACY_RESOLVED, **json.loads(saved)}, json.loads(current)
    return {k: v for k, v in a.items() if k not in ignored} == {k: v for k, v in b.items() if k not in ignored}


def _warn_if_overfitting(history: List[Dict[str, Any]], cfg: TeacherTrainConfig, log) -> None:
    key = f"val_pgd{cfg.val_pgd_steps}"
    vals = [h[key] for h in history if key in h]
    if len(vals) >= 2 and max(vals) - vals[-1] > 15:
        log(f"WARNING: validation PGD accuracy fell from {max(vals):.1f} to {vals[-1]:.1f}: "
            "catastrophic overfitting? use --method pgd or a smaller --step")
