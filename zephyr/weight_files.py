"""Weight files checked before anything loads: a checkpoint directory's weights, a run's adapter, and whether that
adapter fits the base model it is about to be loaded on. Only headers are read.

What users meet: a model cloned without git-lfs (pointer files under the weights' names), a download that saved a
login page, a copy cut short, a sharded checkpoint missing a shard, a run evaluated on another base model than
the one it was trained on (PEFT would fail after loading, with a shape error about one tensor).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from zephyr.errors import UsageError
from zephyr.io import read_json

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
_ADAPTER_KEY = re.compile(r"^base_model\.model\.(.+)\.(lora_A|lora_B|lora_embedding_A|lora_embedding_B)(\.weight)?$")


def _head(path: Path, flag: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read(512)
    except PermissionError:
        raise UsageError(f"{flag}: {path}: cannot read (permission denied)") from None
    except OSError as err:
        raise UsageError(f"{flag}: {path}: cannot read ({err.strerror})") from None


def _not_weights(path: Path, head: bytes, flag: str) -> None:
    """Refuse what is often saved under a weights name: a git-lfs pointer, an HTML page, an empty file."""
    if head.startswith(b"version https://git-lfs"):
        raise UsageError(f"{flag}: {path}: a git-lfs pointer, not the weights; run `git lfs pull` in {path.parent}")
    if head.lstrip()[:14].lower() in (b"<!doctype html", b"<html>") or head.lstrip()[:5].lower() == b"<html":
        raise UsageError(f"{flag}: {path}: an HTML page saved under a weights name; download the file itself")
    if not head:
        raise UsageError(f"{flag}: {path}: empty file; download it again")


def safetensors_header(path: Path, flag: str) -> dict:
    """The tensor table of a .safetensors file (name -> dtype, shape, data_offsets), checked against its size."""
    head = _head(path, flag)
    _not_weights(path, head, flag)
    size = path.stat().st_size
    length = int.from_bytes(head[:8], "little") if len(head) >= 8 else None
    if length is None or length > size - 8:
        raise UsageError(f"{flag}: {path}: not a whole safetensors file (its {size} bytes cannot hold the header "
                         "it announces); download it again")
    with open(path, "rb") as handle:
        handle.seek(8)
        try:
            header = json.loads(handle.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UsageError(f"{flag}: {path}: not a safetensors file (its header is not JSON)") from None
    ends = [entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"]
    if 8 + length + max(ends, default=0) > size:
        raise UsageError(f"{flag}: {path}: cut short ({size:,} of {8 + length + max(ends):,} bytes); download it "
                         "again")
    return header


def _check_weights_file(path: Path, flag: str) -> dict:
    if path.suffix == ".safetensors":
        return safetensors_header(path, flag)
    head = _head(path, flag)
    _not_weights(path, head, flag)
    if not head.startswith((b"PK\x03\x04", b"\x80")):  # torch.save: a zip archive, or a pickle before torch 1.6
        raise UsageError(f"{flag}: {path}: not a PyTorch weights file")
    return {}


def checkpoint_weights(directory: Path, flag: str) -> None:
    """A local checkpoint directory holds real, readable weights: every shard its index names, or one file."""
    for index_name in INDEX_FILES:
        index = directory / index_name
        if index.is_file():
            weight_map = read_json(index).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise UsageError(f"{flag}: {index}: no weight_map; download it again")
            shards = sorted(set(weight_map.values()))
            missing = [shard for shard in shards if not (directory / shard).is_file()]
            if missing:
                raise UsageError(f"{flag}: {directory}: {len(missing)} of the {len(shards)} weight shards {index_name} "
                                 f"names are missing ({missing[0]}); download them")
            for shard in shards:
                _check_weights_file(directory / shard, flag)
            return
    for name in WEIGHT_FILES:
        if (directory / name).is_file():
            _check_weights_file(directory / name, flag)
            return
    raise UsageError(f"{flag}: {directory}: no weights ({' or '.join(WEIGHT_FILES)}, or a sharded checkpoint's "
                     "index); download them")


def adapter_header(adapter: Path, flag: str) -> dict:
    """A run's adapter folder: its config parses and its weights are whole; returns the weights' tensor table."""
    read_json(adapter / ADAPTER_CONFIG)
    for name in ADAPTER_WEIGHTS:
        if (adapter / name).is_file():
            return _check_weights_file(adapter / name, flag)
    raise UsageError(f"{flag}: {adapter}: no adapter weights ({' or '.join(ADAPTER_WEIGHTS)}); did training finish?")


def adapter_mismatch(header: dict, shapes: dict[str, tuple[int, int]]) -> str | None:
    """Why the adapter's tensors cannot sit on a model whose adaptable layers have these (inputs, outputs), or None.
    LoRA's A takes the layer's inputs and B gives its outputs (an embedding's A spans its rows, B its width)."""
    for key, entry in header.items():
        match = _ADAPTER_KEY.match(key)
        if not match:
            continue
        module, part = match.group(1), match.group(2)
        if module not in shapes:
            return f"the adapter adapts {module}, which this model does not have"
        inputs, outputs = shapes[module]
        if part in ("lora_A", "lora_embedding_A"):
            got, want, what = entry["shape"][-1], inputs, "inputs"
        else:
            got, want, what = entry["shape"][0], outputs, "outputs"
        if got != want:
            return f"the adapter's {module} has {got} {what}, this model's {want}"
    return None
