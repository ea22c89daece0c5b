"""Where methods come from: the `METHODS` registry, `@register_method`, and plugin loading.

Methods are found through the entry-point group `dfrd_bench.methods` (the built-ins in the top-level
`methods/` package are declared there too, in pyproject.toml, with a fallback import of that package,
checked to be this project's: `check_builtin_package`), and `--plugin module` loads one module for one
command (`load_plugin_module`). `register_method` checks a class's `info` (dfrd_bench.method_info.
MethodInfo) when the class is defined, so a bad declaration fails at import with one line.

The interface a method implements is `dfrd_bench.method.Method`; that module also re-exports every
name defined here, so `from dfrd_bench.method import get_method` keeps working.
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import logging
import sys
from importlib import metadata
from pathlib import Path
from typing import Callable, List

from .errors import DfrdError
from .method import Method
from .method_info import FAMILIES, MethodInfo
from .registry import Registry

ENTRY_POINT_GROUP = "dfrd_bench.methods"
log = logging.getLogger(__name__)

METHODS: Registry[type] = Registry("method")


class PluginError(DfrdError, ValueError):
    """A method plugin that cannot be loaded or registered as declared (the message says what to change)."""


def register_method(name: str) -> Callable[[type], type]:
    """Class decorator: `@register_method("ferd")`; a second class with the same name is an error.
    The class's `info` (MethodInfo) is checked here, so a bad declaration fails at import."""

    def decorator(cls: type) -> type:
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise TypeError(f"{cls!r} must subclass dfrd_bench.method.Method")
        info = checked_info(name, cls)
        cls.name = name
        METHODS.add(name, cls, help=cls.summary)
        cls.info, cls.paper = info, info.paper
        return cls

    return decorator


def checked_info(name: str, cls: type) -> MethodInfo:
    """The class's own `info` (one inherited from a registered method describes that one, not this),
    with the label and paper filled in, or one line saying what is wrong with it."""
    info = cls.__dict__.get("info")
    if info is None:  # a plugin that declares nothing: its name as label, RSLAD rows if it has the switch
        return MethodInfo(label=name, paper=cls.paper, rslad_stage="rslad" in cls.defaults)
    if not isinstance(info, MethodInfo):
        raise PluginError(f"method {name!r}: `info` must be a dfrd_bench.method.MethodInfo, got {type(info).__name__}")
    if info.family not in FAMILIES:
        raise PluginError(f"method {name!r}: unknown family {info.family!r} in its MethodInfo: use one of "
                          f"{', '.join(FAMILIES)}")
    if info.rslad_stage and "rslad" not in cls.defaults:
        raise PluginError(f"method {name!r} declares rslad_stage=True but has no `rslad` setting: build it on "
                          f"dfrd_bench.robust_kd.RobustKDMethod (or set rslad_stage=False)")
    return dataclasses.replace(info, label=info.label or name, paper=info.paper or cls.paper)


# ------------------------------------------------------------------------------------------------
# Loading: the built-ins and third-party plugins alike come through the entry-point group
# `dfrd_bench.methods` (pyproject.toml declares the built-ins'); `--plugin module` adds one module
# for one command.
BUILTIN_PACKAGE = "methods"
PROJECT_ROOT = Path(__file__).resolve().parent.parent  # the folder that holds dfrd_bench/ and methods/
_PLUGINS_LOADED = False
_PLUGIN_MODULES: List[str] = []  # loaded with --plugin in this process (sweep passes them on to the runs it prints)


def check_builtin_package() -> None:
    """The `methods` package Python would import must be this project's (next to dfrd_bench);
    another installed package of that name would otherwise replace the built-ins without a word."""
    expected = PROJECT_ROOT / BUILTIN_PACKAGE
    module = sys.modules.get(BUILTIN_PACKAGE)
    if module is not None:
        where = getattr(module, "__file__", None) or next(iter(getattr(module, "__path__", [])), None)
    else:
        spec = importlib.util.find_spec(BUILTIN_PACKAGE)
        where = spec and (spec.origin if spec.has_location else next(iter(spec.submodule_search_locations or []), None))
    if where is None:
        raise PluginError(f"dfrd-bench's built-in methods are missing (expected the package {expected}): "
                          f"reinstall dfrd-bench (pip install -e . in its repository)")
    found = Path(where).resolve()
    if expected.resolve() not in (found, found.parent):
        raise PluginError(f"another installed package named 'methods' (at {found}) shadows dfrd-bench's built-in "
                          f"methods ({expected}): uninstall or rename it, or run where it is not importable")


def load_plugins(refresh: bool = False) -> List[str]:
    """Register every method: each entry point in the group `dfrd_bench.methods` (the built-ins'
    are declared in pyproject.toml), then this project's `methods` package when its entry points
    are not installed (a source checkout, an install older than them). Returns the names.

    An entry point may name a module (whose classes register themselves with @register_method)
    or a Method subclass, which is then registered under the entry point's name. A broken
    third-party plugin is reported and skipped; a shadowed or broken built-in is an error.
    """
    global _PLUGINS_LOADED
    if _PLUGINS_LOADED and not refresh:
        return METHODS.names()
    _PLUGINS_LOADED = True  # first: a plugin that asks for a method while it is imported finds no loop
    try:
        check_builtin_package()
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            _load_entry_point(ep)
        importlib.import_module(BUILTIN_PACKAGE)  # a no-op once an entry point imported it
    except BaseException:
        _PLUGINS_LOADED = False  # the next call fails the same way instead of listing half the methods
        raise
    return METHODS.names()


def _load_entry_point(ep: metadata.EntryPoint) -> None:
    builtin = ep.value.split(":")[0].split(".")[0] == BUILTIN_PACKAGE
    if ep.name in METHODS:
        if not builtin and METHODS.get(ep.name).__module__ != ep.value.split(":")[0]:
            log.warning("method plugin %s (%s) skipped: the name is taken by %s", ep.name, ep.value,
                        METHODS.get(ep.name).__module__)
        return
    try:
        obj = ep.load()
    except Exception as exc:  # a broken third-party plugin must not break the suite
        if builtin:
            raise
        log.warning("could not load method plugin %s (%s): %s", ep.name, ep.value, exc)
        return
    if isinstance(obj, type) and issubclass(obj, Method) and ep.name not in METHODS:
        register_method(ep.name)(obj)


def load_plugin_module(module: str) -> List[str]:
    """Import `module` for this process (`--plugin`): its classes register themselves with
    @register_method. Returns the method names it added."""
    load_plugins()
    before = set(METHODS.names())
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and (module == exc.name or module.startswith(exc.name + ".")):
            raise PluginError(f"--plugin {module}: no module named {exc.name!r}: put the folder that holds it on "
                              f"PYTHONPATH, or pip install its package") from None
        raise
    if module not in _PLUGIN_MODULES:
        _PLUGIN_MODULES.append(module)
    return sorted(set(METHODS.names()) - before)


def plugin_modules() -> List[str]:
    """The modules loaded with --plugin in this process, in order."""
    return list(_PLUGIN_MODULES)


def get_method(name: str) -> type:
    """The registered class of method `name` (loading the plugins first); an unknown name fails
    with the closest registered names."""
    load_plugins()
    return METHODS.get(name)
