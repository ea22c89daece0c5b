"""The `dfrd-bench` command line: list, doctor, eval, run, bench, estimate, sweep, table, plot, teacher train/bundle/card."""
from __future__ import annotations

import dataclasses
import functools
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import click

from .config import DEFAULT_EPS_TEXT


def friendly(fn: Callable) -> Callable:
    """Report the project's own errors (and a bad path's OS errors) as one line; anything else is a
    bug and keeps its traceback. `dfrd-bench --debug` or DFRD_DEBUG=1 shows every traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import errno

        from .errors import INPUT_OS_ERRORS, DfrdError, WriteError, debug_enabled
        from .utils import write_error

        try:
            try:
                return fn(*args, **kwargs)
            except OSError as exc:  # a full or read-only disk anywhere (a figure, an image): not a bug
                if isinstance(exc, DfrdError) or exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
                    raise
                raise write_error(exc.filename or "a file", exc) from exc
        except click.ClickException:
            raise
        except (DfrdError,) + INPUT_OS_ERRORS as exc:
            ctx = click.get_current_context(silent=True)
            if debug_enabled() or (ctx is not None and ctx.find_root().params.get("debug")):
                if isinstance(exc, WriteError) and isinstance(exc.__cause__, OSError):
                    raise exc.__cause__
                raise
            from .distributed import env_rank

            who = f"rank {env_rank()}: " if env_rank() else ""  # every process of a torchrun reports
            if isinstance(exc, OSError) and exc.filename:
                raise click.ClickException(f"{who}{exc.strerror or exc}: {exc.filename}") from None
            raise click.ClickException(f"{who}{exc}") from None

    return wrapper


def _eps(ctx, param, value):
    if value is None:
        return None
    from .utils import parse_fraction

    try:
        return parse_fraction(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


class PresetName(click.ParamType):
    """--preset: a registered preset (config.register_preset), checked when the option is parsed,
    after the plugins are loaded (installed ones and --plugin modules), so plugin presets are accepted."""

    name = "preset"

    def get_metavar(self, param: click.Parameter, ctx: Optional[click.Context] = None) -> str:
        return "PRESET"

    def convert(self, value: Any, param: Optional[click.Parameter], ctx: Optional[click.Context]) -> Any:
        if value is None:
            return None
        from .config import preset_names
        from .errors import DfrdError
        from .method import load_plugins

        try:
            load_plugins()  # a plugin registers its presets when it is imported
        except DfrdError as exc:  # a broken built-in package: one line, as for any other error
            self.fail(str(exc), param, ctx)
        names = preset_names()
        if value not in names:
            self.fail(f"unknown preset {value!r}; registered presets: {', '.join(names)} (`dfrd-bench list presets`)",
                      param, ctx)
        return value


PRESET = PresetName()


data_options = [
    click.option("--dataset", required=True, help="cifar10, cifar100 or tinyimagenet"),
    click.option("--source", default=None, help="official folder, image folder or .zip of one, or .npz (x uint8 NHWC, y)"),
    click.option("--data-root", default=None, envvar="DFRD_DATA", help="where datasets are looked for (default $DFRD_DATA, else the cache)"),
]


def with_options(options):
    def decorator(fn):
        for opt in reversed(options):
            fn = opt(fn)
        return fn

    return decorator


def _load_plugin_modules(ctx: click.Context, param: click.Parameter, modules: Tuple[str, ...]) -> Tuple[str, ...]:
    """--plugin: import each module (its methods register themselves) before the command runs."""
    from .errors import DfrdError
    from .method import load_plugin_module

    for module in modules:
        try:
            load_plugin_module(module)
        except DfrdError as exc:
            raise click.BadParameter(str(exc).removeprefix(f"--plugin {module}: "), ctx, param) from None
    return modules


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dfrd-bench")
@click.option("--debug", is_flag=True, help="show the full traceback of every error (also DFRD_DEBUG=1)")
@click.option("--plugin", "plugins", multiple=True, metavar="MODULE", envvar="DFRD_PLUGINS",
              callback=_load_plugin_modules, expose_value=True,
              help="import this module's method plugins for this command (repeatable; $DFRD_PLUGINS: "
                   "space-separated modules); installed plugins need no option")
def main(debug: bool = False, plugins: Tuple[str, ...] = ()) -> None:
    """dfrd-bench: data-free robustness distillation, evaluated per class."""


# ---------------------------------------------------------------------------------------------- list
def _settings_text(vals: Dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in vals.items())


def _methods_table(names) -> str:
    """Each method in table order with what tables and figures read from its MethodInfo, and its
    variants (`paper`, the default, first) where it declares any."""
    from tabulate import tabulate

    from .method import METHODS

    rows = []
    for n in names:
        cls = METHODS.get(n)
        role = "proposed" if cls.info.proposed else "baseline"
        variants = ", ".join(["paper"] + sorted(cls.variants)) if cls.variants else ""
        rows.append([n, cls.info.label, cls.info.family, "yes" if cls.info.rslad_stage else "", role, cls.summary,
                     variants])
    return tabulate(rows, headers=["method", "label", "family", "RSLAD stage", "role", "summary", "variants"])


def _presets_table(names, with_runner: bool) -> str:
    """The runner's preset layers and each method's own preset and variant layers (--set variant=NAME)."""
    from tabulate import tabulate

    from .config import PRESET_PARENTS, RUNNER_PRESETS
    from .method import METHODS

    rows = []
    if with_runner:
        for p, per in RUNNER_PRESETS.items():  # every registered preset; one without runner settings too
            layers = [(ds, vals) for ds, vals in per.items() if vals] or [("*", {})]
            rows += [[p + (f" (on {PRESET_PARENTS[p]})" if p in PRESET_PARENTS else ""), "runner", ds,
                      ", ".join(f"{k}={v}" for k, v in vals.items()) or "(none)"] for ds, vals in layers]
    rows += [[p, n, ds, _settings_text(vals)]
             for n in names for p, per in METHODS.get(n).presets.items() for ds, vals in per.items() if vals]
    text = tabulate(rows, headers=["preset", "layer", "dataset", "settings (on top of the defaults)"])
    variants = []
    for n in names:
        for v, layers in METHODS.get(n).variants.items():
            per = layers if "*" in layers else {"*": layers}  # flat, or per-preset layers (config._variant_layers)
            variants += [[f"{n} variant={v}", where, _settings_text(vals) or "(none)"] for where, vals in per.items()]
    if variants:
        text += "\n\n" + tabulate(variants, headers=["variant", "preset/dataset", "settings (on top of the preset)"])
    return text


@main.command("list")
@click.argument("what", type=click.Choice(["datasets", "models", "layouts", "teachers", "attacks", "methods",
                                           "presets"]))
@click.option("--method", "only", default=None, help="methods, presets: this method only")
@click.option("--robustbench", is_flag=True,
              help="teachers: every RobustBench Linf entry, its family, size and the methods it can teach")
@click.option("--dataset", "rb_dataset", type=click.Choice(["cifar10", "cifar100"]), default=None,
              help="teachers --robustbench: this dataset's entries only")
@friendly
def list_cmd(what: str, only: Optional[str], robustbench: bool, rb_dataset: Optional[str]) -> None:
    """List the datasets, models, checkpoint layouts, teachers, attacks, methods or presets the suite knows."""
    from tabulate import tabulate

    if what in ("methods", "presets"):
        from .method import METHODS, load_plugins, table_order

        known = load_plugins()
        names = table_order(known) if only is None else [METHODS.get(only).name]
        click.echo(_methods_table(names) if what == "methods" else _presets_table(names, only is None))
    elif what == "datasets":
        from .data import DATASETS

        rows = [[d.name, d.num_classes, f"{d.image_size}x{d.image_size}", ", ".join(d.splits), d.worst_fraction_metric]
                for d in DATASETS.values()]
        click.echo(tabulate(rows, headers=["dataset", "classes", "size", "splits", "paper worst metric"]))
    elif what == "models":
        from .models import MODEL_INFO, MODELS

        rows = [[n, "yes" if MODEL_INFO[n]["cpu_sized"] else "", MODELS.describe(n)] for n in MODELS.names()]
        rows.append(["timm:<name>", "", "any timm model (no pretrained download)"])
        rows.append(["py:FILE.py:FACTORY", "", "a network your code builds (docs/models.md)"])
        click.echo(tabulate(rows, headers=["model", "cpu-sized", "description"]))
    elif what == "layouts":
        from .models.layouts import LAYOUTS, NATIVE_LAYOUT

        rows = [[lay.name, "all" if lay.archs == ("*",) else ", ".join(lay.archs), lay.normalize, lay.description]
                for lay in (NATIVE_LAYOUT,) + LAYOUTS]
        click.echo(tabulate(rows, headers=["layout", "--arch", "normalisation", "keys"],
                            maxcolwidths=[None, 30, None, 60]))
    elif what == "teachers" and robustbench:
        from .teachers import robustbench_rows

        rows = [[r["name"], r["dataset"], r["family"], r["params"], r["methods"], r["note"]]
                for r in robustbench_rows([rb_dataset] if rb_dataset else ["cifar10", "cifar100"])]
        click.echo(tabulate(rows, headers=["robustbench:<name>", "dataset", "family", "params", "methods", "note"],
                            maxcolwidths=[None, None, None, None, 40, 50]))
    elif what == "teachers":
        from .teachers import list_teachers

        rows = [[t["name"], t["arch"], t["dataset"], t["kind"], t["note"]] for t in list_teachers()]
        click.echo(tabulate(rows, headers=["teacher", "arch", "dataset", "kind", "note"]))
    else:
        from .attacks import ATTACKS

        click.echo(tabulate([[n, ATTACKS.describe(n)] for n in ATTACKS.names()], headers=["attack", "description"]))


# ---------------------------------------------------------------------------------------------- doctor
@main.command("doctor")
@click.option("--device", default="auto", show_default=True, help="where the compile check runs (auto: a GPU if any)")
@click.option("--no-compile", is_flag=True, help="skip the tiny torch.compile check (tens of seconds on a CPU)")
@click.option("--data-root", default=None, envvar="DFRD_DATA", help="where datasets are looked for (default $DFRD_DATA)")
@click.option("--model-dir", default=None, envvar="DFRD_MODELS", help="robustbench model folder")
@click.option("--out", default=None, help="also write the facts as JSON here")
@friendly
def doctor_cmd(device, no_compile, data_root, model_dir, out) -> None:
    """What will and will not work here before a long run: torch, CUDA and the driver, GPUs and bf16,
    torch.compile, the data root, AutoAttack, robustbench and the teachers."""
    from .doctor import format_report, report
    from .utils import atomic_write_json

    facts = report(device=device, run_compile=not no_compile, data_root=data_root, model_dir=model_dir)
    click.echo(format_report(facts))
    if out:
        atomic_write_json(out, facts, allow_nan=False)
        click.echo(f"wrote {out}")


# ---------------------------------------------------------------------------------------------- eval
def _summary_table(result: Dict[str, Any]) -> str:
    from tabulate import tabulate

    rows = [[name, m["n"], f"{m['avg']:.2f}", f"{m['worst']:.2f}", f"{m['worst10']:.2f}", "-" if m["nsd"] is None else f"{m['nsd']:.3f}",
             f"{m['seconds']:.0f}s"] for name, m in result["attacks"].items()]
    return tabulate(rows, headers=["attack", "n", "avg %", "worst %", "worst10 %", "NSD", "time"])


def run_evaluation(*args: Any, progress_path: Optional[str] = None, **kwargs: Any) -> Dict[str, Any]:
    """evaluator.evaluate_model with the progress lines of a resumable evaluation on stderr."""
    from .evaluator import evaluate_model

    log = (lambda line: click.echo(line, err=True)) if progress_path else None
    return evaluate_model(*args, progress_path=progress_path, log=log, **kwargs)


eval_options = [
    click.option("--limit", type=int, default=None, help="evaluate a class-stratified seeded subset of N test images"),
    click.option("--eps", default=DEFAULT_EPS_TEXT, callback=_eps, help="L-inf budget, e.g. 8/255 or 0.0078"),
    click.option("--attacks", default="clean,fgsm,pgd20,cw,aa", show_default=True, help="comma list or 'all'"),
    click.option("--aa-limit", type=int, default=None, help="run AutoAttack on a stratified subset of N images only"),
    click.option("--pgd-steps", type=int, default=20, show_default=True),
    click.option("--cw-steps", type=int, default=30, show_default=True),
    click.option("--batch-size", type=int, default=256, show_default=True),
    click.option("--seed", type=int, default=0, show_default=True),
    click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1 ..."),
]


model_help = ("robustbench:<name>, a checkpoint path, a TorchScript file, py:FILE.py:FACTORY or py:MODULE:FACTORY, "
              "or a bundled teacher")
arch_help = ("architecture of a foreign checkpoint: a name from `list models`, timm:<name>, or py:FILE.py:FACTORY "
             "that builds it")
layout_help = "key layout of a foreign checkpoint (`list layouts`; detected when only one fits)"
normalize_help = ("the normalisation the model expects: none, dataset or m1,m2,m3/s1,s2,s3 (default: the "
                  "checkpoint's, else the detected layout's)")


@main.command("eval")
@click.option("--model", "model_spec", required=True, help=model_help)
@click.option("--arch", default=None, help=arch_help)
@click.option("--layout", default=None, help=layout_help)
@click.option("--normalize", default=None, help=normalize_help)
@click.option("--model-dir", default=None, envvar="DFRD_MODELS", help="robustbench model folder")
@with_options(data_options)
@with_options(eval_options)
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="write the result JSON here")
@click.option("--resume-file", type=click.Path(dir_okay=False), default=None,
              help="save the progress here after every batch and continue from it when rerun (removed when done)")
@friendly
def eval_cmd(model_spec, arch, layout, normalize, model_dir, dataset, source, data_root, limit, eps, attacks, aa_limit,
             pgd_steps, cw_steps, batch_size, seed, device, out, resume_file) -> None:
    """Evaluate a model per class under clean, FGSM, PGD-20, CW-inf and AutoAttack."""
    from .evaluator import parse_attacks
    from .store import write_result
    from .store import check_writable
    from .teachers import describe_loaded, describe_spec, load_teacher

    attacks = ",".join(parse_attacks(attacks))
    for name, value in (("--limit", limit), ("--aa-limit", aa_limit), ("--pgd-steps", pgd_steps),
                        ("--cw-steps", cw_steps), ("--batch-size", batch_size)):
        if value is not None and value < 1:
            raise click.BadParameter(f"must be at least 1, got {value}", param_hint=name)
    from .config import MAX_BATCH, MAX_SEED

    if batch_size > MAX_BATCH:
        raise click.BadParameter(f"must be at most {MAX_BATCH}, got {batch_size} (a larger batch does not fit in "
                                 "memory)", param_hint="--batch-size")
    if not 0 <= seed <= MAX_SEED:
        raise click.BadParameter(f"must be a whole number in [0, {MAX_SEED}], got {seed}", param_hint="--seed")
    from .config import ConfigError, check_eps

    try:
        check_eps(eps, "--eps")  # the range of every budget (config.EPS_RANGE)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    for path in (out, resume_file):
        if path:
            check_writable(path)  # before the evaluation, so that a read-only --out loses no work
    model = load_teacher(model_spec, dataset, arch=arch, model_dir=model_dir, layout=layout, normalize=normalize)
    if model.origin.get("normalize", {}).get("source", "the checkpoint") != "the checkpoint":
        click.echo(describe_loaded(model), err=True)  # a choice made for the user: say it before a long evaluation
    try:
        result = run_evaluation(model, describe_spec(model_spec, model), dataset, source, data_root, limit, attacks,
                                eps, seed, device, batch_size, aa_limit, pgd_steps=pgd_steps, cw_steps=cw_steps,
                                progress_path=resume_file)
    except KeyboardInterrupt:
        if not resume_file:
            raise
        click.echo(f"interrupted: the finished batches are saved in {resume_file}; run the same command to continue",
                   err=True)
        sys.exit(130)
    click.echo(f"{model_spec} on {dataset} ({result['data_source']['kind']}, n={result['data_source']['n']}), eps {eps:.5f}")
    click.echo(_summary_table(result))
    if out:
        click.echo(f"wrote {write_result(result, out)}")
    if resume_file:  # only now: a failed write above keeps the finished attacks
        Path(resume_file).unlink(missing_ok=True)


@main.command("outcomes")
@click.argument("results", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--attacks", default="clean,fgsm,pgd20,cw", show_default=True,
              help="attacks whose per-image outcomes to add (comma list or 'all')")
@click.option("--data-root", default=None, envvar="DFRD_DATA", help="where the run's test split is found")
@click.option("--device", default="auto", show_default=True)
@friendly
def outcomes_cmd(results, attacks, data_root, device) -> None:
    """Add per-image outcomes to finished runs made before results recorded them (re-evaluates the run's
    student with its recorded settings; numbers that differ are replaced and the old ones kept: docs/reporting.md)."""
    from .evaluator import parse_attacks
    from .outcomes import add_outcomes

    names = parse_attacks(attacks)
    for i, path in enumerate(results, 1):
        report = add_outcomes(path, names, device=device, data_root=data_root,
                              log=lambda line: click.echo(f"  {line}", err=True))
        if not report:
            click.echo(f"[{i}/{len(results)}] {path}: outcomes already there")
            continue
        parts = [f"{a} {'same numbers' if r['matched'] else str(r['images_changed']) + ' images changed'}"
                 for a, r in report.items()]
        click.echo(f"[{i}/{len(results)}] {path}: " + ", ".join(parts))


# ---------------------------------------------------------------------------------------------- run
@main.command("run")
@click.option("--method", required=True, help="a registered method (see `list methods`)")
@with_options(data_options)
@click.option("--teacher", default=None, help="teacher spec (default: the preset's)")
@click.option("--teacher-arch", default=None, help="architecture of a foreign teacher checkpoint (as eval's --arch)")
@click.option("--teacher-layout", default=None, help="key layout of a foreign teacher checkpoint (as eval's --layout)")
@click.option("--teacher-normalize", default=None, help="the teacher's input normalisation (as eval's --normalize)")
@click.option("--student", default=None, help="student architecture (default: the preset's)")
@click.option("--preset", type=PRESET, default="quick", show_default=True,
              help="a registered preset (`list presets`: paper, gpu, standard, quick, smoke and plugins')")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="override any setting (repeatable)")
@click.option("--attacks", default=None, help="attacks for the final evaluation (default: the preset's)")
@click.option("--out", default="runs", show_default=True, help="folder that holds the run folder")
@click.option("--name", default=None, help="run folder name (default: dataset-method-student-preset-seed)")
@click.option("--resume", is_flag=True, help="continue an interrupted run from its last checkpoint")
@click.option("--device", default="auto", show_default=True)
@click.option("--model-dir", default=None, envvar="DFRD_MODELS", help="robustbench model folder")
@click.option("--tensorboard", default=None, metavar="DIR",
              help="also log every epoch record, the weights p_c and the sample grid to TensorBoard under DIR/<run>")
@friendly
def run_cmd(method, dataset, source, data_root, teacher, teacher_arch, teacher_layout, teacher_normalize, student, preset,
            seed, sets, attacks, out, name, resume, device, model_dir, tensorboard) -> None:
    """Distil a student with one method, evaluate it per class, and write the result JSON.

    `torchrun --nproc_per_node=N -m dfrd_bench.cli run ...` makes it one data-parallel run over N
    processes (GPUs); see docs/running.md, "Data-parallel runs"."""
    from .config import parse_overrides
    from .distributed import env_rank
    from .runner import RunRequest, run

    overrides = parse_overrides(sets)
    for key, value in (("teacher", teacher), ("teacher_arch", teacher_arch), ("teacher_layout", teacher_layout),
                       ("teacher_normalize", teacher_normalize), ("student", student), ("attacks", attacks)):
        if value is not None:
            overrides[key] = value
    req = RunRequest(method=method, dataset=dataset, preset=preset, seed=seed, overrides=overrides, source=source,
                     data_root=data_root, out=out, run_name=name, resume=resume, device=device, model_dir=model_dir,
                     tensorboard=tensorboard)
    main_process = env_rank() == 0  # the other processes of a torchrun stay quiet
    try:
        result = run(req, log=click.echo)
    except KeyboardInterrupt:
        if main_process:
            click.echo("interrupted: the last finished epoch and evaluation batch are saved; run the same command "
                       "with --resume", err=True)
        sys.exit(130)
    if main_process:
        click.echo(_summary_table(result))
        click.echo(f"wrote {Path(result['run_dir']) / 'result.json'}")


# ---------------------------------------------------------------------------------------------- reproduce
@main.command("reproduce")
@click.argument("result_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", default=None, help="folder for the re-run's run folder (default: a new temporary folder; "
                                          "never the original's)")
@click.option("--device", default=None, help="default: the recorded device (cpu, cuda)")
@click.option("--attacks", default=None, help="comma list of the recorded attacks to re-run (default: all of them)")
@click.option("--source", default=None, help="the evaluation data (default: the recorded path; its sha256 must match)")
@click.option("--data-root", default=None, envvar="DFRD_DATA", help="where datasets are looked for (default $DFRD_DATA)")
@click.option("--model-dir", default=None, envvar="DFRD_MODELS", help="robustbench model folder")
@click.option("--report", "report_file", default=None, metavar="FILE.json", help="also write the comparison as JSON")
@click.option("--dry-run", is_flag=True, help="print what would run and the identity checks, without training")
@friendly
def reproduce_cmd(result_file, out, device, attacks, source, data_root, model_dir, report_file, dry_run) -> None:
    """Re-run a run's RESULT_FILE from its recorded settings and compare every number with it.

    The teacher checkpoint and the evaluation data must be the recorded ones (sha256); each number is
    then bit-identical, within the committed seed spread, or outside it (docs/running.md)."""
    from .reproduce import dry_run_text, markdown, plan, report, reproduce
    from .store import check_writable
    from .utils import atomic_write_json

    if report_file and not dry_run:
        check_writable(report_file)  # before the re-run, so that a read-only --report loses no work
    planned = plan(Path(result_file), out=out, device=device, attacks=attacks, source=source, data_root=data_root,
                   model_dir=model_dir)
    if dry_run:
        click.echo(dry_run_text(planned))
        return
    numbers, path = reproduce(planned, log=lambda line: click.echo(line, err=True))
    click.echo(markdown(planned, numbers))
    if report_file:
        atomic_write_json(report_file, report(planned, numbers, path))
        click.echo(f"wrote {report_file}")


# ---------------------------------------------------------------------------------------------- bench
@main.command("bench")
@click.option("--method", required=True, help="a registered method (see `list methods`)")
@click.option("--dataset", default="cifar10", show_default=True)
@click.option("--preset", type=PRESET, default="paper", show_default=True,
              help="whose per-iteration settings (attack steps, bottleneck steps, ...) are timed")
@click.option("--teacher", default="random:wrn-16-2", show_default=True,
              help="teacher spec; random:<arch> times an untrained model of that architecture")
@click.option("--student", default="wrn-16-1", show_default=True, help="student architecture")
@click.option("--batch-size", type=int, default=64, show_default=True, help="student and synthesis batch")
@click.option("--device", default="auto", show_default=True)
@click.option("--repeats", type=int, default=5, show_default=True, help="timed repeats per stage (medians)")
@click.option("--warmup", type=int, default=1, show_default=True, help="untimed repeats first (compilation, caches)")
@click.option("--eval-images", type=int, default=256, show_default=True, help="images per evaluation stage")
@click.option("--gen-extra-iters", type=int, default=2, show_default=True,
              help="R: a generator iteration is timed as (stage of 1 + R iterations - stage of 1) / R")
@click.option("--attacks", default="clean,fgsm,pgd20,cw", show_default=True, help="evaluation stages to time (or all)")
@click.option("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="override any setting (repeatable)")
@click.option("--out", default=None, help="write the report JSON here")
@friendly
def bench_cmd(method, dataset, preset, teacher, student, batch_size, device, repeats, warmup, eval_images,
              gen_extra_iters, attacks, threads, sets, out) -> None:
    """Time each stage of a method (generator iteration, student iteration, evaluation per attack)
    beside its single-pass bound; docs/running.md says how to read it."""
    from .bench import BenchRequest, bench, format_report, write_report
    from .config import parse_overrides

    req = BenchRequest(method=method, dataset=dataset, preset=preset, teacher=teacher, student=student,
                       batch_size=batch_size, device=device, repeats=repeats, warmup=warmup, eval_images=eval_images,
                       gen_extra_iters=gen_extra_iters, attacks=attacks, overrides=parse_overrides(sets),
                       threads=threads)
    report = bench(req, log=lambda line: click.echo(line, err=True))
    click.echo(format_report(report))
    if out:
        write_report(report, Path(out))
        click.echo(f"wrote {out}")


# ---------------------------------------------------------------------------------------------- estimate
def _fractions(text: str, what: str) -> Tuple[float, float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise click.BadParameter(f"write LOW,HIGH (e.g. 0.15,0.35), got {text!r}", param_hint=what) from None
    if len(values) == 1:
        values = values * 2
    if len(values) != 2:
        raise click.BadParameter(f"write LOW,HIGH (e.g. 0.15,0.35), got {text!r}", param_hint=what)
    return values[0], values[1]


@main.command("estimate")
@click.option("--method", required=True, help="a registered method (see `list methods`)")
@click.option("--dataset", default="cifar10", show_default=True)
@click.option("--preset", type=PRESET, default="paper", show_default=True,
              help="a registered preset (`list presets`)")
@click.option("--teacher", default=None, help="teacher spec (default: the preset's; random:<arch> for any architecture)")
@click.option("--student", default=None, help="student architecture (default: the preset's)")
@click.option("--device", "devices", default="h100", show_default=True,
              help="comma list of devices to time on: h100, h200, a100")
@click.option("--utilization", default="0.1,0.35", show_default=True,
              help="LOW,HIGH fraction of the training precision's peak that training passes reach")
@click.option("--eval-utilization", default="0.3,0.6", show_default=True,
              help="LOW,HIGH fraction of the fp32 peak that evaluation passes reach")
@click.option("--clean-accuracy", type=float, default=0.8, show_default=True,
              help="assumed clean accuracy of the student (points the evaluator attacks)")
@click.option("--robust-accuracy", type=float, default=0.5, show_default=True,
              help="assumed robust accuracy (points AutoAttack's later attacks see)")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="override any setting (repeatable)")
@click.option("--out", default=None, help="write the estimate JSON here")
@click.option("--into", default=None, metavar="FILE",
              help="also put the parts as a Markdown table between <!-- BLOCK:start --> and <!-- BLOCK:end --> in FILE")
@click.option("--block", default="estimate", show_default=True, help="the marker name for --into")
@friendly
def estimate_cmd(method, dataset, preset, teacher, student, devices, utilization, eval_utilization, clean_accuracy,
                 robust_accuracy, sets, out, into, block) -> None:
    """FLOPs of a whole run per part (generation, student stage, the method's extra passes, evaluation
    with AutoAttack), counted from the run's real architectures, and its ESTIMATED time on named GPUs
    at a stated utilisation (docs/speed.md)."""
    from .config import parse_overrides
    from .estimate import EstimateRequest, estimate, format_estimate
    from .utils import atomic_write_json

    overrides = parse_overrides(sets)
    for key, value in (("teacher", teacher), ("student", student)):
        if value is not None:
            overrides[key] = value
    req = EstimateRequest(method=method, dataset=dataset, preset=preset, overrides=overrides,
                          devices=tuple(d.strip() for d in devices.split(",") if d.strip()),
                          train_utilization=_fractions(utilization, "--utilization"),
                          eval_utilization=_fractions(eval_utilization, "--eval-utilization"),
                          clean_accuracy=clean_accuracy, robust_accuracy=robust_accuracy)
    result = estimate(req)
    click.echo(format_estimate(result))
    if out:
        atomic_write_json(out, result, allow_nan=False)
        click.echo(f"wrote {out}")
    if into:
        from .estimate import markdown_table
        from .utils import replace_between_markers

        replace_between_markers(into, block, markdown_table(result, req.devices[0]))
        click.echo(f"wrote the table into {into}")


# ---------------------------------------------------------------------------------------------- sweep
def _comma(text: Optional[str]):
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


@main.command("sweep")
@click.argument("sweep_file", required=False)
@click.option("--method", "methods", default=None, help="comma list of methods")
@click.option("--dataset", "datasets", default=None, help="comma list of datasets")
@click.option("--student", "students", default=None, help="comma list of students (default: the preset's)")
@click.option("--seed", "seeds", default=None, help="comma list of seeds (default 0)")
@click.option("--grid", "grids", multiple=True, metavar="KEY=V1,V2", help="a setting swept over values (repeatable)")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="a setting for every run (repeatable)")
@click.option("--preset", type=PRESET, default=None, help="a registered preset (`list presets`); default: quick")
@click.option("--teacher", default=None)
@click.option("--source", default=None)
@click.option("--data-root", default=None, help="data root for every run (default: each run's $DFRD_DATA)")
@click.option("--out", default=None, help="folder of the run folders (default: runs)")
@click.option("--device", default=None)
@click.option("--dry-run", is_flag=True, help="list the runs and their state without running")
@click.option("--emit", default=None, metavar="MODE",
              help="print the unfinished runs as commands instead: local, gpus:N (N queues, one GPU each), "
                   "slurm (array, one GPU per run), slurm:N or torchrun:N (each run data-parallel over N GPUs)")
@friendly
def sweep_cmd(sweep_file, methods, datasets, students, seeds, grids, sets, preset, teacher, source, data_root, out,
              device, dry_run, emit) -> None:
    """Run a grid of runs one after another (finished ones skipped, interrupted ones resumed), or print it.

    The grid comes from SWEEP_FILE (YAML/JSON, see docs/running.md) and/or the options; options win.
    """
    from .sweep import emit as emit_lines, load_sweep_file, plan, run_sweep, spec_from

    data: Dict[str, Any] = load_sweep_file(sweep_file) if sweep_file else {}
    for key, value in (("methods", _comma(methods)), ("datasets", _comma(datasets)), ("students", _comma(students)),
                       ("seeds", _comma(seeds)), ("preset", preset), ("teacher", teacher), ("source", source),
                       ("data_root", data_root), ("out", out), ("device", device)):
        if value is not None:
            data[key] = value
    for item in grids:
        key, _, values = item.partition("=")
        if not values:
            raise click.ClickException(f"--grid {item}: write KEY=V1,V2")
        data.setdefault("grid", {})[key.strip()] = _comma(values)
    for item in sets:
        key, _, value = item.partition("=")
        data.setdefault("set", {})[key.strip()] = value
    planned = plan(spec_from(data))
    if emit:
        click.echo(emit_lines(planned, emit))
        return
    counts = {s: sum(p.status == s for p in planned) for s in ("done", "resume", "new")}
    merged = sum(len(p.merged) for p in planned)
    click.echo(f"sweep: {len(planned)} runs ({counts['done']} finished, {counts['resume']} to resume, "
               f"{counts['new']} new)" + (f"; {merged} grid point{'s' if merged != 1 else ''} with the same "
                                          "resolved settings as another merged into it" if merged else ""))
    if dry_run:
        for p in planned:
            click.echo(f"  {p.status:6s} {p.run_dir}")
        return
    ran, skipped, failures = run_sweep(planned, log=click.echo)
    click.echo(f"sweep done: {ran} ran, {skipped} skipped (finished), {len(failures)} failed")
    if failures:
        for f in failures:
            click.echo(f"  {f}", err=True)
        sys.exit(1)


# ---------------------------------------------------------------------------------------------- table
@main.command("table")
@click.option("--table", "which", default="all", show_default=True,
              help="paper table number 1-9, a comma list, all, variants (every method/variant/setting "
                   "found, side by side), runs (every run with its cost) or claims (the paper's claims "
                   "answered with bootstrap intervals; Markdown)")
@click.option("--attacks", default="all", show_default=True, help="all, or a comma list of clean,fgsm,pgd20,cw,aa")
@click.option("--format", "fmt", type=click.Choice(["markdown", "latex"]), default="markdown", show_default=True)
@click.option("--results", multiple=True, default=["results"], show_default=True,
              help="folder searched for result JSONs (repeatable)")
@click.option("--paper", is_flag=True, help="put the paper's published number and the difference beside ours")
@click.option("--ci", is_flag=True, help="add a 95%% bootstrap interval to every worst-class cell and, in the method "
                                        "tables, mark cells significantly better/worse than the best baseline")
@click.option("--out", default=None, help="write to this file instead of printing")
@click.option("--into", default=None, metavar="FILE",
              help="replace the block between <!-- tables:start --> and <!-- tables:end --> in FILE")
@click.option("--strict", is_flag=True, help="exit with status 1 when a result file could not be read")
@friendly
def table_cmd(which, attacks, fmt, results, paper, ci, out, into, strict) -> None:
    """The paper's tables rebuilt from the result JSONs under --results.

    Every file that should be a result and could not be read is listed under the tables (and on
    stderr); with --strict the command then exits with status 1."""
    from .evaluator import parse_attacks
    from .report.collect import unreadable_results
    from .report.tables import build_tables, known_tables, render, run_list, table_numbers
    from .utils import atomic_write_bytes, replace_between_markers

    for folder in results:
        if not Path(folder).is_dir():
            raise click.ClickException(f"--results {folder} is not a folder")
    numbers = list(table_numbers()) if which == "all" else [t.strip() for t in which.split(",") if t.strip()]
    for n in numbers:
        if n not in known_tables():
            raise click.ClickException(f"unknown table {n!r}: choose from {', '.join(known_tables())} or all "
                                       f"(plugins add their own: docs/reporting.md)")
    wanted = parse_attacks(attacks)
    parts, empty = [], []
    for n in numbers:
        if n == "runs":
            parts.append(run_list(results, fmt))
            continue
        if n == "claims":
            from .report.claims import claims_section

            text = claims_section(results)
            parts.append(text if fmt == "markdown" else "\n".join(f"% {line}" for line in text.splitlines()))
            continue
        built = [t for t in build_tables(n, results, wanted, paper=paper, ci=ci) if t.blocks and t.blocks[0][1]]
        if built:
            parts.append(render(built, fmt))
        else:
            empty.append(n)
    if empty:
        note = (f"No runs under {', '.join(results)} for table{'s' if len(empty) > 1 else ''} {', '.join(empty)} "
                f"(pass --paper to show the published numbers alone).")
        parts.append(note if fmt == "markdown" else f"% {note}")
    problems = unreadable_results(list(results))
    if problems:
        lines = [f"Not in these tables: {len(problems)} result file{'s' if len(problems) != 1 else ''} could not be read:"]
        lines += [f"- {path}: {reason}" for path, reason in problems]
        parts.append("\n".join(lines) if fmt == "markdown" else "\n".join(f"% {line}" for line in lines))
        for path, reason in problems:
            click.echo(f"warning: could not read {path}: {reason}", err=True)
    text = "\n".join(parts)
    if into:
        replace_between_markers(into, "tables", text)
        click.echo(f"wrote the tables into {into}")
    elif out:
        atomic_write_bytes(out, text.encode())
        click.echo(f"wrote {out}")
    else:
        click.echo(text)
    if strict and problems:
        sys.exit(1)


# ---------------------------------------------------------------------------------------------- plot
@main.command("plot")
@click.option("--figure", "which", default="all", show_default=True,
              help="a figure (1, 2, 6, 8, 9 and those plugins add; docs/reporting.md), a comma list, or all")
@click.option("--results", multiple=True, default=["results"], show_default=True,
              help="folder searched for result JSONs (repeatable)")
@click.option("--out", default="results/figures", show_default=True, help="folder for the PNG and PDF files")
@click.option("--method", default=None, help="whose confusion matrices Fig. 2 shows (default: the proposed method)")
@friendly
def plot_cmd(which, results, out, method) -> None:
    """The paper's figures from the result JSONs under --results, as PNG and PDF."""
    from .report.collect import unreadable_results
    from .report.plots import figure_names, plot
    from .store import check_writable

    figures = figure_names() if which == "all" else [f.strip() for f in which.split(",") if f.strip()]
    check_writable(Path(out) / "figure.png")  # a read-only --out: one line before any figure is drawn
    for path, reason in unreadable_results(list(results)):  # listed, not silently left out of the figures
        click.echo(f"warning: could not read {path}: {reason}", err=True)
    written = plot(figures, results, out, method=method, log=click.echo)
    for path in written:
        click.echo(f"wrote {path}")


