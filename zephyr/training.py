"""QLoRA fine-tuning with TRL's SFTTrainer into a self-describing run directory.

Layout of ``<output_root>/<run_name>/``:
  config.json         resolved arguments, data report, library versions, git commit, device
  train_log.jsonl     one row per logging step: loss, learning rate, tokens/s, peak memory
  train_metrics.json  runtime, tokens/s, peak memory, final loss (written last: the run is complete)
  loss.png            training loss against tokens and steps, with the learning rate
  tensorboard/ ...    what --report_to writes (tensorboard/, wandb/, mlruns/, trackio/)
  adapter/            LoRA adapter and tokenizer (PeftModel.from_pretrained loads it)
  predictions.jsonl, metrics.json   after evaluation
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from zephyr.config import DataArguments, ModelArguments, TrainArguments, to_dict
from zephyr.io import atomic_write_json
from zephyr.modeling import build_lora_config, compute_dtype, load_model, load_tokenizer, resolve_model_path
from zephyr.nf4 import backend_without_cse, make_nf4_linears_traceable
from zephyr.packing import NUM_TOKENS, PackedRowsCollator
from zephyr.progress import phase_done, train_progress_callback
from zephyr.prompting import PromptBuilder
from zephyr.rundir import (ADAPTER_DIR, DEFAULT_SAVE_STEPS, LOSS_SUM, TRAIN_METRICS, default_save_steps,
                           latest_checkpoint, loss_sum, prepare_run_dir, run_directory, run_lock, write_config)
from zephyr.runinfo import peak_memory_gib
from zephyr.tasks import Task, get_task

log = logging.getLogger(__name__)


def _checkpoint_interval_callback():
    from transformers import TrainerCallback

    class CheckpointInterval(TrainerCallback):
        """Sets the default checkpoint interval once the Trainer knows the run's length."""

        def on_train_begin(self, args, state, control, **kwargs):
            state.save_steps = default_save_steps(state.max_steps)

    return CheckpointInterval()


def _train_log_callback():
    from transformers import TrainerCallback

    class TrainLogCallback(TrainerCallback):
        """Appends loss, tokens/s and peak memory to ``train_log.jsonl`` at every logging step."""

        def __init__(self, path: Path):
            self.path, self.start = path, None

        def on_train_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()
            self.tokens_at_start = state.num_input_tokens_seen
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero:
                return
            elapsed = time.perf_counter() - self.start
            tokens = state.num_input_tokens_seen - self.tokens_at_start
            row = {"step": state.global_step, "epoch": state.epoch, **(logs or {}),
                   "tokens_seen": state.num_input_tokens_seen, "elapsed_s": round(elapsed, 3),
                   "tokens_per_s": round(tokens / elapsed, 1) if elapsed else None, **peak_memory_gib()}
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(row) + "\n")

    return TrainLogCallback


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
        neftune_noise_alpha=train_args.neftune_alpha,
        completion_only_loss=train_args.loss == "completion",
        max_length=data_args.max_length,
        packing=train_args.packing,
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
    if config.n_gpu > 1:
        # One process that sees several GPUs would get nn.DataParallel, which TRL refuses: train on this process's
        # GPU (where the model was loaded) and leave several GPUs to `accelerate launch` (DDP).
        log.info("%d GPUs visible to one process: training on one; use accelerate launch for DDP", config.n_gpu)
        config._n_gpu = 1
    return config


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


def plan_checkpointing(probe: Callable[[int, bool], float], n_layers: int, rows: int, budget: float) -> int:
    """Fewest decoder layers to checkpoint so that a step of ``rows`` packed rows stays within ``budget`` bytes.

    ``probe(rows, checkpointed)`` returns the peak memory of one forward and backward pass with every layer
    checkpointed or none (infinite when it ran out of memory). A whole step without checkpointing is tried
    first: compiled layers may fit where the eager step did not (prepare_layers), and the training batch's
    shape is one they compile anyway. Otherwise three small probes give the fixed cost (weights), the cost per
    row with every layer checkpointed, and what each un-checkpointed layer adds per row; peak memory is linear
    in rows.
    """
    if probe(rows, False) <= budget:
        return 0
    one, two, one_full = probe(1, True), probe(2, True), probe(1, False)
    per_row = two - one
    per_layer_row = max(0.0, (one_full - one) / n_layers)
    fixed = one - per_row
    for checkpointed in range(n_layers + 1):
        # A checkpointed layer's activations come back, one layer at a time, during the backward pass.
        resident = n_layers - checkpointed + (1 if checkpointed else 0)
        if fixed + rows * (per_row + resident * per_layer_row) <= budget:
            return checkpointed
    return n_layers


