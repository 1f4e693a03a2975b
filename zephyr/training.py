"""QLoRA fine-tuning with TRL's SFTTrainer into a self-describing run directory (its layout: zephyr/rundir.py).

The plain path, top to bottom: the SFT config, the training dataset, the trainer, and ``train()``. The callbacks
it adds live in zephyr/train_callbacks.py, the speed levers it switches on in zephyr/speed/, the trainer class in
zephyr/suite_trainer.py and TRL's internals in zephyr/trl_compat.py.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from zephyr.config import DataArguments, ModelArguments, TrainArguments, to_dict
from zephyr.io import atomic_write_json
from zephyr.modeling import build_lora_config, compute_dtype, load_model, load_tokenizer, resolve_model_path
from zephyr.progress import phase_done, train_progress_callback
from zephyr.prompting import PromptBuilder
from zephyr.rundir import (ADAPTER_DIR, DEFAULT_SAVE_STEPS, TRAIN_METRICS, latest_checkpoint, loss_sum,
                           prepare_run_dir, run_directory, run_lock, write_config)
from zephyr.runinfo import peak_memory_gib
from zephyr.speed.blas import use_matmul_library
from zephyr.speed.compile import compile_summary
from zephyr.speed.flat import FlatBatchCollator, add_neftune, use_flat_attention
from zephyr.speed.memory import prepare_layers
from zephyr.speed.packing import PackedRowsCollator
from zephyr.tasks import Task, get_task
from zephyr.train_callbacks import checkpoint_interval_callback, train_log_callback
from zephyr.trl_compat import _suite_trainer_class, expose_lm_head_adapter, train_on_one_gpu

log = logging.getLogger(__name__)


def flat_batches(train_args: TrainArguments) -> bool:
    """Whole examples laid end to end in one row per micro-batch (--batch_layout flat, without --packing)."""
    return not train_args.packing and train_args.batch_layout == "flat"


def build_sft_config(train_args: TrainArguments, data_args: DataArguments, run_dir: Path,
                     dtype: torch.dtype = torch.float32):
    """The SFTConfig for one run: the study's optimisation settings plus completion-only loss and EOS."""
    from trl import SFTConfig

    config = SFTConfig(
        output_dir=str(run_dir / "checkpoints"),
        num_train_epochs=train_args.num_train_epochs,
        max_steps=train_args.max_steps,
        learning_rate=train_args.learning_rate,
        lr_scheduler_type=train_args.lr_scheduler_type,
        warmup_steps=train_args.warmup_ratio,  # a value below 1 is a ratio of the total steps
        per_device_train_batch_size=train_args.per_device_train_batch_size,
        gradient_accumulation_steps=train_args.gradient_accumulation_steps,
        max_grad_norm=train_args.max_grad_norm,
        optim=train_args.optim,
        # "auto" is decided by prepare_layers once the model is on the GPU.
        gradient_checkpointing=train_args.gradient_checkpointing == "true",
        gradient_checkpointing_kwargs={"use_reentrant": False},
        # Flat batches add NEFTune's noise with the padded batch's scale themselves (zephyr/speed/flat.py).
        neftune_noise_alpha=None if flat_batches(train_args) else train_args.neftune_alpha,
        completion_only_loss=train_args.loss == "completion",
        max_length=data_args.max_length,
        packing=train_args.packing,
        pad_to_multiple_of=data_args.max_length if train_args.pad_to_max_length else None,
        seed=train_args.seed,
        data_seed=data_args.data_seed,
        logging_steps=train_args.logging_steps,
        save_strategy="no" if train_args.save_steps == 0 else "steps",
        save_steps=train_args.save_steps or DEFAULT_SAVE_STEPS,  # no --save_steps: set per run (CheckpointInterval)
        save_total_limit=2,
        report_to=[name.strip() for name in train_args.report_to.split(",")],
        run_name=run_dir.name,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        include_num_input_tokens_seen="non_padding",
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),  # lets torchrun on the CPU run DDP over gloo
        # Building the block mask of 8 rows of 512 took 11 ms on a 2-core CPU, near a tenth of a small model's
        # 115-140 ms step on the H100: two workers build the next batches meanwhile. On the CPU they would only
        # compete for its cores.
        dataloader_num_workers=2 if torch.cuda.is_available() else 0,
        dataloader_persistent_workers=torch.cuda.is_available(),
        logging_nan_inf_filter=False,  # its check waits for the GPU after every micro-step; a NaN loss shows as NaN
    )
    return train_on_one_gpu(config)


