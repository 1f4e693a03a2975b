"""Run names and study variants: one source (zephyr/rundir.py) for Python and the shell sweeps. No model needed."""

from __future__ import annotations

import json

import pytest

from zephyr.config import DataArguments, EvalArguments, ModelArguments, TrainArguments, to_dict
from zephyr.errors import UsageError
from zephyr.parsing import parse_args
from zephyr.results import summarize_run
from zephyr.rundir import VARIANTS, baseline_name, main, run_name, sweep_run_name, variant_of, write_config

SMOLLM = "../shared/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"


# The names the shell scripts built themselves before they asked zephyr.rundir: a restarted sweep must find the
# runs it finished (the first three are committed under results/smollm2/grids/runs/).
@pytest.mark.parametrize("sweep, flags, name", [
    ("ablation", ["--task", "newsgroups", "--model_name_or_path", SMOLLM, "--train_fraction", "1.0", "--lora_targets",
                  "all", "--lora_lm_head", "True", "--neftune_alpha", "5"],
     "newsgroups_SmolLM2-135M-Instruct.Q4_1_frac1.0_neftune_all"),
    ("ablation", ["--task", "samsum", "--model_name_or_path", SMOLLM, "--train_fraction", "0.1"],
     "samsum_SmolLM2-135M-Instruct.Q4_1_frac0.1_base"),
    ("baseline", ["--task", "samsum", "--model_name_or_path", SMOLLM, "--num_shots", "3", "--eval_method", "generate"],
     "samsum_SmolLM2-135M-Instruct.Q4_1_baseline_3shot_generate"),
    ("ablation", ["--task", "newsgroups", "--model_name_or_path", "tiny", "--train_fraction", "0.025",
                  "--neftune_alpha", "5"], "newsgroups_tiny_frac0.025_neftune"),
    ("ablation", ["--task", "newsgroups", "--model_name_or_path", "org/model/", "--train_fraction", "1",
                  "--lora_targets", "all", "--lora_lm_head", "True"], "newsgroups_model_frac1_all"),
    ("lora_grid", ["--task", "samsum", "--model_name_or_path", "HuggingFaceH4/zephyr-7b-beta", "--train_fraction",
                   "1.0", "--num_train_epochs", "2", "--lora_r", "16", "--lora_dropout", "0.5"],
     "samsum_zephyr-7b-beta_frac1.0_r16_d0.5_ep2_neft0"),
    ("lora_grid", ["--task", "samsum", "--model_name_or_path", "tiny", "--train_fraction", "0.5", "--num_train_epochs",
                   "2.0", "--lora_r", "4", "--lora_dropout", "0.1", "--neftune_alpha", "5"],
     "samsum_tiny_frac0.5_r4_d0.1_ep2.0_neft5"),
    ("baseline", ["--task", "newsgroups", "--model_name_or_path", "tiny", "--num_shots", "0", "--eval_method",
                  "loglik"], "newsgroups_tiny_baseline_0shot_loglik"),
])
def test_sweep_names_are_the_ones_the_shell_scripts_built(sweep, flags, name):
    assert sweep_run_name(sweep, flags) == name


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


def test_the_name_command(capsys):
    assert main(["variant_flags", "neftune_all"]) == 0
    assert capsys.readouterr().out == "--lora_targets all --lora_lm_head True --neftune_alpha 5\n"
    assert main(["name", "ablation", "--task", "samsum", "--model_name_or_path", "m", "--train_fraction", "0.1"]) == 0
    assert capsys.readouterr().out == "samsum_m_frac0.1_base\n"
    for argv, message in [(["variant_flags", "both"], "variant: unknown variant 'both'"),
                          (["name", "grid"], "name: unknown sweep 'grid'"),
                          (["name", "baseline", "--task", "samsum"], "--model_name_or_path: needed for the baseline"),
                          (["name", "ablation", "--lora_rank", "8"], "name: unrecognized arguments: --lora_rank 8")]:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {message}") and err.count("\n") == 1, err
    with pytest.raises(UsageError, match="--neftune_alpha: not a number"):
        sweep_run_name("lora_grid", ["--neftune_alpha", "x"])


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


def test_the_committed_sweep_runs_are_named_as_the_name_command_names_them():
    """results/smollm2/grids/runs was made by sample_ablate.sh and baseline_inference.sh when they built names
    themselves: each directory's recorded arguments give back its name."""
    from conftest import REPO

    runs = sorted(p.parent for p in (REPO / "results" / "smollm2" / "grids" / "runs").glob("*/config.json"))
    assert len(runs) == 30
    for run in runs:
        args = json.loads((run / "config.json").read_text())["arguments"]
        data, model = args["DataArguments"], args["ModelArguments"]
        flags = ["--task", data["task"], "--model_name_or_path", model["model_name_or_path"]]
        if "EvalArguments" in args and "TrainArguments" not in args:
            evaluation = args["EvalArguments"]
            sweep, flags = "baseline", flags + ["--num_shots", str(evaluation["num_shots"]), "--eval_method",
                                                evaluation["eval_method"]]
        else:
            alpha = args["TrainArguments"]["neftune_alpha"]
            sweep, flags = "ablation", flags + ["--train_fraction", str(data["train_fraction"]), "--lora_targets",
                                                model["lora_targets"], "--lora_lm_head", str(model["lora_lm_head"]),
                                                *(["--neftune_alpha", str(alpha)] if alpha else [])]
        assert sweep_run_name(sweep, flags) == run.name


def test_one_process_answers_a_whole_sweeps_questions(monkeypatch, capsys):
    import io

    questions = "variant_flags all\nname ablation --task samsum --model_name_or_path 'my models/m.gguf' " \
                "--train_fraction 0.5 --lora_targets all --lora_lm_head True\nvariant_flags none\nname never asked\n"
    monkeypatch.setattr("sys.stdin", io.StringIO(questions))
    assert main(["serve"]) == 2  # stops at the first bad question, after answering the good ones
    out, err = capsys.readouterr()
    assert out == "--lora_targets all --lora_lm_head True\nsamsum_m_frac0.5_all\n"
    assert err == "error: variant: unknown variant 'none' (choose base, neftune, all, neftune_all)\n"
