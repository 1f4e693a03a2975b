#!/usr/bin/env bash
# LoRA grid: epochs x rank x dropout, with and without NEFTune, fine-tuned then evaluated. Resumable.
# The study's grid (the default) is on SAMSum: epochs {2,5,10,20,30,50} x rank {2,4,8,16} x dropout
# {0.1,0.2,0.5} x NEFTune {off, alpha 5} = 144 runs.
#
# Environment variables (or the same names as flags, e.g. --ranks "8 16" --gpus 0,1 --dry_run):
#   TASK=samsum                newsgroups or samsum
#   EPOCHS_LIST="2 5 10 20 30 50"   RANKS="2 4 8 16"   DROPOUTS="0.1 0.2 0.5"   NEFTUNE="0 5" (0 = off)
#   TRAIN_FRACTION=1.0         share of training rows for every run
#   MODEL, DATA_DIR, OUT_ROOT=runs/sweeps, GPUS, RUNS_PER_GPU=1, MAX_TEST_ROWS, EXTRA_ARGS, DRY_RUN, BACKEND: see --help
# Example: DATA_DIR=../shared/data RANKS="4 8" EPOCHS_LIST=2 bash run_lora.sh
source "$(dirname "$0")/scripts/sweep_common.sh"
run_sweep lora_grid "$@"  # the grid: zephyr/sweeps/grid.py
