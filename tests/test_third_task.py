"""A third task is one new file: defined in the test folder, it trains, evaluates and passes a sweep's pre-flight
without a change to the library."""

from __future__ import annotations

import io
import json

import pytest

from zephyr.embedded import write_synthetic_data


@pytest.fixture
def third_task():
    """The task registered by importing its module, and unregistered afterwards so that other tests see two."""
    from tasks_extra.sentiment import ReviewSentiment
    from zephyr.tasks import TASKS

    TASKS[ReviewSentiment.name] = ReviewSentiment  # imported by an earlier run of this test: registered again
    yield ReviewSentiment
    TASKS.pop(ReviewSentiment.name)




def test_a_task_defined_outside_the_library_trains_evaluates_and_passes_a_sweeps_preflight(tiny_model_dir, tmp_path,
                                                                                         third_task):
    from zephyr.cli import finetune, finetune_script, inference
    from zephyr.tasks import TASKS, get_task

    assert TASKS["review_sentiment"] is third_task and get_task("review_sentiment").metric == "accuracy"
    data = write_synthetic_data(tmp_path / "data", train_rows=24, test_rows=6)  # each task's own generated rows
    assert (data / "review_sentiment" / "train.jsonl").is_file() and (data / "samsum" / "train.jsonl").is_file()
    common = ["--model_name_or_path", str(tiny_model_dir), "--data_dir", str(data), "--quantization", "none",
              "--max_length", "64", "--max_test_rows", "4"]
    run_dir = finetune("review_sentiment", [*common, "--output_root", str(tmp_path / "runs"), "--max_steps", "2",
                                            "--do_eval", "True", "--per_device_train_batch_size", "4"])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["n_examples"] == 4 and "accuracy" in metrics
    config = json.loads((run_dir / "config.json").read_text())
    assert config["arguments"]["DataArguments"]["task"] == "review_sentiment"
    assert config["data"]["labels"] == ["negative", "positive"]
    prompt = json.loads((run_dir / "predictions.jsonl").read_text().splitlines()[0])
    assert prompt["reference"] in ("negative", "positive")
    again = inference(None, ["--run_dir", str(run_dir), "--data_dir", str(data), "--max_test_rows", "4",
                             "--eval_output_dir", str(tmp_path / "again")])
    assert again["n_examples"] == 4 and again["accuracy"] == metrics["accuracy"]
    # A sweep of the task: its runs use the generic script, which takes the task by name; the dry run checks each
    # run's command and prints it, making nothing.
    from conftest import REPO
    from zephyr.sweeps.grid import expand
    from zephyr.sweeps.runner import run_sweep

    assert finetune_script("review_sentiment") == "zephyr_train.py"
    runs = expand("ablation", {"TASK": "review_sentiment", "FRACTIONS": "0.5 1.0", "VARIANTS": "base neftune",
                               "MODEL": str(tiny_model_dir), "DATA_DIR": str(data), "OUT_ROOT": str(tmp_path / "sweep"),
                               "EXTRA_ARGS": "--quantization none --max_length 64"}, REPO / "scripts")
    assert len(runs) == 4 and all(run.command[1:4] == [str(REPO / "scripts" / "zephyr_train.py"), "--task",
                                                       "review_sentiment"] for run in runs)
    out = io.StringIO()
    assert run_sweep(runs, [], tmp_path / "sweep" / "sweep.csv", dry_run=True, out=out) == 0
    assert len(out.getvalue().splitlines()) == 4 and "--task review_sentiment" in out.getvalue()
    assert not (tmp_path / "sweep").exists()
