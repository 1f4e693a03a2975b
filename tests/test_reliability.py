"""Reliability: bad input, interrupted training, concurrent writers, determinism, no network."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO
from zephyr.cli import baseline, entry_point, finetune, inference
from zephyr.embedded import write_synthetic_data

train_cls = entry_point(functools.partial(finetune, "newsgroups"))
train_sum = entry_point(functools.partial(finetune, "samsum"))
infer_cls = entry_point(functools.partial(inference, "newsgroups"))
run_baseline = entry_point(baseline)


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def workspace(tmp_path, tiny_model_dir):
    data = write_synthetic_data(tmp_path / "data", seed=1, train_rows=24, test_rows=8)
    (tmp_path / "t5").mkdir()
    (tmp_path / "t5" / "config.json").write_text(json.dumps({"model_type": "t5", "d_model": 8}))
    (tmp_path / "fake.gguf").write_bytes(b"GGUF")
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.yaml").write_text("lora_rank: 4\n")
    (tmp_path / "badtype.yaml").write_text("lora_r: eight\n")
    run = tmp_path / "unfinished_run"
    (run / "adapter").mkdir(parents=True)
    (run / "adapter" / "adapter_config.json").write_text("{}")
    (run / "config.json").write_text("{not json")
    (tmp_path / "not_a_run").mkdir()
    (tmp_path / "not_a_run" / "notes.txt").write_text("keep me")
    return {"root": tmp_path, "data": data, "model": tiny_model_dir, "out": tmp_path / "runs"}


def _broken_data(w, monkeypatch, task, split, rows):
    root = w["root"] / "broken"
    write_synthetic_data(root, seed=1, train_rows=24, test_rows=8)
    if rows is None:
        (root / task / f"{split}.jsonl").write_text("")
    else:
        write_jsonl(root / task / f"{split}.jsonl", rows)
    return root


def _block(monkeypatch, module):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError


# Each case: (entry point, argv template, setup or None, expected message fragment). In argv, {data}, {model},
# {out} and {root} are filled from the workspace; a setup returns a replacement data dir or None.
CASES = {
    "empty data file": (train_cls, [], lambda w, mp: _broken_data(w, mp, "newsgroups", "train", None),
                        "newsgroups/train.jsonl: data file is empty"),
    "missing data file": (train_cls, ["--train_file", "{root}/nope.jsonl"], None, "nope.jsonl: data file not found"),
    "data dir without task files": (train_cls, ["--data_dir", "{root}/empty"], None,
                                    "--data_dir: no train file for newsgroups"),
    "data dir missing": (train_cls, ["--data_dir", "{root}/absent"], None, "absent: directory not found"),
    "missing text column": (train_cls, [], lambda w, mp: _broken_data(w, mp, "newsgroups", "train", [{"body": "x", "label": "a"}]),
                            "missing column 'text'"),
    "missing label column": (train_cls, [], lambda w, mp: _broken_data(w, mp, "newsgroups", "train", [{"text": "x"}]),
                             "missing column 'label'"),
    "missing dialogue column": (train_sum, [], lambda w, mp: _broken_data(w, mp, "samsum", "train", [{"summary": "s"}]),
                                "missing column 'dialogue'"),
    "missing summary column": (train_sum, [], lambda w, mp: _broken_data(w, mp, "samsum", "train", [{"dialogue": "d"}]),
                               "missing column 'summary'"),
    "non-string label": (train_cls, [], lambda w, mp: _broken_data(w, mp, "newsgroups", "train", [{"text": "x", "label": 7}]),
                         "column 'label' must be a string"),
    "test label unseen in training": (
        train_cls, ["--do_eval", "True"],
        lambda w, mp: _broken_data(w, mp, "newsgroups", "test", [{"text": "x", "label": "misc.forsale"}]),
        "test label 'misc.forsale' never appears in the training labels"),
    "fraction 0": (train_cls, ["--train_fraction", "0"], None, "--train_fraction: must be in (0, 1], got 0.0"),
    "fraction -1": (train_cls, ["--train_fraction", "-1"], None, "--train_fraction: must be in (0, 1], got -1.0"),
    "fraction 1.5": (train_cls, ["--train_fraction", "1.5"], None, "--train_fraction: must be in (0, 1], got 1.5"),
    "fraction NaN": (train_cls, ["--train_fraction", "nan"], None, "--train_fraction: must be in (0, 1], got nan"),
    "fraction too small for the classes": (train_cls, ["--train_fraction", "0.05"], None,
                                           "--train_fraction: 0.05 gives 1 rows, too few for one row per class"),
    "unknown task": (run_baseline, ["--task", "imdb"], None, "--task: unknown task 'imdb'"),
    "unknown target preset": (train_cls, ["--lora_targets", "every-module"], None, "--lora_targets: unknown preset"),
    "rank 0": (train_cls, ["--lora_r", "0"], None, "--lora_r: must be positive, got 0"),
    "negative epochs": (train_cls, ["--num_train_epochs", "-2"], None, "--num_train_epochs: must be positive"),
    "model path missing": (train_cls, ["--model_name_or_path", "{root}/no-model"], None,
                           "--model_name_or_path: {root}/no-model: no such directory"),
    "gguf without the gguf package": (train_cls, ["--model_name_or_path", "{root}/fake.gguf"],
                                      lambda w, mp: _block(mp, "gguf"), "reading GGUF files needs the 'gguf' package"),
    "non-causal checkpoint": (train_cls, ["--model_name_or_path", "{root}/t5"], None,
                              "a 't5' checkpoint is not a causal language model"),
    "4-bit without bitsandbytes": (train_cls, [], lambda w, mp: _block(mp, "bitsandbytes"),
                                   "--quantization 4bit: bitsandbytes is not installed"),
    "bf16 on hardware without bf16": (train_cls, ["--dtype", "bf16"], "no-bf16-gpu",
                                      "--dtype bf16: Tesla T4 has no bf16 support; use --dtype fp16"),
    "inference without an adapter": (infer_cls, ["--run_dir", "{root}/empty"], None,
                                     "--run_dir: {root}/empty: no adapter (adapter/adapter_config.json)"),
    "inference on a missing run directory": (infer_cls, ["--run_dir", "{root}/nope"], None,
                                             "--run_dir: {root}/nope: no such directory"),
    "inference on a corrupt run config": (infer_cls, ["--run_dir", "{root}/unfinished_run"], None,
                                          "unfinished_run/config.json: not valid JSON"),
    "config with an unknown key": (train_cls, ["--config", "{root}/bad.yaml"], None,
                                   "bad.yaml: unknown key 'lora_rank'"),
    "config with a wrong type": (train_cls, ["--config", "{root}/badtype.yaml"], None,
                                 "invalid int value: 'eight'"),
    "missing config file": (train_cls, ["--config", "{root}/none.yaml"], None, "--config: {root}/none.yaml: file not found"),
    "unknown flag": (train_cls, ["--learning_rat", "1e-4"], None, "unknown argument(s): --learning_rat"),
    "zero test rows": (infer_cls, ["--max_test_rows", "0"], None, "--max_test_rows: must be positive"),
    "a word for a number": (infer_cls, ["--max_test_rows", "all"], None, "error: --max_test_rows: invalid int value"),
    "run name of a foreign directory": (train_cls, ["--output_root", "{root}", "--run_name", "not_a_run"], None,
                                        "not_a_run: exists and is not a run directory of this suite"),
    "loglik on summarization": (run_baseline, ["--task", "samsum", "--eval_method", "loglik", "--quantization",
                                               "none", "--eval_output_dir", "{out}/b"], None,
                                "--eval_method: loglik needs a classification task, not samsum"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gives_one_line_and_writes_nothing(case, workspace, capsys, monkeypatch):
    main, argv, setup, expected = CASES[case]
    fill = {k: str(v) for k, v in workspace.items()}
    data = fill["data"]
    if setup == "no-bf16-gpu":
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Tesla T4")
    elif setup is not None:
        replacement = setup(workspace, monkeypatch)
        data = str(replacement) if replacement is not None else data
    base = ["--model_name_or_path", fill["model"], "--data_dir", data, "--output_root", fill["out"],
            "--max_steps", "1", "--gradient_checkpointing", "False"]
    if main is infer_cls:
        base = ["--data_dir", data, "--run_dir", fill["root"] + "/empty"]
    elif main is run_baseline:
        base = ["--model_name_or_path", fill["model"], "--data_dir", data]
    args = base + [a.format(**fill) for a in argv]
    before = snapshot(workspace["root"])
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    stderr = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2
    assert stderr.startswith("error: ") and "\n" not in stderr, stderr
    assert expected.format(**fill) in stderr, stderr
    assert snapshot(workspace["root"]) == before, "bad input must not write or change any file"


def test_bad_input_table_has_at_least_25_cases():
    assert len(CASES) >= 25


def _train_argv(model, data, out, quantization="none", **extra):
    argv = ["--model_name_or_path", str(model), "--data_dir", str(data), "--output_root", str(out),
            "--run_name", "run", "--quantization", quantization, "--per_device_train_batch_size", "4",
            "--gradient_accumulation_steps", "1", "--optim", "adamw_torch", "--gradient_checkpointing", "False",
            "--logging_steps", "1", "--learning_rate", "1e-3", "--max_length", "96"]
    for key, value in extra.items():
        argv += [f"--{key}", str(value)]
    return argv


def _losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "train_log.jsonl").read_text().splitlines()
            if "loss" in json.loads(line)]


@pytest.mark.parametrize("quantization", ["4bit"])  # the default QLoRA path; other tests resume --quantization none
def test_killed_training_resumes_to_the_same_adapter(tiny_model_dir, synthetic_data, tmp_path, quantization):
    """kill -9 after checkpoint-10, the same command again: the adapter, losses and run metrics of the run that
    was never killed. Its frozen NF4 weights are loaded again, not restored; the adapter keeps its precision."""
    extra = {"max_steps": 30, "save_steps": 5, "quantization": quantization}
    script = str(REPO / "scripts" / "zephyr_classification.py")
    train_cls(_train_argv(tiny_model_dir, synthetic_data, tmp_path / "ref", **extra))  # the uninterrupted run
    argv = [sys.executable, script, *_train_argv(tiny_model_dir, synthetic_data, tmp_path / "killed", **extra)]
    run_dir = tmp_path / "killed" / "run"
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (run_dir / "checkpoints" / "checkpoint-10" / "trainer_state.json").is_file():
        assert process.poll() is None, "training ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (run_dir / "train_metrics.json").exists()
    subprocess.run(argv, check=True, capture_output=True, timeout=600)  # the same command again
    resumed = json.loads((run_dir / "train_metrics.json").read_text())
    assert resumed["resumed_from_step"] >= 10 and resumed["train_steps"] == 30
    reference = load_file(tmp_path / "ref" / "run" / "adapter" / "adapter_model.safetensors")
    after_kill = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    assert reference.keys() == after_kill.keys()
    for name in reference:
        torch.testing.assert_close(after_kill[name], reference[name], rtol=1e-5, atol=1e-6)
    assert _losses(run_dir) == pytest.approx(_losses(tmp_path / "ref" / "run"), rel=1e-5)
    uninterrupted = json.loads((tmp_path / "ref" / "run" / "train_metrics.json").read_text())
    for key in ("train_loss", "first_logged_loss", "last_logged_loss"):  # the whole run's, not this process's
        assert resumed[key] == pytest.approx(uninterrupted[key], rel=1e-5), key
    assert not (run_dir / "checkpoints").exists()  # removed once the run is complete
    assert list((tmp_path / "killed").iterdir()) == [run_dir]  # no lock file left, even after kill -9


def test_second_writer_of_a_run_gets_a_clear_error(tiny_model_dir, synthetic_data, tmp_path, capsys):
    from zephyr.rundir import run_lock

    with run_lock(tmp_path / "run"):  # the lock is held on the run directory itself
        before = snapshot(tmp_path)
        with pytest.raises(SystemExit):
            train_cls(_train_argv(tiny_model_dir, synthetic_data, tmp_path, max_steps=1))
        assert snapshot(tmp_path) == before and not any((tmp_path / "run").iterdir())
    assert "another process is writing this run" in capsys.readouterr().err


def test_unfinished_run_with_other_settings_is_not_resumed(tiny_model_dir, synthetic_data, tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps({"arguments": {"ModelArguments": {"lora_r": 4}}}))
    with pytest.raises(SystemExit):
        train_cls(_train_argv(tiny_model_dir, synthetic_data, tmp_path, max_steps=1))
    assert "holds an unfinished run with other settings (--lora_r 4, now 8)" in capsys.readouterr().err


def test_same_seed_gives_identical_losses_and_metrics_without_network(tiny_model_dir, synthetic_data, tmp_path,
                                                                      monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[:2]}")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    results = []
    for attempt in ("a", "b"):
        finetune("newsgroups", _train_argv(tiny_model_dir, synthetic_data, tmp_path / attempt, max_steps=8,
                                           do_eval="True", max_test_rows=8, lora_dropout=0.1))
        run_dir = tmp_path / attempt / "run"
        metrics = json.loads((run_dir / "metrics.json").read_text())
        config = json.loads((run_dir / "config.json").read_text())
        results.append((_losses(run_dir), (run_dir / "predictions.jsonl").read_text(),
                        {k: v for k, v in metrics.items() if k not in ("eval_seconds", "examples_per_s", "peak_rss_gib")}))
        assert config["arguments"]["TrainArguments"]["seed"] == 42
        assert config["arguments"]["DataArguments"]["data_seed"] == 42
    assert results[0] == results[1]
    assert len(results[0][0]) == 8


def test_rerun_after_a_kill_between_training_and_evaluation_only_evaluates(tiny_model_dir, synthetic_data, tmp_path,
                                                                          caplog):
    """A sweep killed after training finished but before metrics.json: the rerun evaluates, it does not retrain."""
    argv = _train_argv(tiny_model_dir, synthetic_data, tmp_path, max_steps=2, do_eval="True", max_test_rows=4)
    run_dir = finetune("newsgroups", argv)
    trained = (run_dir / "train_metrics.json").read_text()
    adapter = (run_dir / "adapter" / "adapter_model.safetensors").read_bytes()
    first = json.loads((run_dir / "metrics.json").read_text())
    (run_dir / "metrics.json").unlink()
    (run_dir / "predictions.jsonl").unlink()
    assert finetune("newsgroups", argv) == run_dir
    assert (run_dir / "train_metrics.json").read_text() == trained
    assert (run_dir / "adapter" / "adapter_model.safetensors").read_bytes() == adapter
    again = json.loads((run_dir / "metrics.json").read_text())
    assert again["accuracy"] == first["accuracy"] and again["n_examples"] == 4
    # A training-only flag given to a finished run changes nothing, and says so.
    with caplog.at_level("WARNING", logger="zephyr.cli"):
        finetune("newsgroups", argv + ["--report_to", "tensorboard", "--logging_steps", "5"])
    assert [r.getMessage() for r in caplog.records if r.name == "zephyr.cli" and r.levelname == "WARNING"] == [
        f"{run_dir}: only evaluated, so --logging_steps 5 (it trained with 1), --report_to tensorboard (it trained "
        "with none) change nothing; --overwrite True trains again"]
    assert not (run_dir / "tensorboard").exists()
    # Other settings under the same name are still refused, not silently evaluated.
    from zephyr.errors import UsageError

    with pytest.raises(UsageError, match="a finished run is already there"):
        finetune("newsgroups", argv + ["--learning_rate", "5e-4"])
