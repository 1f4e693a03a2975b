"""Everyday use: progress and phase lines, quiet logs, TensorBoard, loss plots, shipped configs, console commands,
--help, and the merged-model export (its greedy outputs equal the suite's evaluation of the same run)."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
import tomllib
from dataclasses import replace
from importlib import import_module

import pytest
import yaml

from conftest import REPO, requires_shared
from test_sweeps import _fake_run
from zephyr.cli import BASELINE_UNUSED, FINETUNE_UNUSED, baseline, finetune, inference
from zephyr.config import DataArguments, EvalArguments, ModelArguments, TrainArguments
from zephyr.parsing import parse_args
from zephyr.progress import Progress, format_duration


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_is_plain_lines_in_a_log_file_and_a_redrawn_bar_on_a_terminal():
    log = io.StringIO()
    progress = Progress("evaluating", 5, "examples", log, plain_interval_s=0)
    for done in range(1, 6):
        progress.update(done, loss=1.5)
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and len(lines) == 6
    assert lines[0].startswith("evaluating 0/5 examples   0%")  # the phase has started
    assert lines[1].startswith("evaluating 1/5 examples  20%") and "loss 1.5" in lines[1] and "ETA" in lines[1]
    assert lines[-1].startswith("evaluating 5/5 examples 100%") and "examples/s" in lines[-1] and "ETA" not in lines[-1]
    quiet = io.StringIO()
    slow = Progress("training", 100, "steps", quiet)  # the start, a line every 30 s at most, and always the last one
    for done in range(1, 101):
        slow.update(done)
    assert len(quiet.getvalue().splitlines()) == 2 and "100/100" in quiet.getvalue().splitlines()[1]
    terminal = Terminal()
    bar = Progress("training", 4, "steps", terminal)
    for done in range(1, 5):
        bar.update(done, tokens=1000 * done)
    assert terminal.getvalue().startswith("\r") and terminal.getvalue().count("\n") == 1
    assert terminal.getvalue().endswith("\n") and "tokens/s" in terminal.getvalue()
    assert "|####################| 4/4 steps" in terminal.getvalue()
    assert [format_duration(s) for s in (12, 192, 2460, 3900)] == ["12s", "3m12s", "41m00s", "1h05m"]


def test_the_batch_loop_reports_progress_without_changing_its_results():
    from zephyr.generation import run_batched

    items = [[0] * n for n in (5, 1, 7, 3, 3, 9, 2)]
    plain = run_batched(items, 3, lambda batch: [len(b) for b in batch], max_tokens=20)
    seen = []
    watched = run_batched(items, 3, lambda batch: [len(b) for b in batch], max_tokens=20, progress=seen.append)
    assert watched == plain and plain[0] == [5, 1, 7, 3, 3, 9, 2]
    assert seen == sorted(seen) and seen[-1] == len(items) and len(seen) > 1


def test_a_run_logs_phases_tensorboard_and_loss_png_and_its_export_evaluates_the_same(
        tiny_model_dir, synthetic_data, tmp_path, capsys, caplog):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from zephyr.evaluation import evaluate, evaluate_run
    from zephyr.preflight_checks import select_test
    from zephyr.export import ExportArguments, export_run
    from zephyr.prompting import PromptBuilder
    from zephyr.tasks import get_task
    from zephyr.training import train

    from zephyr.progress import configure_logging

    configure_logging("INFO")  # as the scripts do: no third-party progress bars or messages
    data = DataArguments(task="newsgroups", data_dir=str(synthetic_data), max_length=96, max_test_rows=4)
    model = ModelArguments(model_name_or_path=str(tiny_model_dir), lora_targets="all", lora_lm_head=True)
    train_args = TrainArguments(output_root=str(tmp_path), run_name="run", num_train_epochs=1, max_steps=2,
                                learning_rate=2e-3, gradient_checkpointing="false", optim="adamw_torch",
                                logging_steps=1, report_to="tensorboard")
    caplog.set_level(logging.INFO, logger="zephyr")
    run = train(data, model, train_args)
    run_dir = run.run_dir
    eval_args = EvalArguments(run_dir=str(run_dir), eval_batch_size=4, max_new_tokens=8)
    metrics = evaluate_run(data, eval_args)
    phases = [r.getMessage() for r in caplog.records if r.name == "zephyr"]
    for phase in ("preparing data: ", "loading model: ", "training: 2 steps", "writing results: ", "evaluating: 4 "):
        assert any(line.startswith(phase) and line.endswith(" s)") for line in phases), (phase, phases)
    err = capsys.readouterr().err
    assert "training 2/2 steps 100%" in err and "evaluating 4/4 examples" in err and "\r" not in err
    assert "{'loss'" not in err  # no raw dict per log step

    assert (run_dir / "loss.png").read_bytes()[:4] == b"\x89PNG"
    logged = [json.loads(l)["loss"] for l in (run_dir / "train_log.jsonl").read_text().splitlines()
              if "loss" in json.loads(l)]
    [events] = {p.parent for p in (run_dir / "tensorboard").rglob("events.out.tfevents.*")}
    board = EventAccumulator(str(events))
    board.Reload()
    assert [e.value for e in board.Scalars("train/loss")] == pytest.approx(logged, rel=1e-6) and len(logged) == 2

    # without --data_dir, evaluation reads the test rows from the data directory the run recorded (not the hub)
    caplog.clear()
    again = evaluate_run(DataArguments(task="newsgroups", max_test_rows=4),
                         replace(eval_args, eval_output_dir=str(tmp_path / "recorded-data")))
    assert again["accuracy"] == metrics["accuracy"] and again["test_source"] == metrics["test_source"]
    assert any("test data from " in r.getMessage() for r in caplog.records)

    out, report = export_run(ExportArguments(run_dir=str(run_dir), output_dir=str(tmp_path / "fp32"), dtype="fp32"))
    assert report == {} and (out / "model.safetensors").is_file()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template and tokenizer.pad_token_id is not None
    exported = AutoModelForCausalLM.from_pretrained(out)
    task = get_task("newsgroups")
    labels = json.loads((run_dir / "config.json").read_text())["data"]["labels"]
    test = task.load_split("test", data.data_dir, data.test_file)
    examples = select_test(task, test, data, labels)
    again = evaluate(task, exported, tokenizer, PromptBuilder(task, tokenizer, "original", labels), test, examples,
                     replace(eval_args, merge_adapter=False), tmp_path / "exported_eval", data.max_length)
    predictions = [json.loads(l)["prediction"] for l in (run_dir / "predictions.jsonl").read_text().splitlines()]
    exported_predictions = [json.loads(l)["prediction"]
                            for l in (tmp_path / "exported_eval" / "predictions.jsonl").read_text().splitlines()]
    assert exported_predictions == predictions and again["accuracy"] == metrics["accuracy"]

    out, report = export_run(ExportArguments(run_dir=str(run_dir), output_dir=str(tmp_path / "bf16")))
    assert str(AutoModelForCausalLM.from_pretrained(out).dtype) == "torch.bfloat16"
    assert report["delta_entries"] > 0 and report["delta_entries_lost"] < 1  # values: tests/test_export_report.py
    assert 0 < report["delta_relative_error"] < 2 and report["median_abs_delta_in_ulps"] > 0
    from zephyr.errors import UsageError

    with pytest.raises(UsageError, match="already there"):
        export_run(ExportArguments(run_dir=str(run_dir), output_dir=str(tmp_path / "bf16")))


def test_make_tables_draws_the_loss_curves_of_each_tables_runs(tmp_path):
    from zephyr.results import collect, write_tables

    root = tmp_path / "runs"
    for name, task in (("n1", "newsgroups"), ("n2", "newsgroups"), ("s1", "samsum")):
        _fake_run(root, name, "finetune", task, {"accuracy": 50.0, "rouge1": 40.0, "rouge2": 20.0}, fraction=0.1,
                  rows=100)
        rows = [{"step": s, "loss": 2.0 / s, "learning_rate": 2e-4, "tokens_seen": 100 * s} for s in (1, 2, 3)]
        (root / name / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    written = write_tables(collect([root]), tmp_path / "out")
    for name in ("table1_loss_plot", "table2_loss_plot", "table3_loss_plot"):
        assert written[name].read_bytes()[:4] == b"\x89PNG"


SCRIPT_PARSERS = {  # what each script parses, as zephyr/cli.py calls parse_args
    "zephyr_classification.py": ((DataArguments, ModelArguments, TrainArguments, EvalArguments), FINETUNE_UNUSED,
                                 "newsgroups"),
    "zephyr_summarization.py": ((DataArguments, ModelArguments, TrainArguments, EvalArguments), FINETUNE_UNUSED,
                                "samsum"),
    "zephyr_baseline_inference.py": ((DataArguments, ModelArguments, EvalArguments), BASELINE_UNUSED, None),
}


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_parses_with_its_script(path):
    from zephyr.tasks import get_task

    script = re.match(r"# script: scripts/(\S+)", path.read_text()).group(1)
    types, unused, task = SCRIPT_PARSERS[script]
    defaults = {"task": task, **get_task(task).defaults} if task else None
    parsed = parse_args(types, ["--config", str(path)], defaults=defaults, unused=unused)
    values = {k: v for obj in parsed for k, v in vars(obj).items()}
    for key, value in yaml.safe_load(path.read_text()).items():
        assert values[key] == value, (key, values[key], value)
    assert (REPO / "scripts" / script).is_file()


def test_console_commands_are_declared_and_check_their_task(capsys):
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts) == {"zephyr-train", "zephyr-eval", "zephyr-baseline", "zephyr-tables", "zephyr-bench",
                            "zephyr-export"}
    for target in scripts.values():
        module, name = target.split(":")
        assert callable(getattr(import_module(module), name))
    from zephyr.commands import train

    with pytest.raises(SystemExit) as exit_info:
        train(["--task", "poetry"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: --task: unknown task 'poetry' (choose from newsgroups, samsum)\n"


@pytest.mark.parametrize("name, call, absent", [
    ("summarization", lambda argv: finetune("samsum", argv), ["--run_dir", "--num_shots"]),
    ("inference", lambda argv: inference("samsum", argv), ["--train_fraction", "--lora_r", "--num_shots", "--task"]),
    ("baseline", baseline, ["--lora_r", "--train_fraction", "--prompt_format", "--run_dir"]),
])
def test_help_lists_only_used_flags_each_with_a_help_text_and_its_real_default(name, call, absent, capsys):
    with pytest.raises(SystemExit) as exit_info:
        call(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    entries = [e for e in re.split(r"\n(?=  -)|\n\n", text.split("options:")[1].strip("\n")) if e.startswith("  -")]
    for entry in entries:
        first, *rest = entry.splitlines()
        assert rest or re.search(r"\S  +\S", first.strip()), f"no help text: {entry}"
    for flag in absent:
        assert not re.search(rf"{flag}\b", text), f"{name} --help lists {flag}, which it ignores"
    if name == "summarization":  # the task's defaults, not the dataclass's
        assert re.search(r"--lora_r N\s+LoRA rank \(default: 64\)", text)
        assert re.search(r"1\s+on\s+SAMSum\)\s+\(default:\s+1\.0\)", text)


def test_a_flag_the_script_ignores_is_an_error_and_log_level_is_checked(capsys):
    from zephyr.commands import baseline_command

    for argv, message in ((["--lora_r", "8"], "error: unknown argument(s): --lora_r 8"),
                          (["--log_level", "LOUD"], "error: --log_level: unknown level 'LOUD' (choose DEBUG, INFO, "
                                                    "WARNING or ERROR)")):
        with pytest.raises(SystemExit) as exit_info:
            baseline_command(argv)
        assert exit_info.value.code == 2 and capsys.readouterr().err == message + "\n"
    from importlib.util import find_spec

    from zephyr.commands import train

    cases = [("poetry", "error: --report_to: unknown tracker 'poetry' (choose none, tensorboard, wandb, mlflow, "
                        "trackio or another the Trainer knows)")]
    if find_spec("wandb") is None:
        cases.append(("tensorboard,wandb", "error: --report_to: wandb needs the 'wandb' package (pip install wandb)"))
    for trackers, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            train(["--report_to", trackers])
        assert exit_info.value.code == 2 and capsys.readouterr().err == message + "\n"


@pytest.mark.parametrize("script, flag, variable", [("sample_ablate.sh", "--help", "FRACTIONS"),
                                                    ("run_lora.sh", "-h", "RANKS"),
                                                    ("baseline_inference.sh", "--help", "SHOTS")])
def test_sweeps_answer_help_with_their_variables(tmp_path, script, flag, variable):
    result = subprocess.run(["bash", str(REPO / script), flag], capture_output=True, text=True, timeout=30,
                            cwd=tmp_path)
    assert result.returncode == 0 and result.stderr == ""
    for name in (variable, "RUNS_PER_GPU=1", "GPUS=", "OUT_ROOT=runs/sweeps", "DRY_RUN"):
        assert name in result.stdout, name
    assert not list(tmp_path.iterdir()), "--help runs nothing"



def test_console_commands_return_nothing_so_they_exit_zero():
    """pip's console wrapper runs ``sys.exit(command())``: a returned Path or dict would print and exit 1."""
    import inspect

    from zephyr import commands

    for name in ("train", "evaluate", "baseline_command", "tables", "bench", "export"):
        body = inspect.getsource(getattr(commands, name).__wrapped__).split('"""')[-1]
        assert not re.search(r"^\s+return\b", body, re.M), f"{name} returns a value"


