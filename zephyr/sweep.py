"""Run a job file resumably: ``python -m zephyr.sweep --jobs jobs.tsv --csv runs/sweep.csv --gpus 0,1
--runs_per_gpu 4 [--backend ray] [--dry_run]``, for job lists of your own (the study's sweeps expand their grids
in zephyr/sweeps/grid.py instead).

A job file has one job per line: ``<run_dir>\\t<shell-quoted command>``. How the jobs run (skipping finished ones,
one log per run, the CSV, failures, the local and Ray backends): zephyr/sweeps/runner.py.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from zephyr.errors import UsageError, raise_usage_errors
from zephyr.sweeps.grid import Run
from zephyr.sweeps.runner import (BACKENDS, COMPILE_CACHE, CSV_COLUMNS, CsvLog, assign_gpus, check_jobs,  # noqa: F401
                                  compile_cache_env, parse_gpus, positive_count, run_sweep)

Job = Run  # a job of a job file: its run directory and command
RUNS_PER_GPU_ENV = "RUNS_PER_GPU"


def read_jobs(path: str | Path) -> list[Run]:
    jobs = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        run_dir, sep, command = line.partition("\t")
        if not sep or not command.strip():
            raise UsageError(f"{path}: line {number}: expected '<run_dir><TAB><command>'")
        jobs.append(Run(Path(run_dir), shlex.split(command)))
    return jobs


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
    parser.add_argument("--backend", default=None, choices=BACKENDS,
                        help="local (this host) or ray (a Ray cluster); default: ray where RAY_ADDRESS is set")
    parser.add_argument("--dry_run", action="store_true", help="print the commands without running them")
    try:
        args = raise_usage_errors(parser).parse_args(argv)
        gpus = parse_gpus(args.gpus, "--gpus")
        runs_per_gpu = positive_count(args.runs_per_gpu, "--runs_per_gpu")
        cache_dir = Path(args.compile_cache or Path(args.csv).parent / COMPILE_CACHE)
        return run_sweep(read_jobs(args.jobs), gpus, Path(args.csv), args.dry_run, runs_per_gpu=runs_per_gpu,
                         cache_dir=cache_dir, backend=args.backend)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
