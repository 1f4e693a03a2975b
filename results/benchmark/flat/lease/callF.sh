# Call E's measurement (scripts/analysis/nf4_prologue.py) with the bf16 floor, then SmolLM2-135M's shape (random
# weights, real Newsgroups rows) through scripts/benchmark.py: the default flat batches compiled, then with
# --flat_cuda_graphs (its CUDA graphs over length buckets), then the default again (a process's first setting
# runs slower). Carry: site.txz data-ng.tgz tok.tgz run (first call of a machine).
source .gpu-carry/run/setup.sh
T0=$(date +%s); F=/tmp/callF/F; mkdir -p $F/profiles
timeout -k 5 ${E_LIMIT:-190} python scripts/analysis/nf4_prologue.py --output $F/nf4_prologue.json \
  --modes ${MODES:-default,bf16,prologue,prologue_triton} --timeout 120 > $F/nf4_prologue.log 2>&1
echo "nf4_prologue rc=$? at $(( $(date +%s) - T0 )) s"; cut -c1-300 $F/nf4_prologue.log | tail -6
G='"compile_layers": "true"'
timeout -k 5 ${B_LIMIT:-200} python scripts/benchmark.py --shape smollm2-135m --data_dir $S/data \
  --tokenizer_dir $S/zephyr-tokenizer --checkpoint_dir /tmp/zb/smollm2 --output $F/smollm2-graphs.json \
  --train False --evaluate False --warmup_steps ${WARM:-30} --train_steps ${STEPS:-30} --profile_dir $F/profiles \
  --extra_settings "{\"suite q,v\": {$G}, \"suite q,v, flat CUDA graphs\": {$G, \"flat_cuda_graphs\": true}, \"suite q,v again\": {$G}}" \
  > $F/smollm2-graphs.log 2>&1
echo "benchmark rc=$? at $(( $(date +%s) - T0 )) s"
python3 - $F/smollm2-graphs.json <<'PY'
import json, sys
for name, row in json.load(open(sys.argv[1]))["training"].items():
    print(name, {k: row.get(k) for k in ("tokens_per_s", "mfu_percent", "peak_gpu_memory_gib", "setup_s", "wall_s", "host_cpu_probe_ms")})
PY
tar czf $OUT/F.tgz -C /tmp/callF F; echo "done at $(( $(date +%s) - T0 )) s"
