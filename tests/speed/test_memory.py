"""The memory plan: how many layers to checkpoint, which ones, and that the Trainer keeps them so."""

import pytest

from conftest import packed_rows_trainer


def test_a_layer_count_checkpoints_exactly_that_many_layers(tokenizer, tmp_path):
    from zephyr.config import TrainArguments
    from zephyr.speed.compile import decoder_layers
    from zephyr.speed.memory import prepare_layers
    from zephyr.trl_compat import _suite_trainer_class

    trainer, _, _ = packed_rows_trainer(tokenizer, tmp_path, _suite_trainer_class())
    checkpointed, _ = prepare_layers(trainer, TrainArguments(gradient_checkpointing="1", compile_layers="false"), 48)
    assert checkpointed == 1 and trainer.args.gradient_checkpointing
    trainer.model.gradient_checkpointing_enable()  # what Trainer.train does before on_train_begin
    trainer.callback_handler.on_train_begin(trainer.args, trainer.state, trainer.control)
    assert [layer.gradient_checkpointing for layer in decoder_layers(trainer.model)] == [False, True]


def test_checkpointing_plan_covers_only_the_layers_memory_needs():
    from zephyr.speed.memory import plan_checkpointing, spread_layers

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
    from zephyr.speed.compile import decoder_layers
    from zephyr.speed.memory import _checkpoint_only_callback

    model = AutoModelForCausalLM.from_config(MistralConfig(**TINY_MISTRAL))
    model.gradient_checkpointing_enable()  # what Trainer.train does before on_train_begin
    assert [layer.gradient_checkpointing for layer in decoder_layers(model)] == [True, True]
    _checkpoint_only_callback([False, True]).on_train_begin(None, None, None, model=model)
    assert [layer.gradient_checkpointing for layer in decoder_layers(model)] == [False, True]


def test_flat_batches_checkpoint_only_the_layers_each_step_needs():
    """A flat step's size follows its examples: short steps checkpoint nothing, the largest what the model says."""
    from transformers import AutoModelForCausalLM, MistralConfig

    from zephyr.embedded import TINY_MISTRAL
    from zephyr.speed.compile import decoder_layers
    from zephyr.speed.memory import MemoryModel, StepCheckpointing

    gib = 2**30
    # 4 GiB fixed, 0.1 GiB a 512-token row checkpointed, 0.05 GiB a row for each layer that keeps its activations
    memory = MemoryModel(fixed=4 * gib, per_row=0.1 * gib, per_layer_row=0.05 * gib, n_layers=32)
    plan = StepCheckpointing(memory, budget=12 * gib, row_tokens=512)
    assert plan.layers_for_tokens(4 * 512) == 0  # 4 + 4 * (0.1 + 32 * 0.05) = 10.8 GiB
    # 8 rows: 4 + 8 * (0.1 + 0.05 * resident) <= 12 allows 18 resident layers, one of them recomputed: 15
    assert plan.layers_for_tokens(8 * 512) == 15 == memory.layers_for(8, 12 * gib)
    # 6 rows: 4 + 6 * (0.1 + 0.05 * resident) <= 12 allows 24 resident layers, one of them recomputed: 9
    assert plan.layers_for_tokens(6 * 512) == 9
    model = AutoModelForCausalLM.from_config(MistralConfig(**TINY_MISTRAL))
    model.gradient_checkpointing_enable()
    small = StepCheckpointing(MemoryModel(fixed=0, per_row=1, per_layer_row=1, n_layers=2), budget=6, row_tokens=10)
    small.apply(model, 10)  # 1 row: 1 + 2 = 3 <= 6: nothing checkpointed
    assert [layer.gradient_checkpointing for layer in decoder_layers(model)] == [False, False]
    small.apply(model, 25)  # 2.5 rows: 2.5 * 3 = 7.5 > 6; one layer: 2.5 * (1 + 2) = 7.5 > 6; both: 2.5 * 2 = 5
    assert [layer.gradient_checkpointing for layer in decoder_layers(model)] == [True, True]
    small.apply(model, 10)
    assert [layer.gradient_checkpointing for layer in decoder_layers(model)] == [False, False]
    assert small.steps_by_layers == {0: 2, 2: 1}


