"""dfrd_bench.testing (the helpers a plugin's own tests import), `list methods`' variants column and
the generator loss in the epoch line: the gaps a plugin author hit (issue 30)."""
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from dfrd_bench.cli import main
from dfrd_bench.epoch_log import epoch_line
from dfrd_bench.losses import kl_div
from dfrd_bench.method import METHODS, Method, Samples, get_method, register_method
from dfrd_bench.runner import RunRequest, run
from dfrd_bench.testing import assert_resume_is_exact, method_context

REPO = Path(__file__).resolve().parents[1]
GUIDE = REPO / "docs" / "adding-a-method.md"
EXAMPLE = REPO / "docs" / "example-plugin"


class _Toy(Method):
    """Noise images and plain KD; no setup, no state_dict: the defaults of Method."""

    summary = "noise images and plain KD (a test's)"
    gen_key = "total"

    def generate(self, ctx):
        n = ctx.cfg.synthesis_batch_size
        x = (0.5 + 0.1 * ctx.randn(n, 3, ctx.image_size, ctx.image_size)).clamp(0, 1)
        return Samples(x, None, {self.gen_key: x.mean() * 4})

    def student_loss(self, ctx, batch):
        with torch.no_grad():
            t = ctx.teacher(batch.x)
        return kl_div(t, ctx.student(batch.x)), {}


@pytest.fixture
def registered():
    """register(name, cls): a test's method, removed from the registry afterwards."""
    names = []

    def register(name, cls):
        names.append(name)
        return register_method(name)(cls)

    yield register
    for name in names:
        METHODS._items.pop(name, None)
        METHODS._help.pop(name, None)


