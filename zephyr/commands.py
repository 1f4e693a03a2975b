"""The names ``pip install -e .`` puts on the PATH ([project.scripts] in pyproject.toml), each a thin wrapper:
training, evaluation and baselines over the command layer (zephyr/cli.py), the benchmark, export and tables over
their library modules.

They return nothing: pip's wrapper passes the return value to ``sys.exit``, where anything but None or an int is
printed and exits with status 1.

    zephyr-train --task samsum --data_dir ../shared/data        = scripts/zephyr_summarization.py
    zephyr-eval --run_dir runs/<name> --data_dir ../shared/data  = scripts/zephyr_*_inference.py (task from the run)
    zephyr-baseline --task samsum --num_shots 3                  = scripts/zephyr_baseline_inference.py
    zephyr-tables --runs runs/sweeps --out results/tables       = scripts/make_tables.py
    zephyr-bench                                                 = scripts/benchmark.py
    zephyr-export --run_dir runs/<name>                          merged model for transformers, vLLM, llama.cpp
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys

from zephyr.cli import baseline, entry_point, finetune, inference
from zephyr.parsing import parse_args
from zephyr.errors import UsageError, raise_usage_errors


def _peek(argv: list[str] | None, flag: str, default: str | None = None) -> str | None:
    """The value of one flag, leaving argv as it is for the command's own parser."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument(flag, default=default)
    return vars(parser.parse_known_args(list(sys.argv[1:] if argv is None else argv))[0])[flag.lstrip("-")]


def task_of(argv: list[str] | None) -> str:
    """The task of a zephyr-train command line: --task, else the --config file's ``task`` key, else newsgroups."""
    from zephyr.parsing import config_value
    from zephyr.tasks import TASKS

    task, config = _peek(argv, "--task"), _peek(argv, "--config")
    config_task = config_value(config, "task") if config else None
    if task is not None and config_task is not None and task != config_task:
        raise UsageError(f"--task {task}: the --config file {config} is for {config_task}")
    task = task or config_task or "newsgroups"
    if task not in TASKS:
        raise UsageError(f"--task: unknown task {task!r} (choose from {', '.join(TASKS)})")
    return task


@entry_point
def train(argv=None):
    """zephyr-train --task NAME [flags of that task's fine-tuning script]; the task may also come from the --config
    file's ``task`` key."""
    finetune(task_of(argv), argv)


@entry_point
def evaluate(argv=None):
    """zephyr-eval --run_dir DIR [flags]: the run's own task and prompt format, from its config.json."""
    inference(None, argv)


@entry_point
def baseline_command(argv=None):
    baseline(argv)


@entry_point
def tables(argv=None):
    """Regenerate the study's tables and plots from run directories (Markdown, CSV, PNG).

        zephyr-tables --runs runs/sweeps --out results/tables
        zephyr-tables --runs runs/ablate runs/baselines --out results/smollm2 \\
            --protocol "SmolLM2-135M-Instruct, 2 epochs, all test rows"

    Table 1: Newsgroups accuracy by training rows x {base, NEFTune, all-module, NEFTune + all-module}.
    Table 2: SAMSum ROUGE-1/2 for zero-shot, few-shot and the four fine-tuned variants. Table 3: by model.
    Missing cells are shown as missing, never as zero. Smoke tests, runs scored on part of the test
    split, quickstart runs and runs off a table's protocol fill no cell: each is named with its reason.
    One figure per table shows its runs' training loss.
    """
    from zephyr import preflight
    from zephyr.progress import add_log_level_flag
    from zephyr.results import write_tables

    from zephyr.helptext import HelpFormatter

    parser = argparse.ArgumentParser(description=inspect.cleandoc(tables.__doc__), formatter_class=HelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--runs", nargs="+", required=True, help="folders holding run directories")
    parser.add_argument("--out", required=True, help="output folder for tables and plots")
    parser.add_argument("--protocol", default="", help="one line stating how the runs were made (default: none)")
    add_log_level_flag(parser)
    args = raise_usage_errors(parser).parse_args(argv)
    rows = preflight.tables(args.runs, args.out)
    for name, path in write_tables(rows, args.out, args.protocol).items():
        print(f"{name}: {path}")


@entry_point
def bench(argv=None):
    from zephyr.benchmark import BenchmarkArguments, failed_settings, mfu_line, run_benchmark, summary_table

    (arguments,) = parse_args((BenchmarkArguments,), argv)
    result = run_benchmark(arguments)
    print(summary_table(result))
    print(mfu_line(result))
    for line in failed_settings(result):  # the JSON holds every setting; the exit status says one failed
        print(f"benchmark: setting failed, {line}", file=sys.stderr)
    if failed_settings(result):
        raise SystemExit(1)


@entry_point
def export(argv=None):
    """Write a fine-tuned run as one merged model (safetensors, tokenizer, chat template).

        zephyr-export --run_dir runs/<name>                         # bf16, into runs/<name>/merged
        zephyr-export --run_dir runs/<name> --dtype fp32 --output_dir merged-fp32

    Prints one JSON line: where the model went and, for bf16/fp16, what the cast did to the LoRA deltas.
    """
    from zephyr.export import ExportArguments, export_run

    (arguments,) = parse_args((ExportArguments,), argv, description=inspect.cleandoc(export.__doc__))
    out, report = export_run(arguments)
    print(json.dumps({"exported": str(out), "dtype": arguments.dtype, **({"rounding": report} if report else {})}))
