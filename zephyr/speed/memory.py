"""Memory: how many decoder layers to checkpoint so that a training step fits the GPU."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from zephyr.config import TrainArguments
from zephyr.preflight_checks import flat_split
from zephyr.speed.compile import compile_decoder_layers, decoder_layers, should_compile
from zephyr.speed.flat import FlatBatchCollator
from zephyr.speed.packing import PackedRowsCollator
from zephyr.trl_compat import NUM_TOKENS, PADDED_WIDTH, SEQ_LENGTHS, fused_forward

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MemoryModel:
    """Peak memory of a training step, linear in its rows: ``fixed`` (weights, optimizer state), ``per_row`` with
    every layer checkpointed, and ``per_layer_row``, what each layer that keeps its activations adds per row."""

    fixed: float
    per_row: float
    per_layer_row: float
    n_layers: int

    def layers_for(self, rows: float, budget: float) -> int:
        """Fewest layers to checkpoint so that a step of ``rows`` rows stays within ``budget`` bytes."""
        for checkpointed in range(self.n_layers + 1):
            # A checkpointed layer's activations come back, one layer at a time, during the backward pass.
            resident = self.n_layers - checkpointed + (1 if checkpointed else 0)
            if self.fixed + rows * (self.per_row + resident * self.per_layer_row) <= budget:
                return checkpointed
        return self.n_layers


def fit_memory_model(probe: Callable[[int, bool], float], n_layers: int) -> MemoryModel:
    """Three small probes: one and two rows with every layer checkpointed, one row with none."""
    one, two, one_full = probe(1, True), probe(2, True), probe(1, False)
    per_row = two - one
    return MemoryModel(fixed=one - per_row, per_row=per_row, per_layer_row=max(0.0, (one_full - one) / n_layers),
                       n_layers=n_layers)


def plan_checkpointing(probe: Callable[[int, bool], float], n_layers: int, rows: int, budget: float) -> int:
    """Fewest decoder layers to checkpoint so that a step of ``rows`` packed rows stays within ``budget`` bytes.

    ``probe(rows, checkpointed)`` returns the peak memory of one forward and backward pass with every layer
    checkpointed or none (infinite when it ran out of memory). A whole step without checkpointing is tried
    first: compiled layers may fit where the eager step did not (prepare_layers), and the training batch's
    shape is one they compile anyway. Otherwise the memory model (``fit_memory_model``) decides.
    """
    if probe(rows, False) <= budget:
        return 0
    return fit_memory_model(probe, n_layers).layers_for(rows, budget)


# Flat rows replayed as CUDA graphs are padded to a multiple of this many tokens: 8 Newsgroups examples of 512
# tokens at most make rows of 1,000-2,000 tokens, 4-5 buckets, each recorded once; the padding costs 128 tokens a
# row on average, computed while the GPU would otherwise wait for the CPU to launch kernels.
FLAT_BUCKET = 256


def flat_row_bucket(max_length: int) -> int:
    """The length bucket of flat rows replayed as CUDA graphs."""
    return min(FLAT_BUCKET, max_length)


@dataclass
class StepCheckpointing:
    """Checkpointing planned step by step, for flat batches whose size changes at every step.

    A step of 8 whole examples holds from a few hundred to ``8 x max_length`` tokens; a plan for the largest
    would recompute layers in every step. Before each step the trainer calls ``apply`` with the step's tokens,
    and exactly the layers the memory model needs for that many tokens are checkpointed (spread over the stack).
    Checkpointing recomputes the same function, so the plan changes time and memory only.
    """

    memory: MemoryModel
    budget: float
    row_tokens: int  # the tokens of one probe row (max_length)
    current: int | None = None
    steps_by_layers: dict = field(default_factory=dict)  # checkpointed layers -> steps so planned

    def layers_for_tokens(self, tokens: int) -> int:
        return self.memory.layers_for(tokens / self.row_tokens, self.budget)

    def apply(self, model, tokens: int) -> None:
        checkpointed = self.layers_for_tokens(tokens)
        self.steps_by_layers[checkpointed] = self.steps_by_layers.get(checkpointed, 0) + 1
        if checkpointed != self.current:
            flags = spread_layers(self.memory.n_layers, checkpointed)
            for layer, flag in zip(decoder_layers(model), flags, strict=True):
                layer.gradient_checkpointing = flag
            self.current = checkpointed


def spread_layers(n_layers: int, checkpointed: int) -> list[bool]:
    """Which layers to checkpoint: exactly ``checkpointed`` of ``n_layers``, spread evenly over the stack.

    transformers' own ``every_n_layers`` can only checkpoint every n-th layer: needing 17 of 32 layers meant a
    stride of 1 and all 32 recomputed.
    """
    return [(i * checkpointed) // n_layers != ((i + 1) * checkpointed) // n_layers for i in range(n_layers)]


def split_tokens_for(probe: Callable[[int, bool], float], budget: float, max_length: int, rows: int,
                     collator: FlatBatchCollator) -> int | None:
    """The longest flat row (a multiple of the collator's bucket) whose step fits ``budget`` with no layer
    checkpointed, for steps split into parts (``FlatBatchCollator.split_tokens``); None when not even a row of one
    ``max_length`` example fits.

    Peak memory is linear in a row's tokens: two probes, rows of one and of two ``max_length`` examples as the
    collator lays them, give the line. prepare_layers probes the layers as they will train, compiled and replayed
    as CUDA graphs (``_split_probed_as_graphs``), so that the line includes the graphs' memory pool: eager layers
    keep more activations (at 7B, all-module LoRA, a length planned from eager probes peaked at 15.4 GiB of an
    18 GiB budget), and compiled layers without graphs hold no pool.
    """
    row = collator.row_length
    one, two = probe(1, False), probe(2, False)
    shortest, longest = row(max_length, 1), row(rows * max_length, rows)
    if not one <= budget or two <= one:  # no line to draw: the largest step did not fit (prepare_layers)
        return None
    tokens = shortest + (budget - one) * (row(2 * max_length, 2) - shortest) / (two - one)
    split = min(int(tokens) // (collator.bucket or 1) * (collator.bucket or 1), longest)
    log.info("flat rows: a row of %d tokens peaked at %.2f GiB, one of %d at %.2f GiB: %d tokens fit %.2f GiB, "
             "split at %s", shortest, one / 2**30, row(2 * max_length, 2), two / 2**30, tokens, budget / 2**30,
             split if split >= shortest else "none")
    return split if split >= shortest else None


def _split_probed_as_graphs(trainer, train_args: TrainArguments, probe, budget: float, max_length: int) -> int | None:
    """``split_tokens_for``, its two probes run through the decoder layers compiled and replayed as CUDA graphs,
    as they will train: the line then includes the graphs' memory pool. The probes' compilation is undone after
    (``torch._dynamo.reset`` drops their graphs and pool, a graph left half-recorded by an out-of-memory probe
    included), and the layers are compiled again for training, from inductor's cache."""
    torch.cuda.empty_cache()  # the eager probe's cached blocks, which a graph's pool cannot use
    undo = compile_decoder_layers(trainer.model, cuda_graphs=True, fused_nf4=train_args.fused_nf4)
    try:
        return split_tokens_for(probe, budget, max_length, train_args.per_device_train_batch_size,
                                trainer.data_collator)
    finally:
        undo()


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
        examples = [{"input_ids": ids, "labels": ids, SEQ_LENGTHS: [length]}
                    for ids in torch.randint(vocab_size, (rows, length)).tolist()]
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v
                 for k, v in trainer.data_collator(examples).items() if k not in (NUM_TOKENS, PADDED_WIDTH)}
        model.train()  # as in training: dropout on, and the compiled layers' graphs are those of training
        peaks = []
        try:
            # the first pass may compile the layers, whose autotuning allocates memory of its own; layers replayed as
            # CUDA graphs run a new length eagerly the first time and record it the second
            for _ in range(2):
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                with trainer.accelerator.autocast():  # as in training: its compiled layers are the ones probed
                    loss = fused_forward(model, batch).loss
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


