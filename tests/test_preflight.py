"""Pre-flight: every input of every entry point is checked before a model is loaded or a file written; resumed
runs report the loss of an uninterrupted one; outputs are tidy (0644, no lock files)."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from zephyr.cli import baseline, entry_point, finetune, inference, quickstart
from zephyr.commands import bench as bench_main
from zephyr.commands import export as export_main
from zephyr.embedded import write_synthetic_data

train_cls = entry_point(functools.partial(finetune, "newsgroups"))
train_sum = entry_point(functools.partial(finetune, "samsum"))
infer_sum = entry_point(functools.partial(inference, "samsum"))
run_baseline = entry_point(baseline)
run_quickstart = entry_point(quickstart)


def _script_main(name: str):
    """The ``main`` of scripts/<name>.py, called in-process."""
    import importlib

    sys.path.insert(0, str(REPO / "scripts"))
    try:
        return importlib.import_module(name).main
    finally:
        sys.path.pop(0)


def quality_main(argv):
    return _script_main("quality")(argv)


def tables_main(argv):
    return _script_main("make_tables")(argv)


def tree(root: Path) -> dict:
    """Every file (by content) and folder below ``root``: an empty folder left behind is a change too."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


def write_gguf(path: Path, cut_to: float | None = None) -> Path:
    """A small GGUF file (a llama header and one tensor), optionally cut to a share of its size."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_tensor("blk.0.attn_q.weight", np.ones((64, 64), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    if cut_to is not None:
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * cut_to)])
    return path


@pytest.fixture
def space(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("ZEPHYR_CACHE", str(tmp_path / "cache"))  # inside the snapshot: a cache entry is a change
    monkeypatch.delenv("ZEPHYR_DATA_DIR", raising=False)
    monkeypatch.delenv("LOGLEVEL", raising=False)
    write_synthetic_data(tmp_path / "data", seed=1, train_rows=24, test_rows=8)
    (tmp_path / "file.txt").write_text("a file, not a folder")
    (tmp_path / "latin1.yaml").write_bytes("lora_r: 8 # r\xe9sum\xe9\n".encode("latin-1"))
    bad = tmp_path / "latin1data" / "newsgroups"
    bad.mkdir(parents=True)
    (bad / "train.jsonl").write_bytes(b'{"text": "caf\xe9", "label": "a"}\n')
    big = tmp_path / "bigcsv" / "newsgroups"
    big.mkdir(parents=True)
    (big / "train.csv").write_text('text,label\n"' + "x" * 140_000 + '",a\n')
    write_gguf(tmp_path / "truncated.gguf", cut_to=0.5)
    (tmp_path / "garbage.gguf").write_bytes(b"GGUF" + bytes(range(60)))
    (tmp_path / "noruns").mkdir()
    (tmp_path / "noruns" / "notes.txt").write_text("no run here")
    copied = tmp_path / "copied_run"  # a run directory copied from a machine whose base model is not here
    (copied / "adapter").mkdir(parents=True)
    (copied / "adapter" / "adapter_config.json").write_text("{}")
    (copied / "config.json").write_text(json.dumps({
        "arguments": {"DataArguments": {"task": "samsum"}, "ModelArguments": {"quantization": "none"}},
        "model_path": "/elsewhere/models/tiny", "base_model": "/elsewhere/models/tiny.gguf"}))
    windowed = tmp_path / "windowed"  # a model whose attention looks back 64 tokens only
    shutil.copytree(tiny_model_dir, windowed)
    config = json.loads((windowed / "config.json").read_text())
    (windowed / "config.json").write_text(json.dumps({**config, "sliding_window": 64}))
    _damaged_models(tmp_path, tiny_model_dir)
    _damaged_runs(tmp_path, tiny_model_dir)
    return {"root": tmp_path, "data": tmp_path / "data", "model": tiny_model_dir, "out": tmp_path / "runs"}


def _model_copy(root: Path, tiny_model_dir: Path, name: str, weights: bytes | None) -> Path:
    """The tiny model's folder with its model.safetensors replaced by ``weights`` (None: removed)."""
    folder = root / name
    shutil.copytree(tiny_model_dir, folder)
    (folder / "model.safetensors").unlink()
    if weights is not None:
        (folder / "model.safetensors").write_bytes(weights)
    return folder


