"""Every exception the library raises on purpose sits under ``AvatarcastError``: its own exception classes, and the
built-in exceptions it raises (``ValueError``, ``RuntimeError``...) outside the few places listed here with why."""

from __future__ import annotations

import ast
import builtins
import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

import avatarcast
from avatarcast.core.errors import (AvatarcastError, ConnectionLostError, InvalidValueError, RenderFailedError,
                                    StateError)

PACKAGE = Path(avatarcast.__file__).resolve().parent

# (module path, function, exception) -> why a built-in exception is right there
BUILTIN_RAISES = {
    ("audio/alignment.py", "number_words", "ValueError"): "out-of-range numbers; the caller spells the digits instead",
    ("live/studio.py", "upload_avatar", "ValueError"): "control flow: caught three lines below into a 400 response",
    ("live/renderer.py", "_send", "OSError"): "a closed pipe, as the pipe itself would say; its callers catch OSError",
    ("offline/executors.py", "run", "NotImplementedError"): "an abstract method",
    ("live/scheduler.py", "_baseline", "AssertionError"): "a programming assert: the loop above always returns",
}
VALIDATORS = {"model_validator", "field_validator"}  # pydantic turns their ValueErrors into a ValidationError
BUILTIN_EXCEPTIONS = {name for name, obj in vars(builtins).items()
                      if inspect.isclass(obj) and issubclass(obj, BaseException)}


def _modules():
    for info in pkgutil.walk_packages([str(PACKAGE)], "avatarcast."):
        if not info.name.endswith("__main__"):
            yield info.name


def _is_validator(func: ast.AST) -> bool:
    for deco in getattr(func, "decorator_list", []):
        target = deco.func if isinstance(deco, ast.Call) else deco
        if getattr(target, "id", getattr(target, "attr", None)) in VALIDATORS:
            return True
    return False


def test_the_library_raises_builtin_exceptions_only_where_listed():
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"))

        def visit(node, func):
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    visit(child, child)
                    continue
                if isinstance(child, ast.Raise) and child.exc is not None and not _is_validator(func):
                    target = child.exc.func if isinstance(child.exc, ast.Call) else child.exc
                    name = getattr(target, "id", None)
                    if name in BUILTIN_EXCEPTIONS:
                        key = (rel, getattr(func, "name", "<module>"), name)
                        found[key] = child.lineno
                visit(child, func)

        visit(tree, None)
    unlisted = [f"{k[0]}:{line} {k[1]} raises {k[2]}" for k, line in sorted(found.items()) if k not in BUILTIN_RAISES]
    assert not unlisted, "raise an AvatarcastError subclass instead:\n" + "\n".join(unlisted)
    stale = [k for k in BUILTIN_RAISES if k not in found]
    assert not stale, f"listed built-in raises that no longer exist: {stale}"


@pytest.mark.parametrize("module", sorted(_modules()))
def test_every_exception_class_of_the_library_is_an_avatarcast_error(module):
    mod = importlib.import_module(module)
    classes = [obj for obj in vars(mod).values()
               if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == module]
    outside = [c.__name__ for c in classes if not issubclass(c, AvatarcastError)]
    assert not outside, f"{module}: {outside} do not derive from AvatarcastError"


def test_the_builtin_kinds_stay_catchable_as_before():
    """Callers that caught ValueError or RuntimeError from the library still do."""
    assert issubclass(InvalidValueError, ValueError) and issubclass(StateError, RuntimeError)
    assert issubclass(RenderFailedError, RuntimeError) and issubclass(ConnectionLostError, ConnectionError)
