"""Task registry. Adding a task means adding one module here with a ``Task`` subclass that sets ``name``."""

import importlib
import pkgutil

from zephyr.tasks.base import LoadedSplit, Task

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

TASKS: dict[str, type[Task]] = {cls.name: cls for cls in Task.__subclasses__() if getattr(cls, "name", None)}


def get_task(name: str) -> Task:
    return TASKS[name]()


__all__ = ["TASKS", "LoadedSplit", "Task", "get_task"]