def _damaged_models(root: Path, tiny_model_dir: Path) -> None:
    """Model folders as users end up with them: cloned without git-lfs, a saved login page, a copy cut short, no
    weights, a sharded checkpoint missing a shard, a file that is not safetensors."""
    weights = (tiny_model_dir / "model.safetensors").read_bytes()
    _model_copy(root, tiny_model_dir, "lfs_clone", b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\n")
    _model_copy(root, tiny_model_dir, "html_saved", b"<!DOCTYPE html>\n<html><body>Sign in</body></html>\n")
    _model_copy(root, tiny_model_dir, "cut_short", weights[: len(weights) // 2])
    _model_copy(root, tiny_model_dir, "no_weights", None)
    _model_copy(root, tiny_model_dir, "not_safetensors", (64).to_bytes(8, "little") + b"x" * 80)
    sharded = _model_copy(root, tiny_model_dir, "sharded", None)
    (sharded / "model-00001-of-00002.safetensors").write_bytes(weights)
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "model.embed_tokens.weight": "model-00001-of-00002.safetensors",
        "lm_head.weight": "model-00002-of-00002.safetensors"}}))


def _damaged_runs(root: Path, tiny_model_dir: Path) -> None:
    """Run folders whose adapter is damaged or belongs to another base model (the tiny model is 64 wide, 2 layers)."""
    import torch
    from safetensors.torch import save_file

    prefix = "base_model.model.model.layers"
    adapters = {"wrong_width_run": {f"{prefix}.0.self_attn.q_proj.lora_A.weight": torch.zeros(8, 576),
                                    f"{prefix}.0.self_attn.q_proj.lora_B.weight": torch.zeros(64, 8)},
                "deeper_run": {f"{prefix}.5.self_attn.q_proj.lora_A.weight": torch.zeros(8, 64)},
                "no_adapter_weights_run": None, "lfs_adapter_run": b"version https://git-lfs.github.com/spec/v1\n"}
    for name, tensors in adapters.items():
        adapter = root / name / "adapter"
        adapter.mkdir(parents=True)
        (adapter / "adapter_config.json").write_text("{}")
        if isinstance(tensors, dict):
            save_file(tensors, adapter / "adapter_model.safetensors")
        elif tensors is not None:
            (adapter / "adapter_model.safetensors").write_bytes(tensors)
        (root / name / "config.json").write_text(json.dumps({
            "arguments": {"DataArguments": {"task": "samsum"}, "ModelArguments": {"quantization": "none"}},
            "model_path": str(tiny_model_dir)}))


def _base_train(s):
    return ["--model_name_or_path", s["model"], "--data_dir", s["data"], "--output_root", s["out"], "--max_steps", "1",
            "--quantization", "none"]


def _base_baseline(s):
    return ["--model_name_or_path", s["model"], "--data_dir", s["data"], "--quantization", "none",
            "--eval_output_dir", s["out"] / "b"]


