"""QLoRA training on a tiny random Mistral: the real 4-bit path, frozen base, masking, EOS, NEFTune."""

import json

import pytest
import torch
from safetensors.torch import load_file

from zephyr.config import DataArguments, ModelArguments, TrainArguments
from zephyr.data import Example
from zephyr.prompting import PromptBuilder
from zephyr.tasks import get_task
from zephyr.training import build_sft_config, build_training_dataset, train


def _args(tiny_model_dir, data_dir, out, **overrides):
    data = DataArguments(task=overrides.pop("task", "newsgroups"), data_dir=str(data_dir), max_length=96)
    model = ModelArguments(model_name_or_path=str(tiny_model_dir), quantization=overrides.pop("quantization", "4bit"),
                           lora_r=8, lora_targets=overrides.pop("lora_targets", "all"),
                           lora_lm_head=overrides.pop("lora_lm_head", False))
    train_args = TrainArguments(output_root=str(out), num_train_epochs=1, max_steps=overrides.pop("max_steps", 6),
                                per_device_train_batch_size=8, gradient_accumulation_steps=1, learning_rate=2e-3,
                                gradient_checkpointing=False, optim="adamw_torch", logging_steps=1, **overrides)
    return data, model, train_args


def test_real_4bit_qlora_path_trains_only_lora_weights(tiny_model_dir, synthetic_data, tmp_path):
    import bitsandbytes as bnb

    run = train(*_args(tiny_model_dir, synthetic_data, tmp_path, lora_lm_head=True))
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
    assert all(0 <= row["mean_token_accuracy"] <= 1 and row["entropy"] > 0 and row["num_tokens"] == row["tokens_seen"]
               for row in log_rows if "loss" in row)


def test_base_weights_stay_frozen_and_loss_falls(tiny_model_dir, synthetic_data, tmp_path):
    from transformers import AutoModelForCausalLM

    run = train(*_args(tiny_model_dir, synthetic_data, tmp_path, quantization="none", max_steps=30))
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
    data, _, train_args = _args("unused", "unused", tmp_path, packing=False)
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


def _packed_rows_trainer(tokenizer, tmp_path, trainer_class):
    """A tiny random Mistral, six short Newsgroups examples packed into rows, and ``trainer_class`` over them."""
    from transformers import AutoModelForCausalLM, MistralConfig

    from zephyr.embedded import TINY_MISTRAL

    builder = PromptBuilder(get_task("newsgroups"), tokenizer, "original", ["sci.space", "rec.autos"])
    texts = ["The rocket reached orbit.", "New brakes.", "Shuttle tiles and heat shields again.", "Cars rust.",
             "The orbiter landed at night on the long runway.", "Tyres wear out."]
    examples = [Example(str(i), t, "sci.space" if i % 2 == 0 else "rec.autos") for i, t in enumerate(texts)]
    dataset, _ = build_training_dataset(builder, examples, max_length=48)
    data, _, train_args = _args("unused", "unused", tmp_path, packing=True)
    data.max_length = 48
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(MistralConfig(**TINY_MISTRAL)).eval()
    trainer = trainer_class(model=model, args=build_sft_config(train_args, data, tmp_path),
                            train_dataset=dataset, processing_class=tokenizer)
    return trainer, dataset, examples


def test_packed_rows_score_exactly_like_separate_examples(tokenizer, tmp_path):
    """Packing: each example keeps its positions and attends only to itself, in rows of several examples,
    padded to the longest row; the token count excludes the padding."""
    from trl import SFTTrainer

    from zephyr.packing import NUM_TOKENS, PackedRowsCollator

    trainer, dataset, examples = _packed_rows_trainer(tokenizer, tmp_path, SFTTrainer)
    model = trainer.model
    rows = list(trainer.train_dataset)
    assert 2 <= len(rows) < len(examples), "short examples share rows"
    batch = PackedRowsCollator(tokenizer.pad_token_id, torch.float32)(rows)
    assert batch["input_ids"].shape[0] == len(rows) and batch["attention_mask"].shape[1] == 1
    assert batch.pop(NUM_TOKENS) == sum(len(row["input_ids"]) for row in dataset) < batch["input_ids"].numel()
    with torch.no_grad():
        logp = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[:, :-1].log_softmax(-1)
        targets = batch["labels"][:, 1:]
        scored = targets != -100
        packed = logp.gather(2, targets.clamp(min=0).unsqueeze(2)).squeeze(2)[scored].sum().item()
        separate = 0.0
        for row in dataset:
            ids = torch.tensor([row["input_ids"]])
            logp = model(input_ids=ids).logits[0, :-1].log_softmax(-1)
            trained = torch.tensor(row["completion_mask"][1:], dtype=torch.bool)
            separate += logp.gather(1, ids[0, 1:].unsqueeze(1)).squeeze(1)[trained].sum().item()
    assert scored.sum() == sum(sum(row["completion_mask"][1:]) for row in dataset)
    assert packed == pytest.approx(separate, abs=1e-3)


