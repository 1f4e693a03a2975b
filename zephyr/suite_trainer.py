"""The suite's SFTTrainer subclass: TRL's SFTTrainer without a GPU-to-CPU sync in the training step.

It overrides private methods and reads private attributes of TRL's SFTTrainer and transformers' Trainer, each
checked by tests/test_trl_compat.py. Importing this module imports TRL; zephyr.trl_compat._suite_trainer_class
imports it when a trainer is built, so that the rest of the suite loads without TRL.
"""

from __future__ import annotations

from pathlib import Path

import torch
from trl import SFTTrainer

from zephyr.io import atomic_write_json
from zephyr.rundir import LOSS_SUM
from zephyr.speed.flat import SPLIT_LABELS, SPLIT_PARTS
from zephyr.trl_compat import NUM_TOKENS, PADDED_WIDTH, fused_forward


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
    cuda_graphs = False  # the decoder layers replay as CUDA graphs (zephyr/speed/memory.py, prepare_layers)

    def training_step(self, model, inputs, num_items_in_batch=None):
        self._batch_tokens = inputs.pop(NUM_TOKENS, None)
        width = inputs.pop(PADDED_WIDTH, None)
        if self.neftune_width is not None:
            self.neftune_width.width = width
        parts = inputs.pop(SPLIT_PARTS, None)
        labels = inputs.pop(SPLIT_LABELS, None)
        if self.cuda_graphs and (parts is not None or self.current_gradient_accumulation_steps > 1):
            allocate_gradients(model)  # several backward replays before the optimizer reads the gradients
        if parts is None:
            return self._one_row(model, inputs, num_items_in_batch)
        # A micro-batch split into rows (zephyr/speed/flat.py): each part's loss is normalized by the answer tokens
        # of the whole micro-batch (or of the accumulation window, as the Trainer counts them), so the parts'
        # gradients add up to the whole row's; their losses add up to its loss. The whole row's tensors stay in
        # ``inputs`` for the Trainer's counts. Without the Trainer's count, the unsplit row would be normalized by
        # its own tokens and then divided by the accumulation steps, which the Trainer skips once given a count
        # where the model takes loss arguments: the count given the parts carries that division.
        items = num_items_in_batch
        if items is None:
            divides = not self.model_accepts_loss_kwargs or self.compute_loss_func is not None
            items = labels * (1 if divides else self.current_gradient_accumulation_steps)
        return sum(self._one_row(model, dict(part), items) for part in parts)

    def _one_row(self, model, inputs, num_items_in_batch):
        if self.checkpoint_plan is not None:
            self.checkpoint_plan.apply(model, inputs["input_ids"].numel())
        return super().training_step(model, inputs, num_items_in_batch)

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


def allocate_gradients(model) -> None:
    """Zeroed gradients for the trainable parameters that have none, allocated outside the CUDA graphs' memory.

    A replayed backward graph writes each parameter's gradient into the graphs' memory pool, and autograd installs
    that very tensor as the parameter's ``.grad`` when it has none; the next replay, before the optimizer reads it,
    writes over it (pytorch/pytorch#169545: torch raises, older versions summed wrong). With a gradient already
    there, autograd adds each replay's gradient to it in place: parts of a step and accumulated micro-batches add
    up as they do without graphs (0 + g is exact in any precision)."""
    for param in model.parameters():
        if param.requires_grad and param.grad is None:
            param.grad = torch.zeros_like(param)
