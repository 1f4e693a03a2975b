# The 7B training benchmark in one process: the original against the suite's default (SETTINGS=default), or the same
# with the default's rows padded to a multiple of 64 (SETTINGS=rows: two processes alike but for that flag), each
# LoRA preset, WARM warm-up and STEPS timed steps; the JSON is written after each setting, so a run stopped at
# LIMIT seconds keeps what it measured. SETTINGS=lt (q,v) or lt_all (all + lm_head): in one process beside the
# original, the default on cuBLAS, on cuBLASLt (--matmul_library cublaslt: 4.2 % less GPU time a real token in
# scripts/analysis/mm_shapes.py), then both again on the same steps, whose lengths the process has then seen (as
# in a run's later epochs): the lever's effect cold and warm, and the first epoch's cost of new lengths.
# SETTINGS=graphs: the original and the default with --flat_cuda_graphs (steps too long to replay without
# checkpointing run in parts) for each preset, then the default for each (last: a run cut at LIMIT loses these
# first); WARM=30 lets each graph setting record its buckets before its timed steps.
# SETTINGS=split: all + lm_head's steps split at 2,048 and 1,792 tokens by hand, then at the planner's length (its
# two probes, through the layers replayed as CUDA graphs, in the log), and its original; then q,v's graph setting and original: peaks, ratios and busy times.
# TESTS="cuda_graphs": then those tests of tests/speed/test_flat.py, if the call is under TESTS_BY seconds.
# Carry: site.txz data-ng.tgz tok.tgz run, or, when call B follows, data.tgz and gguf00 in place of data-ng.tgz.
# About 330 s for SETTINGS=default on an H100.
source .gpu-carry/run/setup.sh
T0=$(date +%s); NAME=${SETTINGS:-default}; A=/tmp/callA/A; mkdir -p $A/profiles-$NAME
[ -f .gpu-carry/gguf00 ] && cp .gpu-carry/gguf00 $S/gguf00
(while sleep 10; do echo "$(( $(date +%s) - T0 ))s $(grep 'training:' $A/$NAME.log 2>/dev/null | tail -1 | cut -c1-70)" \
  "$(nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader)"; done > $A/$NAME-progress.txt &)
export TORCH_LOGS=recompiles
ORIG='"per_device_train_batch_size": 4, "gradient_accumulation_steps": 2, "gradient_checkpointing": "true", "optim": "paged_adamw_32bit", "packing": true, "packed_rows": false, "compile_layers": "false"'
case $NAME in
  default) SET="{\"original q,v\": {$ORIG}, \"suite q,v\": {\"compile_layers\": \"true\"}, \"original all+lm_head\": {$ORIG, \"preset\": \"all+lm_head\"}, \"suite all+lm_head\": {\"compile_layers\": \"true\", \"preset\": \"all+lm_head\"}}" ;;
  lt|lt_all) P=""; B="original q,v"; [ $NAME = lt_all ] && P=', "preset": "all+lm_head"' && B="original all+lm_head"
      LT="\"compile_layers\": \"true\", \"matmul_library\": \"cublaslt\"$P"
      SET="{\"$B\": {$ORIG$P}, \"suite\": {\"compile_layers\": \"true\"$P}, \"suite, cuBLASLt\": {$LT}, \"suite again\": {\"compile_layers\": \"true\"$P}, \"suite, cuBLASLt again\": {$LT}}" ;;
  graphs) GR="\"compile_layers\": \"true\", \"flat_cuda_graphs\": true"  # steps too long for a graph run in parts
      SET="{\"original q,v\": {$ORIG}, \"suite q,v, flat CUDA graphs\": {$GR}, \"original all+lm_head\": {$ORIG, \"preset\": \"all+lm_head\"}, \"suite all+lm_head, flat CUDA graphs\": {$GR, \"preset\": \"all+lm_head\"}, \"suite q,v\": {\"compile_layers\": \"true\"}, \"suite all+lm_head\": {\"compile_layers\": \"true\", \"preset\": \"all+lm_head\"}}" ;;
  split) GR="\"compile_layers\": \"true\", \"flat_cuda_graphs\": true"  # all + lm_head's split length, then the ratios
      PA="\"preset\": \"all+lm_head\""
      SET="{\"suite all+lm_head, flat CUDA graphs, split 2048\": {$GR, \"flat_split_tokens\": 2048, $PA}, \"suite all+lm_head, flat CUDA graphs, split 1792\": {$GR, \"flat_split_tokens\": 1792, $PA}, \"suite all+lm_head, flat CUDA graphs\": {$GR, $PA}, \"original all+lm_head\": {$ORIG, $PA}, \"suite q,v, flat CUDA graphs\": {$GR}, \"original q,v\": {$ORIG}}" ;;
  rows) SET="{\"original q,v\": {$ORIG}, \"suite q,v, rows of 64\": {\"compile_layers\": \"true\", \"flat_row_multiple\": 64}, \"original all+lm_head\": {$ORIG, \"preset\": \"all+lm_head\"}, \"suite all+lm_head, rows of 64\": {\"compile_layers\": \"true\", \"flat_row_multiple\": 64, \"preset\": \"all+lm_head\"}}" ;;
esac
timeout -k 5 ${LIMIT:-420} python scripts/benchmark.py --data_dir $S/data --tokenizer_dir $S/zephyr-tokenizer \
  --checkpoint_dir /tmp/zb/mistral-7b --output $A/$NAME.json --train False --evaluate False \
  --warmup_steps ${WARM:-15} --train_steps ${STEPS:-10} --profile_dir $A/profiles-$NAME --extra_settings "$SET" \
  > $A/$NAME.log 2>&1
echo "$NAME rc=$? at $(( $(date +%s) - T0 )) s"
python3 - $A/$NAME.json <<'PY'
import json, sys
for name, row in json.load(open(sys.argv[1]))["training"].items():
    print(name, {k: row.get(k) for k in ("tokens_per_s", "speedup", "mfu_percent", "peak_gpu_memory_gib", "peak_gpu_reserved_gib", "error", "setup_s", "wall_s", "host_cpu_probe_ms", "step_seconds", "profiled_step")})
PY
grep -E "Recompiling|Error" $A/$NAME.log | cut -c1-200 | head -5
grep -h "flat rows\|decoder layers:" $A/$NAME.log | cut -c1-200 | sort | uniq -c
if [ -n "$TESTS" ] && [ $(( $(date +%s) - T0 )) -lt ${TESTS_BY:-430} ]; then  # the flat CUDA-graph GPU tests, 100 s
  PYTHONPATH=$PYTHONPATH:$S/stub timeout -k 5 $(( 530 - ($(date +%s) - T0) )) python -m pytest -rs -q \
    -p no:cacheprovider tests/speed/test_flat.py -k "$TESTS" > $A/gpu-tests.txt 2>&1; tail -2 $A/gpu-tests.txt
fi
tar czf $OUT/A-$NAME.tgz -C /tmp/callA A; echo "done at $(( $(date +%s) - T0 )) s"
