"""Run a sweep's runs resumably, on this host (``local``) or across a Ray cluster (``ray``), and record each one.

Whatever the backend: a run that finished with the same settings is skipped (zephyr/sweeps/identity.py), so a
killed sweep started again runs only what is missing; every pending run is pre-flighted before the first one
starts; each run's stdout and stderr go to ``<run_dir>/sweep.log``; each finished or failed run adds a row to the
sweep's CSV; a failed run is reported once with the last line of its log, the others go on, and the exit status
is 1 if any failed. One line when a run starts (local) and one when it ends (``[3/24] <run> done in 3m12s, ETA
41m``), never two at once. Every run gets the same on-disk compiler caches (``compile_cache/`` beside the CSV).

The backend is ``ray`` with ``--backend ray`` (BACKEND=ray) or when RAY_ADDRESS is set, else ``local``; only the
Ray backend imports ray.
"""

from __future__ import annotations

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
from pathlib import Path

from zephyr.errors import UsageError
from zephyr.io import atomic_write_text, folder_lock
from zephyr.progress import eta, format_duration
from zephyr.results import ROW_COLUMNS, summarize_run, to_csv
from zephyr.rundir import CONFIG, METRICS, SWEEP_LOG
from zephyr.sweeps.grid import Run

CSV_COLUMNS = ["status", "wall_s", *ROW_COLUMNS]
COMPILE_CACHE = "compile_cache"  # beside sweep.csv, in the sweep's output root
BACKENDS = ("local", "ray")


def choose_backend(backend: str | None) -> str:
    """``backend`` if given, else ``ray`` where RAY_ADDRESS is set, else ``local``."""
    chosen = backend or ("ray" if os.environ.get("RAY_ADDRESS") else "local")
    if chosen not in BACKENDS:
        raise UsageError(f"BACKEND: unknown backend {chosen!r} (choose {' or '.join(BACKENDS)})")
    return chosen


def parse_gpus(text: str, flag: str) -> list[str]:
    gpus = [g.strip() for g in text.split(",") if g.strip()]
    if len(set(gpus)) != len(gpus):
        raise UsageError(f"{flag}: {text!r} names a GPU twice")
    if not all(g.isdigit() or g.startswith(("GPU-", "MIG-")) for g in gpus):
        raise UsageError(f"{flag}: {text!r}: GPU ids are indices (0,1) or GPU-/MIG- UUIDs")
    return gpus


def positive_count(text: str, flag: str) -> int:
    if not str(text).isdigit() or int(text) < 1:
        raise UsageError(f"{flag}: must be a positive whole number, got {text!r}")
    return int(text)


def check_jobs(jobs: list[Run], hub_cache: bool = False) -> None:
    """Every job's pre-flight, before the first one starts (and in a dry run): a bad grid value or combination
    fails in seconds, not after the good runs. Hub models and datasets are left to each run's own pre-flight, but
    with ``hub_cache`` (runs about to start on this machine) and the hub out of reach they are looked up in the
    local cache: without them every run would fail, one after another."""
    from zephyr.cli import preflight_command
    from zephyr.hub import hub_unreachable

    hub = bool(hub_cache and jobs and hub_unreachable())  # offline, a hub check reads the cache alone
    for job in jobs:
        try:
            preflight_command(job.command, hub=hub)
        except UsageError as err:
            raise UsageError(f"{job.run_dir.name}: {err}") from None


def assign_gpus(jobs: list[Run], gpus: list[str]) -> list[tuple[Run, str | None]]:
    """The order jobs start in, each with the GPU it would get if run one after another per GPU slot: what
    --dry_run prints and what the local backend starts with (then each job goes to whichever GPU frees first)."""
    if not gpus:
        return [(job, None) for job in jobs]
    return [(job, gpus[i % len(gpus)]) for i, job in enumerate(jobs)]


def command_line(command: list[str], gpu: str | None) -> str:
    prefix = f"CUDA_VISIBLE_DEVICES={gpu} " if gpu is not None else ""
    return prefix + shlex.join(command)


def _die_with_parent():
    """Children get SIGKILL when the sweep dies (even by kill -9), so no orphan keeps writing a run."""
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def compile_cache_env(cache_dir: Path) -> dict[str, str]:
    """Environment that points torch.compile's on-disk caches at ``cache_dir``, shared by every run.

    Inductor's FX graph cache (compiled kernels per graph and shape) and the AOTAutograd cache (the joint
    forward/backward graph) both live under TORCHINDUCTOR_CACHE_DIR; Triton's own kernel binaries under
    TRITON_CACHE_DIR. The default location is per user in /tmp, which a fresh machine or container starts empty.
    """
    return {"TORCHINDUCTOR_CACHE_DIR": str(cache_dir / "inductor"), "TRITON_CACHE_DIR": str(cache_dir / "triton"),
            "TORCHINDUCTOR_FX_GRAPH_CACHE": "1", "TORCHINDUCTOR_AUTOGRAD_CACHE": "1"}


