"""Tables, bootstrap, figures and sweeps from fixed result JSONs (and a two-run smoke sweep)."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from dfrd_bench.cli import main
from dfrd_bench.config import DEFAULTS_VERSION
from dfrd_bench.metrics import bootstrap_worst, summarize
from dfrd_bench.report.plots import figure_names, plot
from dfrd_bench.report.tables import build_tables, load_published, render, render_latex, render_markdown
from dfrd_bench.store import write_result
from dfrd_bench.sweep import emit, plan, run_sweep, spec_from
from tests.conftest import random_images

GOLDEN = Path(__file__).parent / "golden"
TEACHER_SHA = "ab" * 32


def _attack(per_class_pct, n_per_class=100):
    """Metrics of an evaluation whose class c is right on per_class_pct[c] % of n_per_class images."""
    y, pred = [], []
    k = len(per_class_pct)
    for c, pct in enumerate(per_class_pct):
        right = int(round(pct * n_per_class / 100))
        y += [c] * n_per_class
        pred += [c] * right + [(c + 1) % k] * (n_per_class - right)
    return summarize(np.array(y), np.array(pred), k)


def _result(method, seed=0, student="resnet8", clean=None, pgd=None, overrides=None, config=None, history=None,
            variant="paper"):
    clean = clean or [60] * 10
    pgd = pgd or [20] * 10
    cfg = {"rslad": True, "reweight": True, "fae": True, "utae": True, "gamma": 0.5, "utae_on": "student",
           "student_augment": True, **(config or {})}
    return {
        "kind": "run", "method": method, "variant": variant, "preset": "quick", "dataset": "cifar10", "seed": seed,
        "teacher": {"spec": "cpu-teacher", "checkpoint_sha256": TEACHER_SHA, "arch": "resnet20"},
        "student": {"arch": student, "params": 1},
        "model": {"spec": "student.pt", "arch": student, "num_classes": 10},
        "data_source": {"kind": "npz", "path": "/data/test.npz", "split": "test", "n": 1000, "sha256": "00"},
        "attacks": {"clean": _attack(clean), "pgd20": _attack(pgd)},
        "settings": {}, "config": cfg, "overrides": overrides or {}, "history": history or [],
        "provenance": {"created": f"2026-01-0{seed + 1}T00:00:00"}, "defaults_version": DEFAULTS_VERSION,
    }


@pytest.fixture
def results(tmp_path):
    """Fixed results: ZSKT, CMI and two FERD seeds for resnet8; a teacher evaluation."""
    folder = tmp_path / "results"
    write_result(_result("zskt", clean=[50] * 10, pgd=[10] * 9 + [0]), folder / "zskt" / "result.json")
    write_result(_result("cmi", clean=[55] * 10, pgd=[12] * 9 + [4]), folder / "cmi" / "result.json")
    for seed, base in ((0, 40), (1, 44)):
        hist = [{"epoch": e, "student/loss": 1.0 / e, "gen/p": [0.1] * 10} for e in (1, 2)]
        write_result(_result("ferd", seed=seed, clean=[60] * 10, pgd=[base] * 9 + [base - 30], history=hist),
                     folder / f"ferd{seed}" / "result.json")
    teacher = _result("teacher", clean=[70] * 10, pgd=[45] * 10)
    teacher.update(kind="eval", model={"spec": "t.pt", "arch": "resnet20", "num_classes": 10,
                                       "checkpoint_sha256": TEACHER_SHA})
    write_result(teacher, folder / "teacher.json")
    return folder


def test_table1_matches_the_golden_file(results):
    text = render(build_tables("1", results, attacks=["clean", "pgd20"]))
    golden = GOLDEN / "table1.md"
    if os.environ.get("DFRD_UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text()


def test_table_footer_names_runs_from_a_modified_checkout_or_several_commits(results):
    def session(commit, dirty=False, torch="2.5.0"):
        return {"event": "start", "git": {"commit": commit, "dirty": dirty}, "packages": {"torch": torch}}

    notes = lambda: "\n".join(build_tables("1", results, attacks=["clean"])[0].notes)  # noqa: E731
    assert "Provenance" not in notes()                        # the fixtures record nothing: no line
    old = _result("cmi", seed=1)                               # an old result: only provenance.git
    old["provenance"]["git"] = {"commit": "c" * 40, "dirty": True}
    old["run_dir"] = "runs/cifar10-cmi-s1"
    write_result(old, results / "cmi1" / "result.json")
    spanned = _result("zskt", seed=1)                          # clean sessions on two commits
    spanned["provenance"].update(git={"commit": "b" * 40, "dirty": False},
                                 sessions=[session("a" * 40), session("b" * 40)])
    write_result(spanned, results / "zskt1" / "result.json")
    dirty_resume = _result("ferd", seed=2)                     # its resume ran on a modified checkout
    dirty_resume["provenance"].update(git={"commit": "a" * 40, "dirty": False},
                                      sessions=[session("a" * 40), session("a" * 40, dirty=True)])
    write_result(dirty_resume, results / "ferd2" / "result.json")
    assert ("Provenance: 2 runs made from a modified checkout (dirty): cifar10-cmi-s1, ferd seed 2; "
            "1 run spans several commits or package versions (resumed on other code): zskt seed 1.") in notes()


def _seeds(folder, method, pgds, **kw):
    for seed, pgd in enumerate(pgds):
        write_result(_result(method, seed=seed, pgd=pgd, **kw), folder / f"{method}{seed}" / "result.json")


def test_method_tables_mark_the_proposed_method_against_every_baseline_and_show_cost(tmp_path):
    folder = tmp_path / "r"
    _seeds(folder, "zskt", [[10] * 9 + [s] for s in (0, 1, 2)])
    _seeds(folder, "cmi", [[12 + s] * 9 + [4] for s in (0, 1, 2)])
    _seeds(folder, "ferd", [[39 + s] * 9 + [9] for s in (0, 2, 4)])
    for name in ("zskt0", "cmi0", "ferd0", "ferd1"):
        path = folder / name / "result.json"
        r = json.loads(path.read_text())
        r["wall_seconds"] = {"train": 600.0, "eval": 120.0}
        r["provenance"]["torch_threads"] = 2
        write_result(r, path)
    (table,) = build_tables("1", folder, attacks=["pgd20"], ci=True)
    rows = {r.label: r for r in table.blocks[0][1]}
    col = ("pgd20", "avg")
    assert rows["FERD"].significance[col] == "better"                  # ~38 against ~11.5 and ~9.1, 3 seeds each
    assert set(rows["FERD"].tests[col]) == {"ZSKT", "CMI"}             # against every baseline with runs
    assert not rows["CMI"].significance and not rows["ZSKT"].significance   # baselines carry no marks
    assert 0 <= rows["FERD"].cell_p[col] < 0.05
    assert rows["FERD"].cost["train"].mean == pytest.approx(20.0)      # 600 s x 2 threads (no cpu_seconds); seed 2 has none
    text = render_markdown(table)
    assert "▲" in text and "†" not in text and "Holm" in text and "intersection-union" in text
    assert "blacktriangle" in render_latex(table)
    (plain,) = build_tables("1", folder, attacks=["pgd20"])            # without --ci: no test is run
    assert not any(r.significance for r in plain.blocks[0][1])


def test_no_mark_when_one_baseline_is_as_good_or_has_one_seed(tmp_path):
    folder = tmp_path / "r"
    _seeds(folder, "cmi", [[12 + s] * 9 + [4] for s in (0, 1, 2)])
    _seeds(folder, "fast", [[37 + s] * 9 + [8] for s in (0, 3, 6)])  # as good as FERD within its spread
    _seeds(folder, "ferd", [[39 + s] * 9 + [9] for s in (0, 2, 4)])
    (table,) = build_tables("1", folder, attacks=["pgd20"], ci=True)
    ferd = next(r for r in table.blocks[0][1] if r.label == "FERD")
    assert ("pgd20", "avg") in ferd.tests and ("pgd20", "avg") not in ferd.significance
    _seeds(folder, "zskt", [[10] * 10])                               # a baseline with one run: nothing testable
    (table,) = build_tables("1", folder, attacks=["pgd20"], ci=True)
    ferd = next(r for r in table.blocks[0][1] if r.label == "FERD")
    assert not ferd.tests and "at least two seeds" in render_markdown(table)


def _claim(text, question):
    """The answer line of `question` and its comparison lines."""
    lines = text.splitlines()
    i = next(k for k, line in enumerate(lines) if question in line)
    block = [lines[i]]
    for line in lines[i + 1:]:
        if not line.startswith("  - "):
            break
        block.append(line)
    return "\n".join(block)


def test_claims_answer_each_question_with_its_test(results, tmp_path):
    from dfrd_bench.report.claims import claims_section

    folder = tmp_path / "claims"
    for seed in (0, 1, 2):
        # FERD: weak class 9 at 30 % PGD-20 and weighted ~0.19; without reweighting class 9 is at 10 %
        hist = [{"epoch": 1, "gen/p": [0.09] * 9 + [0.18 + 0.01 * seed]}]
        write_result(_result("ferd", seed=seed, pgd=[40] * 9 + [30 + seed], history=hist), folder / f"f{seed}" / "result.json")
        write_result(_result("ferd", seed=seed, pgd=[40] * 9 + [10 + seed], overrides={"reweight": False},
                             config={"reweight": False}), folder / f"r{seed}" / "result.json")
        write_result(_result("cmi", seed=seed, pgd=[60] * 9 + [50 - seed]), folder / f"c{seed}" / "result.json")
    text = claims_section(folder)
    worst = _claim(text, "PGD-20 worst-class accuracy?")
    assert "**no**" in worst and "FERD 31.0 against CMI 49.0: -18.0" in worst and "family of" in worst
    nsd = _claim(text, "lower PGD-20 NSD than every baseline?")
    assert "**not significantly**" in nsd and "seeds per method" in nsd      # 0.073 vs 0.055 on 100 per class
    weight = _claim(text, "weakest class's weight")
    assert "**yes**" in weight and "airplane" not in weight and "p 0.190 against uniform 0.100" in weight
    assert "rank 1 of 10" in weight
    robust = _claim(text, "raise the robustness of")
    assert "**yes**" in robust and "+20.0" in robust
    assert "no FERD without UTAEs (`utae=false`, Table 3) run" in text   # said, not guessed
    # only CMI of the five baselines ran: the answers say they are against a partial field
    partial = next(line for line in text.splitlines() if "*Partial*" in line)
    assert "1 of 5 baselines have runs" in partial and "ZSKT, DeepInv, Fast, DFHL have none yet" in partial


def test_claims_against_every_baseline_are_not_marked_partial(tmp_path):
    from dfrd_bench.report.claims import claims_section

    for m in ("ferd", "zskt", "cmi", "deepinv", "fast", "dfhl"):
        write_result(_result(m), tmp_path / m / "result.json")
    text = claims_section(tmp_path)
    assert "PGD-20 worst-class" in text and "*Partial*" not in text
    assert "cannot be tested with 1 and 1 seeds" in text


def test_best_is_bold_and_second_underlined(results):
    (table,) = build_tables("1", results, attacks=["pgd20"])
    rows = {r.label: r for r in table.blocks[0][1]}
    col = ("pgd20", "avg")
    assert rows["FERD"].marks[col] == "best"          # mean 39.0
    assert rows["CMI"].marks[col] == "second"         # 11.2
    assert col not in rows["ZSKT"].marks              # 9.0
    nsd = ("pgd20", "nsd")                            # lower is better
    assert rows["CMI"].marks[nsd] == "best"
    latex = render([table], "latex")
    assert r"\textbf{39.00" in latex and r"\underline{11.20}" in latex


def test_missing_cells_are_dashed_and_counted(results):
    (table,) = build_tables("1", results, attacks=["clean", "pgd20"])
    text = render([table])
    deepinv = next(line for line in text.splitlines() if "| DeepInv |" in line)
    assert deepinv.count("–") == 6 + 2   # six metric cells and the two cost cells
    # DeepInv, Fast and DFHL have no result: 3 rows x 6 columns
    assert "–: 18 cells without a result" in text


def test_seeds_are_averaged_with_std_and_count(results):
    (table,) = build_tables("1", results, attacks=["pgd20"])
    ferd = next(r for r in table.blocks[0][1] if r.label == "FERD")
    cell = ferd.cells[("pgd20", "avg")]
    assert ferd.seeds == 2 and cell.n == 2
    assert cell.mean == pytest.approx(39.0) and cell.std == pytest.approx(np.std([37.0, 41.0], ddof=1))
    assert "39.00 ± 2.83" in render([table])


def test_paper_column_shows_published_value_and_difference(results):
    published = load_published()
    pub = published["tables"]["1"]["rows"]["resnet18/ferd"]["pgd20"]["avg"]
    (table,) = build_tables("1", results, attacks=["pgd20"], paper=True)
    text = render([table])
    assert f"[{pub:.2f}; {39.0 - pub:+.2f}]" in text


def test_published_file_has_every_paper_table():
    tables = load_published()["tables"]
    assert sorted(tables) == [str(i) for i in range(1, 10)]
    assert len(tables["1"]["rows"]) == 12 and len(tables["8"]["rows"]) == 16


def test_bootstrap_worst_class_known_case():
    # one class clearly worst (50 % of 1,000) -> the interval is that class's binomial interval, ~ +-3.1
    ci = bootstrap_worst([([50.0] + [90.0] * 9, [1000] * 10)], draws=4000, seed=1)
    half = 1.96 * np.sqrt(0.25 / 1000) * 100
    assert ci["estimate"] == 50.0
    assert ci["low"] == pytest.approx(50 - half, abs=0.4) and ci["high"] == pytest.approx(50 + half, abs=0.4)
    # ten times fewer images per class -> an interval ~sqrt(10) wider
    wide = bootstrap_worst([([50.0] + [90.0] * 9, [100] * 10)], draws=4000, seed=1)
    assert (wide["high"] - wide["low"]) / (ci["high"] - ci["low"]) == pytest.approx(np.sqrt(10), rel=0.2)
    # a class at 0 % can only be 0 in every draw
    zero = bootstrap_worst([([0.0] + [90.0] * 9, [100] * 10)])
    assert zero["low"] == zero["high"] == 0.0


def test_table_ci_flag_adds_intervals(results):
    (table,) = build_tables("1", results, attacks=["pgd20"], ci=True)
    zskt = next(r for r in table.blocks[0][1] if r.label == "ZSKT")
    assert zskt.ci[("pgd20", "worst")] == (0.0, 0.0)
    assert "[0.0, 0.0]" in render([table])


def test_teacher_table_reads_the_teacher_evaluation(results):
    (table,) = build_tables("4", results, attacks=["clean", "pgd20"])
    (row,) = table.blocks[0][1]
    assert row.cells[("clean", "avg")].mean == pytest.approx(70.0) and row.cells[("pgd20", "avg")].mean == pytest.approx(45.0)


def test_table_cli_formats_and_errors(results):
    runner = CliRunner()
    res = runner.invoke(main, ["table", "--table", "1,5", "--results", str(results), "--format", "latex"])
    assert res.exit_code == 0, res.output
    assert r"\begin{tabular}" in res.output and "No runs under" in res.output  # Table 5 needs Tiny-ImageNet runs
    bad = runner.invoke(main, ["table", "--table", "12", "--results", str(results)])
    assert bad.exit_code != 0 and "unknown table '12'" in bad.output
    runs = runner.invoke(main, ["table", "--table", "runs", "--results", str(results)])
    assert runs.exit_code == 0 and runs.output.count("| cifar10/cpu-teacher/quick |") == 4
    readme = results / "README.md"
    readme.write_text("intro\n<!-- tables:start -->\nold\n<!-- tables:end -->\nend\n")
    assert runner.invoke(main, ["table", "--table", "1", "--results", str(results), "--into", str(readme)]).exit_code == 0
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("end\n") and "old" not in text and "| FERD |" in text


@pytest.mark.parametrize("figure", figure_names())
def test_each_figure_is_written_from_fixed_results(results, tmp_path, figure):
    from PIL import Image

    folder = results / "ferd0"
    Image.fromarray(random_images(1, size=64)[0]).save(folder / "samples.png")
    written = plot([figure], results, tmp_path / "figs")
    assert {p.suffix for p in written} == {".png", ".pdf"}
    assert all(p.stat().st_size > 1000 for p in written)


def test_unknown_figure_fails(results, tmp_path):
    with pytest.raises(ValueError, match="unknown figure"):
        plot(["3"], results, tmp_path)


def test_two_run_smoke_sweep_skips_the_finished_run(tmp_path, test_npz):
    spec = spec_from({"methods": "ferd", "datasets": "cifar10", "seeds": "0,1", "preset": "smoke",
                      "out": str(tmp_path / "runs"), "source": test_npz, "set": {"teacher": "random:resnet8"}})
    first = plan(spec)
    assert [p.status for p in first] == ["new", "new"]
    ran, skipped, failures = run_sweep(first[:1], log=lambda s: None)          # seed 0 finishes
    assert (ran, skipped, failures) == (1, 0, [])
    second = plan(spec)
    assert [p.status for p in second] == ["done", "new"]
    mtime = (second[0].run_dir / "result.json").stat().st_mtime
    logs = []
    ran, skipped, failures = run_sweep(second, log=logs.append)
    assert (ran, skipped, failures) == (1, 1, [])
    assert (second[0].run_dir / "result.json").stat().st_mtime == mtime       # untouched
    assert any(line.startswith("skip (finished)") for line in logs)
    assert json.loads((second[1].run_dir / "result.json").read_text())["seed"] == 1
    assert all(p.status == "done" for p in plan(spec))


def test_sweep_resumes_an_interrupted_run_and_prints_cluster_lines(tmp_path, test_npz):
    spec = spec_from({"methods": "ferd", "datasets": "cifar10", "preset": "smoke", "out": str(tmp_path / "runs"),
                      "grid": {"gamma": [0.1, 0.9]}, "set": {"teacher": "random:resnet8"}})
    planned = plan(spec)
    assert len(planned) == 2 and planned[0].run_dir != planned[1].run_dir
    (planned[0].run_dir).mkdir(parents=True)
    (planned[0].run_dir / "state.pt").write_bytes(b"")
    assert [p.status for p in plan(spec)] == ["resume", "new"]
    local = emit(plan(spec), "local").splitlines()
    assert len(local) == 2 and "--set gamma=0.1" in local[0] and "--resume" in local[0]
    slurm = emit(plan(spec), "slurm")
    assert "#SBATCH" in slurm and "--array=0-1" in slurm
    gpus = emit(plan(spec), "gpus:2")
    assert "CUDA_VISIBLE_DEVICES=0" in gpus and "CUDA_VISIBLE_DEVICES=1" in gpus
    assert "torchrun" in emit(plan(spec), "torchrun")


def test_two_sweep_workers_share_the_points(tmp_path, test_npz):
    from filelock import FileLock

    spec = spec_from({"methods": "ferd", "datasets": "cifar10", "seeds": "0,1", "preset": "smoke",
                      "out": str(tmp_path / "runs"), "source": test_npz, "set": {"teacher": "random:resnet8"}})
    planned = plan(spec)
    planned[0].run_dir.mkdir(parents=True)
    other_worker = FileLock(str(planned[0].run_dir / ".lock"))
    other_worker.acquire(timeout=0)            # another worker is running seed 0
    try:
        logs = []
        ran, skipped, failures = run_sweep(planned, log=logs.append)
    finally:
        other_worker.release()
    assert (ran, skipped, failures) == (1, 1, [])
    assert any("another worker is running it" in line for line in logs)
    assert not (planned[0].run_dir / "error.log").exists()
    # a point finished by another worker after this worker planned it is skipped, not re-run
    stale = plan(spec)
    stale[0].status = "new"
    (stale[0].run_dir / "result.json").write_text("{}")
    logs = []
    assert run_sweep(stale[:1], log=logs.append) == (0, 1, [])
    assert "finished meanwhile" in logs[0]


def test_sweep_cases_are_points_and_seeds_go_first(tmp_path):
    spec = spec_from({"methods": "ferd,fast", "datasets": "cifar10", "seeds": "0,1", "preset": "smoke",
                      "out": str(tmp_path / "runs"), "cases": [{"student_lr": 0.1}, {"student_lr": 0.05, "student_augment": False}]})
    planned = plan(spec)
    assert [(p.request.seed, p.request.method) for p in planned][:4] == [(0, "ferd"), (0, "ferd"), (0, "fast"), (0, "fast")]
    assert [p.request.seed for p in planned] == [0] * 4 + [1] * 4
    ferd = [p.request.overrides for p in planned if p.request.method == "ferd" and p.request.seed == 0]
    assert ferd == [{"student_lr": 0.1}, {"student_lr": 0.05, "student_augment": False}]
    with pytest.raises(ValueError, match="cases: a list of mappings"):
        spec_from({"methods": "ferd", "datasets": "cifar10", "cases": {"gamma": 0.1}})


def test_sweep_cli_matches_run_folder_names_and_rejects_bad_keys(tmp_path):
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text("methods: [ferd]\ndatasets: [cifar10]\nstudents: [resnet8]\nbogus: 1\n")
    res = CliRunner().invoke(main, ["sweep", str(sweep_file), "--dry-run"])
    assert res.exit_code != 0 and "unknown sweep keys bogus" in res.output
    sweep_file.write_text("methods: [ferd, zskt]\ndatasets: [cifar10]\nstudents: [resnet8]\nseeds: [0, 1]\n")
    res = CliRunner().invoke(main, ["sweep", str(sweep_file), "--dry-run", "--out", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    assert "sweep: 4 runs (0 finished, 0 to resume, 4 new)" in res.output
    assert "cifar10-zskt-resnet8-quick-s1" in res.output


def test_ferd_rows_hold_only_the_default_reading_and_variants_table_lists_every_setting(results):
    # a FERD run of the printed Eq. 10 (UTAEs on the teacher), labelled 'paper' as before issue 9, and
    # a paper-literal and a --set run: none of them may fill the FERD row of the paper's tables
    write_result(_result("ferd", seed=2, pgd=[0] * 10, config={"utae_on": "teacher"}), results / "old" / "result.json")
    write_result(_result("ferd", seed=0, pgd=[0] * 10, variant="paper-literal", overrides={"variant": "paper-literal"},
                         config={"utae_on": "teacher"}), results / "lit" / "result.json")
    write_result(_result("ferd", seed=0, pgd=[30] * 10, overrides={"gamma": 0.0}, config={"gamma": 0.0}),
                 results / "g0" / "result.json")
    table1 = build_tables("1", results, attacks=["clean", "pgd20"])[0]
    ferd_row = next(r for r in table1.blocks[0][1] if r.label == "FERD")
    assert ferd_row.seeds == 2 and ferd_row.cells[("pgd20", "avg")].mean == pytest.approx(39.0)  # seeds 0, 1 only
    variants = build_tables("variants", results, attacks=["clean", "pgd20"])[0]
    labels = [r.label for r in variants.blocks[0][1]]
    assert labels == ["ZSKT", "CMI", "FERD", "FERD (gamma=0.0)", "FERD (variant=paper-literal)"]
    rows = {r.label: r for r in variants.blocks[0][1]}
    assert rows["FERD"].seeds == 3  # the default-labelled runs, old reading included: the table shows all
    assert rows["FERD (variant=paper-literal)"].cells[("pgd20", "avg")].mean == 0.0
    out = CliRunner().invoke(main, ["table", "--table", "variants", "--results", str(results)])
    assert out.exit_code == 0 and "FERD (variant=paper-literal)" in out.output


def test_an_undefined_nsd_is_not_counted_as_a_missing_run(results):
    write_result(_result("ferd", seed=0, pgd=[0] * 10, variant="paper-literal", overrides={"variant": "paper-literal"},
                         config={"utae_on": "teacher"}), results / "lit" / "result.json")
    table = build_tables("variants", results, attacks=["clean", "pgd20"])[0]
    assert table.undefined == 1 and table.missing == 0
    text = render([table])
    assert "NSD cell undefined" in text and "without a result" not in text


def test_runs_made_under_other_defaults_are_never_in_one_table(results):
    # a run made before the defaults_version field and before student_augment existed is version 1:
    # it gets a table of its own, and the version-2 table is labelled with its version
    old = _result("cmi", clean=[70] * 10, pgd=[30] * 10)
    del old["defaults_version"], old["config"]["student_augment"]
    write_result(old, results / "cmi-old" / "result.json")
    tables = build_tables("1", results, attacks=["clean", "pgd20"])
    assert len(tables) == 2
    cmi_means = sorted(r.cells[("pgd20", "avg")].mean for t in tables for r in t.blocks[0][1] if r.label == "CMI")
    assert cmi_means == [pytest.approx(11.2), pytest.approx(30.0)]  # not averaged together as two seeds
    assert any(f"defaults v{DEFAULTS_VERSION}" in n for t in tables for n in t.notes)


def test_rerendering_unchanged_results_gives_byte_identical_figures(results, tmp_path):
    # so that committing a re-rendered benchmark shows only the figures whose runs changed
    first = plot(["1"], results, tmp_path / "a")
    second = plot(["1"], results, tmp_path / "b")
    assert first and [p.read_bytes() for p in first] == [p.read_bytes() for p in second]
    pdf = next(p for p in first if p.suffix == ".pdf")
    assert b"/CreationDate" not in pdf.read_bytes()  # a date would differ between renders a second apart


# -- bad result files and sweep grids (issue 26) ------------------------------------------------------
BAD_RESULTS = [
    (lambda r: r["attacks"]["clean"].update(avg=float("nan")), "avg is NaN, not an accuracy in [0, 100]"),
    (lambda r: r["attacks"]["clean"].update(avg=250.0), "avg is 250.0, not an accuracy in [0, 100]"),
    (lambda r: r["attacks"]["pgd20"].update(worst="ten"), "worst is 'ten', not an accuracy"),
    (lambda r: r["attacks"]["clean"].update(per_class="oops"), "per_class is 'oops', not a list"),
    (lambda r: r["attacks"]["clean"].update(per_class=[50.0, 60.0]), "per_class has 2 entries, not one per class (10)"),
    (lambda r: r["attacks"]["clean"]["per_class_n"].pop(), "per_class_n has 9 entries"),
    (lambda r: r["attacks"]["clean"]["per_class"].__setitem__(3, -1.0), "per_class holds -1.0"),
    (lambda r: r.update(seed="0"), "seed is '0', not a whole number"),
]


def test_invalid_result_files_are_listed_and_never_replace_a_valid_run(results, tmp_path):
    from dfrd_bench.api import load_results
    from dfrd_bench.report.collect import load_runs

    valid = json.loads((results / "ferd0" / "result.json").read_text())
    paths = []
    for i, (change, _) in enumerate(BAD_RESULTS):
        bad = json.loads(json.dumps(valid))
        bad["provenance"]["created"] = "2027-01-01T00:00:00"  # newer: it would replace the valid seed 0 if read
        change(bad)
        paths.append(results / f"ferd0-rerun{i}" / "result.json")
        paths[-1].parent.mkdir()
        paths[-1].write_text(json.dumps(bad))  # json writes NaN as the (non-standard) NaN that json reads back
    ferd0 = [r for r in load_runs(results) if r.method == "ferd" and r.seed == 0]
    assert [r.result["_path"] for r in ferd0] == [str(results / "ferd0" / "result.json")]
    for args in (["table", "--table", "1", "--attacks", "clean,pgd20"], ["plot", "--figure", "1", "--out", tmp_path / "f"]):
        res = CliRunner().invoke(main, [str(a) for a in args] + ["--results", str(results)])
        assert res.exit_code == 0 and "Traceback" not in res.output, res.output
        for path, (_, reason) in zip(paths, BAD_RESULTS):
            assert f"warning: could not read {path}: " in res.stderr and reason in res.stderr
        assert "250.00" not in res.stdout
    with pytest.warns(UserWarning) as caught:
        frame = load_results(results)
    assert sorted(str(w.message).split(": ")[1] for w in caught) == sorted(f"skipped {p}" for p in paths)
    assert frame["accuracy"].between(0, 100).all() and frame["avg"].between(0, 100).all()


def test_sweep_grids_refuse_empty_lists_and_merge_equal_points(tmp_path):
    from dfrd_bench.config import ConfigError

    base = {"methods": "ferd", "datasets": "cifar10", "preset": "smoke", "out": str(tmp_path / "runs")}
    for bad in ({"grid": {"gamma": []}}, {"seeds": []}, {"grid": {"gamma": [0.1], "fae": []}}):
        with pytest.raises(ConfigError, match="an empty list of values"):
            spec_from({**base, **bad})
    res = CliRunner().invoke(main, ["sweep", "--method", "ferd", "--dataset", "cifar10", "--grid", "gamma=,", "--dry-run"])
    assert res.exit_code == 1 and "gamma: an empty list of values" in res.output
    planned = plan(spec_from({**base, "grid": {"gamma": [0.1, "1/10", 0.5]}, "seeds": [0, 1]}))
    assert [(p.request.seed, p.sets["gamma"]) for p in planned] == [(0, "0.1"), (0, "0.5"), (1, "0.1"), (1, "0.5")]
    assert planned[0].merged == [{"gamma": "1/10"}]
    # the point already started keeps its folder, whichever spelling came first
    other = plan(spec_from({**base, "grid": {"gamma": ["1/10"]}}))[0]
    other.run_dir.mkdir(parents=True)
    (other.run_dir / "state.pt").write_bytes(b"")
    kept = plan(spec_from({**base, "grid": {"gamma": [0.1, "1/10"]}}))
    assert len(kept) == 1 and kept[0].run_dir == other.run_dir and kept[0].status == "resume"
    assert kept[0].merged == [{"gamma": "0.1"}]


def test_ablation_rows_are_tested_against_the_full_method(tmp_path):
    folder = tmp_path / "r"
    _seeds(folder, "ferd", [[40 + s] * 9 + [9] for s in (0, 1, 2)])
    for seed, base in enumerate((20, 21, 22)):   # without FAEs: 19 points lower, seeds agree
        write_result(_result("ferd", seed=seed, pgd=[base] * 9 + [9], overrides={"fae": False},
                             config={"fae": False}), folder / f"nofae{seed}" / "result.json")
    (table,) = build_tables("3", folder, attacks=["pgd20"], ci=True)
    rows = {r.label: r for r in table.blocks[0][1]}
    assert rows["w/o FAEs"].significance[("pgd20", "avg")] == "worse"
    assert set(rows["w/o FAEs"].tests[("pgd20", "avg")]) == {"FERD"} and not rows["FERD"].tests
    assert "significantly better / worse than FERD" in render_markdown(table)
