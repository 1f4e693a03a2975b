# The NF4 de-quantization against the matrix products of one compiled Mistral-7B layer (q,v preset: forward and
# input gradient of the seven frozen 4-bit projections): training's path, cuBLASLt, inductor's max-autotune GEMM,
# and the de-quantization fused into Triton GEMM templates as a quantization prologue
# (scripts/analysis/nf4_prologue.py). Needs no data or checkpoint. Carry: site.txz run (first call of a machine).
source .gpu-carry/run/setup.sh
T0=$(date +%s); E=/tmp/callE/E; mkdir -p $E
timeout -k 5 ${LIMIT:-420} python scripts/analysis/nf4_prologue.py --output $E/nf4_prologue.json \
  --modes ${MODES:-default,bf16,prologue,prologue_triton,cublaslt,autotune} --timeout ${MODE_LIMIT:-200} > $E/nf4_prologue.log 2>&1
echo "nf4_prologue rc=$? at $(( $(date +%s) - T0 )) s"; cut -c1-400 $E/nf4_prologue.log | tail -8
tar czf $OUT/E.tgz -C /tmp/callE E; echo "done at $(( $(date +%s) - T0 )) s"
