"""The command layer: every training, evaluation, baseline and quickstart command, whether run as a script in
scripts/ or as a console command (zephyr/commands.py), goes through these functions: parse, pre-flight, call the
library, print a short summary; bad input ends in one ``error:`` line and exit status 2 (``entry_point``)."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import shutil
import sys
import tempfile
from pathlib import Path

from zephyr import preflight
from zephyr.config import DataArguments, EvalArguments, ModelArguments, TrainArguments
from zephyr.parsing import parse_args
from zephyr.errors import UsageError
from zephyr.preflight_checks import log_level
from zephyr.progress import configure_logging
from zephyr.rundir import METRICS
from zephyr.tasks import TASKS, get_task

EMBEDDED = "embedded"
# Flags of the shared dataclasses that a command ignores: left out of its parser, so --help lists only what works.
FINETUNE_UNUSED = frozenset({"run_dir", "num_shots", "base_model", "eval_dtype"})  # evaluates what it trained
INFERENCE_UNUSED = frozenset({"task", "train_file", "train_fraction", "data_seed", "prompt_format", "max_length",
                              "num_shots"})  # a run's training settings come from its config.json
BASELINE_UNUSED = frozenset({"train_fraction", "prompt_format", "max_length", "lora_r", "lora_alpha", "lora_dropout",
                             "lora_targets", "lora_lm_head", "run_dir", "base_model",
                             "eval_dtype"})  # chat prompts, base model only (its --dtype sets the compute dtype)


def entry_point(main):
    """Run ``main``; bad input becomes one ``error:`` line on stderr and exit status 2, Ctrl-C one line saying how
    to go on and exit status 130 (a shell's for an interrupt)."""

    @functools.wraps(main)
    def wrapper(argv=None):
        argv = list(sys.argv[1:] if argv is None else argv)
        try:
            argv, level = _pop_log_level(argv)
            configure_logging(level)
            return main(argv)
        except UsageError as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
        except KeyboardInterrupt:
            print("interrupted: the same command again resumes a training run from its last saved checkpoint, and "
                  "a sweep from its unfinished runs", file=sys.stderr)
            raise SystemExit(130) from None

    return wrapper


def _pop_log_level(argv: list[str]) -> tuple[list[str], str]:
    """``--log_level`` (default: env LOGLEVEL, else INFO), taken out before the script's own parser runs."""
    import argparse

    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--log_level", default=None)
    known, rest = parser.parse_known_args(argv)
    return rest, known.log_level or log_level()


def _print_metrics(path: Path, metrics: dict) -> None:
    """One JSON line on stdout (rounded to 4 decimals, for scripts) and one sentence in the log (for people)."""
    keys = [k for k in ("accuracy", "macro_f1", "invalid_rate", "rouge1", "rouge2", "rougeL", "rougeLsum",
                        "n_examples", "n_errors", "examples_per_s") if k in metrics]
    print(json.dumps({"metrics": str(path), **{k: _rounded(metrics[k]) for k in keys}}))
    logging.getLogger("zephyr").info("%s", result_sentence(path, metrics))


def _rounded(value):
    return round(value, 4) if isinstance(value, float) else value


def result_sentence(path: Path, metrics: dict) -> str:
    """What was measured, on how many rows, and where the files are, in one line."""
    rows = f"{metrics.get('n_examples', 0):,} test rows"
    failed = f", {metrics['n_errors']} failed" if metrics.get("n_errors") else ""
    if "accuracy" in metrics:
        measured = (f"accuracy {metrics['accuracy']:.2f} % on {rows} (macro F1 {metrics.get('macro_f1', 0):.2f}, "
                    f"{metrics.get('invalid_rate', 0):.1f} % answered no label{failed})")
    else:
        measured = (f"ROUGE-1 {metrics.get('rouge1', 0):.2f}, ROUGE-2 {metrics.get('rouge2', 0):.2f}, "
                    f"ROUGE-L {metrics.get('rougeL', 0):.2f} on {rows}{failed}")
    return f"{measured}; predictions.jsonl and metrics.json in {path.parent}"


def _check_task(data_args: DataArguments, task_name: str) -> None:
    if data_args.task != task_name:
        raise UsageError(f"--task: this script is for {task_name}; use the {data_args.task} script instead")


def parse_finetune(task_name: str, argv=None, defaults: dict | None = None):
    task = get_task(task_name)
    parsed = parse_args((DataArguments, ModelArguments, TrainArguments, EvalArguments), argv,
                        defaults={"task": task_name, **task.defaults, **(defaults or {})}, unused=FINETUNE_UNUSED)
    _check_task(parsed[0], task_name)
    return parsed


def finetune(task_name: str, argv=None, defaults: dict | None = None) -> Path:
    """Fine-tune (and with ``--do_eval True`` evaluate) one run; returns its directory."""
    from dataclasses import replace

    from zephyr.evaluation import evaluate, evaluate_run
    from zephyr.prompting import PromptBuilder
    from zephyr.training import is_main_process, train

    task = get_task(task_name)
    data_args, model_args, train_args, eval_args = parse_finetune(task_name, argv, defaults)
    plan = preflight.finetune(task, data_args, model_args, train_args, eval_args)
    if plan.evaluate_only:
        # Training finished but evaluation did not (a killed sweep): evaluate what is there.
        if is_main_process():
            logging.getLogger(__name__).info("%s: training already finished; evaluating it", plan.run_dir)
            _warn_unused_training_flags(plan.run_dir, train_args)
            metrics = evaluate_run(data_args, replace(eval_args, run_dir=str(plan.run_dir)), task_name)
            _print_metrics(Path(eval_args.eval_output_dir or plan.run_dir) / METRICS, metrics)
        return plan.run_dir
    run = train(data_args, model_args, train_args, plan)
    if not run.is_main_process:
        return run.run_dir
    print(json.dumps({"run_dir": str(run.run_dir)}))
    if train_args.do_eval:
        builder = PromptBuilder(task, run.tokenizer, data_args.prompt_format, run.labels)
        out_dir = Path(eval_args.eval_output_dir or run.run_dir)
        metrics = evaluate(task, run.model, run.tokenizer, builder, plan.test, plan.examples, eval_args, out_dir,
                           data_args.max_length)
        _print_metrics(out_dir / METRICS, metrics)
    return run.run_dir


def _warn_unused_training_flags(run_dir: Path, train_args: TrainArguments) -> None:
    """A finished run is only evaluated: say which training flags given now differ from how it trained, and so do
    nothing (``--report_to tensorboard`` writes no tracker files without training)."""
    from dataclasses import asdict

    from zephyr.io import read_json

    trained = read_json(run_dir / "config.json").get("arguments", {}).get("TrainArguments", {})
    unused = [(name, value, trained[name]) for name, value in asdict(train_args).items()
              if name in TRAINING_ONLY and name in trained and trained[name] != value]
    if unused:
        flags = ", ".join(f"--{name} {value} (it trained with {before})" for name, value, before in unused)
        logging.getLogger(__name__).warning("%s: only evaluated, so %s change%s nothing; --overwrite True trains "
                                            "again", run_dir, flags, "" if len(unused) > 1 else "s")


# Settings that act on training only and may differ from a finished run's without making it another run.
TRAINING_ONLY = frozenset({"report_to", "logging_steps", "save_steps", "gradient_checkpointing", "train_memory_gib",
                           "compile_layers", "cuda_graphs", "fused_nf4", "pad_to_max_length", "batch_layout",
                           "sync_free_metrics"})


def inference(task_name: str | None, argv=None) -> dict:
    """Evaluate a run; ``task_name`` None takes the task from the run itself."""
    from zephyr.evaluation import evaluate_run

    data_args, eval_args = parse_args((DataArguments, EvalArguments), argv,
                                      defaults={"task": task_name} if task_name else None, unused=INFERENCE_UNUSED)
    metrics = evaluate_run(data_args, eval_args, task_name)
    _print_metrics(Path(eval_args.eval_output_dir or eval_args.run_dir) / METRICS, metrics)
    return metrics


def baseline(argv=None) -> dict:
    from zephyr.evaluation import run_baseline

    data_args, model_args, eval_args = parse_args((DataArguments, ModelArguments, EvalArguments), argv,
                                                  unused=BASELINE_UNUSED)
    out_dir, metrics = run_baseline(data_args, model_args, eval_args)
    _print_metrics(out_dir / METRICS, metrics)
    return metrics


# Small, fast settings for the embedded default; every one can be overridden by a flag.
QUICKSTART_DEFAULTS = dict(
    model_name_or_path=EMBEDDED, output_root="runs/quickstart", quantization="4bit", lora_targets="all",
    lora_r=16, learning_rate=2e-3, num_train_epochs=4.0, per_device_train_batch_size=8,
    gradient_accumulation_steps=1, max_length=128, gradient_checkpointing=False, optim="adamw_torch",
    logging_steps=5, do_eval=True, eval_batch_size=20)


# A generated dialogue and its summary are about 70 tokens, a generated post and its label about 30: half as many
# dialogues as posts keep the two quickstarts' training at about the same number of tokens, and so of minutes.
QUICKSTART_SAMSUM_ROWS = 80


@contextlib.contextmanager
def _quiet_progress_bars():
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def quickstart(argv=None) -> Path:
    """Train and evaluate offline: tiny Mistral + Zephyr tokenizer + generated data unless told otherwise.

    The tiny model and the data are made in a scratch folder and checked there with the rest of the run, so bad
    input leaves nothing behind; they move into ``--output_root`` only once the run is going ahead.
    """
    from zephyr.embedded import build_tiny_model, write_synthetic_data

    argv = list(sys.argv[1:] if argv is None else argv)
    data_args, model_args, train_args, _ = parse_args(
        (DataArguments, ModelArguments, TrainArguments, EvalArguments), argv, defaults=QUICKSTART_DEFAULTS,
        unused=FINETUNE_UNUSED)
    root = Path(train_args.output_root)
    preflight.writable_dir(root, "--output_root")
    made = {}  # flag -> folder to make, for what is not there yet
    if model_args.model_name_or_path == EMBEDDED:
        made["model_name_or_path"] = (root / "embedded-tiny-mistral", build_tiny_model)
    if data_args.data_dir is None and not data_args.train_file:
        made["data_dir"] = (root / "data", functools.partial(write_synthetic_data,
                                                             samsum_train_rows=QUICKSTART_SAMSUM_ROWS))
    final = {flag: str(folder) for flag, (folder, _) in made.items()}
    with tempfile.TemporaryDirectory() as scratch, _quiet_progress_bars():  # the pre-flight says only its verdict
        staged = {}
        for flag, (folder, make) in made.items():
            if not folder.exists():
                staged[flag] = make(Path(scratch) / folder.name)
        checked = {**final, **{flag: str(path) for flag, path in staged.items()}}
        preflight.finetune(get_task(data_args.task),
                           *parse_finetune(data_args.task, argv, {**QUICKSTART_DEFAULTS, **checked}))
        root.mkdir(parents=True, exist_ok=True)
        for flag, path in staged.items():
            shutil.move(str(path), made[flag][0])
    return finetune(data_args.task, argv, defaults={**QUICKSTART_DEFAULTS, **final})


def preflight_command(command: list[str], hub: bool = False) -> None:
    """The pre-flight of a suite script's command line, as a sweep will launch it, without running it (and, with
    ``hub`` False, without the network). Commands of other programs pass unchecked."""
    scripts = [i for i, arg in enumerate(command) if arg.endswith(".py")]
    if not scripts:
        return
    script, argv = Path(command[scripts[0]]).name, command[scripts[0] + 1:]
    task_name = finetune_task(script, argv)
    if task_name is not None:
        preflight.finetune(get_task(task_name), *parse_finetune(task_name, argv), hub=hub)
    elif script == "zephyr_baseline_inference.py":
        data_args, model_args, eval_args = parse_args((DataArguments, ModelArguments, EvalArguments), argv,
                                                      unused=BASELINE_UNUSED)
        from zephyr.evaluation import baseline_output_dir

        preflight.baseline(get_task(data_args.task), data_args, model_args, eval_args,
                           baseline_output_dir(data_args, model_args, eval_args), hub=hub)


GENERIC_FINETUNE_SCRIPT = "zephyr_train.py"  # = zephyr-train: any task, by --task or the --config file's task


def finetune_script(task_name: str) -> str:
    """The fine-tuning script of a task, in scripts/: its own, with the study's name, or the generic one."""
    return TASKS[task_name].finetune_script or GENERIC_FINETUNE_SCRIPT


def finetune_task(script: str, argv: list[str]) -> str | None:
    """The task a fine-tuning script's command line trains (None: not a fine-tuning script)."""
    if script == GENERIC_FINETUNE_SCRIPT:
        from zephyr.commands import task_of

        return task_of(argv)
    return next((name for name, task in TASKS.items() if task.finetune_script == script), None)
