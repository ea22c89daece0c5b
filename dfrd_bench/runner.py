"""The distillation runner: the loop every data-free robustness distillation method shares.

    for epoch: generation stage (method.generate -> pool) ; distillation stage (student_iters x
    method.student_loss on pool batches) ; method.end_epoch ; checkpoint
    then: final student -> shared evaluator -> one result JSON (+ student.pt, samples.png)

Checkpoints are written atomically at every epoch end and hold everything (student, optimiser,
method state, pool, every RNG state, history), so a run killed anywhere resumes with `--resume`
from the last finished epoch and, on a CPU with the same seed, ends with the same student as an
uninterrupted run. The final evaluation saves its progress after every batch (eval_progress.pt), so
a run killed while evaluating resumes at its first unfinished batch with the same numbers. The
result is always the final student: no checkpoint is chosen on test data.

Under `torchrun --nproc_per_node=N` one run is data-parallel over N processes (dfrd_bench.distributed):
each synthesises its share of the batch, trains the student on its slice of the global batch with
averaged gradients, and rank 0 alone writes files; with one process nothing changes.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch

from .acceleration import Accelerator, enable_cudnn_autotune
from .attacks import AttackSettings
from .checkpoints import save_model, sha256_file, weights_sha256
from .augment import random_crop_flip
from .config import (DEFAULTS_VERSION, PRESET_CPU_MINUTES, Config, check_seed, preset_defaults_version, resolve_config,
                     run_defaults_version, student_steps, with_added_settings)
from .data import get_dataset_spec, load_split
from .distributed import EvalShard, World, session
from .epoch_log import epoch_line, open_tensorboard, require_tensorboard
from .errors import DfrdError, DivergenceError, first_line
from .evaluator import evaluate, non_finite_outputs, non_finite_parameters, parse_attacks, probe_images
from .method import Batch, Method, MethodContext, Samples, check_teacher, get_method
from .method_info import info_as_dict
from .models import build_model, count_parameters
from .optim import cosine_lr, create_optimizer, scheduled_lr  # noqa: F401 (cosine_lr: ZSKT imports it from here)
from .pool import SamplePool
from .provenance import provenance, session_record
from .store import read_result, write_result
from .teachers import describe_spec, load_teacher
from .utils import atomic_torch_save, progress, seed_everything

STATE_FILE = "state.pt"
EVAL_PROGRESS_FILE = "eval_progress.pt"  # the final evaluation's progress, removed once result.json is written
RESULT_FILE = "result.json"
LOCK_FILE = ".lock"


class RunError(DfrdError, RuntimeError):
    pass


class RunFolderBusy(RunError):
    """Another process holds the run folder's lock (a sweep worker beside this one takes that point)."""


@dataclass
class RunRequest:
    method: str
    dataset: str
    preset: str = "quick"
    seed: int = 0
    overrides: Dict[str, Any] = field(default_factory=dict)
    source: Optional[str] = None       # test data for the final evaluation (training is data-free)
    data_root: Optional[str] = None
    out: str = "runs"
    run_name: Optional[str] = None
    resume: bool = False
    device: str = "auto"
    model_dir: Optional[str] = None
    tensorboard: Optional[str] = None  # a folder: TensorBoard logs under <folder>/<run name> (dfrd_bench.epoch_log)


def run_name_for(req: RunRequest, cfg: Config) -> str:
    name = f"{req.dataset}-{req.method}-{cfg.student}-{req.preset}-s{req.seed}"
    shown = {k: v for k, v in sorted(req.overrides.items())}
    if shown:
        name += "-" + hashlib.sha1(json.dumps(shown, sort_keys=True, default=str).encode()).hexdigest()[:8]
    # a method or a preset whose defaults moved past the core's gets a new folder, so that a sweep
    # neither skips the new reading as "finished" nor resumes an old run under it
    # (Method.defaults_version, register_preset's version)
    version = max(run_defaults_version(get_method(req.method)), preset_defaults_version(req.preset))
    if version > DEFAULTS_VERSION:
        name += f"-v{version}"
    return name


MAX_NAME = 200  # characters of a --name (file systems allow 255 bytes per name; temporaries add a few)


def check_run_name(name: str) -> None:
    """--name is one folder name under --out: no separator, not '.' or '..', not absolute, not too long."""
    import os

    if not name or name in (".", "..") or "\0" in name or any(sep and sep in name for sep in (os.sep, os.altsep, "/")):
        raise RunError(f"--name {name!r} must be one folder name (no '/', not '.' or '..'): the run folder is "
                       "made under --out; pass the place with --out")
    if len(name) > MAX_NAME or len(name.encode()) > MAX_NAME:
        raise RunError(f"--name is {len(name)} characters long: pass one of at most {MAX_NAME} characters")


def student_lr_at(cfg: Config, epoch: int) -> float:
    """The student's learning rate in (0-based) `epoch` under cfg.student_schedule (a registered
    schedule: dfrd_bench/optim.py; cosine restarts after the warm-up, cosine-through-warmup also
    steps in the warm-up epochs, constant)."""
    return scheduled_lr(cfg, epoch)