def test_suite_trainer_loss_and_metrics_equal_trl_without_a_sync(tokenizer, tmp_path):
    """The suite's sync-free training step computes TRL's loss, and at the logging step TRL's entropy and token
    accuracy; its token count is the collator's, not TRL's sum over a 4-D mask."""
    from trl import SFTTrainer

    from zephyr.packing import NUM_TOKENS, PackedRowsCollator
    from zephyr.training import _suite_trainer_class

    trainer, _, _ = _packed_rows_trainer(tokenizer, tmp_path, _suite_trainer_class())
    trainer.model.train()
    batch = PackedRowsCollator(tokenizer.pad_token_id, torch.float32)(list(trainer.train_dataset))
    tokens = batch.pop(NUM_TOKENS)
    with torch.no_grad():
        expected = SFTTrainer.compute_loss(trainer, trainer.model, dict(batch))
        stock = {key: trainer._metrics["train"].pop(key) for key in ("entropy", "mean_token_accuracy")}
        loss = trainer.compute_loss(trainer.model, dict(batch))
    assert torch.equal(loss, expected)
    assert not trainer._metrics["train"]["entropy"], "nothing is read back before the logging step"
    trainer.state.num_input_tokens_seen = tokens
    logged = []
    trainer.callback_handler.on_log = lambda args, state, control, logs: logged.append(logs)
    trainer.log({"loss": loss.item()})
    assert logged[0]["entropy"] == pytest.approx(stock["entropy"][0], rel=1e-6)
    assert logged[0]["mean_token_accuracy"] == pytest.approx(stock["mean_token_accuracy"][0], rel=1e-6)
    assert logged[0]["num_tokens"] == tokens


def test_plain_twin_of_the_suite_trainer_computes_trls_loss_and_metrics(tokenizer, tmp_path):
    """``--sync_free_metrics False`` (the quality benchmark's plain twin) leaves the loss to TRL."""
    from zephyr.packing import NUM_TOKENS, PackedRowsCollator
    from zephyr.training import _suite_trainer_class

    trainer, _, _ = _packed_rows_trainer(tokenizer, tmp_path, _suite_trainer_class())
    trainer.sync_free_metrics = False
    trainer.model.train()
    batch = PackedRowsCollator(tokenizer.pad_token_id, torch.float32)(list(trainer.train_dataset))
    batch.pop(NUM_TOKENS)
    with torch.no_grad():
        trainer.compute_loss(trainer.model, dict(batch))
    assert trainer._metric_sums is None and len(trainer._metrics["train"]["entropy"]) == 1  # read by TRL at once


def test_compile_auto_only_for_batches_of_one_shape_on_a_gpu():
    from zephyr.training import should_compile

    assert should_compile("auto", on_gpu=True, fixed_shape=True)
    assert not should_compile("auto", on_gpu=True, fixed_shape=False)  # measured slower than eager (docstring)
    assert not should_compile("auto", on_gpu=False, fixed_shape=True)
    assert should_compile("true", on_gpu=False, fixed_shape=False) and not should_compile("false", True, True)


def test_a_layer_count_checkpoints_exactly_that_many_layers(tokenizer, tmp_path):
    from zephyr.config import TrainArguments
    from zephyr.training import _suite_trainer_class, decoder_layers, prepare_layers

    trainer, _, _ = _packed_rows_trainer(tokenizer, tmp_path, _suite_trainer_class())
    checkpointed, _ = prepare_layers(trainer, TrainArguments(gradient_checkpointing="1", compile_layers="false"), 48)
    assert checkpointed == 1 and trainer.args.gradient_checkpointing
    trainer.model.gradient_checkpointing_enable()  # what Trainer.train does before on_train_begin
    trainer.callback_handler.on_train_begin(trainer.args, trainer.state, trainer.control)
    assert [layer.gradient_checkpointing for layer in decoder_layers(trainer.model)] == [False, True]


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
    train(*_args(tiny_model_dir, synthetic_data, tmp_path, quantization="none", max_steps=1, neftune_alpha=5.0))
    assert seen == {"alpha": 5.0, "embedding_alpha": 5.0}