# ---------------------------------------------------------------------------------------------- teacher
@main.group("teacher")
def teacher_group() -> None:
    """Train robust teachers."""


@teacher_group.command("train")
@click.option("--arch", default="resnet20", show_default=True)
@with_options(data_options)
@click.option("--method", type=click.Choice(["pgd", "trades", "fgsm-rs", "n-fgsm"]), default="n-fgsm", show_default=True)
@click.option("--epochs", type=int, default=10, show_default=True)
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--lr", type=float, default=0.2, show_default=True, help="peak learning rate")
@click.option("--schedule", type=click.Choice(["onecycle", "cosine", "piecewise"]), default="onecycle", show_default=True)
@click.option("--weight-decay", type=float, default=5e-4, show_default=True)
@click.option("--eps", default=DEFAULT_EPS_TEXT, callback=_eps, show_default=True)
@click.option("--step", default=None, callback=_eps, help="attack step (default 2/255; 1.25 eps for fgsm-rs; eps for n-fgsm)")
@click.option("--attack-steps", type=int, default=10, show_default=True, help="inner steps for pgd/trades")
@click.option("--trades-beta", type=float, default=6.0, show_default=True)
@click.option("--val-size", type=int, default=1000, show_default=True, help="train images held out as a monitor")
@click.option("--limit-train", type=int, default=None, help="train on a stratified subset (smoke runs)")
@click.option("--max-steps", type=int, default=None, help="stop after N optimiser steps (smoke runs)")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]), default="auto", show_default=True,
              help="training passes: auto = bf16 autocast on CUDA, fp32 elsewhere")
