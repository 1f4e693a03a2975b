"""The local backend: the runs on this host, ``runs_per_gpu`` at a time on each GPU (or on the default device),
each handed to whichever GPU slot frees first."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from queue import Empty, Queue

from zephyr.sweeps.grid import Run
from zephyr.sweeps.runner import CsvLog, Progress, run_command


def execute(pending: list[Run], gpus: list[str], runs_per_gpu: int, cache_dir: Path | None, csv_log: CsvLog,
            progress: Progress) -> None:
    queue: Queue = Queue()
    for number, job in enumerate(pending, 1):
        queue.put((number, job))

    def worker(gpu: str | None):
        while True:
            try:
                number, job = queue.get_nowait()
            except Empty:
                return
            progress.start(number, job, f" on GPU {gpu}" if gpu is not None else "")
            began = time.perf_counter()
            code, wall = run_command(job.run_dir, job.command, gpu, cache_dir)
            progress.end(number, job, time.perf_counter() - began, csv_log.record(job, code, wall))

    threads = [threading.Thread(target=worker, args=(gpu,)) for gpu in (gpus or [None]) for _ in range(runs_per_gpu)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
