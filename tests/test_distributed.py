"""Data-parallel runs: 2 processes with the gloo backend on CPU against the single process.

Workers are started with torch.multiprocessing.spawn (or torchrun for the command line), each with
one thread, and write what they hold to files the test compares. Tolerances are explained where
they are used; everything else is compared bit for bit.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict

import numpy as np
import pytest
import torch

from dfrd_bench.distributed import World, fingerprint
from tests.conftest import TinyLinear, random_images, same_students

REPO = Path(__file__).resolve().parents[1]
WORLD = 2

pytestmark = pytest.mark.slow  # every test here starts 2 processes (gloo) or torchrun


def _gloo() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_gloo_available()


needs_gloo = pytest.mark.skipif(not _gloo(), reason="torch.distributed with the gloo backend is not available "
                                                    "in this torch build: data-parallel tests skipped")


# ---------------------------------------------------------------------------------------------- workers
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, port: int, fn, args) -> None:
    """One spawned process: torchrun's environment, one thread, a gloo group, then fn(rank, *args)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        fn(rank, *args)
    finally:
        torch.distributed.destroy_process_group()


def _spawn(fn, *args) -> None:
    torch.multiprocessing.spawn(_entry, args=(_free_port(), fn, args), nprocs=WORLD, join=True)


def _npz(folder: Path) -> str:
    path = folder / "test.npz"
    np.savez(path, x=random_images(40, seed=3), y=np.arange(40) % 10)
    return str(path)


def _request(folder: Path, method: str, name: str, resume: bool = False, **sets):
    from dfrd_bench.runner import RunRequest

    return RunRequest(method=method, dataset="cifar10", preset="smoke", source=str(folder / "test.npz"),
                      out=str(folder / "runs"), run_name=name, resume=resume, device="cpu",
                      overrides={"teacher": "random:resnet8", **sets})


def _cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu(v) for v in obj)
    return obj


def _same(a: Any, b: Any) -> bool:
    """Bit-identical nested states (tensors compared with torch.equal, NaN-free by construction)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _run_capturing(rank: int, req, out: Path, tag: str, after_epoch=None) -> None:
    """`run(req)` in a worker, keeping what this rank ends with: student, pool, method state, result,
    and how many times it wrote result.json."""
    import dfrd_bench.runner as runner

    held: Dict[str, Any] = {"writes": 0}
    original_get, original_write = runner.get_method, runner.write_result

    def get_method(name):
        cls = original_get(name)

        class Captured(cls):
            def setup(self, ctx):
                held.update(method=self, ctx=ctx)
                super().setup(ctx)
        return Captured

    def write_result(result, path):
        held["writes"] += 1
        return original_write(result, path)

    runner.get_method, runner.write_result = get_method, write_result
    try:
        result = runner.run(req, log=lambda s: None, after_epoch=after_epoch)
    finally:
        runner.get_method, runner.write_result = original_get, original_write
    ctx = held["ctx"]
    torch.save({"student": _cpu(ctx.student.net.state_dict()), "pool": _cpu(ctx.pool.state_dict()),
                "method": _cpu(held["method"].state_dict()), "writes": held["writes"], "result": result},
               out / f"{tag}-rank{rank}.pt")


def _dump(out: Path, tag: str, rank: int) -> Dict[str, Any]:
    return torch.load(out / f"{tag}-rank{rank}.pt", weights_only=False)


# ---------------------------------------------------------------------------------------------- (1) one step
STEP_SETS = {"teacher": "random:resnet8", "pool_sampling": "uniform", "batch_size": 8, "synthesis_batch_size": 8,
             "student_augment": True}


def _step_parts(world: World, sets: Dict[str, Any], stream: int):
    """ZSKT's student stage on a fixed 16-image pool: (method, ctx, opt, cfg), the same in every process;
    `stream` seeds the per-rank generator the method's attack draws its start from."""
    from dfrd_bench.config import resolve_config
    from dfrd_bench.method import MethodContext, get_method
    from dfrd_bench.models import build_model
    from dfrd_bench.pool import SamplePool
    from dfrd_bench.runner import rank_config
    from dfrd_bench.teachers import load_teacher

    method_cls = get_method("zskt")
    cfg = resolve_config(method_cls, "cifar10", "smoke", {**STEP_SETS, **sets})
    torch.manual_seed(0)
    teacher = load_teacher("random:resnet8", "cifar10").eval().requires_grad_(False)
    student = build_model("resnet8", 10, 32, (0.5,) * 3, (0.25,) * 3)
    pool = SamplePool()
    pool.add(torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(1)))
    ctx = MethodContext(teacher=teacher, student=student, cfg=rank_config(cfg, world), device=torch.device("cpu"),
                        rng=torch.Generator().manual_seed(100 + stream), pool=pool, num_classes=10, image_size=32,
                        rank=world.rank, world=world)
    method = method_cls()
    method.setup(ctx)
    opt = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    return method, ctx, opt, cfg


