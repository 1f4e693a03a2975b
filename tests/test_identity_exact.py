"""A finished run's identity, value by value, on run directories written inline (no training): which flags count,
which evaluation flags a fine-tune's metrics.json holds, the input files by content, and the exact sentence that
stops a sweep (the mutation run of zephyr/sweeps/identity.py: results/tests/mutation.md; a real sweep of the tiny
model: test_sweep_identity.py)."""

from __future__ import annotations

import hashlib
import json

import pytest

from zephyr.cli import BASELINE_UNUSED, FINETUNE_UNUSED
from zephyr.errors import UsageError
from zephyr.sweeps.identity import difference, is_done, planned, replaces_on_request

FINETUNE = ["python", "scripts/zephyr_classification.py", "--model_name_or_path", "m"]
BASELINE = ["python", "scripts/zephyr_baseline_inference.py", "--task", "samsum", "--model_name_or_path", "m"]


def finished(tmp_path, command, metrics=None, name="run", kind="finetune", **config):
    """A finished run of ``command`` as the suite writes it: a fine-tune's config.json holds its data, model and
    training arguments (its evaluation flags are in metrics.json), a baseline's all of its arguments."""
    run = tmp_path / name
    run.mkdir()
    arguments = planned(command)[0]
    if kind == "finetune":
        del arguments["EvalArguments"]
    (run / "config.json").write_text(json.dumps({"kind": kind, "arguments": arguments, **config}))
    (run / "metrics.json").write_text(json.dumps(metrics or {}))
    return run


def test_what_a_command_line_resolves_to():
    arguments, unused = planned(FINETUNE + ["--lora_r", "4"])
    assert (list(arguments), unused) == (["DataArguments", "ModelArguments", "TrainArguments", "EvalArguments"],
                                         FINETUNE_UNUSED)
    assert (arguments["DataArguments"]["task"], arguments["ModelArguments"]["lora_r"]) == ("newsgroups", 4)
    arguments, unused = planned(BASELINE + ["--num_shots", "3"])
    assert (list(arguments), unused) == (["DataArguments", "ModelArguments", "EvalArguments"], BASELINE_UNUSED)
    assert (arguments["DataArguments"]["task"], arguments["EvalArguments"]["num_shots"]) == ("samsum", 3)
    generic = planned(["python", "/x/zephyr_train.py", "--task", "samsum", "--model_name_or_path", "model.py"])
    assert (generic[0]["DataArguments"]["task"], generic[0]["ModelArguments"]["model_name_or_path"]) == \
        ("samsum", "model.py")  # the first .py is the script
    with pytest.raises(UsageError, match=r"^unknown argument\(s\): --lora_r 8$"):
        planned(BASELINE + ["--lora_r", "8"])  # the baseline script takes no LoRA flag
    assert planned(["bash", "x.sh"]) is None and planned(["python", "scripts/make_tables.py", "--runs", "r"]) is None


def test_the_same_settings_are_the_same_run_wherever_it_went_and_however_it_was_evaluated(tmp_path):
    run = finished(tmp_path, FINETUNE)
    again = FINETUNE + ["--output_root", "/elsewhere", "--run_name", "other", "--eval_batch_size", "8",
                        "--logging_steps", "3", "--data_dir", "/moved", "--overwrite", "True"]
    assert difference(run, again) is None and is_done(run, FINETUNE)
    assert difference(tmp_path / "no-such-run", ["bash", "x.sh"]) is None  # another program: its metrics.json only


def test_the_first_setting_that_differs_is_named_with_both_values(tmp_path):
    run = finished(tmp_path, FINETUNE + ["--lora_r", "8", "--num_train_epochs", "2"])
    assert difference(run, FINETUNE + ["--lora_r", "4", "--num_train_epochs", "3"]) == "--lora_r 8, now 4"
    assert difference(run, FINETUNE + ["--lora_r", "8", "--lr_scheduler_type", "linear", "--num_train_epochs", "2"]) \
        == "--lr_scheduler_type 'constant_with_warmup', now 'linear'"
    config = json.loads((run / "config.json").read_text())
    del config["arguments"]["TrainArguments"]["num_train_epochs"]  # a run directory from before the flag
    (run / "config.json").write_text(json.dumps(config))
    assert difference(run, FINETUNE + ["--lora_r", "8", "--num_train_epochs", "7"]) is None
    with pytest.raises(UsageError) as error:
        is_done(run, FINETUNE + ["--lora_r", "16"])
    assert str(error.value) == (f"{run}: finished with other settings (--lora_r 8, now 16); give these settings their "
                                "own OUT_ROOT, or add --overwrite True to EXTRA_ARGS to replace it")
    assert is_done(run, FINETUNE + ["--lora_r", "16", "--overwrite", "True"]) is False