def student_batch(pool: SamplePool, cfg: Config, rng: torch.Generator, world: Optional[World] = None) -> Batch:
    """One student-stage batch from the pool, crop+flip augmented when cfg.student_augment, with
    every random draw from the run's generator (so a resumed run draws the same batches). In a
    data-parallel run every rank draws the same global batch (same pool, same shared generator) and
    keeps its slice: the slices together are the single-process batch."""
    x, y = pool.latest(cfg.batch_size) if cfg.pool_sampling == "latest" else pool.sample(cfg.batch_size, rng)
    if cfg.student_augment:
        x = random_crop_flip(x, padding=4, generator=rng)
    if world is not None and world.parallel:
        share = cfg.batch_size // world.size
        x, y = x[world.rank * share:(world.rank + 1) * share], y[world.rank * share:(world.rank + 1) * share]
    return Batch(x, y)


def make_context(cfg: Config, dataset: str, device: torch.device, rng: torch.Generator,
                 model_dir: Optional[str] = None, world: Optional[World] = None) -> MethodContext:
    """Teacher (frozen, eval), fresh student, empty pool and speed settings: what a method sees.
    Shared by `run` and `dfrd-bench bench`, so the benchmark times the models a run trains. In a
    data-parallel run (`world`) rank 0 loads the teacher first (a download happens once) and the
    method sees its rank's share of the batch sizes."""
    world = world or World()
    spec = get_dataset_spec(dataset)
    teacher = world.main_first(lambda: load_teacher(cfg.teacher, dataset, arch=cfg.teacher_arch, model_dir=model_dir,
                                                    layout=cfg.teacher_layout, normalize=cfg.teacher_normalize,
                                                    flags="teacher-")).to(device)
    teacher.eval().requires_grad_(False)
    student = build_model(cfg.student, spec.num_classes, spec.image_size, spec.mean, spec.std).to(device)
    if cfg.channels_last:  # channels-last conv weights: 1.4-1.8x faster on CPU (docs/running.md)
        teacher.to(memory_format=torch.channels_last)
        student.to(memory_format=torch.channels_last)
    enable_cudnn_autotune(device)
    return MethodContext(teacher=teacher, student=student, cfg=rank_config(cfg, world), device=device, rng=rng,
                         pool=SamplePool(cfg.pool_max, device), num_classes=spec.num_classes,
                         image_size=spec.image_size, rank=world.rank,
                         accel=Accelerator.from_config(cfg, device), world=world)


def student_step(method: Method, ctx: MethodContext, opt: torch.optim.Optimizer,
                 batch: Batch) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """One student iteration: the method's loss (under the run's autocast), backward, SGD step. In a
    data-parallel run the gradients are averaged over the ranks between backward and step (the
    gradient of the global batch's mean loss: what DistributedDataParallel computes; its wrapper is
    not used because methods call the student several times per step, in eval mode for input-gradient
    attacks), and so are the BatchNorm running statistics after the step."""
    with ctx.accel.autocast():
        loss, logs = method.student_loss(ctx, batch)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    ctx.world.average_gradients(ctx.student.parameters())
    opt.step()
    ctx.world.average_buffers(ctx.student)
    return loss, logs


