#!/usr/bin/env bash
# Zero-shot and few-shot baselines of the base model on both tasks. Resumable.
#
# Environment variables (or the same names as flags, e.g. --tasks samsum --shots "0 3" --dry_run):
#   TASKS="newsgroups samsum"   SHOTS="0 3" (0 = zero-shot)   METHOD=generate (or loglik, classification only)
#   MODEL, DATA_DIR, OUT_ROOT=runs/sweeps, GPUS, RUNS_PER_GPU=1, MAX_TEST_ROWS, EXTRA_ARGS, DRY_RUN: see --help
# Example: DATA_DIR=../shared/data MAX_TEST_ROWS=200 bash baseline_inference.sh
source "$(dirname "$0")/scripts/sweep_common.sh"
KNOWN_VARS="$COMMON_VARS TASKS SHOTS METHOD"
TASKS=${TASKS:-newsgroups samsum}
SHOTS=${SHOTS:-0 3}
METHOD=${METHOD:-generate}
parse_flags "$@"
mapfile -t data < <(data_flags)
for task in $TASKS; do
  for shots in $SHOTS; do
    ask_rundir name name baseline --task "$task" --model_name_or_path "$MODEL" --num_shots "$shots" --eval_method "$METHOD"
    # shellcheck disable=SC2086
    add_job "$name" "$PYTHON" "$REPO/scripts/zephyr_baseline_inference.py" --task "$task" --model_name_or_path "$MODEL" \
      "${data[@]}" --num_shots "$shots" --eval_method "$METHOD" --eval_output_dir "$OUT_ROOT/$name" \
      ${MAX_TEST_ROWS:+--max_test_rows "$MAX_TEST_ROWS"} $EXTRA_ARGS
  done
done
run_jobs
