"""Run names, study variants and what config.json records. No model needed (the sweeps' names: test_sweep_grid.py)."""

from __future__ import annotations

import json

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
