# Shared by sample_ablate.sh, run_lora.sh and baseline_inference.sh (sourced, not run).
# Every variable in KNOWN_VARS can be set in the environment or as a flag: --out_root x, --gpus=0,1, --dry_run.
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
# The sweep prints one line per run start and end; each run's output goes to <run dir>/sweep.log.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
COMMON_VARS="MODEL DATA_DIR OUT_ROOT GPUS RUNS_PER_GPU DRY_RUN PYTHON MAX_TEST_ROWS EXTRA_ARGS"
MODEL=${MODEL:-HuggingFaceH4/zephyr-7b-beta}
DATA_DIR=${DATA_DIR:-${ZEPHYR_DATA_DIR:-}}
OUT_ROOT=${OUT_ROOT:-runs/sweeps}
GPUS=${GPUS:-}
RUNS_PER_GPU=${RUNS_PER_GPU:-1}
DRY_RUN=${DRY_RUN:-0}
PYTHON=${PYTHON:-python}
MAX_TEST_ROWS=${MAX_TEST_ROWS:-}
EXTRA_ARGS=${EXTRA_ARGS:-}
JOBS_FILE=$(mktemp)
trap 'rm -f "$JOBS_FILE"' EXIT

set_var() {  # set_var flag-name value
  local name
  name=$(printf '%s' "$1" | tr 'a-z-' 'A-Z_')
  case " $KNOWN_VARS " in
    *" $name "*) printf -v "$name" '%s' "$2" ;;
    *) echo "error: unknown flag --$1 (known: $(printf '%s' "$KNOWN_VARS" | tr 'A-Z_' 'a-z_'))" >&2; exit 2 ;;
  esac
}

usage() {  # the calling script's header comment, then the variables every sweep shares
  local own=$0
  sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$own"
  echo
  sed -n '/^# Variables of every sweep/,/^[^#]/{/^#/s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}"
}

parse_flags() {
  while [ $# -gt 0 ]; do
    case $1 in
      -h|--help) usage; exit 0 ;;
      --dry_run|--dry-run) DRY_RUN=1; shift ;;
      --*=*) flag=${1#--}; set_var "${flag%%=*}" "${flag#*=}"; shift ;;
      --*) [ $# -ge 2 ] || { echo "error: flag $1 needs a value" >&2; exit 2; }; set_var "${1#--}" "$2"; shift 2 ;;
      *) echo "error: unexpected argument '$1' (flags look like --name value)" >&2; exit 2 ;;
    esac
  done
}

ask_rundir() {  # ask_rundir VAR QUESTION...: VAR=what `python -m zephyr.rundir QUESTION...` prints (run names, variants)
  # One Python process, started at the first question, answers all of them: one per run would cost seconds.
  local var=$1 answer
  shift
  [ -n "${RUNDIR_PID:-}" ] || coproc RUNDIR { exec "$PYTHON" -m zephyr.rundir serve; }
  printf '%q ' "$@" >&"${RUNDIR[1]}"
  printf '\n' >&"${RUNDIR[1]}"
  IFS= read -r answer <&"${RUNDIR[0]}" || exit 2  # it printed the error and stopped
  printf -v "$var" '%s' "$answer"
}

finetune_script() {  # finetune_script TASK: the task's fine-tuning entry point
  case $1 in
    newsgroups) printf '%s' "$REPO/scripts/zephyr_classification.py" ;;
    samsum) printf '%s' "$REPO/scripts/zephyr_summarization.py" ;;
    *) echo "error: TASK: unknown task '$1' (choose newsgroups or samsum)" >&2; exit 2 ;;
  esac
}

data_flags() { [ -z "$DATA_DIR" ] || printf -- '--data_dir\n%s\n' "$DATA_DIR"; }

add_job() {  # add_job RUN_NAME COMMAND...: one line "<run_dir>\t<quoted command>" of the job file
  local run_dir="$OUT_ROOT/$1"
  shift
  local quoted
  quoted=$(printf '%q ' "$@")
  printf '%s\t%s\n' "$run_dir" "$quoted" >> "$JOBS_FILE"
}

run_jobs() {
  local dry=()
  case $DRY_RUN in 0|1) ;; *) echo "error: DRY_RUN: must be 0 or 1, got '$DRY_RUN'" >&2; exit 2 ;; esac
  [ "$DRY_RUN" = 1 ] && dry=(--dry_run)
  "$PYTHON" -m zephyr.sweep --jobs "$JOBS_FILE" --csv "$OUT_ROOT/sweep.csv" --gpus "$GPUS" \
    --runs_per_gpu "$RUNS_PER_GPU" "${dry[@]}"
}
