"""Compatibility shims, each in one place."""
from __future__ import annotations

import warnings

from .errors import DfrdError


def import_robustbench():
    """Import robustbench 1.1.x, which does `from autoattack import AutoAttack` (and autoattack.state).

    The `autoattack` module it imports is this project's alias of `pyautoattack` (autoattack/__init__.py),
    installed with dfrd-bench; an install made before the alias existed lacks it until reinstalled.
    """
    try:
        import autoattack  # noqa: F401  (the alias package, or the authors' own AutoAttack)
    except ImportError as exc:
        raise DfrdError(f"robustbench imports the module autoattack, which is missing ({exc}): reinstall dfrd-bench "
                        "(pip install -e .), which installs it as an alias of pyautoattack") from None
    with warnings.catch_warnings():  # its imports warn about deprecated torch and setuptools APIs
        warnings.simplefilter("ignore")
        import robustbench  # noqa: F401
        import robustbench.utils

    return robustbench
