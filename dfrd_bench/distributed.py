"""Data-parallel runs on torch.distributed: one run over N processes (`torchrun --nproc_per_node=N`).

The runner and the evaluator are the only callers of torch.distributed, through the `World` below.
With one process (no WORLD_SIZE, or WORLD_SIZE=1) every collective is a no-op that returns its
input untouched, so a single-process run computes exactly what it did before this module existed.

What N processes do (docs/running.md, "Data-parallel runs", has the reasoning):
- generation: each rank synthesises synthesis_batch_size / N samples from its own seeded stream;
  the runner gathers them (rank order), so every rank adds the same global batch to its pool.
  What a method shares across samples (a generator, a projection head) gets its gradients averaged
  through `ctx.average_gradients`, so it stays the same on every rank;
- student: every rank draws the same global batch from the same pool with the run's shared stream
  and trains on its slice; gradients are averaged after backward (what DistributedDataParallel's
  all-reduce computes, without its wrapper, which the methods' extra forwards and input-gradient
  attacks would trip), and BatchNorm running statistics are averaged after every step;
- checkpoint: rank 0 writes it with every rank's RNG states; before each write `check_same`
  verifies that student, optimiser, method state and pool are the same on every rank;
- evaluation: `EvalShard` deals the evaluator's batches round-robin to the ranks and merges the
  predictions, so every number equals the single-process one.
"""
from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple, TypeVar

import torch

from .errors import DfrdError, first_line

T = TypeVar("T")
BUCKET_BYTES = 32 << 20  # tensors are flattened into buckets of this size per collective (as DDP does)


class DistributedError(DfrdError, RuntimeError):
    pass


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise DistributedError(f"{name}={text!r} is not a whole number: launch with torchrun, which sets it") from None


def env_world() -> Tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's RANK, WORLD_SIZE and LOCAL_RANK (0, 1, 0 without)."""
    size = _env_int("WORLD_SIZE", 1)
    rank, local = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if size < 1 or not 0 <= rank < size:
        raise DistributedError(f"RANK={rank} and WORLD_SIZE={size} do not fit: launch with torchrun, which sets them")
    return rank, size, local


def env_rank() -> int:
    """This process's rank as torchrun set it (0 without torchrun): what prints and what stays quiet."""
    try:
        return int(os.environ.get("RANK", "0").strip() or 0)
    except ValueError:
        return 0


def rank_device(device: torch.device, size: int, local_rank: int) -> torch.device:
    """The device of this process: with several processes on CUDA, each takes cuda:LOCAL_RANK."""
    if size == 1 or device.type != "cuda":
        return device
    if device.index is not None:
        raise DistributedError(f"--device {device}: with {size} processes each one takes cuda:LOCAL_RANK; "
                               "pass --device cuda")
    if local_rank >= torch.cuda.device_count():
        raise DistributedError(f"LOCAL_RANK {local_rank} has no GPU ({torch.cuda.device_count()} visible): "
                               "start at most as many processes per node as GPUs")
    return torch.device("cuda", local_rank)


