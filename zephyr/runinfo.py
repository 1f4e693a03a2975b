"""What makes a run directory self-describing: its name, resolved arguments, versions, commit and device."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

from zephyr.config import DataArguments, ModelArguments, TrainArguments
from zephyr.io import atomic_write_json

PACKAGES = ("torch", "transformers", "peft", "trl", "bitsandbytes", "accelerate", "datasets", "rouge-score")


def _fmt(value: float) -> str:
    return f"{value:g}"


def model_short_name(model_name_or_path: str) -> str:
    stem = Path(model_name_or_path.rstrip("/")).name
    return stem.removesuffix(".gguf") or "model"


def run_name(data: DataArguments, model: ModelArguments, train: TrainArguments) -> str:
    """A directory name that spells out the settings a sweep varies."""
    parts = [data.task, model_short_name(model.model_name_or_path), f"frac{_fmt(data.train_fraction)}",
             f"r{model.lora_r}", f"a{model.lora_alpha}", f"d{_fmt(model.lora_dropout)}",
             f"ep{_fmt(train.num_train_epochs)}", model.lora_targets.replace(",", "+")]
    if model.lora_lm_head:
        parts.append("lmhead")
    if train.neftune_alpha:
        parts.append(f"neft{_fmt(train.neftune_alpha)}")
    if model.quantization != "4bit":
        parts.append(f"q{model.quantization}")
    if data.prompt_format != "original":
        parts.append(data.prompt_format)
    if train.loss != "completion":
        parts.append(f"loss{train.loss}")
    if train.max_steps > 0:
        parts.append(f"steps{train.max_steps}")
    parts.append(f"seed{train.seed}")
    return "_".join(parts)


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
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return {"type": "cuda", "name": props.name, "count": torch.cuda.device_count(),
                "memory_gib": round(props.total_memory / 2**30, 1), "cuda": torch.version.cuda}
    return {"type": "cpu", "name": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}


def absolute_if_local(name: str) -> str:
    """A model path that exists here as an absolute path (so it works from any directory); a hub id unchanged."""
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name


def write_config(path: Path, arguments: dict, model_path: str | None = None, base_model: str | None = None,
                 **extra) -> dict:
    """config.json; ``model_path`` (the checkpoint loaded) and ``base_model`` (as given: a .gguf file, a directory
    or a hub id) are recorded absolute, so evaluation finds the base model from any working directory."""
    models = {} if model_path is None else {"model_path": absolute_if_local(model_path),
                                              "base_model": absolute_if_local(base_model or model_path)}
    config = {"arguments": arguments, **models, **extra, "versions": versions(), "git_commit": git_commit(),
              "device": device_info(), "command": [Path(sys.argv[0]).name, *sys.argv[1:]]}
    atomic_write_json(path, config)
    return config
