"""Compiled decoder layers compute what eager ones do, in one graph; CUDA graphs are switched off again."""

import pytest
import torch

from zephyr.config import ModelArguments, TrainArguments


def test_compile_auto_only_for_long_runs_of_one_batch_shape_on_a_gpu():
    from zephyr.speed.compile import MIN_STEPS_TO_COMPILE as LONG
    from zephyr.speed.compile import should_compile

    assert should_compile("auto", on_gpu=True, compilable_batches=True, steps=LONG)
    assert not should_compile("auto", on_gpu=True, compilable_batches=True, steps=LONG - 1)  # compiling would not pay
    assert not should_compile("auto", on_gpu=True, compilable_batches=False, steps=LONG)  # each padded shape compiles
    assert not should_compile("auto", on_gpu=False, compilable_batches=True, steps=LONG)
    assert should_compile("true", False, False, steps=1) and not should_compile("false", True, True, steps=LONG)


def test_planned_steps_count_epochs_over_rows_or_take_max_steps():
    from types import SimpleNamespace

    from zephyr.speed.memory import planned_steps

    def trainer(rows, max_steps=-1, epochs=5.0):
        args = SimpleNamespace(max_steps=max_steps, per_device_train_batch_size=4, gradient_accumulation_steps=2,
                               world_size=1, num_train_epochs=epochs)
        return SimpleNamespace(args=args, train_dataset=range(rows))

    assert planned_steps(trainer(11014)) == 6885  # Table 1's 100 % run: 1,377 steps an epoch, the last one short
    assert planned_steps(trainer(80, epochs=0.5)) == 5
    assert planned_steps(trainer(11014, max_steps=12)) == 12


def test_cuda_graphs_are_on_while_compiled_and_off_after():
    """CUDA graphs go through inductor's global flag (per-compilation patches crashed on replay); uncompiling
    must hand the flag back, or a later compilation in the process would record graphs it never asked for."""
    import torch._inductor.config as inductor_config
    from transformers import AutoModelForCausalLM, MistralConfig

    from zephyr.embedded import TINY_MISTRAL
    from zephyr.speed.compile import compile_decoder_layers

    model = AutoModelForCausalLM.from_config(MistralConfig(**TINY_MISTRAL))
    assert inductor_config.triton.cudagraphs is False
    uncompile = compile_decoder_layers(model, backend="aot_eager", cuda_graphs=True)
    assert inductor_config.triton.cudagraphs is True
    uncompile()
    assert inductor_config.triton.cudagraphs is False