@click.option("--channels-last", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True,
              help="channels-last weights: auto = on CUDA only")
@click.option("--out", default="runs/teacher", show_default=True, help="run folder (resumable)")
@click.option("--resume/--no-resume", default=True, show_default=True)
@click.option("--eval-attacks", default="clean,pgd20", show_default=True, help="attacks for the final test evaluation ('' = none)")
@click.option("--eval-limit", type=int, default=None, help="stratified test subset for the final evaluation")
@click.option("--aa-limit", type=int, default=None)
@friendly
def teacher_train(arch, dataset, source, data_root, method, epochs, batch_size, lr, schedule, weight_decay, eps, step,
                  attack_steps, trades_beta, val_size, limit_train, max_steps, seed, device, precision, channels_last,
                  out, resume, eval_attacks, eval_limit, aa_limit) -> None:
    """Adversarially train a teacher (resumable), then evaluate it on the test split."""
    from .config import check_seed
    from .store import write_result
    from .teacher_training import TeacherTrainConfig, train_teacher

    check_seed(seed, "--seed")  # now, not in the evaluation after training
    cfg = TeacherTrainConfig(arch=arch, dataset=dataset, source=source, data_root=data_root, method=method,
                             epochs=epochs, batch_size=batch_size, lr=lr, schedule=schedule,
                             weight_decay=weight_decay, eps=eps, step=step, attack_steps=attack_steps,
                             trades_beta=trades_beta, val_size=val_size, limit_train=limit_train,
                             max_steps=max_steps, seed=seed, device=device, out=out, precision=precision,
                             channels_last={"auto": None, "on": True, "off": False}[channels_last])
    trained = train_teacher(cfg, resume=resume, log=click.echo)
    click.echo(f"teacher written to {trained['checkpoint']}")
    if eval_attacks:
        from .checkpoints import sha256_file

        result = run_evaluation(trained["model"], {"spec": trained["checkpoint"], "checkpoint_sha256": sha256_file(trained["checkpoint"])},
                                dataset, source, data_root, eval_limit, eval_attacks, eps, seed, device, 256, aa_limit,
                                kind="teacher", extra={"recipe": dataclasses.asdict(cfg)})
        click.echo(_summary_table(result))
        click.echo(f"wrote {write_result(result, Path(out) / 'eval.json')}")


