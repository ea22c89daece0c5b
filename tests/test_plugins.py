"""Method plugins as first-class citizens: metadata read by tables and figures, the built-ins'
entry points, the check that `methods` is this project's, --plugin, and the guide's worked example
installed with an entry point and run end to end in a fresh process."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from dfrd_bench.cli import main
from dfrd_bench.method import METHODS, Method, MethodInfo, PluginError, load_plugins, register_method, table_order
from tests.conftest import random_images

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "docs" / "example-plugin"
GUIDE = REPO / "docs" / "adding-a-method.md"
BUILTINS = ["zskt", "cmi", "deepinv", "fast", "dfhl", "ferd"]
# Records the text of every figure `plot` saves, so a test can see a method's label in its legend.
PLOT_WITH_TEXTS = """
import sys
from matplotlib.text import Text
import dfrd_bench.report.plots as plots
save = plots.save_figure
def saving(fig, out, name):
    print("TEXTS", name, sorted({t.get_text() for t in fig.findobj(Text) if t.get_text()}))
    return save(fig, out, name)
plots.save_figure = saving
from dfrd_bench.cli import main
main(sys.argv[1:])
"""


def _python(tmp_path: Path, args, *path: Path) -> subprocess.CompletedProcess:
    """`python args` in a fresh process with `path` (then this repository) in front of sys.path."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([*map(str, path), str(REPO)]), OMP_NUM_THREADS="1",
               DFRD_OFFLINE="1", DFRD_CACHE=str(tmp_path / "cache"))
    env.pop("DFRD_PLUGINS", None)
    return subprocess.run([sys.executable, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def _cli(tmp_path: Path, args, *path: Path) -> subprocess.CompletedProcess:
    return _python(tmp_path, ["-m", "dfrd_bench.cli", *args], *path)


def test_builtin_metadata_gives_the_paper_s_rows_and_order():
    load_plugins()
    assert table_order(METHODS.names()) == BUILTINS  # baselines as in the paper, the proposed method last
    info = {n: METHODS.get(n).info for n in BUILTINS}
    assert [info[n].label for n in BUILTINS] == ["ZSKT", "CMI", "DeepInv", "Fast", "DFHL", "FERD"]
    assert {n for n in BUILTINS if info[n].rslad_stage} == {"zskt", "cmi", "deepinv", "fast"}
    assert {n for n in BUILTINS if info[n].proposed} == {"ferd"}
    assert {info[n].family for n in BUILTINS} == {"generator", "inversion", "hard-label"}
    # FERD's rows in Tables 1-3, 5-7, 9 alike: the reading its paper's numbers came from (docs/methods/ferd.md)
    assert dict(info["ferd"].row_settings) == {"utae_on": "student", "student_augment": True}
    assert all(info[n].paper and METHODS.get(n).paper == info[n].paper for n in BUILTINS)


def test_pyproject_declares_every_builtin_as_an_entry_point():
    tomllib = pytest.importorskip("tomllib")
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"]["dfrd_bench.methods"]
    load_plugins()
    builtins = sorted(n for n in METHODS.names() if METHODS.get(n).__module__.startswith("methods."))
    assert sorted(declared) == builtins == sorted(BUILTINS)
    for name, value in declared.items():
        module, _, attr = value.partition(":")
        assert getattr(sys.modules[module], attr) is METHODS.get(name), f"{name} = {value!r} is not the registered class"


def test_installed_builtin_entry_points_register_the_builtins(tmp_path):
    """As after `pip install -e .`: the group holds the built-ins' entry points (from pyproject.toml)."""
    tomllib = pytest.importorskip("tomllib")
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"]["dfrd_bench.methods"]
    dist = tmp_path / "site" / "dfrd_bench-0.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: dfrd-bench\nVersion: 0.0\n")
    (dist / "entry_points.txt").write_text("[dfrd_bench.methods]\n" + "".join(f"{k} = {v}\n" for k, v in declared.items()))
    res = _python(tmp_path, ["-c", "from dfrd_bench.method import load_plugins, table_order; "
                                   "print(table_order(load_plugins()))"], tmp_path / "site")
    assert res.returncode == 0 and res.stdout.strip() == str(BUILTINS) and not res.stderr, res.stderr


def test_method_info_is_checked_when_the_class_registers():
    with pytest.raises(PluginError, match=r"^method 'toy-gan': unknown family 'gan' .*: use one of generator, "):
        @register_method("toy-gan")
        class Gan(Method):
            info = MethodInfo(label="GAN", family="gan")
    with pytest.raises(PluginError, match="declares rslad_stage=True but has no `rslad` setting"):
        @register_method("toy-rslad")
        class NoStage(Method):
            info = MethodInfo(rslad_stage=True)
    assert "toy-gan" not in METHODS and "toy-rslad" not in METHODS
    try:
        @register_method("toy-plain")
        class Plain(Method):  # declares nothing: its name is its label; an inherited info is not its own
            paper = "A. Author, 2026"
        assert Plain.info == MethodInfo(label="toy-plain", paper="A. Author, 2026")
    finally:
        METHODS._items.pop("toy-plain", None)


def test_a_package_that_shadows_the_builtin_methods_fails_with_one_line(tmp_path):
    fake = tmp_path / "site"
    (fake / "methods").mkdir(parents=True)
    (fake / "methods" / "__init__.py").write_text("RESULTS = 'an unrelated package that happens to be called methods'\n")
    res = _cli(tmp_path, ["list", "methods"], fake)
    assert res.returncode == 1, res.stdout + res.stderr
    line = res.stderr.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in line
    assert line.startswith("Error: another installed package named 'methods' (at ") and str(fake / "methods") in line
    assert "uninstall or rename it" in line


@pytest.mark.slow
def test_plugin_option_loads_a_module_for_one_command(tmp_path):
    res = CliRunner().invoke(main, ["--plugin", "no_such_plugin.methods", "list", "methods"])
    assert res.exit_code == 2 and "no module named 'no_such_plugin'" in res.output and "Traceback" not in res.output
    res = _cli(tmp_path, ["--plugin", "bnprior", "list", "methods"], EXAMPLE)  # on the path, not installed
    assert res.returncode == 0, res.stderr
    row = next(line for line in res.stdout.splitlines() if line.startswith("bnprior "))
    assert row.split()[1:4] == ["BN-Prior", "generator", "yes"]  # label, family, RSLAD stage
    sweep = _cli(tmp_path, ["--plugin", "bnprior", "sweep", "--method", "bnprior", "--dataset", "cifar10",
                            "--preset", "smoke", "--out", str(tmp_path / "runs"), "--emit", "local"], EXAMPLE)
    assert sweep.returncode == 0, sweep.stderr
    assert "--plugin bnprior run --method bnprior" in sweep.stdout  # the printed runs load it too


def test_the_guide_shows_the_worked_example_verbatim():
    guide = GUIDE.read_text()
    for name in ("bnprior.py", "pyproject.toml"):
        text = (EXAMPLE / name).read_text()
        assert f"\n{text}```" in guide, f"docs/adding-a-method.md must include docs/example-plugin/{name} verbatim"


@pytest.mark.slow
@pytest.mark.slow
def test_the_worked_example_installed_with_an_entry_point_runs_and_reaches_tables_and_figures(tmp_path):
    """pip-installs docs/example-plugin into a folder (no network, no dependencies) as a user would,
    then in fresh processes: it is listed, runs at smoke scale, fills its Table 1 and Table 8 rows
    and is drawn with its label."""
    src, site = tmp_path / "src", tmp_path / "site"
    shutil.copytree(EXAMPLE, src)
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                          "--no-index", "--target", str(site), str(src)], capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stderr
    assert "bnprior = bnprior:BNPrior" in next(site.glob("dfrd_bnprior-*.dist-info/entry_points.txt")).read_text()

    listed = _cli(tmp_path, ["list", "methods"], site)
    assert listed.returncode == 0 and "BN-Prior" in listed.stdout, listed.stderr
    np.savez(tmp_path / "test.npz", x=random_images(40, seed=3), y=np.arange(40) % 10)
    ran = _cli(tmp_path, ["run", "--method", "bnprior", "--dataset", "cifar10", "--preset", "smoke", "--teacher",
                          "random:resnet8", "--source", "test.npz", "--out", "results"], site)
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-2000:]

    table = _cli(tmp_path, ["table", "--table", "1,8", "--results", "results"], site)
    assert table.returncode == 0, table.stderr
    assert "|  | BN-Prior | 1 | " in table.stdout  # its row, between the baselines and FERD, with its run
    assert table.stdout.index("| DFHL |") < table.stdout.index("| BN-Prior |") < table.stdout.index("| FERD |")
    assert "|  | BN-Prior+RSLAD | 1 | " in table.stdout  # Table 8: it declares the RSLAD student stage

    plot = _python(tmp_path, ["-c", PLOT_WITH_TEXTS, "plot", "--figure", "1,9", "--results", "results",
                              "--out", "figures"], site)
    assert plot.returncode == 0, plot.stderr
    texts = {line.split()[1]: line for line in plot.stdout.splitlines() if line.startswith("TEXTS")}
    assert set(texts) == {"fig1-resnet8", "fig9-resnet8"} and all("BN-Prior" in t for t in texts.values())
    assert (tmp_path / "figures" / "fig1-resnet8.png").stat().st_size > 0