def spread_layers(n_layers: int, checkpointed: int) -> list[bool]:
    """Which layers to checkpoint: exactly ``checkpointed`` of ``n_layers``, spread evenly over the stack.

    transformers' own ``every_n_layers`` can only checkpoint every n-th layer: needing 17 of 32 layers meant a
    stride of 1 and all 32 recomputed.
    """
    return [(i * checkpointed) // n_layers != ((i + 1) * checkpointed) // n_layers for i in range(n_layers)]


def _checkpoint_only_callback(flags: list[bool]):
    from transformers import TrainerCallback

    class CheckpointOnly(TrainerCallback):
        """Turns checkpointing off again for the layers the plan keeps, after the Trainer has enabled it."""

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            for layer, checkpointed in zip(decoder_layers(model), flags, strict=True):
                layer.gradient_checkpointing = checkpointed

    return CheckpointOnly()


def _memory_probe(trainer, length: int, vocab_size: int):
    """``probe(rows, checkpointed)`` for prepare_layers: one real training step on ``rows`` random rows of
    ``length`` tokens, batched by the trainer's own collator."""
    model = trainer.model
    backbone = model.get_base_model()
    device = next(model.parameters()).device

    def probe(rows: int, checkpointed: bool) -> float:
        if checkpointed:
            backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            backbone.gradient_checkpointing_disable()
        examples = [{"input_ids": ids, "labels": ids, "seq_lengths": [length]}
                    for ids in torch.randint(vocab_size, (rows, length)).tolist()]
        batch = {k: v.to(device) for k, v in trainer.data_collator(examples).items() if isinstance(v, torch.Tensor)}
        model.train()  # as in training: dropout on, and the compiled layers' graphs are those of training
        peaks = []
        try:
            for _ in range(2):  # the first pass may compile the layers, whose autotuning allocates memory of its own
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                with trainer.accelerator.autocast():  # as in training: its compiled layers are the ones probed
                    loss = model(**batch, use_cache=False, fused_lm_head=True).loss
                loss.backward()
                torch.cuda.synchronize()
                model.zero_grad(set_to_none=True)
                peaks.append(float(torch.cuda.max_memory_allocated()))
        except torch.cuda.OutOfMemoryError:  # a whole step without checkpointing, on a small GPU
            model.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            return float("inf")
        return peaks[-1]

    return probe


def prepare_layers(trainer, train_args: TrainArguments, max_length: int):
    """Plan activation checkpointing and compile the decoder layers; returns (checkpointed layers, uncompile).

    ``--gradient_checkpointing auto`` on the GPU first tries one whole training step with nothing checkpointed,
    before compiling: a model whose eager step fits (every small one) is then compiled once, for the training
    batch, as CUDA graphs. Otherwise the plan is sized by probing the compiled layers, which save fewer
    activations than eager ones. Each shape the compiled layers see costs a compilation of about ten seconds,
    and a checkpointed layer's recomputation would run inside the backward pass's graph replay, so CUDA graphs
    are kept to plans without checkpointing, in one process, on packed rows.
    """
    model = trainer.model
    n_layers = len(decoder_layers(model)) or 1
    rows = train_args.per_device_train_batch_size
    budget = train_args.train_memory_gib * 2**30 * 0.9  # 10% for the optimizer and allocator fragmentation
    probing = train_args.gradient_checkpointing == "auto" and torch.cuda.is_available()
    # Packed rows keep one batch shape (rows x max_length, bar the last batch); other batches vary in length.
    fixed_shape = isinstance(trainer.data_collator, PackedRowsCollator)
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if probing else []):  # keep the run's RNG
        if probing:
            probe = _memory_probe(trainer, max_length, model.get_base_model().config.get_text_config().vocab_size)
            checkpointed = 0 if probe(rows, False) <= budget else None
        elif train_args.gradient_checkpointing.isdigit():
            checkpointed = min(int(train_args.gradient_checkpointing), n_layers)
        else:
            checkpointed = n_layers if train_args.gradient_checkpointing == "true" else 0
        compiled = should_compile(train_args.compile_layers, torch.cuda.is_available(), fixed_shape)
        # A graph is recorded for each batch shape, so only for packed rows.
        cuda_graphs = (compiled and checkpointed == 0 and train_args.cuda_graphs and torch.cuda.is_available()
                       and trainer.args.world_size == 1 and fixed_shape)
        uncompile = (compile_decoder_layers(model, cuda_graphs=cuda_graphs, fused_nf4=train_args.fused_nf4)
                     if compiled else (lambda: None))
        if checkpointed is None:
            checkpointed = plan_checkpointing(probe, n_layers, rows, budget)
    if probing:
        model.get_base_model().gradient_checkpointing_disable()
        torch.cuda.empty_cache()
    if checkpointed and checkpointed < n_layers and train_args.gradient_checkpointing != "true":
        trainer.args.gradient_checkpointing = True  # the Trainer enables it on every layer; the callback trims
        trainer.add_callback(_checkpoint_only_callback(spread_layers(n_layers, checkpointed)))
    elif checkpointed == n_layers:
        trainer.args.gradient_checkpointing = True
    log.info("activation checkpointing: %d of %d layers%s", checkpointed, n_layers,
             f" (budget {train_args.train_memory_gib:.1f} GiB)" if probing else "")
    log.info("decoder layers: %s", "compiled, replayed as CUDA graphs" if cuda_graphs
             else "compiled" if compiled else "eager")
    return checkpointed, uncompile