def rank_config(cfg: Config, world: World) -> Config:
    """The settings a method sees on this rank: its share of synthesis_batch_size and batch_size."""
    if not world.parallel:
        return cfg
    return cfg.replace(synthesis_batch_size=cfg.synthesis_batch_size // world.size,
                       batch_size=cfg.batch_size // world.size)


def check_data_parallel(method_cls: type, cfg: Config, world: World) -> None:
    """Refuse, with one line, what a data-parallel run cannot do as one process would."""
    if not world.parallel:
        return
    if not getattr(method_cls, "data_parallel", False):
        raise RunError(f"method {method_cls.name} does not declare data-parallel support (Method.data_parallel): "
                       "run it as one process, or see docs/adding-a-method.md, 'Data-parallel runs'")
    for key in ("synthesis_batch_size", "batch_size"):
        if cfg[key] % world.size:
            raise RunError(f"{key} {cfg[key]} does not split evenly over {world.size} processes: "
                           f"start a number of processes that divides it, or --set {key}=...")


def shared_seed(seed: int) -> int:
    """The seed of the stream every rank shares (student batches): apart from every rank's own."""
    return (int(seed) * 1_000_003 + 0x5EED) % (2**63)


def training_eta(records: List[Dict[str, Any]], epochs_left: int) -> float:
    """Seconds to finish training: the median seconds of the given recent epochs x epochs left.
    Warm-up epochs (no student stage) are cheaper, so only epochs of the same kind as the last count."""
    same_kind = [r["seconds"] for r in records if ("lr" in r) == ("lr" in records[-1])]
    return float(np.median(same_kind)) * max(0, epochs_left) if same_kind else 0.0


def _gather_samples(samples: Samples, world: World) -> Samples:
    """Every rank's samples in rank order, so every rank adds the same global batch to its pool
    (the logs stay this rank's)."""
    if not world.parallel:
        return samples
    y = world.gather(samples.y) if samples.y is not None else None
    return Samples(world.gather(samples.x), y, samples.logs)


def _mean_over_ranks(world: World, last_loss: torch.Tensor, sums: Dict[str, torch.Tensor]):
    """The epoch's loss sums and last loss averaged over the ranks: the global batch's, and the same
    on every rank, so every rank takes the same divergence decision."""
    if not world.parallel:
        return last_loss, sums
    keys = list(sums)
    stacked = torch.stack([last_loss.detach().float().reshape(())] + [torch.as_tensor(sums[k]).float().reshape(())
                                                                       .to(last_loss.device) for k in keys])
    world.average_([stacked])
    return stacked[0], dict(zip(keys, stacked[1:]))


def _rng_states(ctx: MethodContext, batch_rng: Optional[torch.Generator] = None) -> Dict[str, Any]:
    states = {"ctx": ctx.rng.get_state(), "torch": torch.get_rng_state(),
              "numpy": json.dumps(_np_state()), "python": json.dumps(_py_state())}
    if ctx.device.type == "cuda":  # the run's own GPU only: the one its draws on the device come from
        states["cuda_device"] = torch.cuda.get_rng_state(ctx.device)
    if batch_rng is not None:  # data-parallel runs: the stream every rank shares
        states["batch"] = batch_rng.get_state()
    return states


def _np_state():
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)]


def _py_state():
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _restore_rng(ctx: MethodContext, states: Dict[str, Any], batch_rng: Optional[torch.Generator] = None) -> None:
    ctx.rng.set_state(states["ctx"])
    if batch_rng is not None:
        batch_rng.set_state(states["batch"])
    torch.set_rng_state(states["torch"])
    kind, keys, pos, has_gauss, cached = json.loads(states["numpy"])
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = json.loads(states["python"])
    random.setstate((version, tuple(internal), gauss))
    _restore_cuda_rng(ctx.device, states)


def _restore_cuda_rng(device: torch.device, states: Dict[str, Any]) -> None:
    """The CUDA generator state of the run's GPU, restored on the GPU the run continues on. A CPU run
    has none. A state written before issue 28 holds one state per GPU that was visible then (however
    many the run used): only the run's GPU's entry is restored, so a run saved with 4 GPUs visible
    resumes with 1 (`set_rng_state_all` raised IndexError there)."""
    if device.type != "cuda":
        return
    if "cuda_device" in states:
        torch.cuda.set_rng_state(states["cuda_device"], device)
    elif "cuda" in states:
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index < len(states["cuda"]):
            torch.cuda.set_rng_state(states["cuda"][index], device)


def _save_grid(x: torch.Tensor, y: Optional[torch.Tensor], path: Path, per_row: int = 10) -> None:
    from torchvision.utils import save_image

    if y is not None and (y >= 0).all():
        order = torch.argsort(y.cpu(), stable=True)
        x = x[order.to(x.device)]
    save_image(x[:100].detach().float().cpu(), str(path), nrow=per_row)


