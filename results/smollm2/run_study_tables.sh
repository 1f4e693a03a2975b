#!/usr/bin/env bash
# Tables 1 and 2 of the study at the study's protocol, with SmolLM2-135M-Instruct (NOT Zephyr-7B), on ONE GPU:
#   GGUF=../shared/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf DATA=../shared/data \
#     bash results/smollm2/run_study_tables.sh
#   python scripts/make_tables.py --runs runs/study-tables --out results/smollm2/study --protocol "…"
# Table 3's further models (e.g. TABLE3_MODELS=.models/gemma-3-270m-q4_k_m.gguf from scripts/fetch_gemma3.sh) get
# Table 2's protocol: the base variant fine-tuned on all SAMSum rows for 1 epoch, and the 0/3-shot baselines.
# Protocol: the study's epochs and lengths, the suite's default batches (8 whole examples per optimizer step):
#   Table 1: 20 Newsgroups, 5 epochs, max_length 512, 6 fractions x 4 variants, greedy generation on every
#            non-empty test row (7,317 of 7,532);
#   Table 2: SAMSum, all 14,731 non-empty training rows, 1 epoch, the 4 variants, greedy generation on all 819
#            test rows; zero-shot and 3-shot baselines on the same rows.
# The sweeps share the one GPU at once (TABLE1_SLOTS + TABLE2_SLOTS + 1, + 1 with TABLE3_MODELS), each resumable: run
# the same command again to go on (finished runs are skipped, unfinished ones resume from their checkpoint).
# Table 1 starts with its largest fractions, so that the longest runs are not left for the end (TABLE1_FRACTIONS
# picks some of them, e.g. the short ones first when a machine is lent for less time than the longest run takes).
set -uo pipefail
: "${GGUF:?path of SmolLM2-135M-Instruct.Q4_1.gguf}" "${DATA:?data root holding samsum/ and newsgroups/}"
OUT_ROOT=${OUT_ROOT:-runs/study-tables}
export MODEL=$GGUF DATA_DIR=$DATA GPUS=${GPU:-0}
for model in "$GGUF" ${TABLE3_MODELS:-}; do
  python -c "import sys; from zephyr.modeling import resolve_model_path; print(resolve_model_path(sys.argv[1]))" \
    "$model" || exit 2  # converted once here, not by several runs at the same time
done
eval_args="--eval_batch_size 64"
train_args="$eval_args ${EXTRA_ARGS:-}"  # EXTRA_ARGS: more flags for every fine-tune (the baselines train nothing)
OUT_ROOT=$OUT_ROOT/table1 TASK=newsgroups FRACTIONS=${TABLE1_FRACTIONS:-1.0 0.5 0.25 0.1 0.05 0.025} EPOCHS=5 \
  RUNS_PER_GPU=${TABLE1_SLOTS:-8} EXTRA_ARGS="$train_args" bash sample_ablate.sh &
table1=$!
OUT_ROOT=$OUT_ROOT/table2 TASK=samsum FRACTIONS=1.0 EPOCHS=1 \
  RUNS_PER_GPU=${TABLE2_SLOTS:-4} EXTRA_ARGS="$train_args" bash sample_ablate.sh &
table2=$!
(
  status=0
  for model in ${TABLE3_MODELS:-}; do
    OUT_ROOT=$OUT_ROOT/table3 MODEL=$model TASK=samsum FRACTIONS=1.0 EPOCHS=1 VARIANTS=base RUNS_PER_GPU=1 \
      EXTRA_ARGS="$train_args" bash sample_ablate.sh || status=1
    OUT_ROOT=$OUT_ROOT/table3 MODEL=$model TASKS=samsum SHOTS="0 3" RUNS_PER_GPU=1 EXTRA_ARGS="$eval_args" \
      bash baseline_inference.sh || status=1
  done
  exit $status
) &
table3=$!
OUT_ROOT=$OUT_ROOT/baselines TASKS=samsum SHOTS="0 3" RUNS_PER_GPU=1 EXTRA_ARGS="$eval_args" bash baseline_inference.sh
status=$?
wait $table1 || status=1
wait $table2 || status=1
wait $table3 || status=1
exit $status
