#!/usr/bin/env bash
# LoRA grid: epochs x rank x dropout, with and without NEFTune, fine-tuned then evaluated. Resumable.
# The study's grid (the default) is on SAMSum: epochs {2,5,10,20,30,50} x rank {2,4,8,16} x dropout
# {0.1,0.2,0.5} x NEFTune {off, alpha 5} = 144 runs.
#
# Environment variables (or the same names as flags, e.g. --ranks "8 16" --gpus 0,1 --dry_run):
#   TASK=samsum                newsgroups or samsum
#   EPOCHS_LIST="2 5 10 20 30 50"   RANKS="2 4 8 16"   DROPOUTS="0.1 0.2 0.5"   NEFTUNE="0 5" (0 = off)
#   TRAIN_FRACTION=1.0         share of training rows for every run
#   MODEL, DATA_DIR, OUT_ROOT=runs/sweeps, GPUS, RUNS_PER_GPU=1, MAX_TEST_ROWS, EXTRA_ARGS, DRY_RUN: see --help
# Example: DATA_DIR=../shared/data RANKS="4 8" EPOCHS_LIST=2 bash run_lora.sh
source "$(dirname "$0")/scripts/sweep_common.sh"
KNOWN_VARS="$COMMON_VARS TASK EPOCHS_LIST RANKS DROPOUTS NEFTUNE TRAIN_FRACTION"
TASK=${TASK:-samsum}
EPOCHS_LIST=${EPOCHS_LIST:-2 5 10 20 30 50}
RANKS=${RANKS:-2 4 8 16}
DROPOUTS=${DROPOUTS:-0.1 0.2 0.5}
NEFTUNE=${NEFTUNE:-0 5}
TRAIN_FRACTION=${TRAIN_FRACTION:-1.0}
parse_flags "$@"
script=$(finetune_script "$TASK")
mapfile -t data < <(data_flags)
for epochs in $EPOCHS_LIST; do
  for rank in $RANKS; do
    for dropout in $DROPOUTS; do
      for alpha in $NEFTUNE; do
        neftune_flags=()
        [ "$alpha" = 0 ] || neftune_flags=(--neftune_alpha "$alpha")
        ask_rundir name name lora_grid --task "$TASK" --model_name_or_path "$MODEL" --train_fraction "$TRAIN_FRACTION" \
          --num_train_epochs "$epochs" --lora_r "$rank" --lora_dropout "$dropout" "${neftune_flags[@]}"
        # shellcheck disable=SC2086
        add_job "$name" "$PYTHON" "$script" --model_name_or_path "$MODEL" "${data[@]}" --output_root "$OUT_ROOT" \
          --run_name "$name" --train_fraction "$TRAIN_FRACTION" --num_train_epochs "$epochs" --lora_r "$rank" \
          --lora_dropout "$dropout" "${neftune_flags[@]}" ${MAX_TEST_ROWS:+--max_test_rows "$MAX_TEST_ROWS"} \
          --do_eval True $EXTRA_ARGS
      done
    done
  done
done
run_jobs
