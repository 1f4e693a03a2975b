"""Argument parsing: defaults, YAML/JSON config plus CLI overrides, validation, and the pure factories."""

import pytest

from zephyr.config import DataArguments, EvalArguments, ModelArguments, TrainArguments
from zephyr.parsing import parse_args
from zephyr.errors import UsageError
from zephyr.modeling import build_bnb_config, build_lora_config

ALL = (DataArguments, ModelArguments, TrainArguments, EvalArguments)


def test_defaults_are_the_study_settings():
    data, model, train, _ = parse_args(ALL, [])
    assert (model.model_name_or_path, model.quantization) == ("HuggingFaceH4/zephyr-7b-beta", "4bit")
    assert (model.lora_r, model.lora_alpha, model.lora_dropout, model.target_modules()) == (
        8, 16, 0.1, ["q_proj", "v_proj"])
    assert (train.learning_rate, train.lr_scheduler_type, train.warmup_ratio, train.max_grad_norm) == (
        2e-4, "constant_with_warmup", 0.03, 0.3)
    # the study's 8 packed rows of 512 per optimizer step, in one micro-batch (it ran 4 x 2)
    assert (train.per_device_train_batch_size * train.gradient_accumulation_steps, data.max_length) == (8, 512)
    assert train.loss == "completion"


def test_yaml_config_with_cli_override(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("lora_r: 32\nlora_lm_head: true\nnum_train_epochs: 3\n")
    _, model, train, _ = parse_args(ALL, ["--config", str(config), "--num_train_epochs", "2"])
    assert (model.lora_r, model.lora_lm_head, train.num_train_epochs) == (32, True, 2.0)


@pytest.mark.parametrize("flag_value, expected", [("False", False), ("false", False), ("0", False),
                                                  ("True", True), ("yes", True)])
def test_bool_flags_parse_their_value(flag_value, expected):
    _, model, _, _ = parse_args(ALL, ["--lora_lm_head", flag_value])
    assert model.lora_lm_head is expected


def test_unknown_config_key_names_the_file_and_key(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("lora_rank: 4\n")
    with pytest.raises(UsageError, match=f"{config}: unknown key 'lora_rank'"):
        parse_args(ALL, ["--config", str(config)])


def test_wrong_type_in_config_is_an_error(tmp_path):
    config = tmp_path / "run.json"
    config.write_text('{"lora_r": "eight"}')
    with pytest.raises(UsageError, match=f"^--lora_r: invalid int value: 'eight' .*{config}"):
        parse_args(ALL, ["--config", str(config)])


def test_unknown_flag_is_an_error_that_names_the_nearest_flag(tmp_path):
    with pytest.raises(UsageError) as err:
        parse_args(ALL, ["--lora_rank", "4"])
    assert str(err.value) == "unknown argument(s): --lora_rank 4 (did you mean --lora_r?)"
    with pytest.raises(UsageError) as err:
        parse_args(ALL, ["--xyzzy", "4"])
    assert str(err.value) == "unknown argument(s): --xyzzy 4"
    for given, meant in (("--epochs", "--num_train_epochs"), ("--lr", "--learning_rate"),
                         ("--batch-size", "--per_device_train_batch_size"), ("--output_dir", "--output_root")):
        with pytest.raises(UsageError) as err:
            parse_args(ALL, [given, "4"])
        assert str(err.value) == f"unknown argument(s): {given} 4 (did you mean {meant}?)"
    config = tmp_path / "run.json"
    config.write_text('{"learning_rat": 0.001}')
    with pytest.raises(UsageError) as err:
        parse_args(ALL, ["--config", str(config)])
    assert str(err.value) == f"{config}: unknown key 'learning_rat' (did you mean learning_rate?)"


@pytest.mark.parametrize("argv, message", [
    (["--train_fraction", "0"], "--train_fraction: must be in"),
    (["--train_fraction", "1.5"], "--train_fraction: must be in"),
    (["--train_fraction", "nan"], "--train_fraction: must be in"),
    (["--lora_r", "0"], "--lora_r: must be positive"),
    (["--num_train_epochs", "-1"], "--num_train_epochs: must be positive"),
    (["--task", "imdb"], "--task: unknown task 'imdb'"),
    (["--lora_targets", "everything!"], "--lora_targets: unknown preset"),
    (["--compile_layers", "sometimes"], "--compile_layers: unknown value 'sometimes' \\(choose auto, true or false\\)"),
    (["--gradient_checkpointing", "maybe"], "--gradient_checkpointing: unknown value 'maybe'"),
    (["--eval_batch_tokens", "0"], "--eval_batch_tokens: must be positive, got 0"),
    (["--flat_cuda_graphs", "True", "--packing", "True"], "--flat_cuda_graphs: is for flat batches"),
    (["--flat_cuda_graphs", "True", "--batch_layout", "padded"], "--flat_cuda_graphs: is for flat batches"),
    (["--flat_cuda_graphs", "True", "--cuda_graphs", "False"], "--flat_cuda_graphs: needs --cuda_graphs True"),
    (["--flat_split_tokens", "-1"], "--flat_split_tokens: must be 0 or more, got -1"),
    (["--flat_split_tokens", "1024"], "--flat_split_tokens: splits the steps of --flat_cuda_graphs True"),
    (["--flat_split_tokens", "1024", "--flat_cuda_graphs", "True", "--gradient_checkpointing", "true"],
     "--flat_split_tokens: runs the parts as CUDA graphs, which a checkpointed layer cannot be"),
    (["--matmul_library", "mkl"], "--matmul_library: unknown value 'mkl' \\(choose default, cublas or cublaslt\\)"),
])
def test_invalid_values_name_the_flag(argv, message):
    with pytest.raises(UsageError, match=message):
        parse_args(ALL, argv)


def test_target_presets():
    assert ModelArguments(lora_targets="attention").target_modules() == ["q_proj", "v_proj"]
    assert ModelArguments(lora_targets="all", lora_lm_head=True).target_modules() == [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"]
    assert ModelArguments(lora_targets="q_proj,o_proj").target_modules() == ["q_proj", "o_proj"]


def test_factories_build_the_study_quantization_and_lora():
    import torch

    bnb = build_bnb_config(ModelArguments(), torch.bfloat16)
    assert bnb.load_in_4bit and bnb.bnb_4bit_quant_type == "nf4" and bnb.bnb_4bit_use_double_quant
    assert bnb.bnb_4bit_compute_dtype == torch.bfloat16
    assert build_bnb_config(ModelArguments(quantization="none")) is None
    lora = build_lora_config(ModelArguments(lora_r=64, lora_targets="all"))
    assert (lora.r, lora.lora_alpha, lora.lora_dropout, lora.task_type) == (64, 16, 0.1, "CAUSAL_LM")
    assert set(lora.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