def test_finished_run_is_not_overwritten_without_the_flag(tiny_model_dir, synthetic_data, tmp_path):
    from zephyr.errors import UsageError

    args = _args(tiny_model_dir, synthetic_data, tmp_path, quantization="none", max_steps=1)
    run = train(*args)
    before = (run.run_dir / "train_metrics.json").read_text()
    with pytest.raises(UsageError, match="a finished run is already there; pass --overwrite True"):
        train(*args)
    assert (run.run_dir / "train_metrics.json").read_text() == before


def test_checkpointing_plan_covers_only_the_layers_memory_needs():
    from zephyr.training import plan_checkpointing, spread_layers

    gib = 2**30

    probed = []

    def probe(rows, checkpointed):  # 4 GiB of weights, 0.1 GiB a row, each layer kept adds 0.05 GiB a row
        probed.append((rows, checkpointed))
        peak = 4 * gib + rows * 0.1 * gib + (0 if checkpointed else rows * 32 * 0.05 * gib)
        return float("inf") if peak > 40 * gib else peak  # a 40 GiB GPU runs out of memory

    # 10.8 GiB without any: the training batch alone was probed, so only its shape gets compiled
    assert plan_checkpointing(probe, 32, rows=4, budget=20 * gib) == 0 and probed == [(4, False)]
    # 16 rows: 4 + 16 * (0.1 + 0.05 * resident) <= 20.5 allows 18 resident layers, one of them recomputed.
    assert plan_checkpointing(probe, 32, rows=16, budget=20.5 * gib) == 15
    assert probed[1:] == [(16, False), (1, True), (2, True), (1, False)]
    # 1000 rows ran out of memory and nothing fits: checkpoint all
    assert plan_checkpointing(probe, 32, rows=1000, budget=20 * gib) == 32
    for k in (0, 1, 8, 15, 17, 31, 32):
        flags = spread_layers(32, k)
        assert sum(flags) == k and len(flags) == 32
    assert spread_layers(8, 2) == [False, False, False, True, False, False, False, True]


def test_planned_layers_alone_stay_checkpointed_once_the_trainer_enables_it():
    from transformers import AutoModelForCausalLM, MistralConfig

    from zephyr.embedded import TINY_MISTRAL
    from zephyr.training import _checkpoint_only_callback, decoder_layers

    model = AutoModelForCausalLM.from_config(MistralConfig(**TINY_MISTRAL))
    model.gradient_checkpointing_enable()  # what Trainer.train does before on_train_begin
    assert [layer.gradient_checkpointing for layer in decoder_layers(model)] == [True, True]
    _checkpoint_only_callback([False, True]).on_train_begin(None, None, None, model=model)
    assert [layer.gradient_checkpointing for layer in decoder_layers(model)] == [False, True]