@pytest.mark.parametrize("on_gpu, compiled, graphs, multiple, max_length, bucket", [
    (True, True, False, 64, 512, 64),      # compiled on a GPU: a few dozen row lengths
    (True, True, True, 64, 512, 256),      # CUDA graphs: one graph a bucket
    (True, True, True, 64, 128, 128),      # never past max_length, the kernel's bound on an example
    (True, True, False, 0, 512, None),     # --flat_row_multiple 0: each row its own length
    (True, False, False, 64, 512, None),   # eager layers: nothing to cache
    (False, True, False, 64, 512, None),   # compiled on the CPU: no cuBLAS
])
def test_flat_rows_are_padded_only_where_compiled_layers_on_a_gpu_gain(monkeypatch, on_gpu, compiled, graphs,
                                                                       multiple, max_length, bucket):
    import torch

    from zephyr.config import TrainArguments
    from zephyr.speed.flat import FlatBatchCollator
    from zephyr.speed.memory import _set_row_bucket

    collator = FlatBatchCollator(pad_token_id=2)  # imports TRL, which must not see the pretended GPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: on_gpu)
    _set_row_bucket(collator, TrainArguments(flat_row_multiple=multiple, per_device_train_batch_size=6), compiled,
                    graphs, max_length)
    assert (collator.bucket, collator.max_length) == (bucket, max_length)
    assert collator.segments == (7 if graphs else None)  # graph rows: 6 examples and a padding segment
    rows = [{"input_ids": [5] * 70, "labels": [5] * 70}, {"input_ids": [6] * 30, "labels": [6] * 30}]
    width = collator(rows)["input_ids"].shape[1]
    assert width == (100 if bucket is None else (100 // bucket + 1) * bucket)


def _pretended_gpu_planning(monkeypatch, probe, compile_layers, compilation):
    """A trainer over a tiny model and a flat collator, and prepare_layers on a pretended GPU: its probes,
    compilation and batch decisions are the given functions, recorded rather than run."""
    import contextlib

    import torch
    from transformers import AutoModelForCausalLM, MistralConfig

    import zephyr.speed.memory as memory
    from zephyr.config import TrainArguments
    from zephyr.embedded import TINY_MISTRAL
    from zephyr.speed.flat import FlatBatchCollator

    collator = FlatBatchCollator(pad_token_id=2)  # imports TRL, which must not see the pretended GPU
    model = AutoModelForCausalLM.from_config(MistralConfig(**TINY_MISTRAL))
    model.get_base_model = lambda: model
    trainer = type("Trainer", (), {"model": model, "data_collator": collator, "args": TrainArguments(),
                                   "add_callback": lambda self, callback: None})()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(torch.random, "fork_rng", lambda devices: contextlib.nullcontext())
    monkeypatch.setattr(memory, "_compilation", compilation)
    monkeypatch.setattr(memory, "_memory_probe", lambda trainer, length, vocab_size: probe)
    monkeypatch.setattr(memory, "compile_decoder_layers", compile_layers)
    return trainer


@pytest.mark.parametrize("budget_gib, given, split, compiled", [
    (3.0, None, 768, [True, True]),            # probed through the graphs: a 768-token row 2.5 GiB, 1,280 4.5
    (2.0, None, None, [True, False]),           # not even one example's row fits: graphs off, checkpointing planned
    (3.0, 1280, 1280, [True]),                 # --flat_split_tokens: no probe, graphs compiled once
])
def test_the_split_length_is_probed_on_the_layers_replayed_as_cuda_graphs(monkeypatch, budget_gib, given, split,
                                                                         compiled):
    """On a GPU, when the largest flat step needs checkpointing, the layers are compiled as CUDA graphs for the two
    probes that size the split, so that the probes measure what will train (the graphs' memory pool included),
    then undone and compiled again for training: with graphs at the probed length, without them (and a
    checkpointing plan) when no length fits. The GPU is pretended: probes and compilation are recorded, not run."""
    import zephyr.speed.memory as memory
    from zephyr.config import TrainArguments

    gib, state, probed, compiles = 2**30, {"graphs": None}, [], []

    def probe(rows, checkpointed):  # the peak of a row of `rows` examples of 512 tokens: 0.5 GiB + 2 GiB a row
        probed.append((rows, checkpointed, state["graphs"]))
        return 0.5 * gib + 2 * gib * rows / (1 if state["graphs"] else 0.8)  # eager layers keep a quarter more

    def compile_layers(model, cuda_graphs, fused_nf4):
        assert state["graphs"] is None, "compiled twice without undoing the first"
        compiles.append(cuda_graphs)
        state["graphs"] = cuda_graphs

        def uncompile():
            state["graphs"] = None
        return uncompile

    def compilation(trainer, train_args, max_length):
        memory._set_row_bucket(trainer.data_collator, train_args, True, True, max_length)
        return False, True, True, True  # flat rows, compiled, replayable as CUDA graphs

    trainer = _pretended_gpu_planning(monkeypatch, probe, compile_layers, compilation)
    collator = trainer.data_collator
    args = TrainArguments(gradient_checkpointing="auto", train_memory_gib=budget_gib / 0.9, flat_cuda_graphs=True,
                          per_device_train_batch_size=8, flat_split_tokens=given or 0)
    checkpointed, _ = memory.prepare_layers(trainer, args, 512)
    assert collator.split_tokens == split and compiles == compiled
    assert probed[0] == (8, False, None)  # the largest step, eager: it does not fit
    if given is None:  # the rows of one and two examples (768 and 1,280 tokens), through the graphs
        assert probed[1:3] == [(1, False, True), (2, False, True)]
    assert trainer.cuda_graphs == (split is not None) and (checkpointed == 0) == (split is not None)
    assert state["graphs"] == (split is not None)  # the layers as they train
    if split is None:
        assert trainer.checkpoint_plan is not None


def test_a_plan_that_fails_after_compiling_leaves_the_layers_eager(monkeypatch):
    """The benchmark runs its next setting on the same base model after one fails: a planning error after the
    layers were compiled undoes the compilation before it propagates."""
    import zephyr.speed.memory as memory
    from zephyr.config import TrainArguments

    undone = []

    def probe(rows, checkpointed):
        if checkpointed:
            raise RuntimeError("a probe failed")
        return float("inf")  # the largest step does not fit: the plan needs the probes with checkpointing

    trainer = _pretended_gpu_planning(monkeypatch, probe,
                                      lambda model, cuda_graphs, fused_nf4: lambda: undone.append(1),
                                      lambda trainer, args, max_length: (False, True, True, False))
    with pytest.raises(RuntimeError, match="a probe failed"):
        memory.prepare_layers(trainer, TrainArguments(gradient_checkpointing="auto"), 512)
    assert undone == [1]
