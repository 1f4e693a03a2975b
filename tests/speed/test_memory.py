"""The memory plan: how many layers to checkpoint, which ones, and that the Trainer keeps them so."""

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
