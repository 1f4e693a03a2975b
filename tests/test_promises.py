"""Promises the README makes about training and its files, checked by their values: which tokens the loss trains
on, packed rows end to end, files that are whole after a kill, and plots that hold the series they claim."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO, run_args, training_rows

LAYOUTS = {"flat": dict(batch_layout="flat"), "padded": dict(batch_layout="padded"), "packed": dict(packing=True)}


def _loss_tokens(tiny_model_dir, tokenizer, tmp_path, layout: str, loss: str) -> int:
    """Tokens whose next-token loss one step of the suite's trainer counts, over the 8 rows of ``training_rows``."""
    from peft import get_peft_model

    from zephyr.config import DataArguments, ModelArguments, TrainArguments
    from zephyr.modeling import build_lora_config, load_model
    from zephyr.training import build_trainer

    model_args = ModelArguments(model_name_or_path=str(tiny_model_dir), quantization="none", lora_targets="attention")
    model = get_peft_model(load_model(model_args), build_lora_config(model_args))
    train_args = TrainArguments(output_root=str(tmp_path), max_steps=1, optim="adamw_torch", loss=loss,
                                gradient_checkpointing="false", compile_layers="false", **LAYOUTS[layout])
    trainer, restore, _ = build_trainer(model, tokenizer, training_rows(tokenizer), DataArguments(max_length=96),
                                        model_args, train_args, tmp_path / "run")
    rows = [trainer.train_dataset[i] for i in range(len(trainer.train_dataset))]
    labels = trainer.data_collator(rows)["labels"]
    restore()
    return int((labels[:, 1:] != -100).sum())  # the label of a row's first token is never predicted


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_the_loss_setting_decides_which_tokens_are_trained_on(tiny_model_dir, tokenizer, tmp_path, layout):
    """--loss completion: the answer and EOS of each example; --loss full: every token after each example's first,
    in every batch layout (packed rows as well: no example's first token is predicted from the one before it)."""
    dataset = training_rows(tokenizer)
    answers = sum(sum(mask) for mask in dataset["completion_mask"])
    every_token = sum(len(ids) - 1 for ids in dataset["input_ids"])
    assert 0 < answers < every_token / 3  # prompts are long, answers a few tokens: the two cannot be confused
    assert _loss_tokens(tiny_model_dir, tokenizer, tmp_path / "c", layout, "completion") == answers
    assert _loss_tokens(tiny_model_dir, tokenizer, tmp_path / "f", layout, "full") == every_token


def test_packed_rows_train_every_example_once_in_fewer_steps(tiny_model_dir, synthetic_data, tmp_path):
    """--packing True through the real trainer for a whole epoch: every training token is seen exactly once, in
    fewer optimizer steps than one example a row takes, and no fewer than full rows of max_length would take."""
    from zephyr.modeling import load_tokenizer
    from zephyr.prompting import PromptBuilder
    from zephyr.tasks import get_task
    from zephyr.training import build_training_dataset, train

    data, model, train_args = run_args(tiny_model_dir, synthetic_data, tmp_path, max_steps=-1, packing=True,
                                       quantization="none")
    run = train(data, model, train_args)
    metrics = json.loads((run.run_dir / "train_metrics.json").read_text())
    task = get_task("newsgroups")
    examples = task.load_split("train", str(synthetic_data)).examples
    builder = PromptBuilder(task, load_tokenizer(str(tiny_model_dir)), "original", task.labels(examples))
    dataset, _ = build_training_dataset(builder, examples, data.max_length)
    tokens = sum(len(ids) for ids in dataset["input_ids"])
    batch = train_args.per_device_train_batch_size
    assert metrics["train_tokens"] == tokens
    assert math.ceil(tokens / data.max_length / batch) <= metrics["train_steps"] < math.ceil(len(dataset) / batch)
    assert json.loads((run.run_dir / "config.json").read_text())["arguments"]["TrainArguments"]["packing"] is True


