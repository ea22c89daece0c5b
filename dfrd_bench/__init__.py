"""dfrd-bench: a plugin-based benchmark suite for data-free robustness distillation.

The Python API (docs/api.md) is loaded on first use, so `import dfrd_bench` and the CLI stay fast:
`dfrd_bench.run`, `dfrd_bench.evaluate`, `dfrd_bench.load_model`, `dfrd_bench.load_results`.
"""
from typing import Any

__version__ = "0.1.0"
_API = ("run", "evaluate", "load_model", "load_results")


def __getattr__(name: str) -> Any:
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'dfrd_bench' has no attribute {name!r}")


def __dir__() -> list:
    return sorted(list(globals()) + list(_API))
