"""Run a list of jobs resumably, ``--runs_per_gpu`` at a time on each GPU, and append a CSV row per finished run.

A job file has one job per line: ``<run_dir>\\t<shell-quoted command>``. A job whose ``<run_dir>/metrics.json``
exists is skipped, so a killed sweep started again runs only what is missing. Each job's stdout and stderr
go to ``<run_dir>/sweep.log``. A failed job is reported with the last line of its log; the others go on,
and the exit status is 1 if any job failed. The sweep prints one line when a run starts and one when it ends
(``[3/24] <run> done in 3m12s, ETA 41m``), never two at once.

Every run gets the same on-disk compiler caches (``--compile_cache``, under the sweep's output root): a run
whose layers have the shapes of an earlier run's loads their compiled kernels instead of compiling again.

    python -m zephyr.sweep --jobs jobs.tsv --csv runs/sweep.csv --gpus 0,1 --runs_per_gpu 4 [--dry_run]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import ctypes
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from queue import Empty, Queue

from zephyr.errors import UsageError
from zephyr.io import atomic_write_text, folder_lock
from zephyr.progress import eta, format_duration
from zephyr.results import ROW_COLUMNS, summarize_run, to_csv
from zephyr.rundir import CONFIG, METRICS, SWEEP_LOG

CSV_COLUMNS = ["status", "wall_s", *ROW_COLUMNS]
RUNS_PER_GPU_ENV = "RUNS_PER_GPU"
COMPILE_CACHE = "compile_cache"  # beside sweep.csv, in the sweep's output root


@dataclass
class Job:
    run_dir: Path
    command: list[str]

    def done(self) -> bool:
        return (self.run_dir / METRICS).is_file()


def read_jobs(path: str | Path) -> list[Job]:
    jobs = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        run_dir, sep, command = line.partition("\t")
        if not sep or not command.strip():
            raise UsageError(f"{path}: line {number}: expected '<run_dir><TAB><command>'")
        jobs.append(Job(Path(run_dir), shlex.split(command)))
    return jobs


def check_jobs(jobs: list[Job]) -> None:
    """Every job's pre-flight, before the first one starts (and in a dry run): a bad grid value or combination
    fails in seconds, not after the good runs. Hub models and datasets are left to each run's own pre-flight."""
    from zephyr.cli import preflight_command

    for job in jobs:
        try:
            preflight_command(job.command)
        except UsageError as err:
            raise UsageError(f"{job.run_dir.name}: {err}") from None


def assign_gpus(jobs: list[Job], gpus: list[str]) -> list[tuple[Job, str | None]]:
    """The order jobs start in, each with the GPU it would get if run one after another per GPU slot.

    The real schedule hands a job to whichever GPU frees first; this round-robin view is what --dry_run
    prints and what the scheduler starts with.
    """
    if not gpus:
        return [(job, None) for job in jobs]
    return [(job, gpus[i % len(gpus)]) for i, job in enumerate(jobs)]


def command_line(job: Job, gpu: str | None) -> str:
    prefix = f"CUDA_VISIBLE_DEVICES={gpu} " if gpu is not None else ""
    return prefix + shlex.join(job.command)


def _die_with_parent():
    """Children get SIGKILL when the sweep dies (even by kill -9), so no orphan keeps writing a run."""
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class CsvLog:
    """The sweep's CSV, rewritten atomically on every row so a kill never leaves half a line. Sweeps that share
    it (two started on one output root) take turns by locking its folder, so that no row is lost."""

    def __init__(self, path: Path):
        self.path, self.lock = path, threading.Lock()

    def append(self, row: dict) -> None:
        with self.lock, contextlib.ExitStack() as stack:
            try:
                stack.enter_context(folder_lock(self.path.parent))  # the CSV itself is replaced, its folder stays
            except OSError as err:  # e.g. NFS, where flock needs a file open for writing: one sweep still works
                print(f"warning: cannot lock {self.path.parent} ({err}): two sweeps writing {self.path.name} "
                      "at once may lose rows", file=sys.stderr, flush=True)
            rows = []
            if self.path.is_file():
                with self.path.open(encoding="utf-8") as existing:
                    rows = list(csv.DictReader(existing))
            rows.append(row)
            atomic_write_text(self.path, to_csv(rows, CSV_COLUMNS))


def _last_line(path: Path) -> str:
    lines = [l for l in path.read_text(errors="replace").splitlines() if l.strip()] if path.is_file() else []
    return lines[-1][:300] if lines else "(no output)"


def compile_cache_env(cache_dir: Path) -> dict[str, str]:
    """Environment that points torch.compile's on-disk caches at ``cache_dir``, shared by every run.

    Inductor's FX graph cache (compiled kernels per graph and shape) and the AOTAutograd cache (the joint
    forward/backward graph) both live under TORCHINDUCTOR_CACHE_DIR; Triton's own kernel binaries under
    TRITON_CACHE_DIR. The default location is per user in /tmp, which a fresh machine or container starts empty.
    """
    return {"TORCHINDUCTOR_CACHE_DIR": str(cache_dir / "inductor"), "TRITON_CACHE_DIR": str(cache_dir / "triton"),
            "TORCHINDUCTOR_FX_GRAPH_CACHE": "1", "TORCHINDUCTOR_AUTOGRAD_CACHE": "1"}