def test_the_testing_module_imports_without_pytest():
    code = ("import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in ('pytest', '_pytest'):\n"
            "            raise ImportError('pytest is blocked')\n"
            "sys.meta_path.insert(0, Block())\n"
            "import dfrd_bench.testing as t\n"
            "assert not any(m.split('.')[0] in ('pytest', '_pytest') for m in sys.modules)\n"
            "print(sorted(t.__all__))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "assert_resume_is_exact" in res.stdout and "method_context" in res.stdout


def test_conftest_reexports_the_helpers_from_the_testing_module():
    import dfrd_bench.testing as testing
    from tests import conftest

    for name in ("method_context", "interrupt_then_resume", "same_students", "random_images"):
        assert getattr(conftest, name) is getattr(testing, name)


def test_the_resume_check_passes_for_a_builtin_method_at_smoke_with_a_random_teacher(tmp_path):
    full, resumed = assert_resume_is_exact("deepinv", tmp_path, epochs=2)  # the quickest built-in (~2 s)
    assert full["config"]["teacher"] == "random:resnet8" and full["preset"] == "smoke"
    assert resumed["provenance"]["sessions"][-1]["event"] == "resume"
    assert [h["gen/total"] for h in resumed["history"]] == [h["gen/total"] for h in full["history"]]


def test_a_stateless_method_needs_no_setup_or_state_dict_to_resume_exactly(tmp_path, registered):
    registered("toy-stateless", type("Stateless", (_Toy,), {}))
    assert_resume_is_exact("toy-stateless", tmp_path, epochs=3)


def test_the_resume_check_catches_state_left_out_of_state_dict(tmp_path, registered):
    class Forgetful(_Toy):
        def setup(self, ctx):
            self.scale = 1.0

        def generate(self, ctx):
            self.scale *= 0.5  # changes every epoch and is never saved: a resume starts again at 1.0
            samples = super().generate(ctx)
            return Samples((0.5 + (samples.x - 0.5) * self.scale * 8).clamp(0, 1), None, samples.logs)

    registered("toy-forgetful", Forgetful)
    with pytest.raises(AssertionError, match="missing from its state_dict"):
        assert_resume_is_exact("toy-forgetful", tmp_path, epochs=3)


def test_the_guide_s_example_test_runs_against_the_worked_example(monkeypatch):
    """The plugin test file of docs/adding-a-method.md, section 8, with mymethod = the worked example."""
    block = re.search(r"```python\n(# tests/test_mymethod.py.*?)```", GUIDE.read_text(), re.S).group(1)
    code = block.replace("mypackage.mymethod", "bnprior").replace("mymethod", "bnprior")
    monkeypatch.syspath_prepend(str(EXAMPLE))
    try:
        namespace = {}
        exec(compile(code, "test_mymethod.py", "exec"), namespace)
        namespace["test_generate_gives_images_in_range"]()
        assert callable(namespace["test_an_interrupted_run_resumes_to_the_same_student"])
    finally:  # the worked example has no method page here (tests/test_docs.py): out of the registry again
        METHODS._items.pop("bnprior", None)
        METHODS._help.pop("bnprior", None)
        sys.modules.pop("bnprior", None)


def _variants_cell(output: str, name: str) -> str:
    lines = output.splitlines()
    header = lines[0]
    row = next(line for line in lines if line.startswith(name + " "))
    return row[header.index("variants"):].strip()


def test_list_methods_shows_variants_only_where_a_method_declares_them(registered):
    registered("toy-novariants", type("NoVariants", (_Toy,), {}))
    registered("toy-variants", type("WithVariants", (_Toy,), {"variants": {"loud": {}}}))
    res = CliRunner().invoke(main, ["list", "methods"])
    assert res.exit_code == 0, res.output
    assert _variants_cell(res.output, "toy-novariants") == ""
    assert _variants_cell(res.output, "toy-variants") == "paper, loud"
    assert _variants_cell(res.output, "ferd").startswith("paper, ")
    assert _variants_cell(res.output, "cmi") == ""  # a built-in without variants: no lone `paper`


@pytest.mark.parametrize("key", ["total", "loss"])
def test_the_epoch_line_shows_a_plugin_s_generator_loss(tmp_path, test_npz, registered, key):
    registered(f"toy-gen-{key}", type(f"Gen_{key}", (_Toy,), {"gen_key": key}))
    lines = []
    result = run(RunRequest(method=f"toy-gen-{key}", dataset="cifar10", preset="smoke", source=test_npz,
                            out=str(tmp_path / "runs"), overrides={"teacher": "random:resnet8", "attacks": "clean"}),
                 log=lines.append)
    epoch_lines = [line for line in lines if line.startswith("epoch ")]
    value = result["history"][-1][f"gen/{key}"]
    assert epoch_lines[-1].startswith(f"epoch 2/2 · gen {value:.4g} · student ")


def test_the_epoch_line_of_the_builtins_is_unchanged():
    base = {"epoch": 3, "pool": 384, "seconds": 21.94, "lr": 0.1, "student/loss": 0.488, "student/kl_clean": 0.454,
            "student/kl_adv": 0.495}
    tail = "student 0.488 · kl clean 0.454 · kl adv 0.495 · lr 0.1 · pool 384 · 21.9 s · left 0:14:16"
    # FERD, CMI, DeepInv, Fast, DFHL log gen/total; ZSKT logs neither total nor loss: no `gen`
    assert epoch_line({**base, "gen/total": 25.98, "gen/bn": 3.0}, 40, 856) == f"epoch 3/40 · gen 25.98 · {tail}"
    assert epoch_line({**base, "gen/kl_t_s": 0.7, "gen/lr": 0.001}, 40, 856) == f"epoch 3/40 · {tail}"
    # total first where a method logs both
    assert epoch_line({**base, "gen/loss": 1.5, "gen/total": 2.5}, 40, 856).startswith("epoch 3/40 · gen 2.5 · ")


def test_method_context_builds_a_cpu_context_for_a_method():
    ctx = method_context(get_method("cmi"), gen_iters=1, seed=3)
    assert ctx.cfg.gen_iters == 1 and ctx.device == torch.device("cpu") and ctx.num_classes == 10
    assert not ctx.teacher.training and not any(p.requires_grad for p in ctx.teacher.parameters())