@teacher_group.command("estimate")
@click.option("--arch", default="resnet18", show_default=True)
@click.option("--dataset", default="cifar10", show_default=True)
@click.option("--method", type=click.Choice(["pgd", "trades", "fgsm-rs", "n-fgsm"]), default="n-fgsm", show_default=True)
@click.option("--epochs", type=int, default=10, show_default=True)
@click.option("--attack-steps", type=int, default=10, show_default=True)
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--device", "devices", default="h100", show_default=True, help="comma list: h100, h200, a100")
@friendly
def teacher_estimate(arch, dataset, method, epochs, attack_steps, batch_size, devices) -> None:
    """FLOPs and ESTIMATED GPU time of `teacher train` with these settings (bf16 passes)."""
    from .estimate import _hms, teacher_training_estimate

    r = teacher_training_estimate(arch, method, epochs, dataset, attack_steps, batch_size,
                                  devices=tuple(d.strip() for d in devices.split(",") if d.strip()))
    click.echo(f"teacher train {arch} {method} x {epochs} epochs ({r['steps']:,} steps of {batch_size}): "
               f"{r['total_flops'] / 1e15:,.1f} PFLOP")
    for name, t in r["times"].items():
        fast, slow = sorted(t["seconds"])
        click.echo(f"ESTIMATE on one {t['device']}: {_hms(fast)} to {_hms(slow)} (bf16 passes at "
                   f"{max(t['utilization']):.0%} to {min(t['utilization']):.0%} of peak; validation and evaluation "
                   "not included)")