# Each case: (entry point, base argv, extra argv, environment, expected message). {root} is the workspace.
CASES = {
    "flat batches over a sliding window": (train_cls, _base_train, ["--model_name_or_path", "{root}/windowed",
                                                                     "--max_length", "96"], {},
                                           "--batch_layout flat: this mistral model attends over a sliding window "
                                           "of 64 tokens, under --max_length 96; pass --batch_layout padded"),
    "flat split shorter than one example": (train_cls, _base_train, ["--flat_cuda_graphs", "True", "--max_length", "512",
                                                                     "--flat_split_tokens", "700"], {},
                                            "--flat_split_tokens: 700 tokens cannot hold one example of --max_length "
                                            "512 in its 256-token length bucket, with a padding token for each "
                                            "example of --per_device_train_batch_size 8 (at least 768)"),
    "flat split without room for the padding segments": (
        train_cls, _base_train, ["--flat_cuda_graphs", "True", "--max_length", "762", "--flat_split_tokens", "768"],
        {}, "--flat_split_tokens: 768 tokens cannot hold one example of --max_length 762 in its 256-token length "
            "bucket, with a padding token for each example of --per_device_train_batch_size 8 (at least 1024)"),
    "learning rate NaN": (train_cls, _base_train, ["--learning_rate", "nan"], {},
                          "--learning_rate: must be positive and finite, got nan"),
    "learning rate infinite": (train_cls, _base_train, ["--learning_rate", "inf"], {},
                               "--learning_rate: must be positive and finite, got inf"),
    "epochs infinite": (train_cls, _base_train, ["--num_train_epochs", "inf"], {},
                        "--num_train_epochs: must be positive and finite, got inf"),
    "seed below the RNG's range": (train_cls, _base_train, ["--seed", "-1"], {}, "--seed: must be in [0, 2**32), got -1"),
    "seed above the RNG's range": (train_cls, _base_train, ["--seed", str(2**32)], {}, "--seed: must be in [0, 2**32)"),
    "data seed out of range": (train_cls, _base_train, ["--data_seed", "-3"], {}, "--data_seed: must be in [0, 2**32)"),
    "max_steps 0": (train_cls, _base_train, ["--max_steps", "0"], {}, "--max_steps: must be -1 or positive, got 0"),
    "max grad norm NaN": (train_cls, _base_train, ["--max_grad_norm", "nan"], {}, "--max_grad_norm: must be >= 0"),
    "NEFTune alpha infinite": (train_cls, _base_train, ["--neftune_alpha", "inf"], {},
                               "--neftune_alpha: must be positive and finite, got inf"),
    "unknown optimizer": (train_cls, _base_train, ["--optim", "adam_fast"], {}, "--optim: unknown optimizer 'adam_fast'"),
    "unknown scheduler": (train_cls, _base_train, ["--lr_scheduler_type", "cosinus"], {},
                          "--lr_scheduler_type: unknown value 'cosinus'"),
    "unknown attention": (train_cls, _base_train, ["--attn_implementation", "flash"], {},
                          "--attn_implementation: unknown value 'flash'"),
    "max_length beyond the context": (train_cls, _base_train, ["--max_length", "4096"], {},
                                      "--max_length: 4096 exceeds the model's context of 1024 tokens"),
    "LoRA targets not in the model": (train_cls, _base_train, ["--lora_targets", "q_proj,qkv_proj,w1"], {},
                                      "--lora_targets: qkv_proj, w1: no such layer in this mistral model"),
    "more test rows than the split has": (train_cls, _base_train, ["--do_eval", "True", "--max_test_rows", "500"], {},
                                          "--max_test_rows: 500 asked, but {root}/data/newsgroups/test.jsonl has 8"),
    "run name outside the output root": (train_cls, _base_train, ["--run_name", "../escaped"], {},
                                         "--run_name: '../escaped' must name a directory inside --output_root"),
    "absolute run name": (train_cls, _base_train, ["--run_name", "{root}/elsewhere"], {},
                          "must name a directory inside --output_root"),
    "output root is a file": (train_cls, _base_train, ["--output_root", "{root}/file.txt/runs"], {},
                              "--output_root: {root}/file.txt/runs: {root}/file.txt is a file, not a directory"),
    "data file not UTF-8": (train_cls, _base_train, ["--data_dir", "{root}/latin1data"], {},
                            "latin1data/newsgroups/train.jsonl: not UTF-8 text (byte 0xe9 at offset"),
    "CSV the csv module cannot read": (train_cls, _base_train, ["--data_dir", "{root}/bigcsv"], {},
                                       "bigcsv/newsgroups/train.csv: not valid CSV (field larger than field limit"),
    "flash attention not installed": (train_cls, _base_train, ["--attn_implementation", "flash_attention_2"], {},
                                      "--attn_implementation: flash_attention_2 needs the flash-attn package"),
    "config file not UTF-8": (train_cls, _base_train, ["--config", "{root}/latin1.yaml"], {},
                              "latin1.yaml: not UTF-8 text (byte 0xe9"),
    "truncated GGUF": (train_cls, _base_train, ["--model_name_or_path", "{root}/truncated.gguf"], {},
                       "--model_name_or_path: {root}/truncated.gguf: not a readable GGUF model (truncated or corrupt?"),
    "corrupt GGUF": (train_sum, _base_train, ["--model_name_or_path", "{root}/garbage.gguf"], {},
                     "garbage.gguf: not a readable GGUF model"),
    "empty ZEPHYR_CACHE": (train_cls, _base_train, ["--model_name_or_path", "{root}/truncated.gguf"],
                           {"ZEPHYR_CACHE": ""}, "ZEPHYR_CACHE: set but empty"),
    "unknown LOGLEVEL": (train_cls, _base_train, [], {"LOGLEVEL": "LOUD"}, "LOGLEVEL: unknown log level 'LOUD'"),
    "missing ZEPHYR_DATA_DIR": (train_cls, lambda s: _base_train(s)[:2] + _base_train(s)[4:], [],
                                {"ZEPHYR_DATA_DIR": "{root}/nowhere"}, "ZEPHYR_DATA_DIR: {root}/nowhere: directory not found"),
    "more shots than labels": (run_baseline, _base_baseline, ["--task", "newsgroups", "--num_shots", "5"], {},
                               "--num_shots: 5 asked, but {root}/data/newsgroups/train.jsonl gives only 4"),
    "shots beyond half the prompt budget": (run_baseline, _base_baseline,
                                            ["--task", "samsum", "--num_shots", "3", "--max_prompt_tokens", "100"], {},
                                            "--num_shots: 3 examples take"),
    "new tokens fill the context": (run_baseline, _base_baseline, ["--task", "samsum", "--max_new_tokens", "1024"], {},
                                    "--max_new_tokens: 1024 leaves no room for a prompt in the model's context"),
    "prompt budget beyond the context": (run_baseline, _base_baseline, ["--task", "samsum", "--max_prompt_tokens", "2000"],
                                         {}, "--max_prompt_tokens: 2000 plus 100 new tokens exceeds the model's context"),
    "zero prompt budget": (run_baseline, _base_baseline, ["--task", "samsum", "--max_prompt_tokens", "0"], {},
                           "--max_prompt_tokens: must be positive, got 0"),
    "baseline output under a file": (run_baseline, _base_baseline, ["--task", "samsum", "--eval_output_dir",
                                                                    "{root}/file.txt/b"], {},
                                     "--eval_output_dir: {root}/file.txt/b: {root}/file.txt is a file"),
    "copied run without its base model": (infer_sum, lambda s: ["--data_dir", s["data"]],
                                          ["--run_dir", "{root}/copied_run"], {},
                                          "--run_dir: {root}/copied_run: its base model /elsewhere/models/tiny is not "
                                          "on this machine; pass --base_model"),
    "missing --base_model": (infer_sum, lambda s: ["--data_dir", s["data"]],
                             ["--run_dir", "{root}/copied_run", "--base_model", "{root}/nomodel"], {},
                             "--base_model: {root}/nomodel: no such directory"),
    "tables of a folder without runs": (tables_main, lambda s: ["--out", s["out"] / "tables"],
                                        ["--runs", "{root}/noruns"], {},
                                        "--runs: {root}/noruns: no finished run in it (no metrics.json below it)"),
    "model cloned without git-lfs": (train_cls, _base_train, ["--model_name_or_path", "{root}/lfs_clone"], {},
                                     "--model_name_or_path: {root}/lfs_clone/model.safetensors: a git-lfs pointer, "
                                     "not the weights; run `git lfs pull` in {root}/lfs_clone"),
    "login page saved as the weights": (train_cls, _base_train, ["--model_name_or_path", "{root}/html_saved"], {},
                                        "{root}/html_saved/model.safetensors: an HTML page saved under a weights "
                                        "name"),
    "weights cut short": (train_cls, _base_train, ["--model_name_or_path", "{root}/cut_short"], {},
                          "--model_name_or_path: {root}/cut_short/model.safetensors: cut short"),
    "model folder without weights": (train_cls, _base_train, ["--model_name_or_path", "{root}/no_weights"], {},
                                     "--model_name_or_path: {root}/no_weights: no weights (model.safetensors or "
                                     "pytorch_model.bin"),
    "weights not safetensors": (train_cls, _base_train, ["--model_name_or_path", "{root}/not_safetensors"], {},
                                "{root}/not_safetensors/model.safetensors: not a safetensors file"),
    "a shard of the checkpoint missing": (train_cls, _base_train, ["--model_name_or_path", "{root}/sharded"], {},
                                          "--model_name_or_path: {root}/sharded: 1 of the 2 weight shards "
                                          "model.safetensors.index.json names are missing "
                                          "(model-00002-of-00002.safetensors)"),
    "baseline on a model without weights": (run_baseline, _base_baseline,
                                            ["--task", "samsum", "--model_name_or_path", "{root}/no_weights"], {},
                                            "--model_name_or_path: {root}/no_weights: no weights"),
    "adapter of a wider model": (infer_sum, lambda s: ["--data_dir", s["data"]], ["--run_dir", "{root}/wrong_width_run"],
                                 {}, "is not the model the adapter in {root}/wrong_width_run/adapter was trained on: "
                                     "the adapter's model.layers.0.self_attn.q_proj has 576 inputs, this model's 64; "
                                     "pass that base model with --base_model"),
    "adapter of a deeper model": (infer_sum, lambda s: ["--data_dir", s["data"]], ["--run_dir", "{root}/deeper_run"],
                                  {}, "the adapter adapts model.layers.5.self_attn.q_proj, which this model does not "
                                      "have"),
    "run without adapter weights": (infer_sum, lambda s: ["--data_dir", s["data"]],
                                    ["--run_dir", "{root}/no_adapter_weights_run"], {},
                                    "--run_dir: {root}/no_adapter_weights_run/adapter: no adapter weights "
                                    "(adapter_model.safetensors or adapter_model.bin); did training finish?"),
    "adapter cloned without git-lfs": (infer_sum, lambda s: ["--data_dir", s["data"]],
                                       ["--run_dir", "{root}/lfs_adapter_run"], {},
                                       "--run_dir: {root}/lfs_adapter_run/adapter/adapter_model.safetensors: a "
                                       "git-lfs pointer"),
    "export of an adapter of another model": (export_main, lambda s: [], ["--run_dir", "{root}/wrong_width_run"], {},
                                              "the adapter's model.layers.0.self_attn.q_proj has 576 inputs"),
    "export into a file": (export_main, lambda s: [], ["--run_dir", "{root}/wrong_width_run", "--output_dir",
                                                       "{root}/file.txt/merged"], {},
                           "--output_dir: {root}/file.txt/merged: {root}/file.txt is a file"),
    "tables with an unknown flag": (tables_main, lambda s: ["--out", s["out"] / "tables", "--runs", s["root"]],
                                    ["--colour", "blue"], {}, "error: unrecognized arguments: --colour blue"),
    "tables without --runs": (tables_main, lambda s: ["--out", s["out"] / "tables"], [], {},
                              "error: the following arguments are required: --runs"),
    "benchmark output is a folder": (bench_main, lambda s: ["--shape", "tiny"], ["--output", "{root}/noruns"], {},
                                     "--output: {root}/noruns is a directory; give the JSON file to write"),
    "benchmark output under a file": (bench_main, lambda s: ["--shape", "tiny"], ["--output", "{root}/file.txt/b.json"],
                                      {}, "--output: {root}/file.txt: {root}/file.txt is a file"),
    "benchmark checkpoint under a file": (bench_main, lambda s: ["--shape", "tiny", "--output", s["out"] / "b.json"],
                                          ["--checkpoint_dir", "{root}/file.txt/ckpt"], {},
                                          "--checkpoint_dir: {root}/file.txt: {root}/file.txt is a file"),
    "quality results under a file": (quality_main, lambda s: ["--dry_run", "True"],
                                     ["--results_dir", "{root}/file.txt/q"], {},
                                     "--results_dir: {root}/file.txt/q: {root}/file.txt is a file"),
    "quickstart leaves no tiny model or data": (run_quickstart, lambda s: ["--output_root", s["out"] / "qs"],
                                                ["--train_fraction", "0.001"], {}, "--train_fraction: 0.001 gives"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_stops_in_preflight_with_one_line(case, space, capsys, monkeypatch):
    main, base, extra, env, expected = CASES[case]
    root = str(space["root"])
    for name, value in env.items():
        monkeypatch.setenv(name, value.format(root=root))
    argv = [str(a) for a in base(space)] + [a.format(root=root) for a in extra]
    before = tree(space["root"])
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    stderr = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert stderr.count("\n") == 1 and stderr.startswith("error: ") and "Traceback" not in stderr, stderr
    assert expected.format(root=root) in stderr, stderr
    assert tree(space["root"]) == before, "bad input must not create or change anything"


@pytest.fixture
def no_network(monkeypatch):
    """No name resolves and no connection opens, as on a machine without a network; offline mode not set."""
    import socket

    from huggingface_hub import constants

    def no_name(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    def no_connection(*args, **kwargs):
        raise AssertionError("a connection was attempted")

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setattr(socket, "getaddrinfo", no_name)
    monkeypatch.setattr(socket.socket, "connect", no_connection)


def test_behind_a_proxy_the_hub_is_not_judged_by_its_name(monkeypatch, no_network):
    """The proxy resolves the hub's name, not this machine: an unresolvable name there says nothing."""
    from zephyr.hub import hub_unreachable

    assert hub_unreachable() == "huggingface.co does not resolve: Name or service not known"
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert hub_unreachable() is None


def test_a_hub_model_without_a_network_fails_at_once(space, capsys, monkeypatch, no_network):
    """Offline, a hub id not in the Hugging Face cache stops in preflight with one line, the cache alone read:
    huggingface_hub itself would retry the name lookup for 23 s before giving up."""
    import time

    from transformers import AutoConfig

    reads = []
    read_config = AutoConfig.from_pretrained.__func__

    def recorded(cls, name, **kwargs):
        reads.append(kwargs)
        return read_config(cls, name, **kwargs)

    monkeypatch.setattr(AutoConfig, "from_pretrained", classmethod(recorded))
    argv = [str(a) for a in _base_train(space)] + ["--model_name_or_path", "zephyr-suite-tests/absent-model"]
    started = time.perf_counter()
    with pytest.raises(SystemExit):
        train_cls(argv)
    assert time.perf_counter() - started < 20  # the hub's own retries alone take 23 s
    assert reads == [{"local_files_only": True}]
    assert capsys.readouterr().err == (
        "error: --model_name_or_path: zephyr-suite-tests/absent-model: not in the Hugging Face cache, and the hub "
        "cannot be reached (huggingface.co does not resolve: Name or service not known); give a local checkpoint "
        "directory or .gguf file\n")


def test_a_hub_dataset_without_a_network_fails_at_once(space, capsys, monkeypatch, tmp_path, no_network):
    """Offline, the default hub dataset (no --data_dir) is read from the datasets cache alone; not there, the run
    stops with one line, and the offline setting is put back."""
    import time

    import datasets.config
    from huggingface_hub import constants

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))
    argv = ["--model_name_or_path", str(space["model"]), "--output_root", str(space["out"]), "--max_steps", "1"]
    started = time.perf_counter()
    with pytest.raises(SystemExit):
        train_cls(argv)
    assert time.perf_counter() - started < 20
    assert capsys.readouterr().err == (
        "error: cannot load hub dataset rungalileo/20_Newsgroups_Fixed: not in the datasets cache, and the hub cannot "
        "be reached (huggingface.co does not resolve: Name or service not known); use --data_dir or "
        "--train_file/--test_file for local files\n")
    assert constants.HF_HUB_OFFLINE is False and datasets.config.HF_HUB_OFFLINE is False


def test_a_sweep_without_a_network_stops_before_its_first_run_when_the_hub_model_is_not_cached(space, capsys,
                                                                                                no_network):
    """Offline, a sweep whose runs name a hub model not in the cache stops in its pre-flight, before the first run
    starts (each would fail after its imports, one after another); a dry run still prints its commands, and a sweep
    on a local model is not held up."""
    from zephyr.errors import UsageError
    from zephyr.sweep import Job, run_sweep

    def job(model):
        argv = [str(a) for a in _base_train(space)] + ["--model_name_or_path", model, "--run_name", "r"]
        return Job(space["out"] / "r", [sys.executable, str(REPO / "scripts" / "zephyr_classification.py"), *argv])

    before = tree(space["root"])
    with pytest.raises(UsageError, match="r: --model_name_or_path: zephyr-suite-tests/absent-model: not in the "
                                         "Hugging Face cache, and the hub cannot be reached"):
        run_sweep([job("zephyr-suite-tests/absent-model")], [], space["out"] / "sweep.csv")
    assert tree(space["root"]) == before
    assert run_sweep([job("zephyr-suite-tests/absent-model")], [], space["out"] / "sweep.csv", dry_run=True) == 0
    assert "--model_name_or_path zephyr-suite-tests/absent-model" in capsys.readouterr().out
    assert run_sweep([job(str(space["model"]))], [], space["out"] / "sweep.csv", dry_run=True) == 0


def test_at_least_25_preflight_cases():
    assert len(CASES) >= 25


def _train_argv(model, data, out, **extra):
    argv = ["--model_name_or_path", str(model), "--data_dir", str(data), "--output_root", str(out),
            "--run_name", "run", "--quantization", "none", "--per_device_train_batch_size", "4",
            "--optim", "adamw_torch", "--logging_steps", "1", "--learning_rate", "1e-3", "--max_length", "96"]
    return argv + [str(a) for k, v in extra.items() for a in (f"--{k}", v)]


def test_resumed_run_reports_the_losses_of_an_uninterrupted_one(tiny_model_dir, synthetic_data, tmp_path,
                                                                monkeypatch):
    """Killed at step 4 of 6 with the default checkpoint interval (every step of so short a run), then rerun."""
    import zephyr.training as training

    finetune("newsgroups", _train_argv(tiny_model_dir, synthetic_data, tmp_path / "ref", max_steps=6))
    plain_callback = training.train_log_callback

    def crashing_callback():
        class Crash(plain_callback()):
            def on_log(self, args, state, control, **kwargs):
                super().on_log(args, state, control, **kwargs)
                if state.global_step == 4:
                    raise KeyboardInterrupt  # as Ctrl-C, after checkpoint-3

        return Crash

    argv = _train_argv(tiny_model_dir, synthetic_data, tmp_path / "killed", max_steps=6)
    monkeypatch.setattr(training, "train_log_callback", crashing_callback)
    with pytest.raises(KeyboardInterrupt):
        finetune("newsgroups", argv)
    monkeypatch.setattr(training, "train_log_callback", plain_callback)
    run_dir = tmp_path / "killed" / "run"
    assert not (run_dir / "train_metrics.json").exists()
    finetune("newsgroups", argv)
    reference = json.loads((tmp_path / "ref" / "run" / "train_metrics.json").read_text())
    resumed = json.loads((run_dir / "train_metrics.json").read_text())
    assert resumed["resumed_from_step"] == 3 and reference["resumed_from_step"] is None
    for key in ("train_loss", "first_logged_loss", "last_logged_loss"):
        assert resumed[key] == pytest.approx(reference[key], rel=1e-5), key
    assert (resumed["train_steps"], resumed["train_tokens"]) == (reference["train_steps"], reference["train_tokens"])
    # Tidy: the usual file mode, and nothing beside the run (no lock files), however the first attempt ended.
    assert {p.name for p in (tmp_path / "killed").iterdir()} == {"run"}
    for name in ("config.json", "train_metrics.json", "train_log.jsonl"):
        assert (run_dir / name).stat().st_mode & 0o777 == 0o644, name
    config = json.loads((run_dir / "config.json").read_text())
    assert config["base_model"] == str(Path(tiny_model_dir).resolve())
    # The run directory travels: a copy evaluates from another working directory.
    shutil.copytree(run_dir, tmp_path / "elsewhere" / "copy")
    monkeypatch.chdir(tmp_path / "elsewhere")
    metrics = inference("newsgroups", ["--run_dir", "copy", "--data_dir", str(synthetic_data), "--max_test_rows", "4"])
    assert metrics["n_examples"] == 4 and (tmp_path / "elsewhere" / "copy" / "metrics.json").is_file()


def test_rerun_without_a_checkpoint_says_it_starts_over(tiny_model_dir, synthetic_data, tmp_path, caplog):
    from zephyr.config import DataArguments, ModelArguments, TrainArguments, to_dict
    from zephyr.rundir import prepare_run_dir

    arguments = to_dict(DataArguments(), ModelArguments(), TrainArguments())
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps({"arguments": arguments}))
    with caplog.at_level("WARNING"):
        assert prepare_run_dir(run_dir, arguments, overwrite=False) is None
    assert [r.getMessage() for r in caplog.records] == [
        f"{run_dir}: an unfinished run with no checkpoint to resume from: starting over"]