def test_zephyr_train_takes_its_task_from_the_config_and_refuses_a_contradiction(capsys):
    from zephyr.commands import train

    with pytest.raises(SystemExit) as exit_info:
        train(["--task", "samsum", "--config", str(REPO / "configs" / "table1_base.yaml")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (f"error: --task samsum: the --config file {REPO / 'configs' / 'table1_base.yaml'}"
                                       " is for newsgroups\n")
    # no --task: the config's task (samsum) is the one whose flags get parsed, so the error is about its data
    with pytest.raises(SystemExit):
        train(["--config", str(REPO / "configs" / "table2_qlora.yaml"), "--data_dir", "/nonexistent-data"])
    assert capsys.readouterr().err == "error: --data_dir: /nonexistent-data: directory not found\n"


def test_a_run_ends_with_one_readable_sentence_and_rounded_json(capsys, caplog, tmp_path):
    import logging

    from zephyr.cli import _print_metrics

    caplog.set_level(logging.INFO, logger="zephyr")
    metrics = {"accuracy": 41.25, "macro_f1": 38.1034, "invalid_rate": 57.49999999999999, "n_examples": 1000,
               "n_errors": 2, "examples_per_s": 12.3456789}
    _print_metrics(tmp_path / "run" / "metrics.json", metrics)
    printed = json.loads(capsys.readouterr().out)
    assert printed["invalid_rate"] == 57.5 and printed["examples_per_s"] == 12.3457
    assert caplog.messages[-1] == (f"accuracy 41.25 % on 1,000 test rows (macro F1 38.10, 57.5 % answered no label, "
                                   f"2 failed); predictions.jsonl and metrics.json in {tmp_path / 'run'}")
    _print_metrics(tmp_path / "s" / "metrics.json", {"rouge1": 39.3412, "rouge2": 15.4, "rougeL": 31.84,
                                                     "n_examples": 819, "n_errors": 0})
    assert caplog.messages[-1].startswith("ROUGE-1 39.34, ROUGE-2 15.40, ROUGE-L 31.84 on 819 test rows; ")


def test_progress_values_follow_the_clock(monkeypatch):
    """ETA, rates and elapsed time read from a controlled clock: 3 of 10 steps in 30 s leaves 70 s; a run resumed at
    step 4 counts its rate and ETA from its own steps only."""
    import tqdm.std

    from zephyr.progress import eta

    assert eta(30.0, 3, 10) == 70.0 and eta(5.0, 0, 10) is None
    now = [100.0]
    monkeypatch.setattr(tqdm.std, "time", lambda: now[0])  # tqdm's clock
    out = io.StringIO()
    bar = Progress("training", 10, "steps", out, plain_interval_s=0)
    now[0] = 130.0
    bar.update(3, tokens=6000)
    assert out.getvalue().splitlines()[-1] == ("training 3/10 steps  30%  200 tokens/s  0.1 steps/s  elapsed 30s, "
                                               "ETA 1m10s")
    resumed = Progress("training", 10, "steps", out, plain_interval_s=0, initial=4)
    now[0] = 150.0
    resumed.update(6)
    assert out.getvalue().splitlines()[-1] == "training 6/10 steps  60%  0.1 steps/s  elapsed 20s, ETA 40s"


@pytest.mark.parametrize("level, times", [("INFO", 0), ("DEBUG", 1)])
def test_a_hub_warning_is_shown_once_and_only_at_debug(level, times):
    """huggingface_hub, imported after the suite set up logging, adds a handler of its own: its retry warnings
    came twice, and at INFO although third-party messages are off."""
    code = ("from zephyr.progress import configure_logging; configure_logging('%s'); "
            "from huggingface_hub.utils import logging; "
            "logging.get_logger('huggingface_hub.utils._http').warning('Retrying in 1s [Retry 1/5].')" % level)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("Retrying in 1s") == times, result.stderr


@requires_shared
def test_gguf_conversion_draws_no_bar_when_third_party_messages_are_off(smollm2_conversion):
    """As a script runs it: logging set up first, then the libraries imported."""
    result, cache = smollm2_conversion
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert any(cache.rglob("config.json"))  # it did convert


def test_the_training_progress_shows_the_loss_logged_at_a_step_on_that_step():
    from types import SimpleNamespace

    from zephyr.progress import train_progress_callback

    log = io.StringIO()
    callback = train_progress_callback(log)
    state = SimpleNamespace(is_world_process_zero=True, max_steps=2, global_step=0, num_input_tokens_seen=0)
    callback.on_train_begin(None, state, None)
    callback.progress.bar.mininterval = 0  # every step a line
    for step, loss in ((1, 2.5), (2, 0.75)):
        state.global_step, state.num_input_tokens_seen = step, 100 * step
        callback.on_log(None, state, None, logs={"loss": loss})
        callback.on_step_end(None, state, None)
    lines = log.getvalue().splitlines()
    assert lines[-2].startswith("training 1/2 steps  50%  loss 2.5") and "tokens/s" in lines[-2]
    assert lines[-1].startswith("training 2/2 steps 100%  loss 0.75")


def test_the_two_quickstarts_train_on_about_as_many_tokens(tokenizer, tmp_path):
    """A generated dialogue with its summary is over twice as long as a generated post with its label: the SAMSum
    quickstart takes half as many rows, so that both take about as long."""
    import functools

    from zephyr.cli import QUICKSTART_DEFAULTS, QUICKSTART_SAMSUM_ROWS
    from zephyr.embedded import write_synthetic_data
    from zephyr.prompting import PromptBuilder
    from zephyr.tasks import get_task

    root = functools.partial(write_synthetic_data, samsum_train_rows=QUICKSTART_SAMSUM_ROWS)(tmp_path)
    tokens = {}
    for name in ("newsgroups", "samsum"):
        task = get_task(name)
        examples = task.load_split("train", str(root)).examples
        builder = PromptBuilder(task, tokenizer, "original", task.labels(examples))
        tokens[name] = sum(len(builder.encode_training(e, QUICKSTART_DEFAULTS["max_length"])["input_ids"])
                           for e in examples)
    assert 0.8 < tokens["samsum"] / tokens["newsgroups"] < 1.25, tokens
