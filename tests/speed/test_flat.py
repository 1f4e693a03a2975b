"""Flat batches compute what padded batches of the same examples compute: loss and every LoRA gradient."""

import json

import pytest
import torch

from conftest import training_rows

# The suite loads a model onto the GPU wherever there is one (zephyr.modeling.device_map).
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _one_step(model_dir, tokenizer, tmp_path, dtype: str, flat: bool, bucket: int | None = None,
              split_tokens: int | None = None, via_trainer: bool = False, count_items: bool = False,
              accumulation: int = 1, segments: int | None = None):
    """Loss and LoRA gradients of one training step of the suite's trainer on 8 examples (4-bit, LoRA on every
    projection and lm_head, no dropout so that both layouts draw nothing at random). ``via_trainer``: through the
    trainer's ``training_step`` (which runs a split batch's parts), given the step's answer tokens as the Trainer
    counts them when ``count_items``, as the micro-batch of a step of ``accumulation`` micro-batches."""
    from peft import get_peft_model

    from zephyr.config import DataArguments, ModelArguments, TrainArguments
    from zephyr.modeling import build_lora_config, load_model
    from zephyr.speed.flat import FlatBatchCollator, use_flat_attention
    from zephyr.training import build_sft_config
    from zephyr.trl_compat import _suite_trainer_class, expose_lm_head_adapter

    args = ModelArguments(model_name_or_path=str(model_dir), lora_targets="all", lora_lm_head=True, dtype=dtype,
                          lora_dropout=0.0)
    torch.manual_seed(0)
    model = get_peft_model(load_model(args), build_lora_config(args))
    generator = torch.Generator().manual_seed(1)
    for name, param in model.named_parameters():
        if "lora_B" in name:  # a trained-looking adapter, so that every gradient path carries signal
            param.data.copy_(torch.randn(param.shape, generator=generator) * 0.02)
    expose_lm_head_adapter(model)
    dataset = training_rows(tokenizer)
    train_args = TrainArguments(output_root=str(tmp_path), max_steps=1, optim="adamw_torch",
                                gradient_checkpointing="false", batch_layout="flat" if flat else "padded")
    data_args = DataArguments(max_length=96)
    config = build_sft_config(train_args, data_args, tmp_path, torch.bfloat16 if dtype == "bf16" else torch.float32)
    trainer = _suite_trainer_class()(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)
    if dtype == "fp32":  # TRL casts a 4-bit model's LoRA weights to bf16; fp32 here means fp32 throughout
        for param in model.parameters():
            if param.requires_grad:
                param.data = param.data.float()
    rows = [trainer.train_dataset[i] for i in range(len(dataset))]
    if flat:
        use_flat_attention(model)
        batch = FlatBatchCollator(tokenizer.pad_token_id, bucket, 96 if bucket or split_tokens else None,
                                  split_tokens, segments)(rows)
    else:
        batch = trainer.data_collator(rows)
    if via_trainer:
        model.train()
        items = int((batch["labels"][:, 1:] != -100).sum()) if count_items else None
        trainer.current_gradient_accumulation_steps = accumulation  # set by the Trainer's loop for each step
        loss = trainer.training_step(model, dict(batch), items)  # it takes its own keys out of the batch
        grads = {n: p.grad.float().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}
        return loss.item(), grads, batch
    batch.pop("num_tokens", None)
    batch.pop("padded_width", None)
    batch = {k: v.to(DEVICE) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    model.train()
    loss = trainer.compute_loss(model, batch)
    loss.backward()
    grads = {n: p.grad.float().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.item(), grads, batch


def _relative(a: dict, b: dict) -> float:
    """Largest relative difference, by norm, over the LoRA gradients."""
    return max(((a[n] - b[n]).norm() / b[n].norm()).item() for n in a)


def test_flat_batch_trains_exactly_like_the_padded_batch(tiny_model_dir, tokenizer, tmp_path):
    """fp32: the two layouts multiply the same numbers in matrices of other shapes, so they agree to float32's
    rounding of those sums (measured on the CPU: loss 9e-8, gradients 2.8e-7 by norm; the bounds are 1e-6 and
    1e-5)."""
    padded_loss, padded, padded_batch = _one_step(tiny_model_dir, tokenizer, tmp_path, "fp32", False)
    flat_loss, flat, flat_batch = _one_step(tiny_model_dir, tokenizer, tmp_path, "fp32", True)
    assert padded_batch["input_ids"].shape[0] == 8 and flat_batch["input_ids"].shape[0] == 1
    real = int(padded_batch["attention_mask"].sum())
    assert flat_batch["input_ids"].shape[1] == real < padded_batch["input_ids"].numel()  # no padding left
    assert (flat_batch["labels"] != -100).sum() == (padded_batch["labels"][:, 1:] != -100).sum()
    assert flat_loss == pytest.approx(padded_loss, rel=1e-6)
    assert len(flat) == len(padded) > 20  # every projection of both layers and lm_head
    assert _relative(flat, padded) < 1e-5


@pytest.mark.parametrize("bucket", [32, 96])
def test_a_row_padded_to_its_bucket_trains_exactly_like_the_row(tiny_model_dir, tokenizer, tmp_path, bucket):
    """Rows replayed as CUDA graphs are padded to a multiple of ``bucket`` tokens with one more example that carries
    no loss and attends only to itself: the real tokens compute what they compute without it (fp32, the bounds of
    the flat-against-padded test; measured on the CPU: loss 0, gradients below 1e-7)."""
    loss, grads, batch = _one_step(tiny_model_dir, tokenizer, tmp_path, "fp32", True)
    bucket_loss, bucket_grads, bucket_batch = _one_step(tiny_model_dir, tokenizer, tmp_path, "fp32", True, bucket)
    length, padded_length = batch["input_ids"].shape[1], bucket_batch["input_ids"].shape[1]
    assert padded_length % bucket == 0 and length < padded_length <= length + bucket
    assert len(bucket_batch["cu_seq_lens_q"]) == len(batch["cu_seq_lens_q"]) + 1  # the padding is one example
    assert bucket_batch["max_length_q"] == 96  # the kernel's bound is fixed, so that it does not change the shape
    assert torch.equal(bucket_batch["input_ids"][:, :length], batch["input_ids"])
    assert (bucket_batch["labels"][:, length:] == -100).all()
    assert bucket_loss == pytest.approx(loss, rel=1e-6)
    assert _relative(bucket_grads, grads) < 1e-5


@pytest.mark.parametrize("bucket, segments, count_items, accumulation",
                         [(None, None, False, 1), (32, None, True, 1), (32, 9, True, 1), (None, None, False, 2)])
def test_a_step_split_into_parts_trains_exactly_like_the_whole_row(tiny_model_dir, tokenizer, tmp_path, bucket,
                                                                   segments, count_items, accumulation):
    """A step whose row would be longer than ``split_tokens`` runs as consecutive rows of whole examples, each loss
    normalized by the whole step's answer tokens: the loss and every LoRA gradient are the whole row's (fp32, the
    bounds of the flat-against-padded test; the parts' gradients add up in another order), with the Trainer's
    token count or without it, in a step of one micro-batch or of two, and with each part's padding laid as
    one-token segments up to the whole micro-batch's number of segments (as CUDA graphs take them)."""
    from zephyr.speed.flat import SPLIT_PARTS

    whole_loss, whole, whole_batch = _one_step(tiny_model_dir, tokenizer, tmp_path, "fp32", True, bucket,
                                               via_trainer=True, count_items=count_items, accumulation=accumulation,
                                               segments=segments)
    split_loss, split, split_batch = _one_step(tiny_model_dir, tokenizer, tmp_path, "fp32", True, bucket, 128,
                                               via_trainer=True, count_items=count_items, accumulation=accumulation,
                                               segments=segments)
    parts = split_batch[SPLIT_PARTS]
    assert SPLIT_PARTS not in whole_batch and len(parts) >= 3
    assert all(part["input_ids"].shape[1] <= 128 for part in parts)
    if segments:  # 8 examples and a padding segment, in the whole row and in every part
        assert {len(part["cu_seq_lens_q"]) for part in parts + [whole_batch]} == {segments + 1}
    assert split_loss == pytest.approx(whole_loss, rel=1e-6)
    assert len(split) == len(whole) > 20
    assert _relative(split, whole) < 1e-5


@pytest.mark.parametrize("split_tokens, accumulation", [(128, 1), (None, 2)])
def test_replayed_steps_add_their_gradients_to_gradients_allocated_before(tiny_model_dir, tokenizer, tmp_path,
                                                                          monkeypatch, split_tokens, accumulation):
    """A replayed CUDA graph's backward writes the gradients into the graphs' memory, which autograd would install
    as ``.grad`` and the next replay overwrite (pytorch/pytorch#169545). With graphs, a step that runs several
    backward passes (its parts, or accumulated micro-batches) finds every LoRA gradient allocated before its
    first, and each pass adds to those same tensors."""
    from zephyr.suite_trainer import SuiteSFTTrainer

    one_row, seen = SuiteSFTTrainer._one_row, []

    def recording(self, model, inputs, items):
        seen.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
        return one_row(self, model, inputs, items)

    monkeypatch.setattr(SuiteSFTTrainer, "_one_row", recording)
    monkeypatch.setattr(SuiteSFTTrainer, "cuda_graphs", True)
    _, grads, _ = _one_step(tiny_model_dir, tokenizer, tmp_path, "fp32", True, None, split_tokens, via_trainer=True,
                            accumulation=accumulation)
    assert len(seen) >= (3 if split_tokens else 1) and len(seen[0]) == len(grads) > 20
    for before in seen:
        assert all(grad is not None and grad.data_ptr() == seen[0][name].data_ptr() for name, grad in before.items())


def test_split_parts_hold_the_examples_in_order():
    """Parts are consecutive runs of whole examples, each row within ``split_tokens`` (with its bucket's padding);
    together they hold the whole row's tokens and answer labels; a row that fits is left whole."""
    from zephyr.speed.flat import SPLIT_LABELS, SPLIT_PARTS, FlatBatchCollator

    lengths = [5, 7, 3, 6, 9, 2]
    rows = [{"input_ids": list(range(1, n + 1)), "labels": list(range(1, n + 1))} for n in lengths]
    for bucket, split in ((None, 10), (4, 12)):
        collator = FlatBatchCollator(0, bucket, 9, split)
        batch = collator(rows)
        parts = batch[SPLIT_PARTS]
        assert collator.parts(lengths) == ([1, 2, 1, 1, 1] if bucket is None else [1, 2, 1, 2])
        assert all(part["input_ids"].shape[1] <= split for part in parts)
        real = [part["input_ids"][part["labels"] != -100] for part in parts]
        assert torch.equal(torch.cat(real), batch["input_ids"][batch["labels"] != -100])
        assert batch[SPLIT_LABELS] == int((batch["labels"] != -100).sum()) == sum(n - 1 for n in lengths)
        assert batch["num_tokens"] == sum(lengths) == batch["input_ids"].shape[1]
        assert SPLIT_PARTS not in FlatBatchCollator(0, bucket, 9, 64)(rows)
    with pytest.raises(ValueError, match="split_tokens"):
        FlatBatchCollator(0, 4, 9, 11)  # a row of one 9-token example and its padding needs 12


def test_every_bucketed_row_holds_as_many_segments_as_a_whole_micro_batch():
    """With ``segments``, a part of fewer examples lays its padding as one-token segments and one of the rest: every
    row, whole or part, has the same number of example boundaries (an input whose size a CUDA graph fixes), its
    length a multiple of the bucket; the real tokens, their boundaries and answer labels are the row's own."""
    from zephyr.speed.flat import SPLIT_PARTS, FlatBatchCollator

    lengths = [5, 7, 3, 6, 9, 2]
    rows = [{"input_ids": list(range(1, n + 1)), "labels": list(range(1, n + 1))} for n in lengths]
    collator = FlatBatchCollator(0, 8, 9, 24, segments=7)
    assert collator.parts(lengths) == [4, 2]  # 21 tokens and 3 padding segments fill 24; 9 + 2 and 5 fill 16
    parts = collator(rows)[SPLIT_PARTS]
    whole = FlatBatchCollator(0, 8, 9, None, segments=7)(rows)
    assert [part["input_ids"].shape[1] for part in parts] == [24, 16] and whole["input_ids"].shape[1] == 40
    for row, examples in zip(parts + [whole], ([5, 7, 3, 6], [9, 2], lengths)):
        bounds = row["cu_seq_lens_q"].tolist()
        assert len(bounds) == 8 and bounds[-1] == row["input_ids"].shape[1]
        real = sum(examples)
        assert bounds[:len(examples) + 1] == [sum(examples[:i]) for i in range(len(examples) + 1)]
        assert bounds[len(examples):-1] == list(range(real, real + 7 - len(examples)))  # one-token segments
        assert (row["labels"][0, real:] == -100).all() and (row["position_ids"][0, real:bounds[-2] + 1] == 0).all()
    assert FlatBatchCollator(0, 8, 9, None)(rows[:2])["cu_seq_lens_q"].tolist() == [0, 5, 12, 16]  # no segments
    with pytest.raises(ValueError, match="split_tokens"):
        FlatBatchCollator(0, 8, 9, 15, segments=7)  # one 9-token example and 6 padding segments need 16


def test_split_length_is_the_longest_row_that_fits_without_checkpointing():
    """Two probes (rows of one and two examples of max_length) give memory's line in a row's tokens; the split is
    the longest bucket multiple under the budget, no longer than the largest step, None when one example does not
    fit."""
    from zephyr.speed.flat import FlatBatchCollator
    from zephyr.speed.memory import split_tokens_for

    collator = FlatBatchCollator(0, bucket=256, max_length=512)
    calls = []

    def probe(rows, checkpointed):  # 10 GiB of weights and state, 2 MiB a token of the row
        calls.append((rows, checkpointed))
        return 10 * 2**30 + collator.row_length(rows * 512, rows) * 2**21

    assert split_tokens_for(probe, 15 * 2**30, 512, 8, collator) == 2560
    assert calls == [(1, False), (2, False)]
    assert split_tokens_for(probe, 15 * 2**30 - 1, 512, 8, collator) == 2304
    assert split_tokens_for(probe, 100 * 2**30, 512, 8, collator) == 4352  # 8 x 512 tokens and a padding token
    assert split_tokens_for(probe, 11 * 2**30, 512, 8, collator) is None  # 768 tokens: 11.5 GiB
    assert split_tokens_for(lambda rows, _: 12 * 2**30, 15 * 2**30, 512, 8, collator) is None  # no line to draw
    plain = FlatBatchCollator(0, max_length=512)
    assert split_tokens_for(lambda rows, _: 10 * 2**30 + rows * 512 * 2**21, 15 * 2**30, 512, 8, plain) == 2560


def test_a_bucket_longer_than_max_length_is_refused():
    from zephyr.speed.flat import FlatBatchCollator

    with pytest.raises(ValueError, match="at most max_length"):
        FlatBatchCollator(0, bucket=256, max_length=128)


def test_flat_batch_in_bf16_differs_from_padded_only_by_bf16_rounding(tiny_model_dir, tokenizer, tmp_path):
    """bf16, as users train: each layout rounds its own sums, so neither is exact; the flat layout must be as close
    to the float32 step as the padded layout is (the layout adds no error of its own), and the two close to each
    other (CPU: each 5.5e-2 from float32, 3.4e-3 from each other; TRL keeps a 4-bit model's LoRA weights in bf16).
    On a CUDA GPU the flat layout runs the flash varlen kernel, the padded one SDPA with a padding mask."""
    _, reference, _ = _one_step(tiny_model_dir, tokenizer, tmp_path, "fp32", False)
    padded_loss, padded, _ = _one_step(tiny_model_dir, tokenizer, tmp_path, "bf16", False)
    flat_loss, flat, _ = _one_step(tiny_model_dir, tokenizer, tmp_path, "bf16", True)
    padded_error, flat_error = _relative(padded, reference), _relative(flat, reference)
    assert flat_loss == pytest.approx(padded_loss, rel=1e-2)
    assert flat_error < 1.5 * padded_error + 1e-3, (flat_error, padded_error)
    assert _relative(flat, padded) < 2 * padded_error + 1e-3


def test_flat_attention_matches_each_example_alone():
    """The attention function itself: each example of a flat row gets exactly its own causal attention."""
    from zephyr.speed.flat import flat_attention

    generator = torch.Generator().manual_seed(0)
    lengths = [5, 1, 9, 3]
    q = torch.randn(1, 4, sum(lengths), 8, generator=generator)
    k, v = torch.randn(1, 2, sum(lengths), 8, generator=generator), torch.randn(1, 2, sum(lengths), 8,
                                                                             generator=generator)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    out, _ = flat_attention(None, q, k, v, None, scaling=0.3, cu_seq_lens_q=cu, max_length_q=max(lengths))
    for start, end in zip(cu[:-1].tolist(), cu[1:].tolist()):
        alone = torch.nn.functional.scaled_dot_product_attention(
            q[:, :, start:end], k[:, :, start:end].repeat_interleave(2, 1), v[:, :, start:end].repeat_interleave(2, 1),
            is_causal=True, scale=0.3)
        torch.testing.assert_close(out[:, start:end], alone.transpose(1, 2), rtol=1e-5, atol=1e-6)


def test_flat_attention_on_the_cpu_never_scores_the_whole_row(monkeypatch):
    """Off a GPU, SDPA keeps every score it masks: a flat row of 8 examples of 512 tokens would hold 8 times a
    padded batch's attention scores in every layer. Each example is attended on its own instead; the row-wide
    mask (still the path inside a compiled graph) gives the same output."""
    import zephyr.speed.flat as flat

    generator = torch.Generator().manual_seed(1)
    lengths = [7, 2, 11, 4]
    q = torch.randn(1, 4, sum(lengths), 8, generator=generator, requires_grad=True)
    k, v = (torch.randn(1, 2, sum(lengths), 8, generator=generator, requires_grad=True) for _ in range(2))
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    seen, sdpa = [], torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(flat.F, "scaled_dot_product_attention",
                        lambda query, *args, **kwargs: seen.append(query.shape[2]) or sdpa(query, *args, **kwargs))
    out, _ = flat.flat_attention(None, q, k, v, None, scaling=0.3, cu_seq_lens_q=cu, max_length_q=max(lengths))
    assert max(seen) == max(lengths)
    out.sum().backward()
    monkeypatch.setattr(flat, "attends_each_example", lambda query: False)
    masked, _ = flat.flat_attention(None, q, k, v, None, scaling=0.3, cu_seq_lens_q=cu, max_length_q=max(lengths))
    assert seen[-1] == sum(lengths)
    torch.testing.assert_close(out, masked, rtol=1e-5, atol=1e-6)


def test_neftune_noise_keeps_the_padded_batch_scale():
    """NEFTune draws uniform noise in +-alpha / sqrt(width x hidden): the flat row's hook uses the padded width."""
    from zephyr.speed.flat import NEFTuneWidth

    embedding = torch.nn.Embedding(10, 64)
    hook = NEFTuneWidth(alpha=5.0)
    embedding.register_forward_hook(hook)
    ids = torch.zeros(1, 4000, dtype=torch.long)
    hook.width = 25
    with torch.no_grad():
        noise = embedding(ids) - embedding.weight[0]
    bound = 5.0 / (25 * 64) ** 0.5
    assert noise.abs().max() <= bound * (1 + 1e-6)
    assert noise.abs().max() > 0.99 * bound  # uniform over the whole range, not the flat row's smaller one
    embedding.eval()
    with torch.no_grad():
        assert torch.equal(embedding(ids)[0, 0], embedding.weight[0])


def test_compiled_layers_take_flat_batches_of_every_length_with_one_graph(tiny_model_dir, synthetic_data, tmp_path):
    """Each flat step has its own length; the compiled decoder layers must not compile again for each (after the
    recompile limit, Dynamo would silently run them eagerly)."""
    from torch._dynamo.utils import counters

    from conftest import run_args
    from zephyr.training import train

    before = counters["stats"]["unique_graphs"]
    run = train(*run_args(tiny_model_dir, synthetic_data, tmp_path, max_steps=4, compile_layers="true"))
    rows = [json.loads(row) for row in (run.run_dir / "train_log.jsonl").read_text().splitlines()]
    seen = [row["num_input_tokens_seen"] for row in rows if "loss" in row]
    per_step = {b - a for a, b in zip([0] + seen, seen)}
    assert len(seen) == 4 and len(per_step) >= 3  # steps of different sizes
    assert counters["stats"]["unique_graphs"] - before == 2  # the first layer (no input gradient) and the rest


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")
@pytest.mark.parametrize("accumulation", [1, 2])
def test_flat_rows_replayed_as_cuda_graphs_train_like_compiled_rows(tiny_model_dir, synthetic_data, tmp_path, caplog,
                                                                    accumulation):
    """On a GPU, with --flat_cuda_graphs, flat rows whose largest step fits without checkpointing are padded to
    buckets and the compiled layers replayed as CUDA graphs; six steps then log the losses of the same run without
    graphs (no dropout, so that nothing is drawn at random; bf16 rounds the sums of other shapes: within 1e-2), also
    with two micro-batches a step, whose second backward replay must not write over the first one's gradients."""
    import logging
    from dataclasses import replace

    from conftest import run_args
    from zephyr.training import train

    losses, tokens = {}, {}
    for graphs in (False, True):
        data, model, train_args = run_args(tiny_model_dir, synthetic_data, tmp_path / str(graphs), max_steps=6,
                                           compile_layers="true", cuda_graphs=graphs, flat_cuda_graphs=graphs,
                                           gradient_accumulation_steps=accumulation)
        with caplog.at_level(logging.INFO, logger="zephyr.speed.memory"):
            caplog.clear()
            run = train(data, replace(model, lora_dropout=0.0), train_args)
        assert ("replayed as CUDA graphs" in caplog.text) == graphs
        rows = [json.loads(row) for row in (run.run_dir / "train_log.jsonl").read_text().splitlines()]
        losses[graphs] = [row["loss"] for row in rows if "loss" in row]
        tokens[graphs] = [row["num_input_tokens_seen"] for row in rows if "loss" in row]
    assert len(losses[True]) == 6
    assert tokens[True] == tokens[False]  # real tokens only: the bucket's padding is not counted
    assert losses[True] == pytest.approx(losses[False], rel=1e-2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")
def test_steps_too_long_to_replay_run_in_parts_as_cuda_graphs(tiny_model_dir, synthetic_data, tmp_path, caplog,
                                                               monkeypatch):
    """On a GPU, with --flat_cuda_graphs, when the largest step would need checkpointing (a budget nothing fits),
    steps longer than the longest row that fits (here: one max_length example) run in parts, each replayed as a
    CUDA graph; six steps log the losses of the same run compiled without graphs, whose plan checkpoints instead
    (no dropout; bf16 rounds the sums of other shapes: within 1e-2)."""
    import logging
    from dataclasses import replace

    import zephyr.speed.memory as memory
    from conftest import run_args
    from zephyr.training import train

    monkeypatch.setattr(memory, "split_tokens_for",
                        lambda probe, budget, max_length, rows, collator: collator.row_length(max_length, 1))
    losses, tokens = {}, {}
    for graphs in (False, True):
        data, model, train_args = run_args(tiny_model_dir, synthetic_data, tmp_path / str(graphs), max_steps=6,
                                           compile_layers="true", cuda_graphs=graphs, flat_cuda_graphs=graphs,
                                           gradient_checkpointing="auto", train_memory_gib=1e-4)
        with caplog.at_level(logging.INFO, logger="zephyr.speed.memory"):
            caplog.clear()
            run = train(data, replace(model, lora_dropout=0.0), train_args)
        assert ("run in parts" in caplog.text) == graphs
        assert ("replayed as CUDA graphs" in caplog.text) == graphs
        rows = [json.loads(row) for row in (run.run_dir / "train_log.jsonl").read_text().splitlines()]
        losses[graphs] = [row["loss"] for row in rows if "loss" in row]
        tokens[graphs] = [row["num_input_tokens_seen"] for row in rows if "loss" in row]
    assert len(losses[True]) == 6
    assert tokens[True] == tokens[False]
    assert losses[True] == pytest.approx(losses[False], rel=1e-2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")
def test_the_split_length_comes_from_probes_through_the_cuda_graphs(tiny_model_dir, synthetic_data, tmp_path,
                                                                   caplog, monkeypatch):
    """On a GPU, the split length's two probes run through the layers compiled and replayed as CUDA graphs: the
    longer row peaks higher, a budget between the two peaks gives a length between the two rows, and the run
    trains in parts. (The real probes; only the budget is set between them, as a tiny model's memory is.)"""
    import logging

    import torch._inductor.config as inductor_config

    import zephyr.speed.memory as memory
    from conftest import run_args
    from zephyr.training import train

    planned, seen = memory.split_tokens_for, {}

    def between_the_probes(probe, budget, max_length, rows, collator):
        seen.update(graphs=inductor_config.triton.cudagraphs, one=probe(1, False), two=probe(2, False))
        seen["split"] = planned(probe, (seen["one"] + seen["two"]) / 2, max_length, rows, collator)
        seen["rows"] = collator.row_length(max_length, 1), collator.row_length(2 * max_length, 2)
        return seen["split"]

    monkeypatch.setattr(memory, "split_tokens_for", between_the_probes)
    data, model, train_args = run_args(tiny_model_dir, synthetic_data, tmp_path, max_steps=4, compile_layers="true",
                                       cuda_graphs=True, flat_cuda_graphs=True, gradient_checkpointing="auto",
                                       train_memory_gib=1e-4)
    with caplog.at_level(logging.INFO, logger="zephyr.speed.memory"):
        train(data, model, train_args)
    assert seen["graphs"] is True and seen["two"] > seen["one"]
    assert seen["rows"][0] <= seen["split"] < seen["rows"][1]
    assert f"steps longer than {seen['split']} tokens run in parts" in caplog.text


def test_a_run_whose_steps_are_split_logs_the_losses_of_the_unsplit_run(tiny_model_dir, synthetic_data, tmp_path,
                                                                         monkeypatch):
    """Through the whole Trainer loop on the CPU (its token and FLOP counts, logging, the optimizer step): a run
    whose steps are split into parts logs the losses and tokens of the same run unsplit (no dropout; the parts add
    their gradients in another order: measured 1.3e-6 relative after four steps, bound 1e-5)."""
    from dataclasses import replace

    import zephyr.speed.memory as memory
    from conftest import run_args
    from zephyr.speed.flat import SPLIT_PARTS, FlatBatchCollator
    from zephyr.training import train

    set_row_bucket, collate, parts_seen = memory._set_row_bucket, FlatBatchCollator.__call__, []

    def split_at_150(collator, *args):  # what prepare_layers sets on a GPU, here by hand
        set_row_bucket(collator, *args)
        collator.split_tokens = 150

    def counting(collator, rows):
        batch = collate(collator, rows)
        parts_seen.append(len(batch.get(SPLIT_PARTS, [batch])))
        return batch

    monkeypatch.setattr(FlatBatchCollator, "__call__", counting)
    losses, tokens = {}, {}
    for split in (False, True):
        if split:
            monkeypatch.setattr(memory, "_set_row_bucket", split_at_150)
        data, model, train_args = run_args(tiny_model_dir, synthetic_data, tmp_path / str(split), max_steps=4)
        run = train(data, replace(model, lora_dropout=0.0), train_args)
        rows = [json.loads(row) for row in (run.run_dir / "train_log.jsonl").read_text().splitlines()]
        losses[split] = [row["loss"] for row in rows if "loss" in row]
        tokens[split] = [row["num_input_tokens_seen"] for row in rows if "loss" in row]
    assert len(losses[True]) == 4 and max(parts_seen) >= 2  # steps did run in parts
    assert tokens[True] == tokens[False]
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)
