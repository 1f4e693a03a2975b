"""The TRL internals zephyr/trl_compat.py relies on, and the suite's trainer against TRL's own."""

import pytest
import torch

from conftest import packed_rows_trainer


def test_suite_trainer_loss_and_metrics_equal_trl_without_a_sync(tokenizer, tmp_path):
    """The suite's sync-free training step computes TRL's loss, and at the logging step TRL's entropy and token
    accuracy; its token count is the collator's, not TRL's sum over a 4-D mask."""
    from trl import SFTTrainer

    from zephyr.speed.packing import NUM_TOKENS, PackedRowsCollator
    from zephyr.trl_compat import _suite_trainer_class

    trainer, _, _ = packed_rows_trainer(tokenizer, tmp_path, _suite_trainer_class())
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
    from zephyr.speed.packing import NUM_TOKENS, PackedRowsCollator
    from zephyr.trl_compat import _suite_trainer_class

    trainer, _, _ = packed_rows_trainer(tokenizer, tmp_path, _suite_trainer_class())
    trainer.sync_free_metrics = False
    trainer.model.train()
    batch = PackedRowsCollator(tokenizer.pad_token_id, torch.float32)(list(trainer.train_dataset))
    batch.pop(NUM_TOKENS)
    with torch.no_grad():
        trainer.compute_loss(trainer.model, dict(batch))
    assert trainer._metric_sums is None and len(trainer._metrics["train"]["entropy"]) == 1  # read by TRL at once
