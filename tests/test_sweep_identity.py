"""A run's identity is all of its settings: after a default sweep of the tiny model, the README's packed-protocol
command, another data file or another flag in EXTRA_ARGS never reuses its runs; the same sweep skips them."""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import pytest

from conftest import REPO
from zephyr.sweeps.entry import main


@pytest.fixture
def sweep(capsys):
    """sample_ablate.sh's entry point, in this process (the script only hands its arguments over)."""

    def run(env: dict, **more) -> SimpleNamespace:
        capsys.readouterr()
        code = main(["ablation", "--script", str(REPO / "sample_ablate.sh")], environ={**env, **more})
        captured = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=captured.out, stderr=captured.err)

    return run


def snapshot(root) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_same_sweep_again_skips_its_finished_runs(tiny_sweep, sweep):
    again = sweep(tiny_sweep["env"])
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == [f"skip (complete) {tiny_sweep['out']}/newsgroups_tiny-mistral_frac1.0_{v}"
                                         for v in ("base", "neftune")] + ["sweep: 0 ran, 2 skipped, 0 failed"]


def test_the_packed_protocol_after_a_default_sweep_stops_before_any_work(tiny_sweep, sweep, tmp_path):
    env, out = tiny_sweep["env"], tiny_sweep["out"]
    before = snapshot(out)
    packed = sweep(env, EXTRA_ARGS=env["EXTRA_ARGS"] + " --packing True --compile_layers auto")
    assert packed.returncode == 2 and packed.stdout == ""
    assert packed.stderr == (f"error: {out}/newsgroups_tiny-mistral_frac1.0_base: finished with other settings "
                             "(--packing False, now True); give these settings their own OUT_ROOT, or add "
                             "--overwrite True to EXTRA_ARGS to replace it\n")
    assert snapshot(out) == before, "nothing already written is touched"
    own_root = sweep(env, EXTRA_ARGS=env["EXTRA_ARGS"] + " --packing True", OUT_ROOT=str(tmp_path / "packed"),
                     DRY_RUN="1")
    assert own_root.returncode == 0 and len(own_root.stdout.splitlines()) == 2, own_root.stderr


def test_other_data_is_another_run_and_moved_data_is_the_same(tiny_sweep, sweep, tmp_path):
    env, out = tiny_sweep["env"], tiny_sweep["out"]
    moved = shutil.copytree(tiny_sweep["data"], tmp_path / "moved")
    same = sweep(env, DATA_DIR=str(moved))  # the same bytes elsewhere: the data's hash is what counts
    assert same.returncode == 0 and "sweep: 0 ran, 2 skipped, 0 failed" in same.stdout, same.stderr
    test_file = moved / "newsgroups" / "test.jsonl"
    test_file.write_text(test_file.read_text() + test_file.read_text().splitlines()[0] + "\n")
    changed = sweep(env, DATA_DIR=str(moved))
    assert changed.returncode == 2 and changed.stderr.count("\n") == 1
    assert changed.stderr.startswith(f"error: {out}/newsgroups_tiny-mistral_frac1.0_base: finished with other "
                                     f"settings (--data_dir: its test data was {tiny_sweep['data']}/newsgroups/"
                                     f"test.jsonl (sha256 "), changed.stderr
    assert f"now {test_file} (sha256 " in changed.stderr
