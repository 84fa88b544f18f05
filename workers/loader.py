"""Find the task registry named by ``-A module[:attr]``."""

from __future__ import annotations

import importlib
import os
import sys

from taskstream.workers.errors import TaskLoadError
from taskstream.workers.registry import TaskRegistry


def load_registry(target: str) -> TaskRegistry:
    """Import ``module`` and return ``module.attr`` (default: ``app``, else the module's
    only TaskRegistry). The current directory is importable, as for ``python -m``."""
    module_name, _, attr = target.partition(":")
    if not module_name:
        raise TaskLoadError(f"-A {target!r}: name a module, e.g. -A myproject.tasks[:app]")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise TaskLoadError(
                f"-A {target!r}: no module named {exc.name!r} (searched the current directory "
                "and sys.path); check the spelling or install the package"
            ) from None
        raise TaskLoadError(f"-A {target!r}: importing {module_name} failed: {exc}") from exc
    except Exception as exc:
        raise TaskLoadError(
            f"-A {target!r}: importing {module_name} raised {type(exc).__name__}: {exc}"
        ) from exc
    if attr:
        if not hasattr(module, attr):
            raise TaskLoadError(f"-A {target!r}: module {module_name} has no attribute {attr!r}")
        found = getattr(module, attr)
        if not isinstance(found, TaskRegistry):
            raise TaskLoadError(f"-A {target!r}: {module_name}.{attr} is a "
                                f"{type(found).__name__}, not a TaskRegistry/TaskApp")
        return found
    default = getattr(module, "app", None)
    if isinstance(default, TaskRegistry):
        return default
    registries = [v for v in vars(module).values() if isinstance(v, TaskRegistry)]
    if len(registries) == 1:
        return registries[0]
    raise TaskLoadError(
        f"-A {target!r}: module {module_name} has "
        f"{'no' if not registries else len(registries)} TaskRegistry objects; "
        f"name one with -A {module_name}:<attr>"
    )
