# Shared by sample_ablate.sh, run_lora.sh and baseline_inference.sh (sourced, not run): each expands its grid
# and runs it through `python -m zephyr.sweeps` (zephyr/sweeps/). Every variable in the calling script's header
# and below can be set in the environment or as a flag: --out_root x, --gpus=0,1, --dry_run.
#
# Variables of every sweep (environment, or the same name as a flag):
#   MODEL=HuggingFaceH4/zephyr-7b-beta   hub id, checkpoint directory or .gguf
#   DATA_DIR=$ZEPHYR_DATA_DIR  local data root (unset: hub datasets)
#   OUT_ROOT=runs/sweeps       run directories, sweep.csv with one row per run, compile_cache/ shared by the runs
#   GPUS=                      e.g. 0,1: runs spread over these GPUs; empty: the default device
#   RUNS_PER_GPU=1             most runs at a time on each GPU (a small model leaves most of an H200 idle)
#   MAX_TEST_ROWS=             score only the first N test rows
#   EXTRA_ARGS=                more flags for every run, e.g. "--eval_batch_size 64"
#   PYTHON=python              the interpreter that runs the suite
#   DRY_RUN=0                  1 (or --dry_run): print the commands, run nothing
#   BACKEND=                   local (this host) or ray (each run a Ray task on a cluster's GPUs, 1/RUNS_PER_GPU
#                              of one each; GPUS is then unused); default: ray where RAY_ADDRESS is set. docs/ray.md
# The sweep prints one line per run start and end; each run's output goes to <run dir>/sweep.log. A run counts as
# done only if it finished with the same settings (every flag that can change its result, EXTRA_ARGS included,
# and the same data and model files); a finished run of other settings stops the sweep before any work.
set -euo pipefail

run_sweep() {  # run_sweep ablation|lora_grid|baseline ARG...: the calling script's grid, run
  local sweep=$1 python=${PYTHON:-python}
  shift
  if ! command -v "$python" > /dev/null; then
    echo "error: PYTHON: $python: not found (the interpreter that runs the suite)" >&2
    exit 2
  fi
  if ! "$python" -c "import zephyr.sweeps" 2> /dev/null; then
    echo "error: PYTHON: $python cannot import the suite (run pip install -e . with that interpreter)" >&2
    exit 2
  fi
  exec "$python" -m zephyr.sweeps "$sweep" --script "$0" "$@"
}