def _to_float(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return v.detach().float().mean().item() if v.numel() > 1 else v.detach().float().item()
    return v


@contextlib.contextmanager
def run_folder_lock(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on the run folder for the life of the run (filelock), so that a second
    run on the same folder fails at once instead of overwriting the first one's files. Temporaries
    left by a killed run are removed once the lock is held. A folder this call created and that holds
    nothing but the lock when the run fails is removed again."""
    from filelock import FileLock, Timeout

    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(run_dir / LOCK_FILE))
        lock.acquire(timeout=0)
    except Timeout:
        raise RunFolderBusy(f"another dfrd-bench run is using {run_dir} (it holds {run_dir / LOCK_FILE}): wait for it "
                       "to finish, or pass another --name / --out") from None
    except OSError as exc:
        raise RunError(f"cannot write to {run_dir} ({exc.strerror or exc}): pass an --out you can write to") from None
    try:
        for stale in run_dir.glob(".*.tmp"):  # a write cut short by kill -9 (atomic writes use .<name>.*.tmp)
            stale.unlink(missing_ok=True)
        yield
    finally:
        lock.release()
        if created and all(p.name == LOCK_FILE for p in run_dir.iterdir()):
            shutil.rmtree(run_dir, ignore_errors=True)


def _load_state(state_path: Path) -> Dict[str, Any]:
    try:
        return torch.load(state_path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, empty or foreign files raise zip / pickle / runtime errors
        raise RunError(f"{state_path} cannot be read ({first_line(exc, 120)}): it was cut short or is not a "
                       "dfrd-bench state; delete it to start the run over") from None


def _check_same_run(state: Dict[str, Any], state_path: Path, cfg: Config, identity: Dict[str, Any],
                    log: Callable[[str], None], method: Optional[Method] = None) -> None:
    """Resume only the run that wrote the state: same settings, seed, teacher weights and test data."""
    # a state older than a setting ran at the value that setting's introduction names (not its default)
    stored = with_added_settings(json.loads(state["config"]), type(method) if method is not None else None)
    current = json.loads(json.dumps(cfg.to_dict(), default=str))
    changed = sorted(k for k in set(stored) | set(current) if stored.get(k) != current.get(k))
    if changed:
        shown = ", ".join(f"{k}: {stored.get(k)!r} -> {current.get(k)!r}" for k in changed[:4])
        raise RunError(f"{state_path} was written with other settings ({shown}); resume with the same command")
    if "identity" not in state:
        log(f"warning: {state_path} predates identity checks; seed, teacher and data are not verified")
        return
    old = state["identity"]
    # a key the state lacks was not recorded when it was written (training_precision: before issue 28)
    changed_keys = [k for k in identity if k in old and old[k] != identity[k]]
    if "training_precision" in changed_keys:
        raise RunError(f"{state_path} was trained in {old['training_precision']} and this process would continue it "
                       f"in {identity['training_precision']} (precision={cfg.precision} on a {identity['device_type']} "
                       f"device): resume it on the kind of device it started on (--device "
                       f"{'cpu' if old['training_precision'] == 'fp32' else 'cuda'}), or start a new run")
    differs = [f"{k}: {old.get(k)!r} in the state, {identity[k]!r} now" for k in changed_keys if k != "device_type"]
    if differs:
        raise RunError(f"{state_path} belongs to another run ({'; '.join(differs)}): resume with the same seed, "
                       "teacher file and test data, or pass another --name / --out")


def _check_student(student: torch.nn.Module, last_loss: torch.Tensor, means: Dict[str, float], method: str,
                   epoch: int) -> None:
    """After every epoch: a non-finite weight, last-step loss or epoch mean ends the run before any
    checkpoint or evaluation can keep a diverged student (a finite mean can hide NaN weights)."""
    bad, total = non_finite_parameters(student)
    finite_loss = bool(torch.isfinite(last_loss)) and all(math.isfinite(v) for v in means.values())
    if bad or not finite_loss:
        what = f"{bad:,} of {total:,} weights are non-finite" if bad else f"the loss is non-finite ({float(last_loss):.3g})"
        raise DivergenceError(f"{method}: the student diverged in epoch {epoch} ({what}); {DIVERGED_ADVICE}")


# what every divergence error of a run says to do: the checkpoint before the diverged epoch is kept,
# but a --resume with the same settings repeats the same epoch (same seed) and diverges again
DIVERGED_ADVICE = ("nothing was saved from this epoch, and a --resume with these settings diverges again: rerun "
                   "without --resume with a lower student_lr (--set student_lr=...; a new run folder), or check the teacher")


def _non_finite_logs(record: Dict[str, Any]) -> List[str]:
    """The generator and student losses (gen/*, student/*) of an epoch record that are NaN or infinite
    (a list value, e.g. FERD's class weights p, counts when any of its numbers is)."""
    def finite(v: Any) -> bool:
        if isinstance(v, (list, tuple)):
            return all(finite(x) for x in v)
        return isinstance(v, bool) or not isinstance(v, (int, float)) or math.isfinite(v)

    return [k for k, v in record.items() if k.startswith(("gen/", "student/")) and not finite(v)]


def _check_epoch(ctx: MethodContext, record: Dict[str, Any], probe: torch.Tensor, method: str, epoch: int) -> None:
    """After every epoch, before its checkpoint: every logged loss (generator and student) finite and
    the student's outputs on a few test images finite (finite but huge weights overflow every logit,
    and argmax of NaN is class 0); its weights were checked at the end of its stage (_check_student).
    In a data-parallel run the generator logs are each rank's own, so the ranks agree on the decision first."""
    bad_logs = _non_finite_logs(record)
    if ctx.world.max(1.0 if bad_logs else 0.0) > 0:
        shown = ", ".join(f"{k} = {record[k]}" for k in bad_logs[:3]) or "on another rank"
        raise DivergenceError(f"{method}: the run diverged in epoch {epoch} (a loss is non-finite: {shown}); "
                              f"{DIVERGED_ADVICE}")
    bad, total = non_finite_outputs(ctx.student, probe)
    if bad:
        raise DivergenceError(f"{method}: the student diverged in epoch {epoch} ({bad:,} of {total:,} outputs on "
                              f"{len(probe)} probe images are non-finite); {DIVERGED_ADVICE}")


def _silent(message: str) -> None:
    pass


def run(req: RunRequest, log: Callable[[str], None] = print,
        after_epoch: Optional[Callable[[int], None]] = None) -> Dict[str, Any]:
    """Run one method end to end and return its result (also written to <out>/<run>/result.json).

    Under torchrun with several processes every process calls this: rank 0 holds the run-folder
    lock, logs and writes every file, and every process returns the same result."""
    method_cls = get_method(req.method)
    req.seed = check_seed(req.seed, "--seed")
    if req.run_name is not None:
        check_run_name(req.run_name)
    cfg = resolve_config(method_cls, req.dataset, req.preset, req.overrides)
    if not cfg.teacher:
        raise RunError(f"preset {req.preset} has no teacher for {req.dataset}: pass --teacher SPEC")
    attacks = ",".join(parse_attacks(cfg.attacks))  # a bad attack list fails now, not after training
    if req.tensorboard:
        require_tensorboard()
    with session(req.device) as (world, device):
        check_data_parallel(method_cls, cfg, world)
        log = log if world.is_main else _silent
        run_dir = Path(req.out) / (req.run_name or run_name_for(req, cfg))
        result_path = run_dir / RESULT_FILE
        if result_path.exists() and req.resume:
            log(f"{run_dir} is already finished")
            return read_result(result_path)
        with contextlib.ExitStack() as held:
            # one lock per run folder, held by rank 0; if rank 0 cannot take it, every rank stops
            world.on_main(lambda: held.enter_context(run_folder_lock(run_dir)))
            return _run_locked(req, cfg, method_cls, run_dir, device, attacks, log, after_epoch, world)


def _rank_streams(ctx: MethodContext, seed: int) -> torch.Generator:
    """From here on each rank draws from its own stream (rank 0 keeps the one it built with) and
    returns the stream of the student batches: the run's own stream in one process (as always),
    a separate one that every rank shares in a data-parallel run."""
    world = ctx.world
    if not world.parallel:
        return ctx.rng
    if world.rank > 0:
        ctx.rng = seed_everything(seed, world.rank)
    return torch.Generator().manual_seed(shared_seed(seed))


def _check_world(state: Dict[str, Any], state_path: Path, world: World) -> None:
    saved = int(state.get("world_size", 1))
    if saved != world.size:
        raise RunError(f"{state_path} was written by a run on {saved} process(es), this one has {world.size}: "
                       f"resume it on {saved} (torchrun --nproc_per_node={saved}; 1: plain dfrd-bench run)")


def _resume(state_path: Path, cfg: Config, identity: Dict[str, Any], ctx: MethodContext, opt: torch.optim.Optimizer,
            method: Method, batch_rng: torch.Generator,
            log: Callable[[str], None]
            ) -> Tuple[List[Dict[str, Any]], int, float, Optional[float], List[Dict[str, Any]]]:
    """Load the state every rank continues from (each its own RNG streams); (history, epoch, wall
    seconds, CPU seconds: None in a checkpoint written before CPU time was kept, the sessions so far:
    [] in a checkpoint written before they were kept)."""
    st = _load_state(state_path)
    _check_same_run(st, state_path, cfg, identity, log, method)
    world = ctx.world
    _check_world(st, state_path, world)
    ctx.student.net.load_state_dict(st["student"])
    opt.load_state_dict(st["opt"])
    method.load_state_dict(st["method"])
    ctx.pool.load_state_dict(st["pool"])
    if world.parallel:
        _restore_rng(ctx, st["rng_ranks"][world.rank], batch_rng)
    else:
        _restore_rng(ctx, st["rng"])
    return (json.loads(st["history"]), st["epoch"], st["train_seconds"], st.get("train_cpu_seconds"),
            json.loads(st.get("sessions", "[]")))


def _student_stage(method: Method, ctx: MethodContext, opt: torch.optim.Optimizer, cfg: Config,
                   batch_rng: torch.Generator, name: str) -> Dict[str, Any]:
    """One epoch's distillation stage; returns its history entries (lr and mean losses)."""
    lr = student_lr_at(cfg, ctx.epoch)
    for group in opt.param_groups:
        group["lr"] = lr
    ctx.student.train()
    sums: Dict[str, torch.Tensor] = {}
    for _ in progress(range(cfg.student_iters), desc=f"epoch {ctx.epoch + 1}/{cfg.epochs} distill", unit="it"):
        loss, logs = student_step(method, ctx, opt, student_batch(ctx.pool, cfg, batch_rng, ctx.world))
        for k, v in {"loss": loss, **logs}.items():
            sums[k] = sums.get(k, 0) + v.detach().float()
    loss, sums = _mean_over_ranks(ctx.world, loss, sums)
    means = {k: float(v) / max(1, cfg.student_iters) for k, v in sums.items()}
    _check_student(ctx.student, loss.detach(), means, name, ctx.epoch + 1)
    return {"lr": lr, **{f"student/{k}": v for k, v in means.items()}}


def _checkpoint(state_path: Path, ctx: MethodContext, opt: torch.optim.Optimizer, method: Method,
                batch_rng: torch.Generator, cfg: Config, history: List[Dict[str, Any]], epoch: int,
                identity: Dict[str, Any], train_seconds: float, train_cpu: Optional[float],
                sessions: Optional[List[Dict[str, Any]]] = None) -> None:
    """Write the resume state (rank 0, with every rank's RNG states), after checking that every rank
    holds the same student, optimiser, method state and pool: the file then describes them all."""
    world, pool = ctx.world, ctx.pool
    method_state = method.state_dict()
    world.check_same(f"the run state after epoch {epoch}", {
        "student": ctx.student.net.state_dict(), "opt": opt.state_dict(), "method": method_state,
        "pool": {"images": pool.images, "labels": pool.labels}})
    rngs = world.all_gather_object(_rng_states(ctx, batch_rng if world.parallel else None))
    if sessions and ctx.accel.compile_fallback is not None:  # kept with the session that fell back
        sessions[-1]["compile_fallback"] = ctx.accel.compile_fallback
    extra = {"world_size": world.size, **({"rng_ranks": rngs} if world.parallel else {})}
    world.on_main(lambda: atomic_torch_save({
        "config": json.dumps(cfg.to_dict(), default=str), "student": ctx.student.net.state_dict(),
        "opt": opt.state_dict(), "method": method_state, "pool": pool.state_dict(),
        "rng": rngs[0], "history": json.dumps(history), "epoch": epoch, "identity": identity,
        "train_seconds": train_seconds, "train_cpu_seconds": train_cpu, "sessions": json.dumps(sessions or []),
        **extra,
    }, state_path))


def _keep_sessions(state_path: Path, sessions: List[Dict[str, Any]]) -> None:
    """Write `sessions` into the state file (a resume that only evaluates: it writes no checkpoint)."""
    state = _load_state(state_path)
    state["sessions"] = json.dumps(sessions)
    atomic_torch_save(state, state_path)


def _remove(path: Path) -> bool:
    """Remove `path` if it exists; whether it did."""
    if not path.exists():
        return False
    path.unlink()
    return True


@dataclass
class _Run:
    """One run in progress: what the phases of `_run_locked` hand each other."""
    req: RunRequest
    cfg: Config
    method_cls: type
    run_dir: Path
    device: torch.device
    world: World
    log: Callable[[str], None]
    ctx: MethodContext
    method: Method
    test: Any                                   # the test split (evaluated at the end)
    probe: torch.Tensor                         # a few test images: the student's outputs on them stay finite
    opt: torch.optim.Optimizer
    batch_rng: torch.Generator
    identity: Dict[str, Any]
    history: List[Dict[str, Any]] = field(default_factory=list)
    sessions: List[Dict[str, Any]] = field(default_factory=list)  # provenance of the start and of each resume
    start_epoch: int = 0
    # wall-clock and process CPU seconds (all threads): CPU time is what a run costs whatever else runs
    # on the machine, wall time is what its user waits
    train_seconds: float = 0.0
    train_cpu: Optional[float] = 0.0
    last_samples: Optional[Samples] = None

    @property
    def state_path(self) -> Path:
        return self.run_dir / STATE_FILE


def _run_locked(req: RunRequest, cfg: Config, method_cls: type, run_dir: Path, device: torch.device, attacks: str,
                log: Callable[[str], None], after_epoch: Optional[Callable[[int], None]],
                world: Optional[World] = None) -> Dict[str, Any]:
    """The phases of a run, in order: prepare (build and check everything that can fail), resume or
    start, train (epochs with their checkpoints), finish (save, evaluate, write the result)."""
    run = _prepare(req, cfg, method_cls, run_dir, device, log, world or World())
    _resume_or_start(run)
    _train(run, after_epoch)
    return _finish(run, attacks)


def _prepare(req: RunRequest, cfg: Config, method_cls: type, run_dir: Path, device: torch.device,
             log: Callable[[str], None], world: World) -> _Run:
    """Check the run folder, then load everything that can fail before any training: teacher, student,
    test data, the method's set-up (rank 0 first: a download or a cache write happens once)."""
    state_path, result_path = run_dir / STATE_FILE, run_dir / RESULT_FILE
    if result_path.exists():
        raise RunError(f"{run_dir} already holds a finished result; pass another --out or remove it")
    if state_path.exists() and not req.resume:
        raise RunError(f"{run_dir} holds an unfinished run: pass --resume to continue it, or another --out")
    if req.resume and not state_path.exists():
        log(f"no checkpoint in {run_dir}: starting fresh")
    # Everything is built under rank 0's seed, so that teacher (a random: one too), student and
    # method start the same on every rank of a data-parallel run.
    rng = seed_everything(req.seed, 0)
    ctx = make_context(cfg, req.dataset, device, rng, model_dir=req.model_dir, world=world)
    test = world.main_first(lambda: load_split(req.dataset, "test", req.source, req.data_root))
    probe = probe_images(test)
    method = method_cls()
    check_teacher(method, ctx.teacher, cfg)
    method.setup(ctx)
    batch_rng = _rank_streams(ctx, req.seed)
    opt = create_optimizer(cfg.student_optimizer, ctx.student.parameters(), cfg)
    identity = {"method": req.method, "seed": req.seed, "teacher_weights_sha256": weights_sha256(ctx.teacher),
                "test_data_sha256": test.source.get("sha256"),
                # what `precision` resolved to here (auto: bf16 on CUDA, fp32 elsewhere) and on which kind of
                # device: a run is not continued in another precision
                "training_precision": ctx.accel.precision, "device_type": device.type}
    ctx.accel.warn = log  # a failed compilation's one warning goes to the run's log
    world.check_same("the teacher, test data, student or method state at the start",
                     {"identity": identity, "student": ctx.student.net.state_dict(), "method": method.state_dict()})
    return _Run(req, cfg, method_cls, run_dir, device, world, log, ctx, method, test, probe, opt, batch_rng, identity)


def _resume_or_start(run: _Run) -> None:
    """Continue from the run folder's checkpoint (--resume), or start: then an evaluation left by an
    earlier student is removed. Either way this session joins the run's provenance."""
    req, cfg, world, log = run.req, run.cfg, run.world, run.log
    if req.resume and run.state_path.exists():
        run.history, run.start_epoch, run.train_seconds, run.train_cpu, run.sessions = _resume(
            run.state_path, cfg, run.identity, run.ctx, run.opt, run.method, run.batch_rng, log)
        log(f"resumed {run.run_dir} at epoch {run.start_epoch}/{cfg.epochs}")
    elif world.on_main(lambda: _remove(run.run_dir / EVAL_PROGRESS_FILE)):  # the evaluation of an earlier student
        log(f"removed {run.run_dir / EVAL_PROGRESS_FILE}: it belongs to an earlier student")
    run.sessions = run.sessions + [session_record("resume" if run.start_epoch else "start", run.device,
                                                  epoch=run.start_epoch, world_size=world.size)]
    if run.start_epoch and run.start_epoch >= cfg.epochs:  # only the evaluation is left: no epoch end will keep this session
        world.on_main(lambda: _keep_sessions(run.state_path, run.sessions))
    student = run.ctx.student
    log(f"{req.method} on {req.dataset} [{req.preset}]: teacher {cfg.teacher}, student {cfg.student} "
        f"({count_parameters(student) / 1e6:.2f}M), {cfg.epochs} epochs -> {run.run_dir}"
        + (f", data-parallel over {world.size} processes" if world.parallel else "") + _expected_time(run))
    if run.ctx.accel.compile_attacks:
        log("compile: attack passes are compiled on first use (tens of seconds per model on a CPU)")


def _expected_time(run: _Run) -> str:
    """What the run should take, for its first line: the preset's measured time on the reference CPU
    (register_preset's cpu_minutes), where it runs on a CPU; nothing elsewhere (`dfrd-bench estimate`)."""
    minutes = PRESET_CPU_MINUTES.get(run.req.preset)
    if run.device.type != "cpu" or not minutes or run.start_epoch:
        return ""
    return f"; expected {minutes}, training in {run.ctx.accel.precision}"


def _train(run: _Run, after_epoch: Optional[Callable[[int], None]]) -> None:
    """Every epoch left: the epoch, its log line (and TensorBoard), its checkpoint."""
    cfg = run.cfg
    spec = get_dataset_spec(run.req.dataset)
    recent: List[Dict[str, Any]] = []
    # TensorBoard (--tensorboard): written by the main process only, closed (flushed) even on a failure
    board = open_tensorboard(run.req.tensorboard, run.run_dir.name, spec.class_names or
                             [str(c) for c in range(spec.num_classes)]) if run.world.is_main else None
    try:
        for epoch in range(run.start_epoch, cfg.epochs):
            t0, cpu0 = time.time(), time.process_time()
            record, samples = _epoch(run, epoch)
            record["seconds"] = round(time.time() - t0, 2)
            run.train_seconds += time.time() - t0
            run.train_cpu = None if run.train_cpu is None else run.train_cpu + time.process_time() - cpu0
            recent.append(record)
            if (epoch + 1) % cfg.log_every_epochs == 0 or epoch + 1 == cfg.epochs:
                run.history.append(record)
                eta = training_eta(recent[-5:], cfg.epochs - epoch - 1)  # logged, not kept: it is a forecast
                run.log(epoch_line(record, cfg.epochs, eta))
                if board is not None:
                    board.record(record)
                    board.samples(samples.x, samples.y, epoch + 1)
            if (epoch + 1) % cfg.checkpoint_every_epochs == 0 or epoch + 1 == cfg.epochs:
                _checkpoint(run.state_path, run.ctx, run.opt, run.method, run.batch_rng, cfg, run.history, epoch + 1,
                            run.identity, run.train_seconds, run.train_cpu, run.sessions)
            if after_epoch is not None:
                after_epoch(epoch + 1)
    finally:
        if board is not None:
            board.close()


def _epoch(run: _Run, epoch: int) -> Tuple[Dict[str, Any], Samples]:
    """One epoch: the generation stage (samples into the pool), the distillation stage after the
    warm-up, the method's end of epoch, and the checks that the teacher stayed frozen and the student finite."""
    ctx, cfg, method, req = run.ctx, run.cfg, run.method, run.req
    ctx.epoch = epoch
    with ctx.accel.autocast():
        samples = method.generate(ctx)
    samples = _gather_samples(samples, run.world)
    run.world.average_buffers(ctx.student)  # a method may run the student in train mode while generating
    ctx.pool.add(samples.x, samples.y)
    run.last_samples = samples
    record: Dict[str, Any] = {"epoch": epoch + 1, "pool": len(ctx.pool)}
    record.update({f"gen/{k}": _to_float(v) for k, v in samples.logs.items()})
    if epoch >= cfg.warmup_epochs:
        record.update(_student_stage(method, ctx, run.opt, cfg, run.batch_rng, req.method))
    teacher = ctx.teacher
    if teacher.training or any(p.requires_grad for p in teacher.parameters()):
        raise RunError(f"{req.method} left the teacher in train mode or unfrozen: teachers stay frozen in eval mode")
    record.update({k: _to_float(v) for k, v in method.end_epoch(ctx).items()})
    _check_epoch(ctx, record, run.probe, req.method, epoch + 1)
    return record, samples


def _finish(run: _Run, attacks: str) -> Dict[str, Any]:
    """Save the student and the last synthetic batch, evaluate the student, write the result (rank 0)."""
    req, cfg, world, ctx = run.req, run.cfg, run.world, run.ctx
    spec = get_dataset_spec(req.dataset)
    student, teacher, run_dir = ctx.student, ctx.teacher, run.run_dir
    student.eval()
    student_path = run_dir / "student.pt"

    def save_outputs() -> None:
        save_model(student, student_path, req.dataset, spec.image_size,
                   meta={"method": req.method, "config": json.loads(json.dumps(cfg.to_dict(), default=str)),
                         "seed": req.seed})
        if run.last_samples is not None:
            _save_grid(run.last_samples.x, run.last_samples.y, run_dir / "samples.png")

    world.on_main(save_outputs)

    t_eval, cpu_eval = time.time(), time.process_time()
    settings = AttackSettings(eps=cfg.eps, seed=req.seed, batch_size=cfg.eval_batch_size,
                              channels_last=cfg.channels_last)
    data = run.test.subset(cfg.eval_limit, seed=req.seed)
    limits = {"aa": cfg.aa_limit} if cfg.aa_limit and cfg.aa_limit < len(data) else {}
    evaluated = evaluate(student, data, attacks.split(","), settings, device=str(run.device),
                         batch_size=cfg.eval_batch_size, attack_limits=limits, log=run.log,
                         progress_path=run_dir / EVAL_PROGRESS_FILE,
                         shard=EvalShard(world) if world.parallel else None)

    def write() -> Dict[str, Any]:
        result = {
            "kind": "run",
            "method": req.method,
            "variant": cfg.variant,
            "preset": req.preset,
            "dataset": req.dataset,
            "seed": req.seed,
            "teacher": {**describe_spec(cfg.teacher, teacher), "arch": teacher.arch},
            "student": {"arch": cfg.student, "params": count_parameters(student)},
            "model": {"spec": str(student_path), "arch": cfg.student, "num_classes": spec.num_classes,
                      "checkpoint_sha256": sha256_file(student_path)},
            "data_source": data.source,
            "attacks": evaluated["attacks"],
            "settings": {**evaluated["settings"], "eval_limit": cfg.eval_limit, "aa_limit": cfg.aa_limit,
                         "world_size": world.size},
            "config": json.loads(json.dumps(cfg.to_dict(), default=str)),
            "student_steps": student_steps(cfg),
            "method_info": info_as_dict(run.method_cls.info),  # tables render it where the plugin is not installed
            "defaults_version": run_defaults_version(run.method_cls),
            "core_defaults_version": preset_defaults_version(req.preset),
            "overrides": {k: v for k, v in req.overrides.items()},
            "history": run.history,
            "wall_seconds": {"train": round(run.train_seconds, 1), "eval": round(time.time() - t_eval, 1)},
            # this process's CPU time (all its threads); per process in a data-parallel run
            "cpu_seconds": {"train": None if run.train_cpu is None else round(run.train_cpu, 1),
                            "eval": round(time.process_time() - cpu_eval, 1)},
            "speed": ctx.accel.describe(),
            "run_dir": str(run_dir),
            # `sessions`: the provenance of the start and of every resume (what produced each part of the run)
            "provenance": {**provenance(run.device), "world_size": world.size, "sessions": run.sessions},
        }
        write_result(result, run_dir / RESULT_FILE)
        (run_dir / EVAL_PROGRESS_FILE).unlink(missing_ok=True)  # only now: a kill before the write loses no attack
        return result

    return world.on_main(write)