@contextlib.contextmanager
def trackers_in(run_dir: Path):
    """Point --report_to's local files into the run directory while it trains (a user's own settings win)."""
    wanted = {"TENSORBOARD_LOGGING_DIR": str(run_dir / "tensorboard"), "WANDB_DIR": str(run_dir),
              "MLFLOW_TRACKING_URI": (run_dir / "mlruns").resolve().as_uri(), "TRACKIO_DIR": str(run_dir / "trackio")}
    ours = [name for name in wanted if name not in os.environ]
    os.environ.update({name: wanted[name] for name in ours})
    try:
        yield
    finally:
        for name in ours:
            os.environ.pop(name, None)


def build_training_dataset(builder: PromptBuilder, examples, max_length: int):
    from datasets import Dataset

    encoded = [builder.encode_training(example, max_length) for example in examples]
    truncated = sum(row.pop("truncated") for row in encoded)
    return Dataset.from_list(encoded), truncated


def build_trainer(model, tokenizer, dataset, data_args: DataArguments, model_args: ModelArguments,
                  train_args: TrainArguments, run_dir: Path, callbacks=()):
    """The suite's SFTTrainer for a PEFT model: lm_head adapter exposed, checkpointing planned, layers compiled.

    Returns (trainer, restore, checkpointed_layers); ``restore()`` after training undoes the lm_head view, the
    compilation and the choice of matrix-product library, leaving an ordinary PEFT model to save and evaluate.
    """
    restore_lm_head = expose_lm_head_adapter(model)
    dtype = compute_dtype(model_args.dtype)
    trainer = _suite_trainer_class()(model=model, args=build_sft_config(train_args, data_args, run_dir, dtype),
                                     train_dataset=dataset, processing_class=tokenizer, callbacks=list(callbacks))
    trainer.sync_free_metrics = train_args.sync_free_metrics
    if train_args.packing and train_args.packed_rows and model_args.attn_implementation != "flash_attention_2":
        # flash attention's varlen kernel is what TRL's padding-free rows are made for; SDPA and eager want rows
        trainer.data_collator = PackedRowsCollator(tokenizer.pad_token_id, dtype)
    restore_attention = remove_neftune = lambda: None
    if flat_batches(train_args):
        trainer.data_collator = FlatBatchCollator(tokenizer.pad_token_id)
        if model_args.attn_implementation != "flash_attention_2":  # which reads the example boundaries itself
            restore_attention = use_flat_attention(model)
        if train_args.neftune_alpha is not None:
            trainer.neftune_width, remove_neftune = add_neftune(model, train_args.neftune_alpha)
    checkpointed, uncompile = prepare_layers(trainer, train_args, data_args.max_length)
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # a raw dict per log step; the progress line says it readably
    restore_matmul_library = use_matmul_library(train_args.matmul_library)  # last: nothing after it can fail

    def restore():
        uncompile()
        remove_neftune()
        restore_attention()
        restore_lm_head()
        restore_matmul_library()

    return trainer, restore, checkpointed


def is_main_process() -> bool:
    """False in every process but the first under ``accelerate launch``/``torchrun`` (they set RANK)."""
    return int(os.environ.get("RANK", "0")) == 0


@dataclass
class TrainedRun:
    run_dir: Path
    task: Task
    model: object
    tokenizer: object
    labels: list[str]
    is_main_process: bool = True  # under ``accelerate launch`` only the main process evaluates


