#!/usr/bin/env bash
# The study's three tables at the study's protocol, with SmolLM2-135M-Instruct (NOT Zephyr-7B), on ONE GPU (GPUS=0):
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
# Every fraction trains with the suite's default batches by default (TABLE1_FRACTIONS, default "1.0 0.5 0.25 0.1 0.05 0.025" less the fast
# ones); the 100 % and 50 % runs are 6,885 and 3,445 optimizer steps, about an hour and half an hour at the ~0.5 s a
# step of a shared H200 that padded eager batches took (the committed tables' runs). Fractions in TABLE1_FAST_FRACTIONS (default none) train with FAST_ARGS instead: whole examples padded to
# max_length, so that compiled layers replay as CUDA graphs (0.14 s a step), into their own sweep folder,
# table1-fast. The quality benchmark measures exactly these flags against the eager default, 3 seeds each
# (results/quality): +0.06 +- 0.06 ROUGE-1 (SAMSum), +0.18 +- 0.19 accuracy points (Newsgroups, 10 %, 2 epochs);
# but at Table 1's own protocol (25 %, 5 epochs, all-module LoRA with lm_head) they scored 0.42 +- 0.21 above eager
# over 5 seeds, just outside the rule (results/smollm2/study/fast-check), so they are opt-in. The committed Table 1's
# 100 % row and 50 % base and NEFTune cells were made with TABLE1_FAST_FRACTIONS="1.0 0.5" (marked in the README).
# The sweeps share the one GPU at once (TABLE1_SLOTS + TABLE1_FAST_SLOTS + TABLE2_SLOTS + 1, + 1 with TABLE3_MODELS),
# each resumable: run the same command again to go on (finished runs are skipped, unfinished ones resume from their
# checkpoint). Each sweep starts with its largest fractions, so that the longest runs are not left for the end.
set -uo pipefail
: "${GGUF:?path of SmolLM2-135M-Instruct.Q4_1.gguf}" "${DATA:?data root holding samsum/ and newsgroups/}"
OUT_ROOT=${OUT_ROOT:-runs/study-tables}
fast_fractions=${TABLE1_FAST_FRACTIONS-}
[ -d "$DATA" ] || { echo "error: DATA: $DATA: directory not found" >&2; exit 2; }
check_numbers() {  # <variable> <fraction>...: here, once, not by each of the sweeps that run at the same time
  local variable=$1; shift
  for fraction in "$@"; do
    printf %g "$fraction" > /dev/null 2>&1 || { echo "error: $variable: $fraction is not a number" >&2; exit 2; }
  done
}
check_numbers TABLE1_FAST_FRACTIONS $fast_fractions
is_fast() {  # compared as numbers: 1 and 1.0 are one fraction
  local fast; for fast in $fast_fractions; do [ "$(printf %g "$fast")" = "$(printf %g "$1")" ] && return 0; done; return 1
}
if [ -n "${TABLE1_FRACTIONS+set}" ]; then
  eager_fractions=$TABLE1_FRACTIONS
  check_numbers TABLE1_FRACTIONS $eager_fractions
  for eager in $eager_fractions; do  # a fraction in both would train twice and fill its cells from either
    if is_fast "$eager"; then echo "error: TABLE1_FRACTIONS: $eager is also in TABLE1_FAST_FRACTIONS" >&2; exit 2; fi
  done
else  # the study's six fractions, less those asked for on the fast path
  eager_fractions=$(for fraction in 1.0 0.5 0.25 0.1 0.05 0.025; do is_fast $fraction || printf '%s ' $fraction; done)
fi
export MODEL=$GGUF DATA_DIR=$DATA GPUS=${GPUS:-0}
for model in "$GGUF" ${TABLE3_MODELS:-}; do
  python -c "import sys; from zephyr.modeling import resolve_model_path; print(resolve_model_path(sys.argv[1]))" \
    "$model" || exit 2  # converted once here, not by several runs at the same time
done
eval_args="--eval_batch_size 64"
train_args="$eval_args ${EXTRA_ARGS:-}"  # EXTRA_ARGS: more flags for every fine-tune (the baselines train nothing)
fast_args=${FAST_ARGS:---pad_to_max_length True --compile_layers true --cuda_graphs True --fused_nf4 True}
table1_sweep() {  # <folder> <fractions> <slots> <flags>; nothing for no fractions (sample_ablate.sh would take all)
  [ -n "${2// /}" ] || return 0
  OUT_ROOT=$OUT_ROOT/$1 TASK=newsgroups FRACTIONS=$2 EPOCHS=5 RUNS_PER_GPU=$3 EXTRA_ARGS="$4" bash sample_ablate.sh
}
table1_sweep table1-fast "$fast_fractions" "${TABLE1_FAST_SLOTS:-8}" "$train_args $fast_args" &
table1_fast=$!
table1_sweep table1 "$eager_fractions" "${TABLE1_SLOTS:-6}" "$train_args" &
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
wait $table1_fast || status=1
wait $table1 || status=1
wait $table2 || status=1
wait $table3 || status=1
exit $status
