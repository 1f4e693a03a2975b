"""Where a run ran: library versions, the suite's git commit and the device (recorded in every config.json), and
the memory it peaked at (in train_log.jsonl, train_metrics.json and metrics.json)."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path

PACKAGES = ("torch", "transformers", "peft", "trl", "bitsandbytes", "accelerate", "datasets", "rouge-score")


def versions() -> dict:
    out = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit() -> str | None:
    """``ZEPHYR_GIT_COMMIT`` when set (a copied tree can carry a stale .git), else HEAD of the suite's checkout
    (``-dirty`` if modified)."""
    if os.environ.get("ZEPHYR_GIT_COMMIT"):
        return os.environ["ZEPHYR_GIT_COMMIT"]
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if commit.returncode != 0:
        return None
    return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def device_info() -> dict:
    import torch  # here, not at the top: importing zephyr.rundir (a sweep naming its runs) must not load torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return {"type": "cuda", "name": props.name, "count": torch.cuda.device_count(),
                "memory_gib": round(props.total_memory / 2**30, 1), "cuda": torch.version.cuda}
    return {"type": "cpu", "name": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}


def peak_memory_gib() -> dict:
    import torch

    if torch.cuda.is_available():
        return {"peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3),
                "peak_gpu_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 3)}
    return {"peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}
