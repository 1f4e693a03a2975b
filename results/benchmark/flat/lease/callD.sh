# Tables 1 and 2 whole, for issue 26's wall time on one GPU: a session of its own. A first call carries
# [site.txz, data.tgz, tok.tgz, gguf00, run] and runs `STEP=load`; the next, within 30 s, carries [gguf01, gguf02, run]
# and runs `STEP=start`, which joins the GGUF and starts the tables in their own process session (they outlive the
# call); then `STEP=wait` calls of up to WAIT seconds each, one after the other within 30 s, report progress and,
# once the tables are done, bring back their runs and tables. Budget: the tables must end within about 27 minutes of
# the start call, or the session's 1,800 s of device time ends first (each wait call brings back the progress).
# EXTRA_ARGS (flags for every fine-tune, e.g. "--flat_cuda_graphs True") passes through to run_study_tables.sh.
source .gpu-carry/run/setup.sh
D=/tmp/callD; mkdir -p $D; G=$S/SmolLM2-135M-Instruct.Q4_1.gguf
case ${STEP:?load, start or wait} in
  load) cp .gpu-carry/gguf00 $S/gguf00 && echo "gguf00 kept" ;;
  start)
    [ -f $G ] || cat $S/gguf00 .gpu-carry/gguf01 .gpu-carry/gguf02 > $G
    sha256sum $G | grep -q b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53 || { echo "GGUF SHA MISMATCH"; rm -f $G; exit 1; }
    date +%s > $D/t0
    setsid nohup bash -c "nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 5" > $D/smi.csv 2>&1 < /dev/null &
    setsid nohup bash -c "while sleep 5; do echo \$(date +%s) \$(head -1 /proc/stat); done" > $D/cpu.txt 2>&1 < /dev/null &
    setsid nohup bash -c "GGUF=$G DATA=$S/data OUT_ROOT=/tmp/runs/study-tables bash .gpu-carry/run/run_study_tables.sh; \
      echo \"tables rc=\$? after \$(( \$(date +%s) - \$(cat $D/t0) )) s\"" > $D/tables.log 2>&1 < /dev/null &
    sleep 20; tail -5 $D/tables.log ;;
  wait)
    [ -f $D/tables.log ] || { echo "no tables started on this machine"; exit 1; }
    T=$(date +%s)  # WAIT + 10 s of the last check + the tables and the archive: inside a 600 s call
    while ! grep -q "tables rc=" $D/tables.log && [ $(( $(date +%s) - T )) -lt ${WAIT:-480} ]; do sleep 10; done
    echo "$(( $(date +%s) - $(cat $D/t0) )) s since the start; $(grep -c "done in" $D/tables.log) runs done"
    grep -E "done in|failed|tables rc=" $D/tables.log | tail -8
    # each call brings back the progress so far (logs, train logs, metrics), in case the machine goes back first
    (cd /tmp/runs && find study-tables -name train_log.jsonl -o -name metrics.json -o -name sweep.csv -o -name sweep.log \
      | tar czf $OUT/progress.tgz -C /tmp/runs -T - -C $D tables.log smi.csv cpu.txt t0)
    if grep -q "tables rc=" $D/tables.log; then
      python scripts/make_tables.py --runs /tmp/runs/study-tables --out $D/tables --protocol "Tables 1 and 2 at the study's protocol, the suite's defaults, one GPU, from one command (issue 26)" > $D/make_tables.log 2>&1
      tar czf $D/study-runs.tgz --exclude='*.safetensors' --exclude='*.bin' --exclude='checkpoint-*' \
        --exclude=compile_cache --exclude='*.pt' --exclude=adapter -C /tmp/runs study-tables  # excludes first: GNU tar
      tar cf $OUT/callD.tar -C /tmp callD; echo "brought back"
    fi ;;
esac