def test_compiled_layers_are_one_graph_with_eager_losses_and_gradients(tiny_model_dir):
    """The 4-bit + LoRA decoder layer traces as a single graph (no break at the bitsandbytes matmuls, which would
    bring the CPU overhead back) and computes what eager does; uncompiling restores plain modules."""
    from peft import get_peft_model

    from zephyr.modeling import build_lora_config, load_model
    from zephyr.training import compile_decoder_layers, decoder_layers

    args = ModelArguments(model_name_or_path=str(tiny_model_dir), lora_targets="all", lora_dropout=0.0)
    torch.manual_seed(0)
    model = get_peft_model(load_model(args), build_lora_config(args))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.02)
    model.enable_input_require_grads()  # else the first layer's input differs (no grad): a second graph
    ids = torch.randint(32000, (1, 50))
    positions = torch.cat([torch.arange(30), torch.arange(20)]).unsqueeze(0)  # two packed examples

    def loss_and_grads():
        model.zero_grad(set_to_none=True)
        loss = model(input_ids=ids, position_ids=positions, labels=ids, use_cache=False).loss  # as TRL trains
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    eager_loss, eager_grads = loss_and_grads()
    torch._dynamo.utils.counters.clear()
    uncompile = compile_decoder_layers(model, backend="aot_eager", fullgraph=True)
    compiled_loss, compiled_grads = loss_and_grads()
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-5, atol=1e-5)
    for name, grad in eager_grads.items():
        torch.testing.assert_close(compiled_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1  # both layers ran the one compiled graph
    assert torch._dynamo.utils.counters["graph_break"] == {}
    assert {type(m.base_layer).__name__ for m in model.modules() if hasattr(m, "lora_A")} == {"TraceableLinear4bit"}
    uncompile()
    assert all(layer._compiled_call_impl is None for layer in decoder_layers(model))
    assert {type(m.base_layer).__name__ for m in model.modules() if hasattr(m, "lora_A")} == {"Linear4bit"}


def test_cuda_graphs_are_on_while_compiled_and_off_after():
    """CUDA graphs go through inductor's global flag (per-compilation patches crashed on replay); uncompiling
    must hand the flag back, or a later compilation in the process would record graphs it never asked for."""
    import torch._inductor.config as inductor_config
    from transformers import AutoModelForCausalLM, MistralConfig

    from zephyr.embedded import TINY_MISTRAL
    from zephyr.training import compile_decoder_layers

    model = AutoModelForCausalLM.from_config(MistralConfig(**TINY_MISTRAL))
    assert inductor_config.triton.cudagraphs is False
    uncompile = compile_decoder_layers(model, backend="aot_eager", cuda_graphs=True)
    assert inductor_config.triton.cudagraphs is True
    uncompile()
    assert inductor_config.triton.cudagraphs is False


def _nf4_linear(shape, bias, double_quant=True):
    """A bitsandbytes 4-bit NF4 linear of weight ``shape`` [out, in], quantized on the CPU from a seeded random weight."""
    import bitsandbytes as bnb

    torch.manual_seed(0)
    linear = bnb.nn.Linear4bit(shape[1], shape[0], bias=bias, compute_dtype=torch.bfloat16, quant_type="nf4",
                               compress_statistics=double_quant)
    linear.weight = bnb.nn.Params4bit(torch.randn(shape), requires_grad=False, quant_type="nf4",
                                      compress_statistics=double_quant)._quantize("cpu")
    return linear


@pytest.mark.parametrize("shape,double_quant", [((96, 64), True), ((100, 72), True), ((7, 9), True), ((96, 64), False)])
def test_nf4_dequantized_in_torch_equals_bitsandbytes_bit_for_bit(shape, double_quant):
    """The compiled layers' 4-bit matmul (zephyr/nf4.py) gives bitsandbytes' exact weights, outputs and input
    gradients, also for nested absmax and a weight whose size is no multiple of the 64-value block."""
    import bitsandbytes as bnb
    import bitsandbytes.functional as bnbf

    from zephyr.nf4 import dequantize_nf4, make_nf4_linears_traceable, nf4_absmax

    linear = _nf4_linear(shape, bias=True, double_quant=double_quant)
    state = linear.weight.quant_state
    assert state.nested == double_quant
    expected = bnbf.dequantize_4bit(linear.weight.data, state).to(torch.bfloat16)
    weight = dequantize_nf4(linear.weight, state.code, nf4_absmax(state), state.blocksize, tuple(state.shape),
                            torch.bfloat16)
    assert torch.equal(weight, expected)

    x = torch.randn(3, 5, shape[1], dtype=torch.bfloat16, requires_grad=True)

    def output_and_grad():
        x.grad = None
        out = linear(x)
        out.float().square().sum().backward()
        return out.detach(), x.grad.clone()

    bnb_out, bnb_grad = output_and_grad()
    undo = make_nf4_linears_traceable(linear)
    torch_out, torch_grad = output_and_grad()
    undo()
    assert type(linear) is bnb.nn.Linear4bit
    assert torch.equal(torch_out, bnb_out) and torch.equal(torch_grad, bnb_grad)


def test_compiled_nf4_linear_saves_the_4bit_weight_not_a_16bit_copy():
    """With the partitioner inductor uses, the backward pass dequantizes again: what the forward saves holds no
    [out, in] 16-bit weight (which at 7B would cost the memory of several more un-checkpointed layers)."""
    from zephyr.nf4 import backend_without_cse, make_nf4_linears_traceable

    linear = _nf4_linear((256, 128), bias=False)
    make_nf4_linears_traceable(linear)
    torch._dynamo.reset()
    loss = torch.compile(lambda x: linear(x).float().square().sum(), fullgraph=True,
                         backend=backend_without_cse("aot_eager_decomp_partition"))  # inductor's partitioner
    x = torch.randn(4, 16, 128, dtype=torch.bfloat16, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = loss(x)
    out.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert any(t.dtype == torch.uint8 for t in saved), "the packed 4-bit weight is what the backward reads"
    assert not [tuple(t.shape) for t in saved if t.dtype.is_floating_point and t.numel() >= 256 * 128]
