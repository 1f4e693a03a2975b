#!/usr/bin/env bash
# The issue-2 acceptance runs of SmolLM2-135M-Instruct on one GPU, exactly as executed for results/smollm2/.
# Needs: the GGUF at $GGUF, the real data under $DATA (../shared/data), the suite importable.
#   GGUF=../shared/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf DATA=../shared/data \
#     OUT_ROOT=runs/smollm2 bash results/smollm2/run_issue2.sh
set -euo pipefail
: "${GGUF:?path of SmolLM2-135M-Instruct.Q4_1.gguf}" "${DATA:?data root holding samsum/ and newsgroups/}"
OUT_ROOT=${OUT_ROOT:-runs/smollm2}
common=(--model_name_or_path "$GGUF" --data_dir "$DATA" --output_root "$OUT_ROOT" --lora_targets all
        --gradient_checkpointing False --do_eval True --eval_batch_size 64)
# SAMSum: 10 % of training rows, 1 epoch, rank 64, all seven projections, first 200 test rows.
python scripts/zephyr_summarization.py "${common[@]}" --train_fraction 0.1 --num_train_epochs 1 --lora_r 64 \
  --max_test_rows 200
# 20 Newsgroups: 10 %, 2 epochs, rank 8, all seven projections, first 2,000 test rows.
python scripts/zephyr_classification.py "${common[@]}" --train_fraction 0.1 --num_train_epochs 2 --lora_r 8 \
  --max_test_rows 2000
