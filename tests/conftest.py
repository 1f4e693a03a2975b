"""Shared fixtures: one tiny random Mistral with Zephyr's real tokenizer, inline data, and ../shared."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from zephyr.io import atomic_write_jsonl

REPO = Path(__file__).resolve().parents[1]


def shared_dir() -> Path | None:
    """ZEPHYR_SHARED_DIR (CI sets it to ../shared), else ../shared beside the checkout if present."""
    configured = os.environ.get("ZEPHYR_SHARED_DIR")
    if configured:
        path = Path(configured)
        assert path.is_dir(), f"ZEPHYR_SHARED_DIR={configured} does not exist"
        return path
    default = REPO.parent / "shared"
    return default if default.is_dir() else None


requires_shared = pytest.mark.skipif(shared_dir() is None, reason="../shared not present (set ZEPHYR_SHARED_DIR)")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from zephyr.embedded import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-mistral", seed=0)


@pytest.fixture(scope="session")
def tokenizer(tiny_model_dir):
    from zephyr.modeling import load_tokenizer

    return load_tokenizer(str(tiny_model_dir))


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> Path:
    from zephyr.embedded import write_synthetic_data

    return write_synthetic_data(tmp_path_factory.mktemp("data"), seed=0, train_rows=48, test_rows=12)


def write_newsgroups(root: Path, train: list[tuple[str, str]], test: list[tuple[str, str]]) -> Path:
    for split, rows in (("train", train), ("test", test)):
        atomic_write_jsonl(root / "newsgroups" / f"{split}.jsonl",
                           [{"id": f"{split}{i}", "text": t, "label": l} for i, (t, l) in enumerate(rows)])
    return root