def test_a_fine_tunes_evaluation_flags_are_those_its_metrics_record(tmp_path):
    run = finished(tmp_path, FINETUNE, {"eval_method": "loglik", "max_new_tokens": 64, "merge_adapter": True})
    assert difference(run, FINETUNE) == "--eval_method 'loglik', now 'generate'"
    loglik = FINETUNE + ["--eval_method", "loglik"]
    assert difference(run, loglik) is None  # --max_new_tokens not given: not compared
    assert difference(run, loglik + ["--max_new_tokens", "32"]) == "--max_new_tokens 64, now 32"
    assert difference(run, loglik + ["--merge_adapter", "False"]) == "--merge_adapter True, now False"
    assert difference(finished(tmp_path, FINETUNE, {"accuracy": 1.0}, name="older"), loglik) is None  # none recorded


def test_a_baselines_evaluation_flags_are_in_its_config(tmp_path):
    run = finished(tmp_path, BASELINE + ["--num_shots", "3"], kind="baseline")
    assert difference(run, BASELINE) == "--num_shots 3, now 0"
    assert difference(run, BASELINE + ["--num_shots", "3", "--eval_batch_size", "4"]) is None
    assert replaces_on_request(BASELINE + ["--num_shots", "3"]) is False


def test_a_run_without_its_settings_or_unreadable(tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "metrics.json").write_text("{}")
    assert difference(bare, FINETUNE) == "no config.json records its settings"
    (bare / "config.json").write_text("{")
    with pytest.raises(UsageError) as error:
        is_done(bare, FINETUNE)
    assert str(error.value) == f"bare: {bare / 'config.json'}: not valid JSON (Expecting property name enclosed in " \
                               "double quotes at line 1)"
    assert is_done(tmp_path / "not-finished", FINETUNE) is False
    (bare / "config.json").write_text(json.dumps({"kind": "finetune"}))  # no settings recorded: nothing differs
    assert difference(bare, FINETUNE) is None


def _data(root, text: str):
    folder = root / "newsgroups"
    folder.mkdir(parents=True)
    for split in ("train", "test"):
        (folder / f"{split}.jsonl").write_text(json.dumps({"id": split, "text": text, "label": "a"}) + "\n")
    return root


def _identity(path) -> dict:
    data = path.read_bytes()
    return {"path": str(path.resolve()), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_the_input_files_by_content(tmp_path):
    data = _data(tmp_path / "data", "one")
    command = FINETUNE + ["--data_dir", str(data)]
    train, test = data / "newsgroups" / "train.jsonl", data / "newsgroups" / "test.jsonl"
    before = _identity(train)
    run = finished(tmp_path, command, inputs={"train_data": {**before, "path": "/before/train.jsonl"},
                                              "model": {"name": "m"}})
    assert difference(run, command) is None  # the same bytes elsewhere
    train.write_text(train.read_text() + "\n")
    now = _identity(train)
    assert difference(run, command) == (f"--data_dir: its train data was /before/train.jsonl (sha256 "
                                         f"{before['sha256'][:12]}), now {train.resolve()} "
                                         f"(sha256 {now['sha256'][:12]})")
    assert difference(run, command + ["--train_file", str(train)]).startswith("--train_file: its train data was ")
    model = tmp_path / "model"
    model.mkdir()
    (model / "weights").write_bytes(b"x" * 1500)
    local = FINETUNE[:-1] + [str(model), "--data_dir", str(data)]
    run = finished(tmp_path, local, name="model-run", inputs={"train_data": now, "test_data": _identity(test),
                                                              "model": {"path": str(model), "bytes": 1234567}})
    assert difference(run, local) == f"--model_name_or_path: the model was {model} (1,234,567 bytes), now {model} " \
                                     "(1,500 bytes)"
    run = finished(tmp_path, command, name="hub-data", inputs={"train_data": {"name": "hub:org/data:train"}})
    assert difference(run, command) == f"--data_dir: its train data was hub:org/data:train, now {train.resolve()} " \
                                       f"(sha256 {now['sha256'][:12]})"
    run = finished(tmp_path, command, name="no-inputs", inputs={})
    assert difference(run, command) is None
    run = finished(tmp_path, command, name="hub-model", inputs={"model": {"name": "org/other"}})
    assert difference(run, command) == "--model_name_or_path: the model was org/other, now m"
