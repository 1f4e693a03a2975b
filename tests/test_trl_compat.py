"""The suite's trainer (zephyr/suite_trainer.py) against TRL's own, and every TRL internal it and
zephyr/trl_compat.py rely on."""

import inspect
import subprocess
import sys

import pytest
import torch

from conftest import REPO, packed_rows_trainer, run_args


def test_the_suite_trainer_is_imported_with_trl_only_when_a_trainer_is_built():
    """zephyr.trl_compat loads without TRL; ``_suite_trainer_class()`` returns zephyr/suite_trainer.py's subclass."""
    code = ("import sys; from zephyr.trl_compat import _suite_trainer_class; "
            "assert 'trl' not in sys.modules, 'trl was imported'; "
            "from trl import SFTTrainer; trainer = _suite_trainer_class(); "
            "assert issubclass(trainer, SFTTrainer) and trainer.__module__ == 'zephyr.suite_trainer', trainer")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr


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


# -- each TRL internal zephyr/trl_compat.py relies on: a TRL upgrade that removes or renames one fails here, naming it
def _require(condition: bool, internal: str) -> None:
    assert condition, f"TRL/transformers upgrade: {internal} is gone or changed, and zephyr/trl_compat.py relies on it"


@pytest.fixture(scope="module")
def stock_trainer(tokenizer, tmp_path_factory):
    from trl import SFTTrainer

    trainer, _, _ = packed_rows_trainer(tokenizer, tmp_path_factory.mktemp("stock"), SFTTrainer)
    return trainer


def test_trls_packed_rows_carry_each_examples_length(stock_trainer):
    from zephyr.trl_compat import SEQ_LENGTHS

    _require(SEQ_LENGTHS in stock_trainer.train_dataset.column_names, f"the packed dataset's {SEQ_LENGTHS!r} column")
    batch = stock_trainer.data_collator([{"input_ids": [5, 6, 7, 8, 9], SEQ_LENGTHS: [2, 3]}])
    _require(batch["position_ids"].tolist() == [[0, 1, 0, 1, 2]],
             f"TRL's collator restarting positions at each example of {SEQ_LENGTHS!r}")


def test_trls_fused_lm_head_returns_what_the_suite_trainer_reads(stock_trainer):
    from zephyr.trl_compat import fused_forward

    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        outputs = fused_forward(stock_trainer.model, {"input_ids": ids, "labels": ids})
    for field in ("loss", "log_probs", "entropy", "is_top1", "label_mask"):
        _require(getattr(outputs, field, None) is not None, f"model(..., fused_lm_head=True).{field}")


def test_trl_reads_the_lm_head_through_get_output_embeddings():
    """expose_lm_head_adapter replaces ``get_output_embeddings``: TRL must still read lm_head (and refuse an adapter on
    it) through that method, or the view would not be trained or would be refused."""
    from trl import SFTTrainer
    from trl.trainer.utils import add_fused_lm_head

    _require("get_output_embeddings()" in inspect.getsource(add_fused_lm_head),
             "add_fused_lm_head reading lm_head through get_output_embeddings()")
    _require("get_output_embeddings()" in inspect.getsource(SFTTrainer.__init__),
             "SFTTrainer's lm_head check through get_output_embeddings()")


def test_training_arguments_take_the_one_gpu_override(tmp_path):
    from zephyr.training import build_sft_config
    from zephyr.trl_compat import train_on_one_gpu

    data, _, train_args = run_args("unused", "unused", tmp_path)
    config = build_sft_config(train_args, data, tmp_path)
    _require(hasattr(config, "_n_gpu"), "TrainingArguments._n_gpu")
    config._n_gpu = 2
    _require(config.n_gpu == 2, "TrainingArguments.n_gpu reading _n_gpu")
    assert train_on_one_gpu(config).n_gpu == 1


# (class, method, parameters the suite trainer passes or receives)
OVERRIDDEN = [("Trainer", "_maybe_log_save_evaluate", ["tr_loss"]), ("Trainer", "_save_checkpoint", ["model", "trial"]),
              ("Trainer", "_get_output_dir", ["trial"]), ("Trainer", "_finalize_training", []),
              ("Trainer", "training_step", ["model", "inputs"]), ("Trainer", "_track_num_input_tokens", ["inputs"]),
              ("Trainer", "get_tp_size", []),
              ("SFTTrainer", "compute_loss", ["model", "inputs", "return_outputs", "num_items_in_batch"]),
              ("SFTTrainer", "log", ["logs", "start_time"])]


@pytest.mark.parametrize("owner,method,parameters", OVERRIDDEN, ids=[f"{o}.{m}" for o, m, _ in OVERRIDDEN])
def test_methods_the_suite_trainer_overrides_or_calls_exist(owner, method, parameters):
    import transformers
    import trl

    cls = getattr(trl if owner == "SFTTrainer" else transformers, owner)
    _require(callable(getattr(cls, method, None)), f"{owner}.{method}")
    signature = inspect.signature(getattr(cls, method)).parameters
    _require(all(name in signature for name in parameters), f"{owner}.{method}{tuple(parameters)}")


def test_attributes_the_suite_trainer_reads_exist(stock_trainer):
    from transformers import Trainer

    for name in ("compute_loss_func", "label_smoother", "aux_loss_enabled", "_metrics"):
        _require(hasattr(stock_trainer, name), f"SFTTrainer.{name}")
    _require("train" in stock_trainer._metrics, "SFTTrainer._metrics['train']")
    for name in ("loss_type", "average_tokens_across_devices"):
        _require(hasattr(stock_trainer.args, name), f"SFTConfig.{name}")
    trainer_source = inspect.getsource(Trainer)
    for name in ("_total_loss_scalar", "_initial_num_input_tokens_seen"):  # set when training starts
        _require(f"self.{name}" in trainer_source, f"Trainer.{name}")