def run_job(job: Job, gpu: str | None, csv_log: CsvLog, cache_dir: Path | None = None) -> str | None:
    """Run one job; returns None on success, else the failure summary."""
    job.run_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if cache_dir is not None:
        for name, value in compile_cache_env(cache_dir.resolve()).items():
            env.setdefault(name, value)  # a cache the user chose wins
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    log_path = job.run_dir / SWEEP_LOG
    start = time.perf_counter()
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"$ {command_line(job, gpu)}\n")
        log.flush()
        code = subprocess.call(job.command, stdout=log, stderr=subprocess.STDOUT, env=env,
                               preexec_fn=_die_with_parent)
    wall = round(time.perf_counter() - start, 1)
    if code == 0 and job.done():
        # A re-evaluation writes only metrics and predictions into its own folder: it gets a row by name.
        has_config = (job.run_dir / CONFIG).is_file()
        csv_log.append({"status": "ok", "wall_s": wall,
                        **(summarize_run(job.run_dir) if has_config else {"run": job.run_dir.name})})
        return None
    reason = f"exit code {code}" if code else "exited 0 without metrics.json"
    csv_log.append({"status": "failed", "wall_s": wall, "run": job.run_dir.name})
    return f"FAILED {job.run_dir} ({reason}, log {log_path}): {_last_line(log_path)}"


def run_sweep(jobs: list[Job], gpus: list[str], csv_path: Path, dry_run: bool = False, out=None,
              runs_per_gpu: int = 1, cache_dir: Path | None = None) -> int:
    """Run the jobs not done yet, ``runs_per_gpu`` at a time on each GPU (or on the default device)."""
    out = out or sys.stdout
    pending = [job for job in jobs if not job.done()]
    for job in jobs:
        if job.done():
            print(f"skip (complete) {job.run_dir}", file=out)
    if dry_run:
        for job, gpu in assign_gpus(pending, gpus):
            print(command_line(job, gpu), file=out)
        return 0
    csv_log, failures = CsvLog(csv_path), []
    queue: Queue = Queue()
    for number, job in enumerate(pending, 1):
        queue.put((number, job))
    printing, started, finished = threading.Lock(), time.perf_counter(), [0]

    def say(line: str) -> None:
        with printing:  # whole lines only, from one thread at a time
            print(line, file=out, flush=True)

    def worker(gpu: str | None):
        while True:
            try:
                number, job = queue.get_nowait()
            except Empty:
                return
            say(f"[{number}/{len(pending)}] {job.run_dir.name} started" + (f" on GPU {gpu}" if gpu is not None else ""))
            began = time.perf_counter()
            failure = run_job(job, gpu, csv_log, cache_dir)
            with printing:
                finished[0] += 1
                left = eta(time.perf_counter() - started, finished[0], len(pending))
                if failure:
                    failures.append(failure)
                outcome = "FAILED" if failure else "done"
                print(f"[{number}/{len(pending)}] {job.run_dir.name} {outcome} in "
                      f"{format_duration(time.perf_counter() - began)}" + (f", ETA {format_duration(left)}" if left
                                                                            else ""), file=out, flush=True)

    threads = [threading.Thread(target=worker, args=(gpu,)) for gpu in (gpus or [None]) for _ in range(runs_per_gpu)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(f"sweep: {len(pending) - len(failures)} ran, {len(jobs) - len(pending)} skipped, "
          f"{len(failures)} failed", file=out)
    for failure in failures:
        print(failure, file=out)
    return 1 if failures else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--jobs", required=True, help="job file: <run_dir>\\t<command> per line")
    parser.add_argument("--csv", required=True, help="CSV that gets one row per finished or failed run")
    parser.add_argument("--gpus", default="", help="comma-separated GPU ids; empty: the default device")
    parser.add_argument("--runs_per_gpu", default=os.environ.get(RUNS_PER_GPU_ENV, "1"),
                        help=f"most runs at a time on each GPU (env {RUNS_PER_GPU_ENV}; default 1)")
    parser.add_argument("--compile_cache", default=None,
                        help=f"torch.compile cache shared by the runs (default: {COMPILE_CACHE}/ beside --csv)")
    parser.add_argument("--dry_run", action="store_true", help="print the commands without running them")
    args = parser.parse_args(argv)
    try:
        gpus = [g.strip() for g in args.gpus.split(",") if g.strip()]
        if len(set(gpus)) != len(gpus):
            raise UsageError(f"--gpus: {args.gpus!r} names a GPU twice")
        if not all(g.isdigit() or g.startswith(("GPU-", "MIG-")) for g in gpus):
            raise UsageError(f"--gpus: {args.gpus!r}: GPU ids are indices (0,1) or GPU-/MIG- UUIDs")
        if not args.runs_per_gpu.isdigit() or int(args.runs_per_gpu) < 1:
            raise UsageError(f"--runs_per_gpu: must be a positive whole number, got {args.runs_per_gpu!r}")
        cache_dir = Path(args.compile_cache or Path(args.csv).parent / COMPILE_CACHE)
        jobs = read_jobs(args.jobs)
        check_jobs([job for job in jobs if not job.done()])
        return run_sweep(jobs, gpus, Path(args.csv), args.dry_run, runs_per_gpu=int(args.runs_per_gpu),
                         cache_dir=cache_dir)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
