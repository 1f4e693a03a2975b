#!/usr/bin/env bash
# Table 1 and Table 2 of the study with SmolLM2-135M-Instruct (NOT Zephyr-7B) on the real data, exactly as run for
# results/smollm2/grids/. One sweep process spreads the runs over the GPUs in $GPUS (one run per GPU at a time).
#   GGUF=../shared/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf DATA=../shared/data GPUS=0,1 \
#     bash results/smollm2/run_grids.sh
# Protocol (14 min 32 s for all 30 runs on 4x H200 with GPUS=0,1,2,3; see results/smollm2/grids/): 1 epoch, 8 packed rows per optimizer step as micro-batch 8;
#   Table 1: 20 Newsgroups, max_length 128, label log-likelihood on all test rows (7,317 of 7,532 are non-empty);
#   Table 2: SAMSum, 10 % of the training rows, max_length 512, greedy generation on all 819 test rows,
#            zero-shot and 3-shot baselines on the same rows.
set -uo pipefail
: "${GGUF:?path of SmolLM2-135M-Instruct.Q4_1.gguf}" "${DATA:?data root holding samsum/ and newsgroups/}"
OUT_ROOT=${OUT_ROOT:-runs/smollm2-grids}
GPUS=${GPUS:-0}
export MODEL=$GGUF DATA_DIR=$DATA OUT_ROOT GPUS EPOCHS=1
python -c "import sys; from zephyr.modeling import resolve_model_path; print(resolve_model_path(sys.argv[1]))" "$GGUF" \
  || exit 2  # converted once here, not by two runs at the same time
status=0
micro="--per_device_train_batch_size 8 --gradient_accumulation_steps 1 --eval_batch_size 64"
TASK=samsum FRACTIONS=0.1 EXTRA_ARGS="$micro" bash sample_ablate.sh || status=1
TASK=newsgroups EXTRA_ARGS="$micro --max_length 128 --eval_method loglik" bash sample_ablate.sh || status=1
TASKS=samsum SHOTS="0 3" EXTRA_ARGS="--eval_batch_size 64" bash baseline_inference.sh || status=1
exit $status