# -- files that are whole after a kill ------------------------------------------------------------------------
_WRITER = """
import os, sys, time
from pathlib import Path
from zephyr.io import atomic_write_json, atomic_write_jsonl

path, how, marker = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
rows = [{"version": 2, "row": i, "text": "x" * 100} for i in range(5000)]


def stall(*args):  # the disk is slow: the kill lands while the new contents are half on their way
    marker.touch()
    time.sleep(60)


if how == "plain":
    with open(path, "w") as handle:
        handle.write("".join(__import__("json").dumps(r) + "\\n" for r in rows[:2500]))
        handle.flush()
        stall()
else:
    os.fsync = stall  # the atomic writers fsync the temporary file before they rename it over the old one
    (atomic_write_jsonl if how == "jsonl" else atomic_write_json)(path, rows)
"""


def _kill_mid_write(tmp_path: Path, how: str) -> Path:
    """The old version of a file, then a writer of a new one killed with SIGKILL halfway; returns the file."""
    path, marker = tmp_path / f"{how}.out", tmp_path / f"{how}.writing"
    old = [{"version": 1, "row": i} for i in range(3)]
    path.write_text(json.dumps(old) if how == "json" else "".join(json.dumps(r) + "\n" for r in old))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen([sys.executable, "-c", _WRITER, str(path), how, str(marker)], env=env)
    deadline = time.time() + 60
    while not marker.exists():
        assert process.poll() is None and time.time() < deadline, "the writer ended before it could be killed"
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    return path


def _whole_versions(path: Path, how: str) -> set[int]:
    """The versions the file holds; raises if it is torn (a line or document cut short, or two versions mixed)."""
    text = path.read_text()
    rows = json.loads(text) if how == "json" else [json.loads(line) for line in text.splitlines()]
    versions = {row["version"] for row in rows}
    assert len(rows) == {1: 3, 2: 5000}[versions.pop()] and not versions
    return {rows[0]["version"]}


@pytest.mark.parametrize("how", ["json", "jsonl"])
def test_a_kill_while_a_result_file_is_written_leaves_the_old_file_whole(tmp_path, how):
    """config.json and metrics.json (atomic_write_json), predictions.jsonl (atomic_write_jsonl): kill -9 in the
    middle of writing leaves the previous version, whole."""
    assert _whole_versions(_kill_mid_write(tmp_path, how), how) == {1}


def test_the_kill_harness_does_catch_a_torn_file(tmp_path):
    """The same kill against a plain open-and-write: the file is cut short, which the check above would report."""
    with pytest.raises(AssertionError, match="2500 == 5000"):
        _whole_versions(_kill_mid_write(tmp_path, "plain"), "jsonl")


def test_every_result_file_of_a_run_is_written_by_rename(tiny_model_dir, synthetic_data, tmp_path, monkeypatch):
    """The run's result files all arrive through os.replace (written beside, then renamed): none is written in
    place, where a kill would tear it."""
    from zephyr.cli import finetune

    renamed = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst, *a, **k: (renamed.append(Path(dst).name),
                                                                   real_replace(src, dst, *a, **k))[1])
    finetune("newsgroups", ["--model_name_or_path", str(tiny_model_dir), "--data_dir", str(synthetic_data),
                            "--output_root", str(tmp_path), "--run_name", "run", "--quantization", "none",
                            "--max_steps", "2", "--max_length", "96", "--do_eval", "True", "--max_test_rows", "2"])
    for name in ("config.json", "train_metrics.json", "metrics.json", "predictions.jsonl"):
        assert name in renamed, name


def _log_rows(steps: int) -> list[dict]:
    return [{"step": s, "loss": 3.0 / s, "tokens_seen": 100 * s, "learning_rate": 1e-3 * (1 - s / 10)}
            for s in range(1, steps + 1)]


def test_a_training_log_cut_short_by_a_kill_is_read_and_resumed_without_its_last_line(tmp_path):
    """train_log.jsonl grows by appends: a kill in the middle of one leaves half a line, which resuming the run and
    drawing its curves skip; a broken line before the end is still an error that names the file and line."""
    from zephyr.errors import UsageError
    from zephyr.io import read_log_rows
    from zephyr.rundir import _trim_log

    log = tmp_path / "train_log.jsonl"
    complete = "".join(json.dumps(row) + "\n" for row in _log_rows(4))
    log.write_text(complete + json.dumps(_log_rows(5)[-1])[:20])
    assert read_log_rows(log) == _log_rows(4)
    _trim_log(log, 3)  # resuming from checkpoint-3
    assert log.read_text() == "".join(json.dumps(row) + "\n" for row in _log_rows(3))
    log.write_text(complete.replace('"step": 2', '"step": 2,,', 1))
    with pytest.raises(UsageError, match="train_log.jsonl: line 2 is not valid JSON"):
        read_log_rows(log)