def test_default_checkpoint_interval_follows_the_run_length():
    from zephyr.rundir import default_save_steps

    assert [default_save_steps(n) for n in (1, 6, 25, 1000, 50_000)] == [1, 1, 3, 100, 200]


def test_sweep_with_one_bad_grid_value_fails_before_any_run(tiny_model_dir, tmp_path):
    data = write_synthetic_data(tmp_path / "data", seed=0, train_rows=160, test_rows=8)
    out = tmp_path / "out"
    env = {"MODEL": str(tiny_model_dir), "DATA_DIR": str(data), "OUT_ROOT": str(out), "EPOCHS_LIST": "1",
           "DROPOUTS": "0.1", "NEFTUNE": "0", "RANKS": "4 0", "PYTHON": sys.executable}
    result = subprocess.run(["bash", str(REPO / "run_lora.sh")], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, **env}, timeout=300)  # a real sweep; DRY_RUN takes the same check
    assert result.returncode == 2 and result.stdout == "", result.stderr
    assert result.stderr == "error: samsum_tiny-mistral_frac1.0_r0_d0.1_ep1_neft0: --lora_r: must be positive, got 0\n"
    assert not out.exists(), "no run may start"


def test_sweep_refuses_loglik_with_samsum_and_a_bad_dry_run_value(tiny_model_dir, tmp_path, capsys):
    from zephyr.sweep import main as sweep_main

    data = write_synthetic_data(tmp_path / "data", seed=0, train_rows=24, test_rows=8)
    script = REPO / "scripts" / "zephyr_baseline_inference.py"
    jobs = tmp_path / "jobs.tsv"
    lines = []
    for task in ("newsgroups", "samsum"):
        command = [sys.executable, str(script), "--task", task, "--model_name_or_path", str(tiny_model_dir),
                   "--data_dir", str(data), "--eval_method", "loglik", "--eval_output_dir", str(tmp_path / task)]
        lines.append(f"{tmp_path / task}\t{' '.join(command)}\n")
    jobs.write_text("".join(lines))
    assert sweep_main(["--jobs", str(jobs), "--csv", str(tmp_path / "s.csv"), "--dry_run"]) == 2
    assert capsys.readouterr().err == "error: samsum: --eval_method: loglik needs a classification task, not samsum\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "jobs.tsv"]
    assert sweep_main(["--jobs", str(jobs), "--csv", str(tmp_path / "s.csv"), "--gpus", "a,b", "--dry_run"]) == 2
    assert capsys.readouterr().err == "error: --gpus: 'a,b': GPU ids are indices (0,1) or GPU-/MIG- UUIDs\n"
    assert sweep_main(["--jobs", str(jobs), "--csv", str(tmp_path / "s.csv"), "--bogus"]) == 2
    assert capsys.readouterr().err == "error: unrecognized arguments: --bogus\n"  # one line, no usage block
    result = subprocess.run(["bash", str(REPO / "baseline_inference.sh")], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "DRY_RUN": "yes", "OUT_ROOT": str(tmp_path / "o")},
                            timeout=60)
    assert result.returncode == 2 and result.stderr == "error: DRY_RUN: must be 0 or 1, got 'yes'\n"


def test_eval_dtype_evaluates_a_run_in_another_compute_dtype(tiny_model_dir, synthetic_data, tmp_path):
    """--eval_dtype overrides the dtype a run trained in for its evaluation only (a check of bf16's rounding)."""
    from zephyr.errors import UsageError

    run_dir = finetune("newsgroups", _train_argv(tiny_model_dir, synthetic_data, tmp_path, max_steps=1, save_steps=0))
    argv = ["--run_dir", str(run_dir), "--data_dir", str(synthetic_data), "--max_test_rows", "2"]
    as_trained = inference("newsgroups", argv + ["--eval_output_dir", str(tmp_path / "as-trained")])
    in_bf16 = inference("newsgroups", argv + ["--eval_dtype", "bf16", "--eval_output_dir", str(tmp_path / "bf16")])
    assert (as_trained["compute_dtype"], in_bf16["compute_dtype"]) == ("float32", "bfloat16")  # the CPU trains fp32
    with pytest.raises(UsageError, match=r"^--eval_dtype: unknown value 'int8' \(choose bf16, fp16 or fp32\)$"):
        inference("newsgroups", argv + ["--eval_dtype", "int8"])