@teacher_group.command("bundle")
@click.option("--checkpoint", required=True, type=click.Path(exists=True, dir_okay=False), help="teacher.pt of a training run")
@click.option("--name", required=True, help="name to register, e.g. cpu-resnet20-cifar10")
@click.option("--eval", "eval_json", required=True, multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="result JSON(s) of `dfrd-bench eval` on this checkpoint (their numbers go on the card)")
@click.option("--command", "train_command", required=True, help="the exact command that trained it")
@click.option("--dest", default=None, help="teachers folder (default: the repository's teachers/)")
@click.option("--max-mb", type=float, default=5.0, show_default=True)
@friendly
def teacher_bundle(checkpoint, name, eval_json, train_command, dest, max_mb) -> None:
    """Copy a trained teacher into teachers/ with a card: recipe, command, sha256, measured numbers."""
    from .teachers import bundle_teacher

    card = bundle_teacher(checkpoint, name, eval_json, train_command, dest, max_mb)
    click.echo(f"bundled {name}: {card['file']} ({card['size_bytes'] / 1e6:.2f} MB, sha256 {card['sha256'][:12]}...)")


@teacher_group.command("card")
@click.argument("spec")
@click.option("--dataset", type=click.Choice(["cifar10", "cifar100"]), default="cifar10", show_default=True)
@click.option("--model-dir", default=None, envvar="DFRD_MODELS", help="robustbench model folder")
@click.option("--source", default=None, help="test images: official folder, image folder or .zip of one, or .npz")
@click.option("--data-root", default=None, envvar="DFRD_DATA", help="where datasets are looked for")
@click.option("--limit", type=int, default=None, help="clean and PGD-20 on a stratified subset of N test images "
              "(default: all)")