def planned_steps(trainer) -> int:
    """The optimizer steps a run will take: its --max_steps, or its epochs over the training rows."""
    args = trainer.args
    if args.max_steps > 0:
        return args.max_steps
    batches = math.ceil(len(trainer.train_dataset) / (args.per_device_train_batch_size * args.world_size))
    return math.ceil(math.ceil(batches / args.gradient_accumulation_steps) * args.num_train_epochs)


def _compilation(trainer, train_args: TrainArguments, max_length: int) -> tuple[bool, bool, bool, bool]:
    """(fixed shape, flat, compiled, replayable as CUDA graphs if nothing is checkpointed) for this trainer's batches.

    Packed rows, and examples padded to max_length, keep one batch shape (bar the last batch); other batches of
    examples vary in length. flash_attention_2 strips the padding again inside attention, in shapes that depend on
    the data. Flat rows with --flat_cuda_graphs are padded to buckets of lengths, set before the memory probe so
    that it measures them.
    """
    padded = (train_args.pad_to_max_length
              and getattr(trainer.model.config, "_attn_implementation", None) != "flash_attention_2")
    fixed_shape = isinstance(trainer.data_collator, PackedRowsCollator) or padded
    flat = isinstance(trainer.data_collator, FlatBatchCollator)
    compiled = should_compile(train_args.compile_layers, torch.cuda.is_available(), fixed_shape or flat,
                              planned_steps(trainer))
    graphable = bool(compiled and train_args.cuda_graphs and torch.cuda.is_available()
                     and trainer.args.world_size == 1 and decoder_layers(trainer.model)
                     and (not flat or train_args.flat_cuda_graphs))
    if flat:
        _set_row_bucket(trainer.data_collator, train_args, compiled, graphable, max_length)
    return fixed_shape, flat, compiled, graphable