@dataclass
class World:
    """This process's place in the run: rank, number of processes, and the collectives the run uses."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    owns_group: bool = False   # this World started the process group (and ends it)
    comm_device: torch.device = torch.device("cpu")  # where collectives run: the GPU with nccl, else the CPU

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.size > 1

    # -- agreement between ranks ----------------------------------------------------------------
    def barrier(self) -> None:
        if self.parallel:
            torch.distributed.barrier()

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank (pickled; for small things)."""
        if not self.parallel:
            return obj
        box = [obj if self.is_main else None]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather_object(self, obj: Any) -> List[Any]:
        if not self.parallel:
            return [obj]
        out: List[Any] = [None] * self.size
        torch.distributed.all_gather_object(out, obj)
        return out

    def on_main(self, fn: Callable[[], T]) -> T:
        """fn() on rank 0 only (file writes, the run-folder lock), its value on every rank; when it
        fails there every rank raises, so no rank waits for a partner that has stopped."""
        if not self.parallel:
            return fn()
        value, failure = None, None
        if self.is_main:
            try:
                value = fn()
            except BaseException as exc:  # KeyboardInterrupt too: the others must not wait forever
                failure = exc
        shared = self.broadcast_object(("ok", value) if failure is None else ("failed", _one_line(failure)))
        if failure is not None:
            raise failure
        if shared[0] == "failed":
            raise DistributedError(f"rank 0 stopped: {shared[1]}")
        return shared[1]

    def main_first(self, fn: Callable[[], T]) -> T:
        """fn() on rank 0, then on the other ranks (a download or a cache write happens once)."""
        if not self.parallel:
            return fn()
        box: Dict[str, Any] = {}
        self.on_main(lambda: box.update(value=fn()))
        return box["value"] if self.is_main else fn()

    def check_same(self, what: str, obj: Any) -> None:
        """Fail with one line unless `obj` (nested dicts / lists of tensors and plain values) is the
        same on every rank; compares per-tensor sums, one small message per rank."""
        if not self.parallel:
            return
        mine = fingerprint(obj)
        prints = self.all_gather_object(mine)
        for rank, theirs in enumerate(prints[1:], 1):
            if theirs != prints[0]:
                where = next((k for (k, a), (_, b) in zip(prints[0], theirs) if a != b), "its structure")
                raise DistributedError(f"{what} differs between rank 0 and rank {rank} (first at {where}): "
                                       "some state is kept per rank; see docs/adding-a-method.md, 'Data-parallel runs'")

    # -- tensors ---------------------------------------------------------------------------------
    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """Every rank's `t` concatenated along dim 0 in rank order (shards may differ in length)."""
        if not self.parallel:
            return t
        source = t.device
        t = t.detach().to(self.comm_device).contiguous()
        lengths = [int(n) for n in self.all_gather_object(int(t.shape[0]))]
        longest = max(lengths)
        padded = t if t.shape[0] == longest else torch.cat([t, t.new_zeros((longest - t.shape[0],) + t.shape[1:])])
        parts = [torch.empty_like(padded) for _ in range(self.size)]
        torch.distributed.all_gather(parts, padded)
        return torch.cat([p[:n] for p, n in zip(parts, lengths)]).to(source)

    def average_(self, tensors: Iterable[torch.Tensor]) -> None:
        """In place: each tensor becomes its mean over the ranks."""
        if self.parallel:
            _coalesced(list(tensors), torch.distributed.all_reduce, self.comm_device, scale=1.0 / self.size)

    def broadcast_(self, tensors: Iterable[torch.Tensor]) -> None:
        """In place: each tensor becomes rank 0's."""
        if self.parallel:
            _coalesced(list(tensors), lambda flat: torch.distributed.broadcast(flat, src=0), self.comm_device)

    def average_gradients(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Average .grad over the ranks: the gradient of the mean loss over the global batch when each
        rank's loss is its shard's mean (DistributedDataParallel's all-reduce)."""
        if self.parallel:  # a no-op in one process: nothing to collect on the student's hot path
            self.average_([p.grad for p in params if p.grad is not None])

    def average_buffers(self, module: torch.nn.Module) -> None:
        """Average the floating-point buffers (BatchNorm running statistics) over the ranks: for the
        running means this is exactly the single-process update on the global batch."""
        if self.parallel:
            self.average_([b for b in module.buffers() if b.is_floating_point()])

    def broadcast_module(self, module: torch.nn.Module) -> None:
        """Rank 0's parameters and buffers on every rank (after a re-initialisation drawn per rank)."""
        self.broadcast_(list(module.parameters()) + list(module.buffers()))

    def max(self, value: float) -> float:
        if not self.parallel:
            return value
        t = torch.tensor([float(value)], dtype=torch.float64, device=self.comm_device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return float(t.item())

    def close(self) -> None:
        if self.owns_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
            self.owns_group = False


SINGLE = World()


def _one_line(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, DfrdError) else first_line(exc)


def _coalesced(tensors: List[torch.Tensor], collective: Callable[[torch.Tensor], Any], comm_device: torch.device,
               scale: float = 1.0) -> None:
    """Run `collective` on flattened buckets of `tensors` (grouped by device and dtype, in order)
    and copy the results back: a few large messages instead of one per tensor."""
    groups: Dict[Tuple[torch.device, torch.dtype], List[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.device, t.dtype), []).append(t)
    for group in groups.values():
        for bucket in _buckets(group):
            flat = torch.cat([t.detach().reshape(-1) for t in bucket]).to(comm_device)
            collective(flat)
            if scale != 1.0:
                flat.mul_(scale)
            with torch.no_grad():
                for t, part in zip(bucket, flat.split([t.numel() for t in bucket])):
                    t.copy_(part.view_as(t))


def _buckets(tensors: List[torch.Tensor]) -> Iterator[List[torch.Tensor]]:
    bucket: List[torch.Tensor] = []
    size = 0
    for t in tensors:
        if bucket and size + t.numel() * t.element_size() > BUCKET_BYTES:
            yield bucket
            bucket, size = [], 0
        bucket.append(t)
        size += t.numel() * t.element_size()
    if bucket:
        yield bucket


def fingerprint(obj: Any, prefix: str = "") -> List[Tuple[str, str]]:
    """(path, summary) pairs of a nested state: dtype, shape and sum of every tensor, repr of the rest.
    Equal states give equal fingerprints on every rank (same arithmetic on the same values)."""
    leaves: List[Tuple[str, Any]] = []
    _leaves(obj, prefix, leaves)
    sums = iter(_sums([v for _, v in leaves if isinstance(v, torch.Tensor)]))
    out = []
    for path, v in leaves:
        if isinstance(v, torch.Tensor):
            s = next(sums)
            out.append((path, f"{v.dtype} {tuple(v.shape)} {'nan' if math.isnan(s) else repr(s)}"))
        else:
            out.append((path, repr(v)))
    return out


def _sums(tensors: List[torch.Tensor]) -> List[float]:
    """Each tensor's sum as a float, with one device-to-host copy per device (not one per tensor)."""
    values: List[Optional[float]] = [None] * len(tensors)
    by_device: Dict[torch.device, List[int]] = {}
    for i, t in enumerate(tensors):
        by_device.setdefault(t.device, []).append(i)
    for dev, idx in by_device.items():
        sums = torch.stack([tensors[i].detach().sum().double() for i in idx]).cpu().tolist()
        for i, s in zip(idx, sums):
            values[i] = s
    return values  # type: ignore[return-value]


def _leaves(obj: Any, prefix: str, out: List[Tuple[str, Any]]) -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            _leaves(v, f"{prefix}.{k}" if prefix else str(k), out)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _leaves(v, f"{prefix}[{i}]", out)
    else:
        out.append((prefix, obj))


class EvalShard:
    """The evaluator's batches dealt round-robin: batch b is attacked by rank b % N only, and the
    predictions are merged after every round of N batches. Batches keep the single-process
    composition, and a rank skips another's batch by drawing (and dropping) the same random numbers
    the attack would draw, so every prediction, random starts included, equals the single-process
    one; so does the progress file (eval_progress.py) that rank 0 writes after every round."""

    def __init__(self, world: World) -> None:
        self.world = world

    def owns(self, batch_index: int) -> bool:
        return batch_index % self.world.size == self.world.rank

    def merge(self, pred: torch.Tensor) -> torch.Tensor:
        """Rows this rank did not predict hold -1 (predictions are >= 0): the maximum over ranks is
        the owner's prediction."""
        if not self.world.parallel:
            return pred.clone()
        merged = pred.to(self.world.comm_device, copy=True)
        torch.distributed.all_reduce(merged, op=torch.distributed.ReduceOp.MAX)
        return merged.to(pred.device)

    def round_done(self, batch_index: int, n_batches: int) -> bool:
        """After this batch every rank has attacked one more (or the last batch is done): the moment to
        merge the predictions, the same on every rank."""
        return (batch_index + 1) % self.world.size == 0 or batch_index + 1 == n_batches

    def max(self, value: float) -> float:
        return self.world.max(value)


@contextlib.contextmanager
def session(requested_device: str) -> Iterator[Tuple[World, torch.device]]:
    """This process's World and device for one run: joins the process group torchrun describes
    (nccl on CUDA, gloo on CPU), or reuses one already started; ends a group it started."""
    from .utils import pick_device

    rank, size, local = env_world()
    device = rank_device(pick_device(requested_device), size, local)
    if size == 1:
        yield World(), device
        return
    dist = torch.distributed
    if not dist.is_available():
        raise DistributedError(f"WORLD_SIZE={size}, but this torch build has no torch.distributed: run one process")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    owns = not dist.is_initialized()
    if owns:
        backend = "nccl" if device.type == "cuda" else "gloo"
        if backend == "gloo" and not dist.is_gloo_available():
            raise DistributedError("this torch build has no gloo backend for CPU data-parallel runs: run one process")
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=size)
    elif (dist.get_rank(), dist.get_world_size()) != (rank, size):
        raise DistributedError(f"the process group has rank {dist.get_rank()} of {dist.get_world_size()}, "
                               f"the environment says {rank} of {size}")
    world = World(rank, size, local, owns_group=owns,
                  comm_device=device if dist.get_backend() == "nccl" else torch.device("cpu"))
    try:
        yield world, device
    finally:
        world.close()