STEP_CASES = {"eval-bn": ({"rslad": False}, False), "train-bn": ({}, True)}  # (settings, student in train mode)


def _step_worker(rank: int, out: Path) -> None:
    from dfrd_bench.runner import student_batch, student_step

    for case, (sets, train) in STEP_CASES.items():
        method, ctx, opt, cfg = _step_parts(World(rank, WORLD), sets, stream=rank)
        ctx.student.train(train)
        student_step(method, ctx, opt, student_batch(ctx.pool, cfg, torch.Generator().manual_seed(7), ctx.world))
        torch.save(_cpu(ctx.student.net.state_dict()), out / f"{case}-rank{rank}.pt")


def _single_step(sets: Dict[str, Any], train: bool) -> Dict[str, torch.Tensor]:
    """The runner's single-process step on the whole global batch."""
    from dfrd_bench.runner import student_batch, student_step

    method, ctx, opt, cfg = _step_parts(World(), sets, stream=0)
    ctx.student.train(train)
    student_step(method, ctx, opt, student_batch(ctx.pool, cfg, torch.Generator().manual_seed(7)))
    return _cpu(ctx.student.net.state_dict())


def _per_slice_step(sets: Dict[str, Any]) -> Dict[str, torch.Tensor]:
    """One process computing what the 2 ranks compute: the loss of each half of the global batch from the
    same start (BatchNorm statistics of that half; attack starts from that rank's stream), the gradients
    and the BatchNorm running statistics averaged, one SGD step."""
    from dfrd_bench.runner import student_batch

    method, ctx, opt, cfg = _step_parts(World(), sets, stream=0)
    student = ctx.student.train()
    batch = student_batch(ctx.pool, cfg, torch.Generator().manual_seed(7))
    start = {k: v.clone() for k, v in student.net.state_dict().items()}
    params = list(student.parameters())
    grads, buffers = [], []
    for r in range(WORLD):
        student.net.load_state_dict(start)
        ctx.rng = torch.Generator().manual_seed(100 + r)
        rows = slice(r * len(batch.x) // WORLD, (r + 1) * len(batch.x) // WORLD)
        loss, _ = method.student_loss(ctx, type(batch)(batch.x[rows], batch.y[rows]))
        grads.append(torch.autograd.grad(loss, params))
        buffers.append([b.clone() for b in student.buffers()])
    student.net.load_state_dict(start)
    for p, *gs in zip(params, *grads):
        p.grad = sum(gs) * (1.0 / WORLD)
    opt.step()
    with torch.no_grad():
        for b, *bs in zip(student.buffers(), *buffers):
            if b.is_floating_point():
                b.copy_(sum(bs) * (1.0 / WORLD))
    return _cpu(student.net.state_dict())


def _updates(after: Dict[str, torch.Tensor], before: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {k: after[k].double() - before[k].double() for k in after if after[k].is_floating_point()}


def _assert_close_updates(got: Dict[str, torch.Tensor], ref: Dict[str, torch.Tensor], start, scale: float) -> float:
    """Each tensor's update within `scale` x its largest reference update; returns the worst ratio."""
    du, dr = _updates(got, start), _updates(ref, start)
    worst = 0.0
    for k in dr:
        bound = float(dr[k].abs().max())
        if bound == 0:
            assert float(du[k].abs().max()) == 0, k
            continue
        ratio = float((du[k] - dr[k]).abs().max()) / bound
        worst = max(worst, ratio)
        assert ratio <= scale, f"{k}: update differs by {ratio:.2e} of its largest entry (allowed {scale:.0e})"
    return worst


@needs_gloo
def test_one_data_parallel_student_step_equals_the_single_process_step(tmp_path):
    """(a) Without batch coupling (BatchNorm on running statistics, no random attack start) the 2-rank step
    equals the single-process step on the same global batch up to float32 summation order: the global
    backward sums 8 per-sample gradients in one reduction, the ranks 4 + 4 and then average. Each sum of
    k float32 terms carries a relative rounding error of about sqrt(k) x 2^-24 (6e-8) of its magnitude,
    and the reductions here have k <= 8 x 32 x 32 = 8192 terms (a convolution's weight gradient over
    batch and pixels), so the updates agree to ~1e-5 of their largest entry; we allow 1e-4.
    (b) In the runner's train mode each rank normalises with its own half's BatchNorm statistics (as
    DistributedDataParallel without SyncBatchNorm does): the step equals the one-process computation
    of exactly that (per-half statistics, averaged gradients and running statistics) to 1e-5. How far
    it is from the global-batch step depends on the batch statistics, not on rounding (printed)."""
    torch.set_num_threads(1)
    start = _cpu(_step_parts(World(), {}, 0)[1].student.net.state_dict())
    _spawn(_step_worker, tmp_path)

    ranks = [torch.load(tmp_path / f"eval-bn-rank{r}.pt") for r in range(WORLD)]
    assert _same(ranks[0], ranks[1]), "the ranks hold different students after the step"
    plain, _ = STEP_CASES["eval-bn"]
    print(f"eval-mode BN: worst {_assert_close_updates(ranks[0], _single_step(plain, False), start, 1e-4):.1e}")
    assert not _same(ranks[0], start), "the step did not move the student"

    ranks = [torch.load(tmp_path / f"train-bn-rank{r}.pt") for r in range(WORLD)]  # RSLAD attack, train-mode BN
    assert _same(ranks[0], ranks[1])
    worst = _assert_close_updates(ranks[0], _per_slice_step({}), start, 1e-5)
    print(f"train-mode BN vs per-half reference: worst {worst:.1e}")
    running = next(k for k in ranks[0] if k.endswith("running_mean"))
    assert not torch.equal(ranks[0][running], start[running]), "BatchNorm running statistics did not move"
    du, dg = _updates(ranks[0], start), _updates(_single_step({}, True), start)
    gap = max(float((du[k] - dg[k]).abs().max()) / max(float(dg[k].abs().max()), 1e-30) for k in dg)
    print(f"train-mode BN: 2 x 4 vs the global batch of 8 differ by up to {gap:.2f} of the largest update")


# ---------------------------------------------------------------------------------------------- (2) whole runs
METHODS = ("fast", "ferd", "cmi", "zskt", "dfhl", "deepinv")


def _runs_worker(rank: int, folder: Path) -> None:
    from dfrd_bench.distributed import DistributedError
    from dfrd_bench.method import register_method
    from methods.zskt import ZSKT

    for method in METHODS:
        _run_capturing(rank, _request(folder, method, method), folder, method)
    # a method whose state depends on the rank is refused before it trains
    register_method("per-rank-state")(type("PerRank", (ZSKT,), {"state_dict": lambda self: {"rank": rank}}))
    try:
        _run_capturing(rank, _request(folder, "per-rank-state", "per-rank"), folder, "per-rank")
    except DistributedError as exc:
        (folder / f"refused-rank{rank}.txt").write_text(str(exc))


@pytest.fixture(scope="module")
def two_rank_runs(tmp_path_factory):
    if not _gloo():
        pytest.skip("torch.distributed with the gloo backend is not available")
    folder = tmp_path_factory.mktemp("ddp-runs")
    _npz(folder)
    _spawn(_runs_worker, folder)
    return folder


@needs_gloo
@pytest.mark.parametrize("method", METHODS)
def test_a_two_rank_run_ends_identical_on_every_rank_and_writes_once(two_rank_runs, method):
    from dfrd_bench.store import read_result

    r0, r1 = _dump(two_rank_runs, method, 0), _dump(two_rank_runs, method, 1)
    assert _same(r0["student"], r1["student"]), f"{method}: the ranks end with different students"
    assert _same(r0["pool"], r1["pool"]), f"{method}: the ranks end with different pools"
    assert _same(r0["method"], r1["method"]), f"{method}: the ranks end with different method states"
    assert (r0["writes"], r1["writes"]) == (1, 0), "result.json must be written by rank 0 alone, once"
    saved = read_result(two_rank_runs / "runs" / method / "result.json")
    assert saved["settings"]["world_size"] == 2 and saved["provenance"]["world_size"] == 2
    assert r0["result"]["attacks"] == r1["result"]["attacks"] == saved["attacks"]
    state = torch.load(two_rank_runs / "runs" / method / "state.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["rng_ranks"]) == 2
    assert not torch.equal(state["rng_ranks"][0]["ctx"], state["rng_ranks"][1]["ctx"]), "ranks share a stream"
    n = saved["config"]["synthesis_batch_size"]
    assert len(r0["pool"]["labels"]) == min(saved["config"]["pool_max"], n * saved["config"]["epochs"])


@needs_gloo
def test_a_method_with_per_rank_state_is_refused(two_rank_runs):
    for rank in range(WORLD):
        text = (two_rank_runs / f"refused-rank{rank}.txt").read_text()
        assert "differs between rank 0 and rank 1" in text and "rank" in text


# ---------------------------------------------------------------------------------------------- (3) resume
def _resume_worker(rank: int, folder: Path, phase: str) -> None:
    if phase == "first":
        _run_capturing(rank, _request(folder, "fast", "full"), folder, "full")

        def stop(epoch: int) -> None:
            if epoch == 1:
                raise KeyboardInterrupt  # on every rank after epoch 1's checkpoint, as Ctrl-C on torchrun would

        try:
            _run_capturing(rank, _request(folder, "fast", "split"), folder, "split", after_epoch=stop)
        except KeyboardInterrupt:
            return
        raise AssertionError("the split run was not interrupted")
    _run_capturing(rank, _request(folder, "fast", "split", resume=True), folder, "split")


@needs_gloo
def test_an_interrupted_two_rank_run_resumes_to_the_same_student(tmp_path):
    from dfrd_bench.runner import RunError, run

    _npz(tmp_path)
    _spawn(_resume_worker, tmp_path, "first")
    state = torch.load(tmp_path / "runs" / "split" / "state.pt", weights_only=True)
    assert state["epoch"] == 1 and not (tmp_path / "runs" / "split" / "result.json").exists()
    with pytest.raises(RunError, match="written by a run on 2 process"):
        run(_request(tmp_path, "fast", "split", resume=True), log=lambda s: None)
    _spawn(_resume_worker, tmp_path, "resume")
    assert same_students(tmp_path / "runs")
    full, split = _dump(tmp_path, "full", 1), _dump(tmp_path, "split", 1)
    assert _same(full["student"], split["student"]) and _same(full["method"], split["method"])
    assert _same(full["pool"], split["pool"])
    assert split["result"]["attacks"]["pgd20"]["per_class"] == full["result"]["attacks"]["pgd20"]["per_class"]
    losses = [[h.get("student/loss") for h in r["result"]["history"]] for r in (split, full)]
    assert losses[0] == losses[1]


# ---------------------------------------------------------------------------------------------- (4) evaluation
def _eval_parts(folder: Path, seed: int = 3):
    from dfrd_bench.attacks import AttackSettings
    from dfrd_bench.data import load_split

    model = TinyLinear(num_classes=10, size=32, seed=5)  # a linear model: its predictions move with the starts
    data = load_split("cifar10", "test", str(folder / "test.npz"))
    # "start-driven": a wide ball and one small step, so the predictions hang on the random starts
    variants = {"robust": AttackSettings(eps=8 / 255, seed=seed, pgd_steps=3, cw_steps=3),
                "start-driven": AttackSettings(eps=0.5, seed=seed, pgd_steps=1, pgd_step=1 / 255, cw_steps=1,
                                               cw_step=1 / 255, attack_misclassified=True)}
    return model, data, variants


def _evaluations(folder: Path, shard, seed: int = 3, variants=None, progress=None) -> Dict[str, Any]:
    from dfrd_bench.evaluator import evaluate

    model, data, settings_of = _eval_parts(folder, seed)
    out = {}
    for name in variants or settings_of:
        res = evaluate(model, data, ["clean", "fgsm", "pgd20", "cw"], settings_of[name], device="cpu", batch_size=6,
                       shard=shard, progress_path=progress)
        for entry in res["attacks"].values():
            entry.pop("seconds")
        out[name] = res
    return out


def _eval_worker(rank: int, folder: Path) -> None:
    from dfrd_bench.distributed import EvalShard

    torch.save(_evaluations(folder, EvalShard(World(rank, WORLD))), folder / f"eval-rank{rank}.pt")


def _eval_resume_worker(rank: int, folder: Path) -> None:
    """Evaluate with a progress file, stop every rank after PGD's 4th batch (2 rounds), then resume."""
    from dfrd_bench.distributed import EvalShard
    from dfrd_bench.eval_progress import EvalProgress

    shard, original = EvalShard(World(rank, WORLD)), EvalProgress.batch_done

    def stop(self, name, cursor):
        original(self, name, cursor)
        if name == "pgd20" and cursor.next_batch == 4:
            raise KeyboardInterrupt

    EvalProgress.batch_done = stop
    try:
        _evaluations(folder, shard, variants=["start-driven"], progress=folder / "progress.pt")
        raise AssertionError("the evaluation was not interrupted")
    except KeyboardInterrupt:
        pass
    finally:
        EvalProgress.batch_done = original
    torch.distributed.barrier()
    if rank == 0:
        shutil.copy(folder / "progress.pt", folder / "progress-cut.pt")
    torch.distributed.barrier()
    resumed = _evaluations(folder, shard, variants=["start-driven"], progress=folder / "progress.pt")
    torch.save(resumed, folder / f"eval-resumed-rank{rank}.pt")


@needs_gloo
def test_sharded_evaluation_resumes_from_the_single_process_progress_file(tmp_path):
    """Rank 0 writes the progress file after every round of 2 batches, with both ranks' predictions
    merged: a resumed 2-rank evaluation, and a single process resuming the same file, end with the
    uninterrupted single-process numbers."""
    from dfrd_bench.evaluator import evaluate

    _npz(tmp_path)
    torch.set_num_threads(1)
    single = _evaluations(tmp_path, None, variants=["start-driven"])
    _spawn(_eval_resume_worker, tmp_path)
    cut = torch.load(tmp_path / "progress-cut.pt", weights_only=True)
    assert cut["current"]["attack"] == "pgd20" and cut["current"]["next_batch"] == 4
    assert (cut["current"]["pred"] >= 0).sum() == 24  # 4 batches of 6 rows, merged from both ranks
    for rank in range(WORLD):
        assert torch.load(tmp_path / f"eval-resumed-rank{rank}.pt", weights_only=False) == single
    logs: list = []
    model, data, settings_of = _eval_parts(tmp_path)
    res = evaluate(model, data, ["clean", "fgsm", "pgd20", "cw"], settings_of["start-driven"], device="cpu",
                   batch_size=6, progress_path=tmp_path / "progress-cut.pt", log=logs.append)
    assert "resuming evaluation: clean, fgsm done; pgd20 at batch 5/7" in logs[0]
    for entry in res["attacks"].values():
        entry.pop("seconds")
    assert res == single["start-driven"]


@needs_gloo
def test_sharded_evaluation_equals_the_single_process_evaluation(tmp_path):
    """Clean and FGSM are deterministic; PGD and CW draw their random starts batch by batch from one
    stream, which a rank advances past the batches it leaves to the other: all four are equal."""
    _npz(tmp_path)
    torch.set_num_threads(1)
    single = _evaluations(tmp_path, None)
    _spawn(_eval_worker, tmp_path)
    for rank in range(WORLD):
        assert torch.load(tmp_path / f"eval-rank{rank}.pt", weights_only=False) == single
    starts = single["start-driven"]["attacks"]
    assert starts["pgd20"]["attacked"] == 40  # 7 batches of 6: 4 on rank 0, 3 on rank 1
    other = _evaluations(tmp_path, None, seed=4)["start-driven"]["attacks"]  # other random starts, other numbers:
    assert other["pgd20"]["confusion"] != starts["pgd20"]["confusion"]    # the comparison above can fail
    assert other["cw"]["confusion"] != starts["cw"]["confusion"]


# ---------------------------------------------------------------------------------------------- command line
@needs_gloo
def test_torchrun_runs_the_command_line_once_per_run(tmp_path):
    """`torchrun --nproc_per_node=2 -m dfrd_bench.cli run ...` from a normal environment (the repository
    on PYTHONPATH): one result, one summary, rank 0's files only; --resume then finds it finished."""
    pytest.importorskip("torch.distributed.run")
    npz = _npz(tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p]),
           "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "dfrd_bench.cli",
            "run", "--method", "zskt", "--dataset", "cifar10", "--preset", "smoke", "--teacher", "random:resnet8",
            "--source", npz, "--out", str(tmp_path / "runs"), "--name", "cli", "--device", "cpu"]
    done = subprocess.run(args, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count("wrote ") == 1 and "data-parallel over 2 processes" in done.stdout
    assert sorted(p.name for p in (tmp_path / "runs" / "cli").iterdir()) == [
        ".lock", "result.json", "samples.png", "state.pt", "student.pt"]
    again = subprocess.run(args + ["--resume"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "already finished" in again.stdout, again.stderr[-3000:]


# ---------------------------------------------------------------------------------------------- single-process pieces
def test_data_parallel_refusals_are_one_line():
    from dfrd_bench.config import resolve_config
    from dfrd_bench.method import Method, get_method
    from dfrd_bench.runner import RunError, check_data_parallel

    cfg = resolve_config(get_method("zskt"), "cifar10", "smoke", {"teacher": "random:resnet8"})
    with pytest.raises(RunError, match="synthesis_batch_size 8 does not split evenly over 3 processes"):
        check_data_parallel(get_method("zskt"), cfg, World(0, 3))
    check_data_parallel(get_method("zskt"), cfg, World(1, 4))

    class Plain(Method):
        name = "plain"

    with pytest.raises(RunError, match="does not declare data-parallel support"):
        check_data_parallel(Plain, cfg, World(0, 2))
    check_data_parallel(Plain, cfg, World())  # one process: every method runs


def test_world_of_one_process_changes_nothing():
    w = World()
    t = torch.arange(6.0)
    assert w.gather(t) is t and w.on_main(lambda: 3) == 3 and w.main_first(lambda: 4) == 4
    w.average_([t])
    assert torch.equal(t, torch.arange(6.0))
    w.check_same("anything", {"x": t})


def test_fingerprints_tell_states_apart():
    a = {"w": torch.ones(3), "opt": {"step": 2, "lr": [0.1]}}
    assert fingerprint(a) == fingerprint({"w": torch.ones(3), "opt": {"step": 2, "lr": [0.1]}})
    assert fingerprint(a) != fingerprint({"w": torch.tensor([1.0, 1.0, 1.5]), "opt": {"step": 2, "lr": [0.1]}})
    assert fingerprint(a) != fingerprint({"w": torch.ones(3), "opt": {"step": 3, "lr": [0.1]}})


def test_emit_torchrun_and_slurm_take_a_process_count(tmp_path):
    from dfrd_bench.config import ConfigError
    from dfrd_bench.sweep import emit, plan, spec_from

    spec = spec_from({"methods": "zskt", "datasets": "cifar10", "preset": "smoke", "out": str(tmp_path),
                      "set": {"teacher": "random:resnet8"}})
    lines = emit(plan(spec), "torchrun:4").splitlines()
    assert lines[1].startswith("torchrun --standalone --nproc_per_node=4 -m dfrd_bench.cli run --method zskt")
    assert "--nproc_per_node=1 -m dfrd_bench.cli run" in emit(plan(spec), "torchrun")
    slurm = emit(plan(spec), "slurm:2")
    assert "--gres=gpu:2" in slurm and "--cpus-per-task=16" in slurm
    assert "'torchrun --standalone --nproc_per_node=2" in slurm
    assert "torchrun --standalone" not in emit(plan(spec), "slurm")
    with pytest.raises(ConfigError, match="torchrun:N"):
        emit(plan(spec), "torchrun:0")
