#!/usr/bin/env bash
# Training-fraction ablation: each fraction x {base, NEFTune, all-module LoRA, NEFTune + all-module}, each run
# fine-tuned, then evaluated on the test split. Resumable: runs finished with the same settings are skipped.
#
# Environment variables (or the same names as flags, e.g. --task samsum --gpus 0,1 --dry_run):
#   TASK=newsgroups            newsgroups or samsum
#   FRACTIONS="0.025 0.05 0.1 0.25 0.5 1.0"
#   VARIANTS="base neftune all neftune_all"   all = q,k,v,o,gate,up,down + lm_head; NEFTune alpha 5
#   EPOCHS=                    default: the task's (5 classification, 1 SAMSum)
#   MODEL, DATA_DIR, OUT_ROOT=runs/sweeps, GPUS, RUNS_PER_GPU=1, MAX_TEST_ROWS, EXTRA_ARGS, DRY_RUN, BACKEND: see --help
# Example: DATA_DIR=../shared/data GPUS=0,1 bash sample_ablate.sh
source "$(dirname "$0")/scripts/sweep_common.sh"
run_sweep ablation "$@"  # the grid: zephyr/sweeps/grid.py
