# Tables 1 and 2 at the study's protocol from the one command, for LIMIT seconds, the GPU and CPUs sampled; the
# runs' logs (train_log.jsonl: step and elapsed time) come back to project the whole tables' wall time.
# Machine warm after call B (the GGUF joined there); carry: run (and data.tgz on a fresh machine).
source .gpu-carry/run/setup.sh
LIMIT=${LIMIT:-300}; T0=$(date +%s); C=/tmp/callC/C; mkdir -p $C
G=$S/SmolLM2-135M-Instruct.Q4_1.gguf; [ -f $G ] || { echo "no GGUF: run call B first"; exit 1; }
(nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 2 > $C/smi.csv 2>&1 &)
(while sleep 2; do echo "$(date +%s) $(head -1 /proc/stat)"; done > $C/cpu.txt &)
GGUF=$G DATA=$S/data OUT_ROOT=/tmp/runs/study-tables timeout $LIMIT bash .gpu-carry/run/run_study_tables.sh \
  > $C/tables.log 2>&1
echo "tables rc=$? at $(( $(date +%s) - T0 )) s"; sleep 3
for f in /tmp/runs/study-tables/*/*/train_log.jsonl; do echo "${f#/tmp/runs/study-tables/} $(wc -l < $f)"; done
tar czf $C/study-runs.tgz --exclude='*.safetensors' --exclude='*.bin' --exclude='checkpoint-*' \
    --exclude=compile_cache --exclude='*.pt' --exclude=adapter -C /tmp/runs study-tables  # excludes first: GNU tar
tar cf $OUT/callC.tar -C /tmp/callC C; echo "done at $(( $(date +%s) - T0 )) s"
