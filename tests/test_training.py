"""QLoRA training on a tiny random Mistral: the real 4-bit path, frozen base, masking, EOS, NEFTune."""

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import run_args
from zephyr.data import Example
from zephyr.prompting import PromptBuilder
from zephyr.tasks import get_task
from zephyr.training import build_sft_config, build_training_dataset, train



def test_real_4bit_qlora_path_trains_only_lora_weights(tiny_model_dir, synthetic_data, tmp_path):
    import bitsandbytes as bnb

    run = train(*run_args(tiny_model_dir, synthetic_data, tmp_path, lora_lm_head=True))
    base = run.model.get_base_model()
    linear4bit = [n for n, m in base.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(linear4bit) == 2 * 7, linear4bit  # every projection of both layers is NF4
    trainable = {n for n, p in run.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    adapter = load_file(run.run_dir / "adapter" / "adapter_model.safetensors")
    lora_b = {k: v for k, v in adapter.items() if "lora_B" in k}
    assert any("lm_head" in k for k in lora_b), "the lm_head adapter must be saved"
    # LoRA B starts at zero: every B (lm_head's too, through TRL's fused loss) must have moved.
    assert all(v.abs().sum() > 0 for v in lora_b.values()), [k for k, v in lora_b.items() if v.abs().sum() == 0]
    metrics = json.loads((run.run_dir / "train_metrics.json").read_text())
    assert metrics["train_steps"] == 6 and metrics["tokens_per_s"] > 0
    config = json.loads((run.run_dir / "config.json").read_text())
    assert config["arguments"]["ModelArguments"]["quantization"] == "4bit" and config["versions"]["peft"]
    log_rows = [json.loads(l) for l in (run.run_dir / "train_log.jsonl").read_text().splitlines()]
    assert {"loss", "tokens_per_s", "learning_rate"} <= set(log_rows[0])
    assert all("mean_token_accuracy" in row and row["entropy"] > 0 and row["num_tokens"] == row["tokens_seen"]
               for row in log_rows if "loss" in row)  # their values against TRL's: tests/test_trl_compat.py


def test_base_weights_stay_frozen_and_loss_falls(tiny_model_dir, synthetic_data, tmp_path):
    from transformers import AutoModelForCausalLM

    run = train(*run_args(tiny_model_dir, synthetic_data, tmp_path, quantization="none", max_steps=30))
    original = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).state_dict()
    trained = {k.replace("base_model.model.", "").replace(".base_layer", ""): v
               for k, v in run.model.state_dict().items() if "lora_" not in k}
    assert set(original) <= set(trained)
    for name, weight in original.items():
        assert torch.equal(weight, trained[name]), f"{name} changed"
    losses = [json.loads(l)["loss"] for l in (run.run_dir / "train_log.jsonl").read_text().splitlines()
              if "loss" in json.loads(l)]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.3, losses


@pytest.mark.parametrize("prompt_format", ["original", "chat"])
def test_prompt_tokens_are_masked_and_eos_is_labelled(tokenizer, tmp_path, prompt_format):
    from trl import SFTTrainer
    from transformers import AutoModelForCausalLM, MistralConfig

    from zephyr.embedded import TINY_MISTRAL

    task = get_task("newsgroups")
    builder = PromptBuilder(task, tokenizer, prompt_format, ["sci.space", "rec.autos"])
    examples = [Example("1", "The rocket reached orbit.", "sci.space"), Example("2", "New brakes.", "rec.autos")]
    dataset, _ = build_training_dataset(builder, examples, max_length=128)
    data, _, train_args = run_args("unused", "unused", tmp_path, packing=False)
    model = AutoModelForCausalLM.from_config(MistralConfig(**TINY_MISTRAL))
    trainer = SFTTrainer(model=model, args=build_sft_config(train_args, data, tmp_path),
                         train_dataset=dataset, processing_class=tokenizer)
    for row, example in zip(trainer.train_dataset, examples):
        labels, ids = row["labels"], row["input_ids"]
        answer = [i for i, label in enumerate(labels) if label != -100]
        assert answer == list(range(answer[0], len(ids))), "only a contiguous answer span is labelled"
        assert labels[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(ids[answer[0]:-1]).strip() == example.target
        prompt = tokenizer.decode(ids[:answer[0]])
        cue = "### Class:" if prompt_format == "original" else "<|assistant|>"
        assert example.text in prompt and prompt.rstrip().endswith(cue)


def test_long_inputs_are_shortened_so_the_answer_survives(tokenizer):
    builder = PromptBuilder(get_task("samsum"), tokenizer, "original")
    example = Example("1", "A: " + "words and more words " * 200, "A talked a lot.")
    row = builder.encode_training(example, max_length=64)
    assert len(row["input_ids"]) <= 64 and row["truncated"]
    answer = [i for i, m in zip(row["input_ids"], row["completion_mask"]) if m]
    assert tokenizer.decode(answer[:-1]).strip() == "A talked a lot." and answer[-1] == tokenizer.eos_token_id


def test_neftune_alpha_reaches_the_trainer(tiny_model_dir, synthetic_data, tmp_path, monkeypatch):
    import transformers.trainer as trainer_module

    seen = {}
    original = trainer_module.activate_neftune

    def spy(model, alpha, accelerator=None):
        handle = original(model, alpha, accelerator)
        seen["alpha"] = alpha
        seen["embedding_alpha"] = accelerator.unwrap_model(model).get_input_embeddings().neftune_noise_alpha
        return handle

    monkeypatch.setattr(trainer_module, "activate_neftune", spy)
    train(*run_args(tiny_model_dir, synthetic_data, tmp_path, quantization="none", max_steps=1, neftune_alpha=5.0,
                    batch_layout="padded"))
    assert seen == {"alpha": 5.0, "embedding_alpha": 5.0}


def test_flat_batches_add_neftune_noise_at_the_padded_batches_scale(tiny_model_dir, synthetic_data, tmp_path,
                                                                    monkeypatch):
    """Flat batches replace transformers' hook (whose scale would follow the flat row's length) with one told each
    batch's padded width; the hook is gone after training."""
    import transformers.trainer as trainer_module

    from zephyr.speed.flat import NEFTuneWidth

    calls, original = [], NEFTuneWidth.__call__

    def spy(self, module, inputs, output):
        calls.append((self.alpha, self.width, output.shape[1], module.training))
        return original(self, module, inputs, output)

    monkeypatch.setattr(NEFTuneWidth, "__call__", spy)
    monkeypatch.setattr(trainer_module, "activate_neftune", lambda *a, **k: pytest.fail("transformers' hook"))
    run = train(*run_args(tiny_model_dir, synthetic_data, tmp_path, quantization="none", max_steps=2,
                          neftune_alpha=5.0))
    training = [c for c in calls if c[3]]
    assert len(training) == 2 and all(alpha == 5.0 for alpha, *_ in training)
    assert all(0 < width < length for _, width, length, _ in training)  # the longest example, not the whole row
    assert not run.model.get_base_model().get_input_embeddings()._forward_hooks


def test_finished_run_is_not_overwritten_without_the_flag(tiny_model_dir, synthetic_data, tmp_path):
    from zephyr.errors import UsageError

    args = run_args(tiny_model_dir, synthetic_data, tmp_path, quantization="none", max_steps=1)
    run = train(*args)
    before = (run.run_dir / "train_metrics.json").read_text()
    with pytest.raises(UsageError, match="a finished run is already there; pass --overwrite True"):
        train(*args)
    assert (run.run_dir / "train_metrics.json").read_text() == before


def test_a_run_shorter_than_its_logging_interval_says_it_drew_no_loss_png(tiny_model_dir, synthetic_data, tmp_path,
                                                                          caplog):
    import logging

    caplog.set_level(logging.INFO, logger="zephyr")
    data, model, train_args = run_args(tiny_model_dir, synthetic_data, tmp_path, quantization="none", max_steps=1)
    train_args.logging_steps = 10
    run = train(data, model, train_args)
    [message] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("writing results: ")]
    assert message.startswith("writing results: adapter and train_metrics.json in ")
    assert not (run.run_dir / "loss.png").exists()


def test_training_consumes_the_rows_the_preflight_selected(tiny_model_dir, synthetic_data, tmp_path, monkeypatch):
    """The fine-tuning command reads the training file once (in the pre-flight) and trains on exactly the rows its
    plan holds."""
    from zephyr import preflight, preflight_checks
    from zephyr.config import EvalArguments
    from zephyr.tasks import get_task
    from zephyr.tasks.base import Task

    reads = []
    real_load = Task.load_split
    monkeypatch.setattr(Task, "load_split", lambda self, split, *a, **k: (reads.append(split),
                                                                          real_load(self, split, *a, **k))[1])
    preflight_checks._read_split.cache_clear()
    data, model, train_args = run_args(tiny_model_dir, synthetic_data, tmp_path, max_steps=1, quantization="none")
    plan = preflight.finetune(get_task("newsgroups"), data, model, train_args, EvalArguments())
    assert reads == ["train"] and len(plan.train_examples) == 48
    plan.train_examples = plan.train_examples[:8]
    run = train(data, model, train_args, plan)
    assert reads == ["train"]  # not read again
    assert json.loads((run.run_dir / "config.json").read_text())["data"]["train_rows_used"] == 8