def test_inductor_layers_train_exactly_like_eager_bf16(tiny_model_dir):
    """Compiled layers must train the function evaluation computes (eager bf16): left to fuse freely, inductor
    kept fp32 between fused steps and the adapters it trained scored 0.37 ROUGE-1 lower once evaluated eagerly
    (results/quality/compile-gap/). Real inductor, the 4-bit model with a bf16 adapter as TRL trains it, bf16
    autocast, two packed examples: the loss and every LoRA gradient equal eager's bit for bit with NF4
    de-quantized in the graph (so they did with bitsandbytes' matmul, --fused_nf4 False, in a one-off check:
    results/quality/compile-gap/). The 4-bit + LoRA layer traces as a single graph (a break at the bitsandbytes
    matmuls would bring the CPU overhead back); uncompiling restores plain modules."""
    import torch._inductor.config as inductor_config
    from peft import get_peft_model

    from zephyr.modeling import build_lora_config, load_model
    from zephyr.speed.compile import compile_decoder_layers, decoder_layers

    args = ModelArguments(model_name_or_path=str(tiny_model_dir), lora_targets="all", lora_dropout=0.0,
                          dtype="bf16")
    torch.manual_seed(0)
    model = get_peft_model(load_model(args), build_lora_config(args))
    for name, param in model.named_parameters():
        if param.requires_grad:
            param.data = param.data.to(torch.bfloat16)
            if "lora_B" in name:
                torch.nn.init.normal_(param, std=0.02)
    model.enable_input_require_grads()  # else the first layer's input differs (no grad): a second graph
    model.train()  # as the Trainer trains (on a CPU with AVX512-BF16, eval mode lets bitsandbytes repack 4-bit weights)
    ids = torch.randint(32000, (1, 50))
    positions = torch.cat([torch.arange(30), torch.arange(20)]).unsqueeze(0)  # two packed examples

    def loss_and_grads():
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, position_ids=positions, labels=ids, use_cache=False).loss  # as TRL trains
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    eager_loss, eager_grads = loss_and_grads()
    torch._dynamo.utils.counters.clear()
    uncompile = compile_decoder_layers(model)
    compiled_loss, compiled_grads = loss_and_grads()
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1  # both layers ran the one compiled graph
    assert torch._dynamo.utils.counters["graph_break"] == {}
    assert {type(m.base_layer).__name__ for m in model.modules() if hasattr(m, "lora_A")} == {"TraceableLinear4bit"}
    uncompile()
    assert inductor_config.emulate_precision_casts is False  # handed back, like the CUDA graphs flag
    assert all(layer._compiled_call_impl is None for layer in decoder_layers(model))
    assert {type(m.base_layer).__name__ for m in model.modules() if hasattr(m, "lora_A")} == {"Linear4bit"}
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=0, atol=0)
    for name, grad in eager_grads.items():
        torch.testing.assert_close(compiled_grads[name], grad, rtol=0, atol=0, msg=name)


def test_examples_padded_to_max_length_train_exactly_like_unpadded(tokenizer, tmp_path):
    """--pad_to_max_length gives every batch of whole examples one shape, rows x max_length (what CUDA graphs
    replay); the padding is masked and carries no loss, so the loss and every gradient are the unpadded batch's."""
    from transformers import AutoModelForCausalLM, MistralConfig
    from trl import SFTTrainer

    from conftest import run_args
    from zephyr.data import Example
    from zephyr.embedded import TINY_MISTRAL
    from zephyr.prompting import PromptBuilder
    from zephyr.tasks import get_task
    from zephyr.training import build_sft_config, build_training_dataset

    builder = PromptBuilder(get_task("newsgroups"), tokenizer, "original", ["sci.space", "rec.autos"])
    texts = ["The rocket reached orbit.", "New brakes.", "Shuttle tiles and heat shields again.", "Cars rust."]
    examples = [Example(str(i), t, "sci.space" if i % 2 == 0 else "rec.autos") for i, t in enumerate(texts)]
    dataset, _ = build_training_dataset(builder, examples, max_length=48)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(MistralConfig(**TINY_MISTRAL))
    results = {}
    for pad in (False, True):
        data, _, train_args = run_args("unused", "unused", tmp_path, pad_to_max_length=pad)
        data.max_length = 48
        trainer = SFTTrainer(model=model, args=build_sft_config(train_args, data, tmp_path), train_dataset=dataset,
                             processing_class=tokenizer)
        batch = trainer.data_collator(list(trainer.train_dataset))
        model.zero_grad(set_to_none=True)
        loss = trainer.compute_loss(model, batch)
        loss.backward()
        results[pad] = batch["input_ids"].shape, loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}
    (plain_shape, plain_loss, plain_grads), (padded_shape, padded_loss, padded_grads) = results[False], results[True]
    assert padded_shape == (4, 48) and plain_shape[1] < 48
    torch.testing.assert_close(padded_loss, plain_loss, rtol=1e-6, atol=1e-6)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(padded_grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_pad_to_max_length_is_for_batches_of_examples_only():
    from zephyr.errors import UsageError

    with pytest.raises(UsageError, match="--pad_to_max_length: pads batches of whole examples"):
        TrainArguments(pad_to_max_length=True, packing=True)
