#!/usr/bin/env bash
# Zero-shot and few-shot baselines of the base model on both tasks. Resumable.
#
# Environment variables (or the same names as flags, e.g. --tasks samsum --shots "0 3" --dry_run):
#   TASKS="newsgroups samsum"   SHOTS="0 3" (0 = zero-shot)   METHOD=generate (or loglik, classification only)
#   MODEL, DATA_DIR, OUT_ROOT=runs/sweeps, GPUS, RUNS_PER_GPU=1, MAX_TEST_ROWS, EXTRA_ARGS, DRY_RUN, BACKEND: see --help
# Example: DATA_DIR=../shared/data MAX_TEST_ROWS=200 bash baseline_inference.sh
source "$(dirname "$0")/scripts/sweep_common.sh"
run_sweep baseline "$@"  # the grid: zephyr/sweeps/grid.py