@click.option("--aa-limit", type=int, default=1000, show_default=True,
              help="AutoAttack on a stratified subset of N test images")
@click.option("--eps", default=DEFAULT_EPS_TEXT, callback=_eps, help="L-inf budget")
@click.option("--batch-size", type=int, default=256, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--out", default=None, help="folder of the result JSON (default: results/teachers)")
@click.option("--cards", default=None, help="folder of the card (default: teachers/robustbench)")
@friendly
def teacher_card(spec, dataset, model_dir, source, data_root, limit, aa_limit, eps, batch_size, seed, device, out,
                 cards) -> None:
    """Evaluate robustbench:NAME (clean, PGD-20, AutoAttack on a stated subset) and write its card, the one a
    bundled teacher has: which checkpoint (sha256), its family and size, and how strong it is."""
    import shlex

    from .teachers import robustbench_card

    for name, value in (("--limit", limit), ("--aa-limit", aa_limit), ("--batch-size", batch_size)):
        if value is not None and value < 1:
            raise click.BadParameter(f"must be at least 1, got {value}", param_hint=name)
    words = [spec, "--dataset", dataset] + (["--limit", str(limit)] if limit else []) + ["--aa-limit", str(aa_limit),
                                                                                       "--eps", f"{eps:.6g}"]
    card = robustbench_card(spec, dataset, "dfrd-bench teacher card " + shlex.join(words), model_dir=model_dir,
                            out=out, cards=cards, source=source, data_root=data_root, limit=limit, eps=eps,
                            seed=seed, device=device, batch_size=batch_size, aa_limit=aa_limit)
    click.echo(f"{spec} ({card['arch']}, {card['params'] / 1e6:.1f}M params, sha256 {card['sha256'][:12]}...): "
               f"{card['summary']}")


if __name__ == "__main__":  # pragma: no cover
    main()
