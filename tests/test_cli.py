"""The documented commands, run as a user would (subprocesses, hub forced offline)."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, SMOLLM2_GGUF, requires_shared, shared_dir

OFFLINE = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def run(script, *args, check=True):
    result = subprocess.run([sys.executable, str(REPO / "scripts" / script), *map(str, args)], cwd=REPO,
                            env=OFFLINE, capture_output=True, text=True, timeout=600)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_train_then_inference_writes_metrics_and_predictions(tiny_model_dir, synthetic_data, tmp_path):
    run("zephyr_classification.py", "--model_name_or_path", tiny_model_dir, "--data_dir", synthetic_data,
        "--output_root", tmp_path, "--run_name", "smoke", "--max_steps", 3, "--max_length", 96,
        "--gradient_checkpointing", "False", "--logging_steps", 1)
    run_dir = tmp_path / "smoke"
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    config = json.loads((run_dir / "config.json").read_text())
    assert config["arguments"]["ModelArguments"]["lora_r"] == 8  # the classification default
    assert config["arguments"]["TrainArguments"]["num_train_epochs"] == 5.0
    assert config["data"]["train_rows_used"] == 48 and config["device"]["type"] == "cpu"
    run("zephyr_classification_inference.py", "--run_dir", run_dir, "--data_dir", synthetic_data,
        "--max_test_rows", 6, "--eval_batch_size", 4)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    assert metrics["n_examples"] == len(rows) == 6
    # the published accuracy is the share of rows whose prediction is their reference label, read back
    assert metrics["accuracy"] == pytest.approx(100 * sum(r["prediction"] == r["reference"] for r in rows) / 6)
    assert {"id", "reference", "prediction", "error"} <= set(rows[0])


def test_embedded_default_writes_metrics(tmp_path):
    run("quickstart.py", "--task", "samsum", "--output_root", tmp_path, "--max_steps", 4, "--max_test_rows", 8)
    [metrics_file] = tmp_path.glob("samsum_*/metrics.json")
    metrics = json.loads(metrics_file.read_text())
    assert metrics["n_examples"] == 8 and "rouge1" in metrics and "rougeLsum" in metrics


def test_bad_input_is_one_line_naming_the_flag(tmp_path):
    """The entry point's exit: status 2 and one line, nothing written (each message in-process: test_reliability)."""
    result = run("zephyr_summarization.py", "--lora_r", 0, "--output_root", tmp_path, check=False)
    assert result.returncode == 2 and result.stderr.strip() == "error: --lora_r: must be positive, got 0"
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_ctrl_c_is_one_line_saying_how_to_go_on(capsys):
    """An interrupt (Ctrl-C) ends a script with one line, not a traceback, and the shell's status 130."""
    from zephyr.cli import entry_point

    @entry_point
    def interrupted(argv):
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as exit_info:
        interrupted([])
    assert exit_info.value.code == 130
    assert capsys.readouterr().err == ("interrupted: the same command again resumes a training run from its last "
                                       "saved checkpoint, and a sweep from its unfinished runs\n")


@requires_shared
def test_smollm2_gguf_summarizes_two_samsum_dialogues(smollm2_conversion, tmp_path):
    gguf, (_, cache) = shared_dir() / SMOLLM2_GGUF, smollm2_conversion  # converted once for the session
    out = tmp_path / "baseline"
    run("zephyr_baseline_inference.py", "--task", "samsum", "--model_name_or_path", gguf,
        "--data_dir", shared_dir() / "data", "--max_test_rows", 2, "--quantization", "none",
        "--max_new_tokens", 48, "--eval_output_dir", out, "--model_cache_dir", cache)
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(rows) == 2 and all(r["prediction"] and r["error"] is None for r in rows), rows
    assert metrics["n_examples"] == 2 and metrics["rouge1"] > 5  # the summaries are about their dialogues
    from rouge_score import rouge_scorer  # the metrics are those of the predictions written beside them

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2"], use_stemmer=True)
    scores = [scorer.score(r["reference"], r["prediction"]) for r in rows]
    for key in ("rouge1", "rouge2"):
        assert metrics[key] == pytest.approx(50 * sum(s[key].fmeasure for s in scores), abs=0.01), key
    assert metrics["n_cut_at_turn_end"] == 0 and not any("continuation" in r for r in rows)  # a chat template stops
    arguments = json.loads((out / "config.json").read_text())["arguments"]
    assert arguments["DataArguments"]["prompt_format"] == "chat"  # what baselines prompt with


def test_one_run_on_two_processes_trains_once_and_evaluates_once(tiny_model_dir, synthetic_data, tmp_path):
    """`torchrun --nproc_per_node 2` (gloo on the CPU, as NCCL on two GPUs): a global batch of both processes'
    rows, one run directory written by the main process only, one evaluation."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               str(REPO / "scripts" / "zephyr_classification.py"), "--model_name_or_path", tiny_model_dir,
               "--data_dir", synthetic_data, "--output_root", tmp_path, "--run_name", "ddp", "--max_steps", 3,
               "--packing", "False", "--per_device_train_batch_size", 4, "--gradient_accumulation_steps", 1,
               "--max_length", 96, "--logging_steps", 1, "--do_eval", "True", "--max_test_rows", 6,
               "--eval_method", "loglik"]
    result = subprocess.run(list(map(str, command)), cwd=REPO, env=OFFLINE, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "ddp"
    log = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    # 48 rows, 4 per process per step: 2 processes take 8 rows a step, so 3 steps are half an epoch.
    assert [row["step"] for row in log if "loss" in row] == [1, 2, 3] and log[-1]["epoch"] == 0.5
    assert json.loads((run_dir / "train_metrics.json").read_text())["processes"] == 2
    assert json.loads((run_dir / "config.json").read_text())["processes"] == 2
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["n_examples"] == 6 and metrics["invalid_rate"] == 0.0  # log-likelihood always picks a label
    assert result.stdout.count('"metrics"') == 1  # evaluated by the main process only
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp"]  # no lock file left behind
