"""The parse-time checks of the argument dataclasses (zephyr/config.py): each refuses a bad flag value with a
one-line ``UsageError`` that names the flag."""

from __future__ import annotations

import math

from zephyr.errors import UsageError

SEED_RANGE = 2**32  # numpy's seed range: transformers' set_seed seeds numpy too


def check(condition: bool, flag: str, message: str) -> None:
    if not condition:
        raise UsageError(f"--{flag}: {message}")


def check_finite(value: float, flag: str, low: float, message: str) -> None:
    """``value`` is a finite number above ``low`` (NaN and infinity are refused)."""
    check(math.isfinite(value) and value > low, flag, f"{message} and finite, got {value}")


def check_seed(value: int, flag: str) -> None:
    check(0 <= value < SEED_RANGE, flag, f"must be in [0, 2**32), got {value}")


def auto_true_false(value, flag: str) -> str:
    value = str(value).lower()
    check(value in ("auto", "true", "false"), flag, f"unknown value {value!r} (choose auto, true or false)")
    return value


# The package each documented tracker needs (tensorboard also works with tensorboardX).
TRACKER_PACKAGES = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",), "mlflow": ("mlflow",),
                    "trackio": ("trackio",)}


def check_trackers(report_to: str) -> None:
    import importlib.util

    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    names = [name.strip() for name in report_to.split(",")]
    for name in names:
        check(name in ("none", "all", *INTEGRATION_TO_CALLBACK), "report_to",
              f"unknown tracker {name!r} (choose none, {', '.join(TRACKER_PACKAGES)} or another the Trainer knows)")
        packages = TRACKER_PACKAGES.get(name)
        if packages:
            check(any(importlib.util.find_spec(p) for p in packages), "report_to",
                  f"{name} needs the {packages[0]!r} package (pip install {packages[0]})")
    check(len(names) == 1 or "none" not in names, "report_to", "none cannot be combined with a tracker")