def train(data_args: DataArguments, model_args: ModelArguments, train_args: TrainArguments,
          plan=None) -> TrainedRun:
    """Fine-tune one run. ``plan`` (zephyr.preflight.FinetunePlan) brings the training rows the pre-flight already
    read and selected; without one (a library call) they are read here."""
    from accelerate import PartialState
    from peft import get_peft_model
    from transformers import set_seed

    task = get_task(data_args.task)
    run_dir = run_directory(data_args, model_args, train_args)
    model_path = resolve_model_path(model_args.model_name_or_path, model_args.model_cache_dir)
    started = time.perf_counter()
    loaded, examples, labels = _training_rows(task, data_args, plan)
    tokenizer = load_tokenizer(model_path)
    builder = PromptBuilder(task, tokenizer, data_args.prompt_format, labels)
    dataset, truncated = build_training_dataset(builder, examples, data_args.max_length)
    started = phase_done("preparing data", started, f"{len(dataset)} training examples from {loaded.source}")
    arguments = to_dict(data_args, model_args, train_args)
    prepare_run_dir(run_dir, arguments, train_args.overwrite, dry_run=True)  # refuse before the slow part
    base_model = load_model(model_args, model_path)  # fails on a bad checkpoint before anything is written
    started = phase_done("loading model", started, f"{model_path} ({model_args.quantization})")
    # One process per GPU under `accelerate launch`: all of them train, the main one owns the run directory.
    processes = PartialState(cpu=not torch.cuda.is_available())  # on the CPU (tests), torchrun gives gloo DDP
    main = processes.is_main_process
    with run_lock(run_dir) if main else contextlib.nullcontext(), trackers_in(run_dir):
        if main:
            resume_from = prepare_run_dir(run_dir, arguments, train_args.overwrite)
            data_report = {"train_source": loaded.source, "train_rows_loaded": len(loaded.examples),
                           "train_rows_dropped_empty": loaded.dropped, "train_rows_used": len(examples),
                           "train_rows_truncated": truncated, "labels": labels}
            _record_run(run_dir, arguments, model_args, model_path, data_report, resume_from, data_args.max_length,
                        processes.num_processes)
        processes.wait_for_everyone()
        if not main:  # the main process has cleaned or kept the directory: resume from what it left
            resume_from = latest_checkpoint(run_dir)

        set_seed(train_args.seed)  # LoRA's A matrices are drawn here, before the Trainer seeds anything
        model = get_peft_model(base_model, build_lora_config(model_args))
        callbacks = [train_log_callback()(run_dir / "train_log.jsonl"), train_progress_callback()]
        if train_args.save_steps is None:
            callbacks.append(checkpoint_interval_callback())
        trainer, restore, checkpointed = build_trainer(
            model, tokenizer, dataset, data_args, model_args, train_args, run_dir, callbacks=callbacks)
        trainer.loss_before_resume = loss_sum(resume_from) if resume_from else 0.0
        started = time.perf_counter()
        try:
            result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        finally:
            restore()
        started = phase_done("training", started, f"{trainer.state.global_step} steps, "
                             f"{trainer.state.num_input_tokens_seen:,} tokens{compile_summary()}")
        if main:
            plotted = _save_finished_run(trainer, tokenizer, result, run_dir, resume_from, checkpointed)
            written = "adapter, loss.png and train_metrics.json" if plotted else "adapter and train_metrics.json"
            phase_done("writing results", started, f"{written} in {run_dir}")
    return TrainedRun(run_dir, task, trainer.model, tokenizer, labels, main)


def _training_rows(task: Task, data_args: DataArguments, plan) -> tuple:
    """(loaded split, selected rows, labels): the pre-flight plan's, or read here for a call without one."""
    if plan is not None and plan.train is not None:
        return plan.train, plan.train_examples, plan.labels
    loaded = task.load_split("train", data_args.data_dir, data_args.train_file)
    return (loaded, task.select_train(loaded.examples, data_args.train_fraction, data_args.data_seed),
            task.labels(loaded.examples))


def _record_run(run_dir: Path, arguments: dict, model_args: ModelArguments, model_path: str, data_report: dict,
                resume_from: Path | None, max_length: int, processes: int) -> None:
    """config.json of a run about to train (or resume), and one log line of what it trains on."""
    log.info("training on %d of %d rows (%d dropped as empty, %d shortened to %d tokens)%s",
             data_report["train_rows_used"], data_report["train_rows_loaded"], data_report["train_rows_dropped_empty"],
             data_report["train_rows_truncated"], max_length, f"; resuming from {resume_from}" if resume_from else "")
    write_config(run_dir / "config.json", arguments, kind="finetune", model_path=model_path,
                 base_model=model_args.model_name_or_path, data=data_report,
                 resumed_from=str(resume_from) if resume_from else None, processes=processes)


def _save_finished_run(trainer, tokenizer, result, run_dir: Path, resume_from: Path | None,
                       checkpointed: int) -> bool:
    """Adapter, tokenizer, train_metrics.json and loss.png; returns whether loss.png was drawn (a run shorter than
    --logging_steps has no logged loss)."""
    from zephyr.plots import plot_training_log

    plotted = plot_training_log(run_dir / "train_log.jsonl", run_dir / "loss.png")
    # The base lm_head is frozen: save only LoRA weights even when lm_head carries an adapter.
    trainer.model.save_pretrained(run_dir / ADAPTER_DIR, save_embedding_layers=False)
    tokenizer.save_pretrained(run_dir / ADAPTER_DIR)
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    runtime = result.metrics["train_runtime"]
    tokens_this_process = trainer.state.num_input_tokens_seen - trainer._initial_num_input_tokens_seen
    atomic_write_json(run_dir / TRAIN_METRICS, {
        "train_runtime_s": runtime, "train_steps": trainer.state.global_step,
        # summed over processes: the run's throughput, not one GPU's
        "train_tokens": trainer.state.num_input_tokens_seen,
        "tokens_per_s": tokens_this_process / runtime if runtime else None,  # after a resume: of this process
        "train_loss": None if trainer.loss_before_resume is None else result.training_loss,
        "first_logged_loss": losses[0] if losses else None,
        "last_logged_loss": losses[-1] if losses else None,
        "trainable_parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "resumed_from_step": int(resume_from.name.split("-")[1]) if resume_from else None,
        "checkpointed_layers": checkpointed,
        "processes": trainer.args.world_size,
        **peak_memory_gib()})
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # the run is complete: free the disk
    return plotted
