"""Run names, study variants and what config.json records. No model needed (the sweeps' names: test_sweep_grid.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from zephyr.config import DataArguments, EvalArguments, ModelArguments, TrainArguments, to_dict
from zephyr.parsing import parse_args
from zephyr.results import summarize_run
from zephyr.rundir import VARIANTS, baseline_name, run_name, variant_of, write_config

SMOLLM = "../shared/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"


def test_default_names_are_unchanged():
    assert run_name(DataArguments(task="samsum"), ModelArguments(), TrainArguments(num_train_epochs=1.0)) == \
        "samsum_zephyr-7b-beta_frac1_r8_a16_d0.1_ep1_attention_seed42"
    assert run_name(DataArguments(task="newsgroups", train_fraction=0.025, prompt_format="chat"),
                    ModelArguments(model_name_or_path=SMOLLM, lora_r=64, lora_targets="all", lora_lm_head=True,
                                   quantization="none"),
                    TrainArguments(neftune_alpha=5.0, max_steps=3, seed=7, loss="full")) == \
        "newsgroups_SmolLM2-135M-Instruct.Q4_1_frac0.025_r64_a16_d0.1_ep5_all_lmhead_neft5_qnone_chat_lossfull_steps3_seed7"
    assert run_name(DataArguments(task="samsum", train_fraction=0.1),
                    ModelArguments(model_name_or_path="/models/zephyr/", lora_targets="q_proj,k_proj",
                                   lora_dropout=0.05), TrainArguments(num_train_epochs=2.5)) == \
        "samsum_zephyr_frac0.1_r8_a16_d0.05_ep2.5_q_proj+k_proj_seed42"
    assert baseline_name(DataArguments(task="samsum"), ModelArguments(), EvalArguments()) == \
        "samsum_zephyr-7b-beta_zeroshot_generate"
    assert baseline_name(DataArguments(), ModelArguments(model_name_or_path="m.gguf", quantization="none"),
                         EvalArguments(num_shots=3, eval_method="loglik")) == "newsgroups_m_3shot_loglik_qnone"


def _arguments(targets="attention", lm_head=False, alpha=None, **model) -> dict:
    return {"ModelArguments": {"lora_targets": targets, "lora_lm_head": lm_head, **model},
            "TrainArguments": {"neftune_alpha": alpha}}


@pytest.mark.parametrize("arguments, variant", [
    (_arguments(), "base"),
    (_arguments("v_proj,q_proj", lora_r=64), "base"),  # the preset's modules; the rank is no variant
    (_arguments(alpha=5.0), "NEFTune"),
    (_arguments("all", True), "all-module"),
    (_arguments("q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj,lm_head", False, 5), "NEFTune + all-module"),
    (_arguments("all"), "custom"),  # all seven projections without lm_head: filed as "base" before
    (_arguments(alpha=10.0), "custom"),
    (_arguments("attention", True), "custom"),
])
def test_a_variant_is_exactly_one_of_the_four_or_custom(arguments, variant):
    assert variant_of(arguments) == variant


def test_each_variants_flags_parse_into_that_variant():
    for variant in VARIANTS:
        parsed = parse_args((DataArguments, ModelArguments, TrainArguments), variant.flags())
        assert variant_of(to_dict(*parsed)) == variant.name


def test_a_run_records_its_variant_and_tables_read_it(tmp_path):
    def run(name: str, arguments: dict, **recorded) -> dict:
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps({"accuracy": 50.0}))
        config = {"kind": "finetune", "arguments": {"DataArguments": {"task": "newsgroups"}, **arguments}, **recorded}
        (tmp_path / name / "config.json").write_text(json.dumps(config))
        return summarize_run(tmp_path / name)

    written = write_config(tmp_path / "config.json", _arguments("all", True, 5.0), kind="finetune")
    assert written["variant"] == json.loads((tmp_path / "config.json").read_text())["variant"] == \
        "NEFTune + all-module"
    assert "variant" not in write_config(tmp_path / "baseline.json", _arguments(), kind="baseline")
    assert run("recorded", _arguments(), variant="custom")["variant"] == "custom"  # the record wins
    assert run("old", _arguments("all"))["variant"] == "custom"  # no record: from its arguments
    assert run("old_base", _arguments())["variant"] == "base"


def test_a_run_directory_is_its_name_under_its_root_and_a_smoke_test_says_its_steps():
    from zephyr.rundir import run_directory

    data, model = DataArguments(task="samsum"), ModelArguments(model_name_or_path="m")
    assert run_directory(data, model, TrainArguments(output_root="/o", run_name="mine")) == Path("/o/mine")
    assert run_directory(data, model, TrainArguments(output_root="/o", max_steps=1)) == \
        Path("/o/samsum_m_frac1_r8_a16_d0.1_ep5_attention_steps1_seed42")


def test_config_json_records_the_run_where_its_model_is_and_how_it_was_started(tmp_path, monkeypatch):
    from zephyr import rundir

    monkeypatch.setattr(rundir, "versions", lambda: {"torch": "9.9"})
    monkeypatch.setattr(rundir, "git_commit", lambda: "abc1234")
    monkeypatch.setattr(rundir, "device_info", lambda: {"gpu": None})
    monkeypatch.setattr(sys, "argv", ["/x/scripts/zephyr_summarization.py", "--lora_r", "4"])
    local = tmp_path / "model"
    local.mkdir()
    arguments = {"DataArguments": {"task": "samsum"}, "ModelArguments": {"model_name_or_path": "org/model"}}
    written = write_config(tmp_path / "config.json", arguments, model_path=str(local), kind="baseline")
    assert written == json.loads((tmp_path / "config.json").read_text()) == {
        "arguments": arguments, "model_path": str(local.resolve()), "base_model": str(local.resolve()),
        "kind": "baseline", "inputs": {"train_data": {"name": "hub:knkarthick/samsum:train"},
                                       "test_data": {"name": "hub:knkarthick/samsum:test"},
                                       "model": {"name": "org/model"}},
        "versions": {"torch": "9.9"}, "git_commit": "abc1234", "device": {"gpu": None},
        "command": ["zephyr_summarization.py", "--lora_r", "4"]}
    monkeypatch.chdir(tmp_path)  # a relative model path is recorded absolute; a hub id as given
    hub = write_config(tmp_path / "hub.json", arguments, model_path="model", base_model="org/model")
    assert (hub["model_path"], hub["base_model"]) == (str(local.resolve()), "org/model")
    assert "model_path" not in write_config(tmp_path / "none.json", arguments) and \
        "base_model" not in write_config(tmp_path / "none.json", arguments)


def test_the_inputs_a_run_records(tmp_path, monkeypatch):
    from zephyr.rundir import file_identity, inputs

    folder = tmp_path / "data" / "samsum"
    folder.mkdir(parents=True)
    (folder / "test.jsonl").write_text("{}\n")  # no train file: only the test file is recorded
    own = tmp_path / "own_train.jsonl"
    own.write_text("{}\n{}\n")
    sha = "ca3d163bab055381827226140568f3bef7eaac187cebd76878e0b63e9e442356"  # of "{}\n"
    data = {"task": "samsum", "data_dir": str(tmp_path / "data")}
    assert inputs({"DataArguments": data}) == {"test_data": {"path": str(folder / "test.jsonl"), "bytes": 3,
                                                             "sha256": sha}}
    recorded = inputs({"DataArguments": {**data, "train_file": str(own)}, "ModelArguments": {"model_name_or_path": str(own)}})
    assert recorded["train_data"]["path"] == str(own) and recorded["model"] == {"path": str(own), "bytes": 6}
    assert file_identity(str(tmp_path / "data"), digest=True) == {"path": str(tmp_path / "data"), "bytes": 3}
    monkeypatch.chdir(tmp_path)
    (tmp_path / "hub:org").write_text("a local file named like a hub id")
    assert file_identity("hub:org", digest=True) == {"name": "hub:org"}