def decoder_layers(model) -> list:
    return [m for m in model.modules() if type(m).__name__.endswith("DecoderLayer")]


def compile_decoder_layers(model, backend: str = "inductor", fullgraph: bool = False, cuda_graphs: bool = False,
                           fused_nf4: bool = True):
    """Compile every decoder layer with torch.compile; returns a function that puts them back to eager.

    A training step on one GPU is bound by the CPU: Python dispatches a few hundred small kernels per layer
    (norms, rotary, LoRA dropout and scaling, residuals), several times over in the backward pass. A compiled
    layer runs as one fused graph forward and one backward. The layers run the same code and share its graph
    (the first layer gets a second one: its input needs no gradient), so compiling costs about a minute once
    per process, not once per layer. The 4-bit NF4 matmuls are dequantized by plain tensor operations in the
    graph (zephyr/nf4.py): bitsandbytes' own Python dispatch of each one cost more CPU time than a small
    model's whole layer.

    ``cuda_graphs`` (inductor) records each compiled forward and backward as a CUDA graph, replayed with one
    launch: a SmolLM2-sized step has about 20 ms of GPU work behind 100 ms of kernel launches. It is set in
    inductor's global config until ``uncompile``; passing it per compilation (``config_patches``) crashed the
    first replay with a segmentation fault (torch 2.11).
    """
    import torch._inductor.config as inductor_config

    layers = decoder_layers(model)
    restore_linears = [make_nf4_linears_traceable(layer) if fused_nf4 else (lambda: None) for layer in layers]
    graphs_before = inductor_config.triton.cudagraphs
    inductor_config.triton.cudagraphs = cuda_graphs
    for layer in layers:
        layer.compile(backend=backend_without_cse(backend), dynamic=True, fullgraph=fullgraph)  # lengths vary

    def uncompile():
        for layer, restore_linear in zip(layers, restore_linears):
            layer._compiled_call_impl = None
            restore_linear()
        torch._dynamo.reset()  # the compiled graphs hold the LoRA modules; evaluation replaces them
        inductor_config.triton.cudagraphs = graphs_before

    return uncompile


def compile_summary() -> str:
    """The time torch.compile took in this process and what its on-disk caches served ('' if nothing compiled):
    how a sweep's shared --compile_cache is seen to work (a later run of the same shapes: hits, less time)."""
    from torch._dynamo.utils import compilation_time_metrics, counters

    seconds = sum(compilation_time_metrics.get("_compile.compile_inner", []))
    if not seconds:
        return ""
    graphs, joint = counters["inductor"], counters["aot_autograd"]
    return (f"; compiling took {seconds:.1f} s (FX graph cache {graphs['fxgraph_cache_hit']} hits, "
            f"{graphs['fxgraph_cache_miss']} misses; AOTAutograd cache {joint['autograd_cache_hit']} hits, "
            f"{joint['autograd_cache_miss']} misses)")


def should_compile(setting: str, on_gpu: bool, fixed_shape: bool) -> bool:
    """``--compile_layers``: ``auto`` compiles on a GPU when the batches keep one shape (packed rows).

    Batches of whole examples change length at every step. Measured on SmolLM2-135M (SAMSum, batches of 8
    examples, one H200), compiled training ran at 2,346 tokens/s against 4,442 eager, compilation included
    (issue 13); on the CPU compiling takes longer than the short runs it would speed up.
    """
    if setting == "auto":
        return on_gpu and fixed_shape
    return setting == "true"


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

        def _finalize_training(self, *args, **kwargs):
            # The Trainer's mean training loss counts only the steps run in this process, over all steps.
            self._total_loss_scalar += self.loss_before_resume or 0.0
            return super()._finalize_training(*args, **kwargs)

        def training_step(self, model, inputs, *args, **kwargs):
            self._batch_tokens = inputs.pop(NUM_TOKENS, None)
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
            outputs = model(**inputs, use_cache=False, fused_lm_head=True)
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


