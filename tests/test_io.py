"""atomic_directory: a directory is written beside its target and renamed into place, whole or not at all."""

from __future__ import annotations

import pytest

from zephyr.io import atomic_directory


def test_the_directory_appears_whole_on_success(tmp_path):
    target = tmp_path / "new" / "model"  # a missing parent is created
    with atomic_directory(target) as staging:
        assert staging.parent == target.parent and not target.exists()
        (staging / "weights").write_text("w")
    assert (target / "weights").read_text() == "w"
    assert [p.name for p in target.parent.iterdir()] == ["model"]  # no staging folder left


def test_a_failure_leaves_nothing(tmp_path):
    target = tmp_path / "model"
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as staging:
            (staging / "half").write_text("w")
            raise RuntimeError("killed while writing")
    assert list(tmp_path.iterdir()) == []


def test_a_directory_already_there(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "theirs").write_text("t")
    with pytest.raises(OSError):
        with atomic_directory(target) as staging:
            (staging / "ours").write_text("o")
    with atomic_directory(target, keep_existing=True) as staging:  # another rank converted it first
        (staging / "ours").write_text("o")
    assert [p.name for p in tmp_path.iterdir()] == ["model"] and [p.name for p in target.iterdir()] == ["theirs"]