def run_command(run_dir: Path, command: list[str], gpu: str | None, cache_dir: Path | None,
                cwd: str | None = None) -> tuple[int, float]:
    """Run one command (in ``cwd``) with its output in ``<run_dir>/sweep.log``; returns its exit code and wall
    seconds."""
    run_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if cache_dir is not None:
        for name, value in compile_cache_env(cache_dir.resolve()).items():
            env.setdefault(name, value)  # a cache the user chose wins
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    start = time.perf_counter()
    with open(run_dir / SWEEP_LOG, "a", encoding="utf-8") as log:
        log.write(f"$ {command_line(command, gpu)}\n")
        log.flush()
        code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                               preexec_fn=_die_with_parent)
    return code, round(time.perf_counter() - start, 1)


def last_line(path: Path) -> str:
    lines = [l for l in path.read_text(errors="replace").splitlines() if l.strip()] if path.is_file() else []
    return lines[-1][:300] if lines else "(no output)"


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

    def record(self, job: Run, code: int, wall: float, reason: str | None = None) -> str | None:
        """The run's row; returns None for a finished run, else its failure summary."""
        if code == 0 and (job.run_dir / METRICS).is_file():
            # A re-evaluation writes only metrics and predictions into its own folder: it gets a row by name.
            has_config = (job.run_dir / CONFIG).is_file()
            self.append({"status": "ok", "wall_s": wall,
                         **(summarize_run(job.run_dir) if has_config else {"run": job.run_dir.name})})
            return None
        reason = reason or (f"exit code {code}" if code else "exited 0 without metrics.json")
        self.append({"status": "failed", "wall_s": wall, "run": job.run_dir.name})
        log_path = job.run_dir / SWEEP_LOG
        return f"FAILED {job.run_dir} ({reason}, log {log_path}): {last_line(log_path)}"


class Progress:
    """Whole progress lines from any thread: ``[n/N] <run> started`` and ``... done in 3m12s, ETA 41m``."""

    def __init__(self, total: int, out):
        self.total, self.out, self.lock = total, out, threading.Lock()
        self.started, self.finished, self.failures = time.perf_counter(), 0, []

    def say(self, line: str) -> None:
        with self.lock:
            print(line, file=self.out, flush=True)

    def start(self, number: int, job: Run, where: str = "") -> None:
        self.say(f"[{number}/{self.total}] {job.name} started{where}")

    def end(self, number: int, job: Run, seconds: float, failure: str | None, where: str = "") -> None:
        with self.lock:
            self.finished += 1
            if failure:
                self.failures.append(failure)
            left = eta(time.perf_counter() - self.started, self.finished, self.total)
            print(f"[{number}/{self.total}] {job.name} {'FAILED' if failure else 'done'} in "
                  f"{format_duration(seconds)}{where}" + (f", ETA {format_duration(left)}" if left else "")
                  + (f": {last_line(job.run_dir / SWEEP_LOG)}" if failure else ""), file=self.out, flush=True)


def run_sweep(jobs: list[Run], gpus: list[str], csv_path: Path, dry_run: bool = False, out=None,
              runs_per_gpu: int = 1, cache_dir: Path | None = None, backend: str | None = None) -> int:
    """Run the jobs not done yet: ``runs_per_gpu`` at a time on each GPU of this host, or across a Ray cluster."""
    out = out or sys.stdout
    backend = choose_backend(backend)
    done = [job.done() for job in jobs]  # a finished run of other settings stops the sweep here
    pending = [job for job, finished in zip(jobs, done) if not finished]
    check_jobs(pending, hub_cache=not dry_run and backend == "local")  # Ray's runs start on other machines
    for job, finished in zip(jobs, done):
        if finished:
            print(f"skip (complete) {job.run_dir}", file=out)
    if dry_run:
        for job, gpu in assign_gpus(pending, gpus if backend == "local" else []):
            print(command_line(job.command, gpu), file=out)
        return 0
    csv_log, progress = CsvLog(csv_path), Progress(len(pending), out)
    if backend == "ray" and pending:  # nothing to run needs no cluster
        from zephyr.sweeps import ray_backend

        ray_backend.execute(pending, runs_per_gpu, cache_dir, csv_log, progress, gpus)
    elif backend == "local":
        from zephyr.sweeps import local

        local.execute(pending, gpus, runs_per_gpu, cache_dir, csv_log, progress)
    failures = progress.failures
    print(f"sweep: {len(pending) - len(failures)} ran, {len(jobs) - len(pending)} skipped, "
          f"{len(failures)} failed", file=out)
    for failure in failures:
        print(failure, file=out)
    return 1 if failures else 0
