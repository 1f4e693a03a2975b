# The quality levers of rows padded to a multiple of 64 (and eager flat rows on Newsgroups, whose cell was outside
# the rule with its sides on two GPUs), 3 seeds, against padded eager batches, all on this GPU at once; then the
# flat and matrix-library tests on the GPU (-rs: a skipped GPU test says so). CONFIGS picks other levers.
# Machine warm after call A (which left gguf00 and the data there); carry: gguf01 gguf02 run (and prior-runs.tgz
# with PRIOR=1).
source .gpu-carry/run/setup.sh
T0=$(date +%s); B=/tmp/callB/B; mkdir -p $B
G=$S/SmolLM2-135M-Instruct.Q4_1.gguf
[ -f $G ] || cat $S/gguf00 .gpu-carry/gguf01 .gpu-carry/gguf02 > $G
sha256sum $G | tee $B/gguf.sha256 | grep -q b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53 \
  && echo "gguf sha256 ok" || { echo "GGUF SHA MISMATCH"; rm -f $G; exit 1; }
(nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 5 > $B/smi.csv 2>&1 &)
# PRIOR=1 (carry prior-runs.tgz): earlier sessions' finished runs, which the sweep takes as done (same settings);
# with CONFIGS naming both sides of the lever that needs more seeds (ng_examples,ng_examples_flat_graphs_split)
[ -n "$PRIOR" ] && mkdir -p /tmp/runs && tar xzf .gpu-carry/prior-runs.tgz -C /tmp/runs
timeout -k 5 ${LIMIT:-470} python scripts/quality.py --model_name_or_path $G --data_dir $S/data \
  --output_root /tmp/runs/quality --results_dir $B --runs_per_gpu 15 \
  --configs ${CONFIGS:-examples,ng_examples,examples_flat_row64,ng_examples_flat_row64,ng_examples_flat} > $B/quality.log 2>&1
echo "quality rc=$? at $(( $(date +%s) - T0 )) s"
python scripts/quality.py --model_name_or_path $G --data_dir $S/data --output_root /tmp/runs/quality \
  --results_dir $B --summary_only True >> $B/quality.log 2>&1
grep -E "done in|failed" $B/quality.log | tail -20
if [ $(( $(date +%s) - T0 )) -lt ${TESTS_BY:-400} ]; then  # the tests took 130 s on an H100; the call ends by 530 s
  PYTHONPATH=$PYTHONPATH:$S/stub timeout -k 5 $(( 520 - ($(date +%s) - T0) )) python -m pytest -rs -q -p no:cacheprovider tests/speed/test_flat.py \
    tests/speed/test_blas.py > $B/gpu-tests.txt 2>&1; tail -2 $B/gpu-tests.txt
fi
tar czf $B/quality-runs.tgz --exclude='*.safetensors' --exclude='*.bin' --exclude='checkpoint-*' \
    --exclude=compile_cache --exclude='*.pt' --exclude=adapter -C /tmp/runs quality  # excludes first: GNU tar
tar cf $OUT/callB.tar -C /tmp/callB B; echo "done at $(( $(date +%s) - T0 )) s"
