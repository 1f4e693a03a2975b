"""Every place the suite relies on TRL's (and its Trainer's) internals, so that a TRL upgrade is checked here.

tests/test_trl_compat.py asserts each internal below still exists, and fails naming it when an upgrade removes
or renames it:

- the columns of TRL's packed rows (``seq_lengths``) and the forward TRL patches in (``fused_lm_head=True``,
  returning ``log_probs``, ``entropy``, ``is_top1`` and ``label_mask``);
- ``TrainingArguments._n_gpu``, set to one GPU per process;
- TRL's refusal of an lm_head adapter, which reads ``get_output_embeddings()`` (``expose_lm_head_adapter``);
- the suite's SFTTrainer subclass, which overrides private methods and reads private attributes of TRL's
  SFTTrainer and transformers' Trainer.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from zephyr.io import atomic_write_json
from zephyr.rundir import LOSS_SUM

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
    from trl import SFTTrainer

    class SuiteSFTTrainer(SFTTrainer):
        """SFTTrainer without a GPU-to-CPU sync in the training step.

        TRL reads its entropy and token-accuracy metrics with ``.item()`` right after the forward pass, and the
        Trainer counted tokens the same way, so the CPU waited for the GPU to drain before queueing the backward
        pass; a small model, bound by the CPU, paid for the GPU time on top. Here the metrics are summed on the
        device and read once per logging step (token-weighted over the steps since the last log), and tokens are
        counted from the collator's ``num_tokens``.
        """

        _batch_tokens = None
        _metric_sums = None  # label tokens, entropy sum, top-1 hits since the last log
        sync_free_metrics = True  # False: TRL's own loss and metrics (the plain twin of this trainer)
        _running_loss = None  # the loss summed since the last log (the Trainer's tr_loss)
        loss_before_resume = 0.0  # the loss summed over the steps of the checkpoint this run resumed from

        def _maybe_log_save_evaluate(self, tr_loss, *args, **kwargs):
            self._running_loss = tr_loss
            return super()._maybe_log_save_evaluate(tr_loss, *args, **kwargs)

        def _save_checkpoint(self, model, trial):
            # Written before the Trainer's own files: trainer_state.json, written last, marks a complete checkpoint.
            if self.args.should_save and self.loss_before_resume is not None:
                folder = Path(self._get_output_dir(trial)) / f"checkpoint-{self.state.global_step}"
                total = self.loss_before_resume + self._total_loss_scalar + float(self._running_loss)
                atomic_write_json(folder / LOSS_SUM, {"step": self.state.global_step, "loss_sum": total})
            super()._save_checkpoint(model, trial)

        def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
            # PEFT's load_adapter casts a bf16 or fp16 adapter to float32; TRL trains a 4-bit model's adapter in bf16,
            # so a resumed run would go on in another precision than the run it continues, and end elsewhere.
            model_ = model if model is not None else self.model
            dtypes = {name: p.dtype for name, p in model_.named_parameters() if p.requires_grad}
            super()._load_from_checkpoint(resume_from_checkpoint, model)
            for name, param in model_.named_parameters():
                if name in dtypes and param.dtype != dtypes[name]:
                    param.data = param.data.to(dtypes[name])

        def _finalize_training(self, *args, **kwargs):
            # The Trainer's mean training loss counts only the steps run in this process, over all steps.
            self._total_loss_scalar += self.loss_before_resume or 0.0
            return super()._finalize_training(*args, **kwargs)

        neftune_width = None  # flat batches' NEFTune hook (zephyr/speed/flat.py), told each batch's padded width
        checkpoint_plan = None  # a per-step checkpointing plan (zephyr/speed/memory.py), sized by the batch's tokens

        def training_step(self, model, inputs, *args, **kwargs):
            self._batch_tokens = inputs.pop(NUM_TOKENS, None)
            width = inputs.pop(PADDED_WIDTH, None)
            if self.neftune_width is not None:
                self.neftune_width.width = width
            if self.checkpoint_plan is not None:
                self.checkpoint_plan.apply(model, inputs["input_ids"].numel())
            return super().training_step(model, inputs, *args, **kwargs)

        def _track_num_input_tokens(self, inputs):
            if self._batch_tokens is None:
                return super()._track_num_input_tokens(inputs)
            tokens = self._batch_tokens
            if self.args.world_size > 1:  # the run's tokens: summed over the processes (a sync, as before)
                tokens = int(self.accelerator.gather(torch.tensor(tokens, device=self.args.device)).sum().item())
            self.state.num_input_tokens_seen += tokens

        def _plain_nll(self) -> bool:
            """TRL's default loss, the only one the suite trains with; anything else goes to TRL unchanged."""
            return (self.sync_free_metrics and self.compute_loss_func is None and self.label_smoother is None
                    and self.args.loss_type == "nll" and not self.aux_loss_enabled
                    and getattr(self.accelerator, "parallelism_config", None) is None)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if return_outputs or not model.training or not self._plain_nll():
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            outputs = fused_forward(model, inputs)
            num_tokens = outputs.label_mask.sum() if num_items_in_batch is None else num_items_in_batch
            loss = -outputs.log_probs.sum() / torch.as_tensor(num_tokens).clamp(min=1)  # as TRL: zero where ignored
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * (self.accelerator.num_processes // self.get_tp_size())
            sums = torch.stack([outputs.label_mask.sum(), outputs.entropy.detach().sum(), outputs.is_top1.sum()])
            self._metric_sums = sums.float() if self._metric_sums is None else self._metric_sums + sums
            return loss

        def log(self, logs, start_time=None):
            if self._metric_sums is not None:
                valid, entropy, correct = self.accelerator.reduce(self._metric_sums, reduction="sum").tolist()
                self._metric_sums = None
                self._metrics["train"]["entropy"].append(entropy / valid if valid else 0.0)
                self._metrics["train"]["mean_token_accuracy"].append(correct / valid if valid else 0.0)
                self._metrics["train"]["num_tokens"] = [self.state.num_input_tokens_seen]
            super().log(logs, start_time)

    return SuiteSFTTrainer
