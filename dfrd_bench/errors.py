"""The one base class of every error a user can fix.

The command line prints a `DfrdError` (and the few operating-system errors a bad path causes) as one
line that says what to do; anything else is a bug and keeps its traceback. `--debug` (or
DFRD_DEBUG=1) shows the traceback of every error.
"""
from __future__ import annotations

import os


class DfrdError(Exception):
    """An input, file or setting the user can fix; its message says how, in one line."""

    def __str__(self) -> str:  # KeyError-based subclasses would otherwise print their message quoted
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class DivergenceError(DfrdError, FloatingPointError):
    """A student (or a model to evaluate) with non-finite weights or loss."""


class InputError(DfrdError, ValueError):
    """A value, name or model that does not fit what it is used for (a setting, a layer, a file)."""


class UnknownName(DfrdError, KeyError):
    """A name (dataset, model, ...) the suite does not know; the message lists the close ones."""


class WriteError(DfrdError, OSError):
    """A file that could not be written (a full disk, a read-only folder); keeps the OSError's errno."""


# Operating-system errors that a wrong path or permission causes (not bugs): also one line.
INPUT_OS_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


def debug_enabled() -> bool:
    return os.environ.get("DFRD_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


def first_line(exc: BaseException, limit: int = 160) -> str:
    """`Type: first line of the message` (or just the type when the message is empty), for one-line errors."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:limit]}" if text else type(exc).__name__