def build_trainer(model, tokenizer, dataset, data_args: DataArguments, model_args: ModelArguments,
                  train_args: TrainArguments, run_dir: Path, callbacks=()):
    """The suite's SFTTrainer for a PEFT model: lm_head adapter exposed, checkpointing planned, layers compiled.

    Returns (trainer, restore, checkpointed_layers); ``restore()`` after training undoes the lm_head view and the
    compilation, leaving an ordinary PEFT model to save and evaluate.
    """
    restore_lm_head = expose_lm_head_adapter(model)
    dtype = compute_dtype(model_args.dtype)
    trainer = _suite_trainer_class()(model=model, args=build_sft_config(train_args, data_args, run_dir, dtype),
                         train_dataset=dataset, processing_class=tokenizer, callbacks=list(callbacks))
    trainer.sync_free_metrics = train_args.sync_free_metrics
    if train_args.packing and train_args.packed_rows and model_args.attn_implementation != "flash_attention_2":
        # flash attention's varlen kernel is what TRL's padding-free rows are made for; SDPA and eager want rows
        trainer.data_collator = PackedRowsCollator(tokenizer.pad_token_id, dtype)
    checkpointed, uncompile = prepare_layers(trainer, train_args, data_args.max_length)
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # a raw dict per log step; the progress line says it readably

    def restore():
        uncompile()
        restore_lm_head()

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


def train(data_args: DataArguments, model_args: ModelArguments, train_args: TrainArguments) -> TrainedRun:
    from accelerate import PartialState
    from peft import get_peft_model
    from transformers import set_seed

    task = get_task(data_args.task)
    run_dir = run_directory(data_args, model_args, train_args)
    model_path = resolve_model_path(model_args.model_name_or_path, model_args.model_cache_dir)
    started = time.perf_counter()
    loaded = task.load_split("train", data_args.data_dir, data_args.train_file)
    examples = task.select_train(loaded.examples, data_args.train_fraction, data_args.data_seed)
    labels = task.labels(loaded.examples)
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
            log.info("training on %d of %d rows (%d dropped as empty, %d shortened to %d tokens)%s", len(examples),
                     len(loaded.examples), loaded.dropped, truncated, data_args.max_length,
                     f"; resuming from {resume_from}" if resume_from else "")
            write_config(run_dir / "config.json", arguments, kind="finetune", model_path=model_path,
                         base_model=model_args.model_name_or_path,
                         data=data_report, resumed_from=str(resume_from) if resume_from else None,
                         processes=processes.num_processes)
        processes.wait_for_everyone()
        if not main:  # the main process has cleaned or kept the directory: resume from what it left
            resume_from = latest_checkpoint(run_dir)

        set_seed(train_args.seed)  # LoRA's A matrices are drawn here, before the Trainer seeds anything
        model = get_peft_model(base_model, build_lora_config(model_args))
        callbacks = [_train_log_callback()(run_dir / "train_log.jsonl"), train_progress_callback()]
        if train_args.save_steps is None:
            callbacks.append(_checkpoint_interval_callback())
        trainer, restore, checkpointed = build_trainer(
            model, tokenizer, dataset, data_args, model_args, train_args, run_dir, callbacks=callbacks)
        trainer.loss_before_resume = loss_sum(resume_from) if resume_from else 0.0
        started = time.perf_counter()
        result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        started = phase_done("training", started, f"{trainer.state.global_step} steps, "
                             f"{trainer.state.num_input_tokens_seen:,} tokens{compile_summary()}")
        restore()
        if main:
            _save_finished_run(trainer, tokenizer, result, run_dir, resume_from, checkpointed)
            phase_done("writing results", started, f"adapter, loss.png and train_metrics.json in {run_dir}")
    return TrainedRun(run_dir, task, trainer.model, tokenizer, labels, main)


def _save_finished_run(trainer, tokenizer, result, run_dir: Path, resume_from: Path | None, checkpointed: int):
    from zephyr.results import plot_training_log

    plot_training_log(run_dir / "train_log.jsonl", run_dir / "loss.png")
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
