"""The sweep runner's concurrent runs per GPU: never more than asked, one log per run, whole progress lines,
shared compiler caches, and skip still working. Jobs are tiny shell commands recording their start and end."""

from __future__ import annotations

import csv
import re
import shlex
from pathlib import Path

import pytest

from zephyr.sweep import Job, main, run_sweep

JOB = ('echo "start {name} ${{CUDA_VISIBLE_DEVICES:-none}} $(date +%s.%N) $TORCHINDUCTOR_CACHE_DIR" >> {events}; sleep {sleep}; '
       'echo "working on {name}"; mkdir -p {run}; echo \'{{"arguments": {{}}}}\' > {run}/config.json; '
       'echo "{{}}" > {run}/metrics.json; echo "end {name} ${{CUDA_VISIBLE_DEVICES:-none}} $(date +%s.%N)" >> {events}')


def shell_jobs(root: Path, n: int, sleep: float = 1.0) -> list[Job]:
    events = root / "events.log"
    return [Job(root / f"job{i}", ["sh", "-c", JOB.format(name=f"job{i}", events=shlex.quote(str(events)),
                                                          run=shlex.quote(str(root / f"job{i}")), sleep=sleep)])
            for i in range(n)]


def no_user_cache(monkeypatch):
    """A cache directory set in the environment wins over the sweep's; torch sets one once inductor has run in
    this process (an earlier test)."""
    for name in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
        monkeypatch.delenv(name, raising=False)


def most_at_once(root: Path) -> dict[str, int]:
    """Per GPU, the largest number of jobs that had started and not yet ended."""
    rows = [line.split() for line in (root / "events.log").read_text().splitlines()]
    peak, running = {}, {}
    for kind, _, gpu, _, *_ in sorted(rows, key=lambda r: (float(r[3]), r[0] == "start")):  # ends first on ties
        running[gpu] = running.get(gpu, 0) + (1 if kind == "start" else -1)
        peak[gpu] = max(peak.get(gpu, 0), running[gpu])
    return peak


@pytest.mark.parametrize("gpus, runs_per_gpu", [(["0", "1"], 2), ([], 3)])
def test_never_more_runs_per_gpu_than_asked_and_whole_progress_lines(tmp_path, capsys, monkeypatch, gpus,
                                                                    runs_per_gpu):
    no_user_cache(monkeypatch)
    jobs = shell_jobs(tmp_path, 8)
    for done in jobs[:2]:  # a finished run is skipped, as with one run at a time
        done.run_dir.mkdir()
        (done.run_dir / "metrics.json").write_text("{}")
    code = run_sweep(jobs, gpus, tmp_path / "sweep.csv", runs_per_gpu=runs_per_gpu, cache_dir=tmp_path / "cache")
    output = capsys.readouterr().out.splitlines()
    assert code == 0
    peaks = most_at_once(tmp_path)
    assert set(peaks) == set(gpus or ["none"])  # every GPU used
    assert max(peaks.values()) == runs_per_gpu, peaks  # reached, never exceeded
    started = [l.split()[1] for l in (tmp_path / "events.log").read_text().splitlines() if l.startswith("start")]
    assert sorted(started) == [f"job{i}" for i in range(2, 8)], "skipped runs must not run again"
    progress = [l for l in output if l.startswith("[")]
    pattern = r"\[\d/6\] job\d (started( on GPU \d)?|done in [0-9hms]+(, ETA [0-9hms]+)?)"
    assert len(progress) == 12 and all(re.fullmatch(pattern, l) for l in progress), progress
    assert re.fullmatch(r".* done in [0-9hms]+", progress[-1])  # nothing is left after the last run: no ETA
    for job in jobs[2:]:
        assert "working on" in (job.run_dir / "sweep.log").read_text()  # one log per run
    caches = {l.split()[4] for l in (tmp_path / "events.log").read_text().splitlines() if l.startswith("start")}
    assert caches == {str((tmp_path / "cache" / "inductor").resolve())}  # one compiler cache for every run


def test_runs_per_gpu_comes_from_the_environment_and_is_checked(tmp_path, monkeypatch, capsys):
    no_user_cache(monkeypatch)
    jobs = shell_jobs(tmp_path, 4, sleep=1.5)
    job_file = tmp_path / "jobs.tsv"
    job_file.write_text("".join(f"{j.run_dir}\t{shlex.join(j.command)}\n" for j in jobs))
    monkeypatch.setenv("RUNS_PER_GPU", "4")
    assert main(["--jobs", str(job_file), "--csv", str(tmp_path / "s.csv")]) == 0
    assert most_at_once(tmp_path) == {"none": 4}
    caches = {l.split()[4] for l in (tmp_path / "events.log").read_text().splitlines() if l.startswith("start")}
    assert caches == {str((tmp_path / "compile_cache" / "inductor").resolve())}  # beside the CSV by default
    capsys.readouterr()
    assert main(["--jobs", str(job_file), "--csv", str(tmp_path / "s.csv"), "--runs_per_gpu", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --runs_per_gpu: must be a positive whole number, got '0'"


def test_two_sweeps_sharing_a_csv_lose_no_row(tmp_path):
    import threading

    from zephyr.sweep import CsvLog

    csv_path = tmp_path / "out" / "sweep.csv"  # a folder made by the first row

    def append_rows(tag: str) -> None:  # one CsvLog each, as two sweep processes have
        log = CsvLog(csv_path)
        for i in range(40):
            log.append({"status": "ok", "run": f"{tag}{i}"})

    writers = [threading.Thread(target=append_rows, args=(tag,)) for tag in "ab"]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    rows = list(csv.DictReader(csv_path.open()))
    assert sorted(r["run"] for r in rows) == sorted(f"{t}{i}" for t in "ab" for i in range(40))
    assert [p.name for p in csv_path.parent.iterdir()] == ["sweep.csv"]  # no lock file left behind