# -- plots hold the series they claim ---------------------------------------------------------------------------
@pytest.fixture
def drawn(monkeypatch):
    """The figures the suite saves, kept open for reading back."""
    from matplotlib.figure import Figure

    figures, save = [], Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: (figures.append(fig), save(fig, *a, **k))[1])
    return figures


def test_loss_png_plots_the_logged_loss_and_learning_rate_against_tokens(tmp_path, drawn):
    from zephyr.plots import plot_training_log

    log = tmp_path / "run" / "train_log.jsonl"
    log.parent.mkdir()
    rows = _log_rows(6)
    log.write_text("".join(json.dumps(row) + "\n" for row in rows) + json.dumps({"step": 6, "train_runtime": 9}) + "\n")
    assert plot_training_log(log, tmp_path / "loss.png")
    [figure] = drawn
    loss_axes, lr_axes = [ax for ax in figure.axes if ax.lines]
    [loss], [lr] = loss_axes.lines, lr_axes.lines
    assert list(loss.get_xdata()) == [r["tokens_seen"] for r in rows] and loss.get_label() == "training loss"
    assert list(loss.get_ydata()) == [r["loss"] for r in rows]
    assert list(lr.get_ydata()) == [r["learning_rate"] for r in rows]
    assert loss_axes.get_xlabel() == "tokens seen" and loss_axes.get_title() == "run"


def test_the_accuracy_plot_draws_each_variant_and_the_studys_curve_beside_it(tmp_path, drawn):
    from zephyr import reference
    from zephyr.plots import plot_accuracy
    from zephyr.results import table1

    def row(variant, fraction, rows, accuracy):
        return {"task": "newsgroups", "kind": "finetune", "variant": variant, "model": "m", "train_fraction": fraction,
                "train_rows": rows, "accuracy": accuracy, "rouge1": None, "rouge2": None}

    table = table1([row("base", 0.1, 1101, 18.5), row("base", 0.25, 2754, 31.25), row("NEFTune", 0.1, 1101, 20.0)])
    plot_accuracy(table, tmp_path / "accuracy.png")
    [figure] = drawn
    lines = {line.get_label(): line for line in figure.axes[0].lines}
    assert set(lines) == {"base", "NEFTune", f"base (study, {reference.STUDY_MODEL})",
                          f"NEFTune (study, {reference.STUDY_MODEL})"}
    assert list(lines["base"].get_xdata()) == [1101, 2754] and list(lines["base"].get_ydata()) == [18.5, 31.25]
    assert list(lines["NEFTune"].get_ydata()) == [20.0]
    study = lines[f"base (study, {reference.STUDY_MODEL})"]
    expected = sorted((r["study train_rows"], r["study base"]) for r in table if r["study base"] is not None)
    assert list(zip(study.get_xdata(), study.get_ydata())) == expected and len(expected) >= 5


def test_the_rouge_plot_draws_one_bar_per_setting_and_score(tmp_path, drawn):
    from zephyr.plots import plot_rouge

    table = [{"model": "m", "setting": "zero-shot", "rouge1": 23.5, "rouge2": 6.25},
             {"model": "m", "setting": "NEFTune", "rouge1": 42.0, "rouge2": 17.5},
             {"model": "m", "setting": "base", "rouge1": None, "rouge2": None}]
    plot_rouge(table, tmp_path / "rouge.png")
    [figure] = drawn
    ax = figure.axes[0]
    heights = [bar.get_height() for bar in ax.patches]
    assert heights == [23.5, 42.0, 6.25, 17.5]  # ROUGE-1 bars, then ROUGE-2 bars; the setting without runs has none
    assert [tick.get_text() for tick in ax.get_xticklabels()] == ["zero-shot", "NEFTune"]