def _code_tokens(path: Path):
    """(line, token) of every name and string of `path` that is code: no comment, no docstring."""
    import ast
    import io
    import tokenize

    source = path.read_text()
    docstrings = set()
    for node in ast.walk(ast.parse(source)):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(getattr(body[0], "value", None), ast.Constant) and isinstance(body[0].value.value, str):
            docstrings.update(range(body[0].lineno, body[0].end_lineno + 1))
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type in (tokenize.NAME, tokenize.STRING) and tok.start[0] not in docstrings:
            yield tok.start[0], tok.string


def test_the_core_names_no_method_and_no_method_setting():
    """Issue 30: the report layer, the runner, the evaluator and the CLI render and run any method;
    what is one method's own (its name, its settings, its log keys) lives in its plugin."""
    import re

    from dfrd_bench.config import RUNNER_DEFAULTS

    load_plugins()
    root = Path(__file__).resolve().parents[1] / "dfrd_bench"
    files = sorted((root / "report").glob("*.py")) + [root / "runner.py", root / "evaluator.py", root / "cli.py"]
    names = [n for n in BUILTINS]
    shared = set(RUNNER_DEFAULTS)
    for other in BUILTINS:
        if other != "ferd":
            shared |= set(METHODS.get(other).defaults)
    own = sorted(set(METHODS.get("ferd").defaults) - shared) + ["gen/p", "gen/nonrobust_frac", "utae_target_entropy_norm"]
    method_word = re.compile(r"\b(" + "|".join(n for n in names if n != "fast") + r")\b", re.IGNORECASE)
    found = []
    for path in files:
        for line, tok in _code_tokens(path):
            text = tok.strip("\"'frb")
            if tok.startswith(("'", '"', "f'", 'f"')):
                if method_word.search(text) or text in ("fast", *own):
                    found.append(f"{path.name}:{line}: {tok}")
            elif method_word.fullmatch(tok):
                found.append(f"{path.name}:{line}: {tok}")
    assert not found, "the core names a method or one of its settings:\n" + "\n".join(found)


