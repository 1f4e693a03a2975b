"""Task registry: every ``Task`` subclass that sets ``name`` registers itself when defined. The suite's own tasks
are the modules of this package; another task is one module of its own, imported before the suite runs it."""

import importlib
import pkgutil

from zephyr.tasks.base import TASKS, LoadedSplit, Task

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")


def get_task(name: str) -> Task:
    return TASKS[name]()


__all__ = ["TASKS", "LoadedSplit", "Task", "get_task"]
