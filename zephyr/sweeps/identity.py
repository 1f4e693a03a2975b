"""A run's identity is all of its settings: a finished run directory counts as the run a sweep plans only if it
was made with the same value of every flag that can change its result (EXTRA_ARGS included) and from the same
input files.

What is compared, and with what it was recorded:
- every argument in the run's config.json, except where the run went (``LOCATIONS``), what cannot change a
  number it reports (``NOT_RESULTS``: logging, checkpoints, memory budgets, batch sizes of the evaluation) and
  the flags the command does not take. The speed levers that change numerics (compiled layers, CUDA graphs,
  padded or packed batches) are compared: the quality benchmark measures them against their plain twins;
- a fine-tune's evaluation flags that its metrics.json records (``EVAL_IN_METRICS``); a baseline records all of
  its evaluation flags in config.json;
- the input files (config.json's ``inputs``): the data by SHA-256, the model by path and size. A run directory
  written before runs recorded ``inputs`` is compared on its flags only.
Commands of other programs (not a suite script) have no recorded settings: their ``metrics.json`` is all there is.
"""

from __future__ import annotations

import json
from pathlib import Path

from zephyr.errors import UsageError
from zephyr.io import read_json
from zephyr.rundir import CONFIG, METRICS, inputs

LOCATIONS = {"output_root", "run_name", "eval_output_dir", "run_dir", "model_cache_dir"}  # where, not what
NOT_RESULTS = {"overwrite", "do_eval", "logging_steps", "save_steps", "report_to", "gradient_checkpointing",
               "train_memory_gib", "eval_memory_gib", "eval_batch_size", "eval_batch_tokens", "sync_free_metrics"}
INPUT_FLAGS = {"data_dir", "train_file", "test_file", "model_name_or_path", "base_model"}  # compared as files
EVAL_IN_METRICS = ("eval_method", "max_new_tokens", "merge_adapter")  # a fine-tune's evaluation flags that metrics.json records


def planned(command: list[str]) -> tuple[dict, frozenset] | None:
    """The arguments a suite script's command line resolves to (grouped as config.json records them) and the flags
    that script does not take; None for any other program."""
    from zephyr.cli import BASELINE_UNUSED, FINETUNE_UNUSED, finetune_task, parse_finetune
    from zephyr.config import DataArguments, EvalArguments, ModelArguments, to_dict
    from zephyr.parsing import parse_args

    scripts = [i for i, arg in enumerate(command) if arg.endswith(".py")]
    if not scripts:
        return None
    script, argv = Path(command[scripts[0]]).name, command[scripts[0] + 1:]
    task = finetune_task(script, argv)
    if task is not None:
        return to_dict(*parse_finetune(task, argv)), FINETUNE_UNUSED
    if script == "zephyr_baseline_inference.py":
        parsed = parse_args((DataArguments, ModelArguments, EvalArguments), argv, unused=BASELINE_UNUSED)
        return to_dict(*parsed), BASELINE_UNUSED
    return None


def _comparable(arguments: dict, unused: frozenset) -> dict:
    skip = NOT_RESULTS | LOCATIONS | INPUT_FLAGS | unused
    flat = {k: v for group in arguments.values() for k, v in group.items() if k not in skip}
    return json.loads(json.dumps(flat))  # as config.json holds them: tuples as lists


def difference(run_dir: Path, command: list[str]) -> str | None:
    """None when ``run_dir`` (which has a metrics.json) holds the run of ``command``; else the first setting that
    differs, as ``--flag <recorded>, now <planned>``."""
    plan = planned(command)
    if plan is None:
        return None
    arguments, unused = plan
    if not (run_dir / CONFIG).is_file():
        return f"no {CONFIG} records its settings"
    config = read_json(run_dir / CONFIG)
    finetune = "TrainArguments" in arguments  # its config.json holds no evaluation flags: metrics.json has some
    before = _comparable(config.get("arguments", {}), unused)
    now = _comparable({k: v for k, v in arguments.items() if not (finetune and k == "EvalArguments")}, unused)
    if finetune:
        metrics, evaluation = read_json(run_dir / METRICS), arguments.get("EvalArguments", {})
        before.update({k: metrics[k] for k in EVAL_IN_METRICS if k in metrics})
        now.update({k: evaluation[k] for k in EVAL_IN_METRICS if evaluation.get(k) is not None})
    for key in sorted(now):
        if key in before and before[key] != now[key]:
            return f"--{key} {before[key]!r}, now {now[key]!r}"
    return _input_difference(config.get("inputs"), arguments)


def _input_difference(recorded: dict | None, arguments: dict) -> str | None:
    if not recorded:
        return None
    data = arguments.get("DataArguments", {})
    for key, now in inputs(arguments).items():
        before = recorded.get(key)
        if before is None or _same_file(before, now):
            continue
        split = key.removesuffix("_data")
        flag = "model_name_or_path" if key == "model" else (f"{split}_file" if data.get(f"{split}_file")
                                                               else "data_dir")
        what = "the model" if key == "model" else f"its {split} data"
        return f"--{flag}: {what} was {_describe(before)}, now {_describe(now)}"
    return None


def _same_file(before: dict, now: dict) -> bool:
    if "sha256" in before and "sha256" in now:  # the same content wherever it lies
        return before["sha256"] == now["sha256"]
    return before == now


def _describe(identity: dict) -> str:
    if "name" in identity:
        return identity["name"]
    content = f"sha256 {identity['sha256'][:12]}" if "sha256" in identity else f"{identity['bytes']:,} bytes"
    return f"{identity['path']} ({content})"


def replaces_on_request(command: list[str]) -> bool:
    """Whether the command asks to replace a finished run (``--overwrite True``, e.g. in EXTRA_ARGS)."""
    plan = planned(command)
    return bool(plan and plan[0].get("TrainArguments", {}).get("overwrite"))


def is_done(run_dir: Path, command: list[str]) -> bool:
    """True when ``run_dir`` holds this command's finished run; False when it is still to run. A finished run of
    other settings is never taken for it: UsageError, naming the setting, unless the command replaces it."""
    if not (run_dir / METRICS).is_file():
        return False
    try:
        differs = difference(run_dir, command)
    except UsageError as err:
        raise UsageError(f"{run_dir.name}: {err}") from None
    if differs is None:
        return True
    if replaces_on_request(command):
        return False
    raise UsageError(f"{run_dir}: finished with other settings ({differs}); give these settings their own OUT_ROOT, "
                     "or add --overwrite True to EXTRA_ARGS to replace it")