def _set_row_bucket(collator: FlatBatchCollator, train_args: TrainArguments, compiled: bool, graphs: bool,
                    max_length: int) -> None:
    """The multiple of tokens each flat row is padded to: ``FLAT_BUCKET`` for CUDA graphs (one graph a length);
    ``--flat_row_multiple`` for compiled layers on a GPU, where every new row length costs cuBLAS a kernel choice
    for each of a step's several hundred matrix products (CPU time in a step the CPU already bounds); none
    otherwise."""
    on_gpu = compiled and torch.cuda.is_available()
    multiple = flat_row_bucket(max_length) if graphs else (train_args.flat_row_multiple if on_gpu else 0)
    collator.bucket = min(multiple, max_length) if multiple else None
    collator.max_length = max_length
    # a graph fixes the number of examples' boundaries too: a micro-batch's examples and a padding segment
    collator.segments = train_args.per_device_train_batch_size + 1 if graphs else None
    collator.split_tokens = None  # set after the memory probe, whose rows are never split (prepare_layers)


def prepare_layers(trainer, train_args: TrainArguments, max_length: int):
    """Plan activation checkpointing and compile the decoder layers; returns (checkpointed layers, uncompile).

    ``--gradient_checkpointing auto`` on the GPU first tries one whole training step with nothing checkpointed,
    before compiling: a model whose eager step fits (every small one) is then compiled once, for the training
    batch, as CUDA graphs. Otherwise the plan is sized by probing the compiled layers, which save fewer
    activations than eager ones. Each shape the compiled layers see costs a compilation of about ten seconds,
    and a checkpointed layer's recomputation would run inside the backward pass's graph replay, so CUDA graphs
    are kept to plans without checkpointing, in one process, on batches of one shape (packed rows, or examples
    padded to --max_length).

    Flat batches (zephyr/speed/flat.py) change size at every step. With ``--flat_cuda_graphs``, compiled layers
    are replayed as CUDA graphs, one per bucket of row lengths (``FLAT_BUCKET``): when the largest possible step
    (every example ``max_length`` tokens long) fits without checkpointing, as it is; otherwise the steps longer
    than the longest row that fits run in parts (``split_tokens_for``, probed through the graphs themselves).
    Without graphs, checkpointing is planned step by step (``StepCheckpointing``), and compiled layers take every
    length with one graph.
    """
    model = trainer.model
    n_layers = len(decoder_layers(model)) or 1
    rows = train_args.per_device_train_batch_size
    budget = train_args.train_memory_gib * 2**30 * 0.9  # 10% for the optimizer and allocator fragmentation
    probing = train_args.gradient_checkpointing == "auto" and torch.cuda.is_available()
    fixed_shape, flat, compiled, graphable = _compilation(trainer, train_args, max_length)
    step_plan = None
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if probing else []):  # keep the run's RNG
        if probing:
            probe = _memory_probe(trainer, max_length, model.get_base_model().config.get_text_config().vocab_size)
            checkpointed = 0 if probe(rows, False) <= budget else None
        elif train_args.gradient_checkpointing.isdigit():
            checkpointed = min(int(train_args.gradient_checkpointing), n_layers)
        else:
            checkpointed = n_layers if train_args.gradient_checkpointing == "true" else 0
        if flat and graphable and checkpointed in (0, None) and (train_args.flat_split_tokens or checkpointed is None):
            # the steps too long to replay without checkpointing run in parts, if a row of one example fits
            split = train_args.flat_split_tokens or _split_probed_as_graphs(trainer, train_args, probe, budget,
                                                                             max_length)
            if split is not None:
                flat_split(split, max_length, rows)  # a length given by hand, checked as preflight checks the flag
                trainer.data_collator.split_tokens, checkpointed = split, 0
                log.info("flat rows: steps longer than %d tokens run in parts, each replayed as a CUDA graph", split)
        # A graph is recorded for each batch shape: batches of one shape, or flat rows in buckets of lengths.
        cuda_graphs = bool(graphable and checkpointed == 0 and (fixed_shape or flat))
        if flat and graphable and not cuda_graphs:  # one dynamic graph for every length
            _set_row_bucket(trainer.data_collator, train_args, compiled, False, max_length)
        if train_args.flat_split_tokens and not cuda_graphs:
            log.warning("--flat_split_tokens %d: not used, the decoder layers are not replayed as CUDA graphs "
                        "(they need a GPU, compiled layers and no layer checkpointed)", train_args.flat_split_tokens)
        uncompile = (compile_decoder_layers(model, cuda_graphs=cuda_graphs, fused_nf4=train_args.fused_nf4)
                     if compiled else (lambda: None))
        try:
            if checkpointed is None and flat and decoder_layers(model):
                step_plan = StepCheckpointing(fit_memory_model(probe, n_layers), budget, max_length)
                checkpointed = step_plan.layers_for_tokens(rows * max_length)  # the largest step's
            elif checkpointed is None:
                checkpointed = plan_checkpointing(probe, n_layers, rows, budget)
        except BaseException:  # the base model goes back eager (the benchmark's next setting runs on it)
            uncompile()
            raise
    if probing:
        model.get_base_model().gradient_checkpointing_disable()
        torch.cuda.empty_cache()
    trainer.cuda_graphs = cuda_graphs
    if step_plan is not None:
        trainer.args.gradient_checkpointing = True  # the Trainer enables it on every layer; each step trims
        trainer.checkpoint_plan = step_plan
    elif checkpointed and checkpointed < n_layers and train_args.gradient_checkpointing != "true":
        trainer.args.gradient_checkpointing = True  # the Trainer enables it on every layer; the callback trims
        trainer.add_callback(_checkpoint_only_callback(spread_layers(n_layers, checkpointed)))
    elif checkpointed == n_layers:
        trainer.args.gradient_checkpointing = True
    log.info("activation checkpointing: %s%d of %d layers%s", "by each step's tokens, up to " if step_plan else "",
             checkpointed, n_layers,
             f" (budget {train_args.train_memory_gib:.1f} GiB)" if probing else "")
    log.info("decoder layers: %s", "compiled, replayed as CUDA graphs" if cuda_graphs
             else "compiled" if compiled else "eager")
    return checkpointed, uncompile
