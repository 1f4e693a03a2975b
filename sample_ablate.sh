#!/usr/bin/env bash
# Training-fraction ablation: each fraction x {base, NEFTune, all-module LoRA, NEFTune + all-module}, each run
# fine-tuned, then evaluated on the test split. Resumable: runs with a metrics.json are skipped.
#
# Environment variables (or the same names as flags, e.g. --task samsum --gpus 0,1 --dry_run):
#   TASK=newsgroups            newsgroups or samsum
#   FRACTIONS="0.025 0.05 0.1 0.25 0.5 1.0"
#   VARIANTS="base neftune all neftune_all"   all = q,k,v,o,gate,up,down + lm_head; NEFTune alpha 5
#   EPOCHS=                    default: the task's (5 classification, 1 SAMSum)
#   MODEL, DATA_DIR, OUT_ROOT=runs/sweeps, GPUS, RUNS_PER_GPU=1, MAX_TEST_ROWS, EXTRA_ARGS, DRY_RUN: see --help
# Example: DATA_DIR=../shared/data GPUS=0,1 bash sample_ablate.sh
source "$(dirname "$0")/scripts/sweep_common.sh"
KNOWN_VARS="$COMMON_VARS TASK FRACTIONS VARIANTS EPOCHS"
TASK=${TASK:-newsgroups}
FRACTIONS=${FRACTIONS:-0.025 0.05 0.1 0.25 0.5 1.0}
VARIANTS=${VARIANTS:-base neftune all neftune_all}
EPOCHS=${EPOCHS:-}
parse_flags "$@"
script=$(finetune_script "$TASK")
mapfile -t data < <(data_flags)
for fraction in $FRACTIONS; do
  for variant in $VARIANTS; do
    ask_rundir flags variant_flags "$variant"  # the study's variants are defined in zephyr/rundir.py
    read -r -a variant_flags <<< "$flags"
    ask_rundir name name ablation --task "$TASK" --model_name_or_path "$MODEL" --train_fraction "$fraction" \
      "${variant_flags[@]}"
    # shellcheck disable=SC2086  # EXTRA_ARGS is a list of flags
    add_job "$name" "$PYTHON" "$script" --model_name_or_path "$MODEL" "${data[@]}" --output_root "$OUT_ROOT" \
      --run_name "$name" --train_fraction "$fraction" "${variant_flags[@]}" ${EPOCHS:+--num_train_epochs "$EPOCHS"} \
      ${MAX_TEST_ROWS:+--max_test_rows "$MAX_TEST_ROWS"} --do_eval True $EXTRA_ARGS
  done
done
run_jobs