@pytest.mark.slow
def test_the_worked_example_adds_a_preset_an_attack_and_a_table_without_a_core_edit(tmp_path):
    """Issue 30: docs/example-plugin declares `bnprior-tiny`, `pgd50` and the table `bnprior-lambda`;
    with `--plugin bnprior` they are listed, run and rendered like the built-ins."""
    np.savez(tmp_path / "test.npz", x=random_images(40, seed=3), y=np.arange(40) % 10)
    ran = _cli(tmp_path, ["--plugin", "bnprior", "run", "--method", "bnprior", "--dataset", "cifar10",
                          "--preset", "bnprior-tiny", "--teacher", "random:resnet8", "--source", "test.npz",
                          "--attacks", "clean,pgd50", "--set", "lambda_bn=0.5", "--out", "results"], EXAMPLE)
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-2000:]
    result = json.loads(next((tmp_path / "results").glob("*/result.json")).read_text())
    assert result["preset"] == "bnprior-tiny" and result["config"]["epochs"] == 4
    assert set(result["attacks"]) == {"clean", "pgd50"} and result["settings"]["pgd50"]["steps"] == 50
    table = _cli(tmp_path, ["--plugin", "bnprior", "table", "--table", "bnprior-lambda", "--results", "results"],
                 EXAMPLE)
    assert table.returncode == 0, table.stderr
    assert "PGD-50 Avg" in table.stdout and "| lambda_bn = 0.5 | 1 |" in table.stdout
    assert "| lambda_bn = 2 | 0 |" in table.stdout  # a row without runs: dashed
