import importlib.util
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_methods_md_is_built_from_the_method_pages():
    spec = importlib.util.spec_from_file_location("build_methods_md", DOCS / "build_methods_md.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert (DOCS / "methods.md").read_text() == mod.build(), "run python3 docs/build_methods_md.py"


def test_every_registered_method_has_a_page():
    from dfrd_bench.method import load_plugins

    for name in load_plugins():
        if not name.startswith("toy"):
            assert (DOCS / "methods" / f"{name}.md").exists(), f"docs/methods/{name}.md is missing"


def _documented_commands():
    import re

    for page in (DOCS.parent / "README.md", DOCS / "reporting.md", DOCS / "running.md"):
        for line in page.read_text().splitlines():
            line = line.strip().rstrip("\\").strip()
            if line.startswith("dfrd-bench ") and not line.startswith("dfrd-bench run --method NAME"):
                yield page.name, line, re.findall(r"(?<![\w-])--[a-z][a-z-]*", line)


def test_every_documented_command_and_option_exists():
    from dfrd_bench.cli import main

    global_options = {o for p in main.params for o in getattr(p, "opts", [])}
    for page, line, options in _documented_commands():
        words = line.split()
        while words[1].startswith("--"):  # options of dfrd-bench itself (--plugin MODULE, --debug)
            assert words[1] in global_options, f"{page}: `{line}` uses {words[1]}, which dfrd-bench does not have"
            options.remove(words[1])
            del words[1:3 if words[1] == "--plugin" else 2]
        cmd = main.commands.get(words[1])
        assert cmd is not None, f"{page}: unknown command in `{line}`"
        if hasattr(cmd, "commands"):  # a group: teacher train / bundle
            cmd = cmd.commands[words[2]]
        known = {o for p in cmd.params for o in getattr(p, "opts", [])}
        for opt in options:
            assert opt in known, f"{page}: `{line}` uses {opt}, which `{words[1]}` does not have"
