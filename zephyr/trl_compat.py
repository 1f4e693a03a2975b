"""Every place the suite relies on TRL's (and its Trainer's) internals, so that a TRL upgrade is checked here.

tests/test_trl_compat.py asserts each internal below still exists, and fails naming it when an upgrade removes
or renames it:

- the columns of TRL's packed rows (``seq_lengths``) and the forward TRL patches in (``fused_lm_head=True``,
  returning ``log_probs``, ``entropy``, ``is_top1`` and ``label_mask``);
- ``TrainingArguments._n_gpu``, set to one GPU per process;
- TRL's refusal of an lm_head adapter, which reads ``get_output_embeddings()`` (``expose_lm_head_adapter``);
- the suite's SFTTrainer subclass (zephyr/suite_trainer.py, imported by ``_suite_trainer_class``), which overrides
  private methods and reads private attributes of TRL's SFTTrainer and transformers' Trainer.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)
# TRL's packed rows carry the length of each example they hold in this column.
SEQ_LENGTHS = "seq_lengths"
# A plain int in the batch (left on the CPU by device placement): the batch's real tokens, so that the trainer
# can count tokens without a GPU-to-CPU sync in every micro-step. The trainer removes it before the forward.
NUM_TOKENS = "num_tokens"
# A plain int in a flat batch (zephyr/speed/flat.py): the width its examples would have padded to, which sets
# NEFTune's noise scale. Removed before the forward pass, like NUM_TOKENS.
PADDED_WIDTH = "padded_width"


def fused_forward(model, inputs: dict):
    """A training forward through the lm_head TRL's SFTTrainer patches in: per-token log-probabilities, entropy,
    top-1 hits and the label mask computed in chunks, never the full logits."""
    return model(**inputs, use_cache=False, fused_lm_head=True)


def train_on_one_gpu(config):
    if config.n_gpu > 1:
        # One process that sees several GPUs would get nn.DataParallel, which TRL refuses: train on this process's
        # GPU (where the model was loaded) and leave several GPUs to `accelerate launch` (DDP).
        log.info("%d GPUs visible to one process: training on one; use accelerate launch for DDP", config.n_gpu)
        config._n_gpu = 1
    return config


class _EffectiveLoraHead:
    """Read-only view of a LoRA-adapted lm_head whose ``weight`` is W + scale * B @ A (differentiable in A, B)."""

    def __init__(self, layer):
        self.layer = layer

    @property
    def weight(self):
        weight = self.layer.base_layer.weight
        for name in self.layer.active_adapters:
            if name in self.layer.lora_A:
                weight = weight + self.layer.get_delta_weight(name).to(weight.dtype)
        return weight

    @property
    def bias(self):
        return self.layer.base_layer.bias


def expose_lm_head_adapter(model):
    """Make TRL's fused loss see an lm_head adapter; returns a function that undoes it.

    SFTTrainer computes log-probabilities from ``lm_head.weight`` in chunks, never calling the module, so a
    LoRA adapter on lm_head (the study's full tuning) would get no gradient; TRL refuses it for that reason.
    Exposing the effective weight lets it train. LoRA dropout does not apply to lm_head on this path.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    base = model.get_base_model()
    head = base.get_output_embeddings()
    if not isinstance(head, BaseTunerLayer):
        return lambda: None
    view = _EffectiveLoraHead(head)
    base.get_output_embeddings = lambda: view
    return lambda: base.__dict__.pop("get_output_embeddings", None)


def _suite_trainer_class():
    """The suite's SFTTrainer subclass (zephyr/suite_trainer.py), imported only when a trainer is built: importing
    it imports TRL."""
    from zephyr.suite_trainer import SuiteSFTTrainer

    return SuiteSFTTrainer
