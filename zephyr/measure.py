"""The benchmark's instruments: step timing, peak memory, profiles and MFU of one training setting, and the time
of a decoding loop, each measured the same way for every path compared."""

from __future__ import annotations

import gc
import logging
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from zephyr.config import DataArguments, EvalArguments, ModelArguments, TrainArguments
from zephyr.runinfo import peak_memory_gib

log = logging.getLogger(__name__)

# Dense bf16 matrix rate (TFLOP/s) by GPU name, from the vendors' datasheets, for MFU.
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 70.0}


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _peak_gib() -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None


def _peak_reserved_gib() -> float | None:
    """What the allocator held at most (tensors, cached blocks, the CUDA graphs' private pool): the memory a card
    needs for the setting, above the tensors' peak when blocks fragment."""
    return peak_memory_gib().get("peak_gpu_reserved_gib")


def _reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def gpu_peak_tflops(override: float | None) -> float | None:
    if override or not torch.cuda.is_available():
        return override
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def training_flops_per_token(config, trainable: int, mean_example_tokens: float) -> float:
    """Model FLOPs per trained token for LoRA: forward and input gradients of the frozen base (no weight
    gradients), causal attention over the mean example length, and 6 per trainable parameter; recomputation
    is not counted."""
    h, layers = config.hidden_size, config.num_hidden_layers
    kv = h * config.num_key_value_heads // config.num_attention_heads
    linear = layers * (2 * h * h + 2 * h * kv + 3 * h * config.intermediate_size) + h * config.vocab_size
    attention_forward = layers * 4 * h * mean_example_tokens / 2
    return 4 * linear + 3 * attention_forward + 6 * trainable


# -- training ---------------------------------------------------------------------------------------
def _step_timer(warmup: int, timed: int, profile_path: Path | None = None):
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Wall time and tokens of each optimizer step after ``warmup``, the wall time of each warm-up step and when
        the first began; optionally profiles one more step."""

        def __init__(self):
            self.steps, self.warmup_seconds, self.profiler = [], [], None
            self.first_step_at = None
            self.profiled_step = None  # the profiled step's wall time, GPU busy time and tokens

        def on_step_begin(self, args, state, control, **kwargs):
            _sync()
            self.begin, self.tokens_at_begin = time.perf_counter(), state.num_input_tokens_seen
            if self.first_step_at is None:
                self.first_step_at = self.begin
            if profile_path and state.global_step == warmup + timed:
                self.profiler = torch.profiler.profile(activities=profiler_activities())
                self.profiler.__enter__()
                self.begin = time.perf_counter()  # the profiled step's wall time leaves the profiler's start out

        def on_step_end(self, args, state, control, **kwargs):
            _sync()
            if state.global_step <= warmup:  # compilation, probes and first shapes show here
                self.warmup_seconds.append(time.perf_counter() - self.begin)
            elif state.global_step <= warmup + timed:
                self.steps.append((time.perf_counter() - self.begin, state.num_input_tokens_seen - self.tokens_at_begin))
            if self.profiler is not None:
                wall_ms = (time.perf_counter() - self.begin) * 1e3
                self.profiler.__exit__(None, None, None)
                busy_ms, span_ms = gpu_busy_ms(self.profiler.events())
                self.profiled_step = {"tokens": state.num_input_tokens_seen - self.tokens_at_begin,
                                      "wall_ms": round(wall_ms, 1), "gpu_busy_ms": round(busy_ms, 1),
                                      "gpu_span_ms": round(span_ms, 1),
                                      "gpu_busy_percent": round(100 * busy_ms / wall_ms, 1) if wall_ms else None}
                write_profile(self.profiler, profile_path, self.profiled_step)
                self.profiler = None

        def tokens_per_s(self) -> float | None:
            """The timed steps' real tokens over their time: flat batches of whole examples change size at every
            step, so one step's rate would depend on which step it is."""
            if not self.steps:
                return None
            return sum(tokens for _, tokens in self.steps) / sum(seconds for seconds, _ in self.steps)

    return StepTimer()


def profiler_activities():
    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    return activities


def gpu_busy_ms(events) -> tuple[float, float]:
    """(GPU busy, first to last GPU activity) in milliseconds, from a profiler's events: the union of the intervals
    of every device event (kernels, also those replayed inside CUDA graphs, copies, memsets), so that kernels that
    overlap on several streams count once. A ``record_function`` range (the optimizer's step, for one) also has a
    device-side span, from its first kernel to its last, gaps included: not counted. Wall time less busy time is
    what the GPU spent waiting (for the CPU to launch work, for a synchronization, for data)."""
    intervals = sorted((e.time_range.start, e.time_range.end) for e in events
                       if e.device_type != torch.autograd.DeviceType.CPU and not getattr(e, "is_user_annotation", False)
                       and e.time_range.end > e.time_range.start)
    busy, end = 0.0, float("-inf")
    for start, stop in intervals:
        if stop > end:
            busy += stop - max(start, end)
            end = stop
    return busy / 1e3, (end - intervals[0][0]) / 1e3 if intervals else 0.0


def write_profile(profiler, path: Path, step: dict | None = None) -> None:
    """The profile's tables (GPU time, then CPU time), headed by the step's wall and GPU busy time, and its Chrome
    trace, gzipped beside it (open in chrome://tracing or ui.perfetto.dev)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    averages = profiler.key_averages()
    sort_key = "cuda_time_total" if torch.cuda.is_available() else "cpu_time_total"
    head = ""
    if step:
        head = (f"One training step of {step['tokens']} real tokens: wall {step['wall_ms']} ms (profiled), GPU busy "
                f"{step['gpu_busy_ms']} ms = {step['gpu_busy_percent']} % (first to last GPU activity "
                f"{step['gpu_span_ms']} ms)\n\n")
    path.write_text(head + averages.table(sort_by=sort_key, row_limit=40, max_name_column_width=80) + "\n" +
                    averages.table(sort_by="cpu_time_total", row_limit=25, max_name_column_width=80))
    profiler.export_chrome_trace(str(path.with_suffix(".trace.json.gz")))  # gzipped by its name


def cpu_probe_ms(repeats: int = 5) -> float:
    """Median milliseconds of a fixed single-threaded Python loop: how fast the host's CPU ran around a setting.
    Compiled and flat steps wait on Python's kernel dispatch, and one H100 machine ran the same original's steps
    25 % slower in one process than in the next (results/benchmark/flat/), so a setting's rate is read beside it."""
    times = []
    for _ in range(repeats):
        started, total = time.perf_counter(), 0
        for i in range(200_000):
            total += i & 7
        times.append((time.perf_counter() - started) * 1e3)
    return round(sorted(times)[repeats // 2], 2)


def measure_training(base_model, tokenizer, dataset, data_args: DataArguments, model_args: ModelArguments,
                     train_args: TrainArguments, warmup: int, timed: int, mean_example_tokens: float, peak_tflops,
                     profile_path: Path | None = None):
    """Tokens/s, peak memory and MFU of the suite's trainer for one setting; returns (result, base model). A
    setting that fails is recorded as ``error`` (its exception's first line) with its peak memory, and the base
    model comes back without its adapter, so that the settings after it still run."""
    from peft import get_peft_model
    from transformers import set_seed

    from zephyr.modeling import build_lora_config
    from zephyr.training import build_trainer

    started, probe_before = time.perf_counter(), cpu_probe_ms()
    set_seed(train_args.seed)
    model = get_peft_model(base_model, build_lora_config(model_args))
    timer = _step_timer(warmup, timed, profile_path)
    train_args = replace(train_args, max_steps=warmup + timed + (1 if profile_path else 0))
    trainer = None
    try:
        with tempfile.TemporaryDirectory() as scratch:
            trainer, restore, checkpointed = build_trainer(
                model, tokenizer, dataset, data_args, model_args, train_args, Path(scratch), callbacks=[timer])
            _reset_peak()
            try:
                trainer.train()
            finally:
                restore()
        result = _training_result(model, trainer, timer, train_args, checkpointed, base_model.config,
                                  mean_example_tokens, peak_tflops, probe_before, started)
    except Exception as error:  # out of memory, a compiler's error: the next settings still run on the base model
        log.exception("training setting failed")
        first_line = (str(error).strip().splitlines() or [""])[0][:300]
        result = {"error": f"{type(error).__name__}: {first_line}" if first_line else type(error).__name__,
                  "tokens_per_s": None, "peak_gpu_memory_gib": _peak_gib(),
                  "peak_gpu_reserved_gib": _peak_reserved_gib(),
                  "step_seconds": [round(seconds, 3) for seconds, _ in timer.steps]}
    del trainer
    base_model = model.unload()
    base_model.gradient_checkpointing_disable()
    base_model.disable_input_require_grads()
    del model
    free_memory()
    result["wall_s"] = round(time.perf_counter() - started, 1)
    return result, base_model


def _training_result(model, trainer, timer, train_args: TrainArguments, checkpointed, config,
                     mean_example_tokens: float, peak_tflops, probe_before: float, started: float) -> dict:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    tokens_per_s = timer.tokens_per_s()
    flops = training_flops_per_token(config, trainable, mean_example_tokens)
    result = {
        "tokens_per_s": round(tokens_per_s, 1) if tokens_per_s else None, "peak_gpu_memory_gib": _peak_gib(),
        "peak_gpu_reserved_gib": _peak_reserved_gib(),
        "mfu_percent": round(100 * tokens_per_s * flops / (peak_tflops * 1e12), 2) if peak_tflops and tokens_per_s
        else None,
        "step_seconds": [round(seconds, 3) for seconds, _ in timer.steps],
        # where a setting's wall time went: building the trainer (memory probes included), the warm-up steps
        # (compilation and each new shape's first kernels), the whole setting
        "setup_s": round(timer.first_step_at - started, 1) if timer.first_step_at else None,
        "warmup_step_seconds": [round(seconds, 3) for seconds in timer.warmup_seconds],
        "host_cpu_probe_ms": [probe_before, cpu_probe_ms()],  # before and after the steps: see cpu_probe_ms
        "tokens_per_step": [tokens for _, tokens in timer.steps],
        "profiled_step": timer.profiled_step,  # one more step under torch.profiler (--profile_dir): GPU busy time
        "checkpointed_layers": checkpointed, "trainable_parameters": trainable,
        "final_loss": next((r["loss"] for r in reversed(trainer.state.log_history) if "loss" in r), None),
        "settings": {k: getattr(train_args, k) for k in ("per_device_train_batch_size", "gradient_accumulation_steps",
                                                          "gradient_checkpointing", "optim", "packing",
                                                          "packed_rows", "compile_layers", "matmul_library",
                                                          "flat_cuda_graphs")},
        "batch_layout": "packed" if train_args.packing else train_args.batch_layout,
        # flat rows padded to a multiple of this many tokens (None: each row its own length)
        "flat_row_bucket": getattr(trainer.data_collator, "bucket", None),
        # flat steps whose row would be longer than this ran in parts (None: none was split)
        "flat_split_tokens": getattr(trainer.data_collator, "split_tokens", None),
        # flat batches plan checkpointing per step: how many steps ran with how many checkpointed layers
        "checkpointed_layers_by_step": (dict(trainer.checkpoint_plan.steps_by_layers)
                                        if getattr(trainer, "checkpoint_plan", None) else None)}
    return result


# -- evaluation -------------------------------------------------------------------------------------
@torch.inference_mode()
def sampled_one_at_a_time(model, tokenizer, prompts: list[list[int]], max_new_tokens: int) -> float:
    """The original evaluation: one sampled ``generate`` call per example; returns examples/s."""
    device = next(model.parameters()).device
    _sync()
    start = time.perf_counter()
    for ids in prompts:
        model.generate(input_ids=torch.tensor([ids], device=device), attention_mask=torch.ones(1, len(ids),
                       dtype=torch.long, device=device), do_sample=True, max_new_tokens=max_new_tokens,
                       pad_token_id=tokenizer.pad_token_id)
    _sync()
    return len(prompts) / (time.perf_counter() - start)


def timed_run(fn):
    """Seconds, peak GPU memory and failed examples of ``fn()``, which returns (outputs, per-example errors)."""
    _reset_peak()
    _sync()
    start = time.perf_counter()
    _, errors = fn()
    _sync()
    return time.perf_counter() - start, _peak_gib(), sum(e is not None for e in errors)


# -- evaluation -------------------------------------------------------------------------------------
def _test_prompts(task_name: str, tokenizer, data_dir: str, budget: int, labels: list[str]):
    from zephyr.prompting import PromptBuilder
    from zephyr.tasks import get_task

    task = get_task(task_name)
    builder = PromptBuilder(task, tokenizer, "original", labels)
    examples = task.load_split("test", data_dir).examples
    return builder, [builder.encode_prompt(e.text, budget).ids for e in examples]


def measure_evaluation(model, tokenizer, data_dir: str, labels: list[str], bench) -> dict:
    """The original one-at-a-time sampled generation against the suite's batched paths, on real test prompts."""
    from zephyr.speed.dense import dense_for_inference
    from zephyr.generation import greedy_generate, label_log_likelihoods
    from zephyr.modeling import context_length
    from zephyr.tasks import get_task

    eval_args = EvalArguments(eval_batch_size=bench.eval_batch_size or EvalArguments.eval_batch_size)
    budget_gib = min(eval_args.eval_memory_gib, bench.memory_cap_gib or eval_args.eval_memory_gib)
    memory_budget = budget_gib * 2**30 * 0.9  # as evaluation.evaluate plans it, within the allocator's cap
    newsgroups, samsum = get_task("newsgroups"), get_task("samsum")
    # A fine-tuned model's prompt budget (evaluation.evaluate): its context minus new tokens, at most max_length.
    budget = {t.name: min(context_length(model) - t.max_new_tokens, DataArguments.max_length)
              for t in (newsgroups, samsum)}
    builder, cls_prompts = _test_prompts("newsgroups", tokenizer, data_dir, budget["newsgroups"], labels)
    _, sum_prompts = _test_prompts("samsum", tokenizer, data_dir, budget["samsum"], [])
    cls_batch, sum_batch = cls_prompts[: bench.batched_newsgroups], sum_prompts[: bench.batched_samsum]
    out = {"prompt_tokens_mean": {"newsgroups": round(sum(map(len, cls_batch)) / len(cls_batch), 1),
                                  "samsum": round(sum(map(len, sum_batch)) / len(sum_batch), 1)},
           "eval_batch_size": eval_args.eval_batch_size, "eval_batch_tokens": eval_args.eval_batch_tokens,
           "eval_memory_gib": eval_args.eval_memory_gib, "merge_adapter": eval_args.merge_adapter,
           "preset": bench.eval_preset}
    model.eval()
    original = {
        "newsgroups": sampled_one_at_a_time(model, tokenizer, cls_prompts[: bench.sampled_newsgroups],
                                            newsgroups.max_new_tokens),
        "samsum": sampled_one_at_a_time(model, tokenizer, sum_prompts[: bench.sampled_samsum], samsum.max_new_tokens)}
    if eval_args.merge_adapter:
        model = dense_for_inference(model)
    free_memory()
    size, tokens = eval_args.eval_batch_size, eval_args.eval_batch_tokens
    label_ids = builder.label_ids("")
    runs = {
        "newsgroups_generate": (cls_batch, lambda prompts, **plan: greedy_generate(
            model, tokenizer, prompts, newsgroups.max_new_tokens, size, tokens, **plan)),
        "newsgroups_loglik": (cls_batch, lambda prompts, **plan: label_log_likelihoods(
            model, prompts, label_ids, tokenizer.pad_token_id, size, tokens, **plan)),
        "samsum_generate": (sum_batch, lambda prompts, **plan: greedy_generate(
            model, tokenizer, prompts, samsum.max_new_tokens, size, tokens, **plan)),
    }
    for name, (prompts, fn) in runs.items():
        stats = {}
        seconds, peak, errors = timed_run(lambda: fn(prompts, memory_budget=memory_budget, stats=stats))
        count = len(prompts)
        if bench.profile_dir:
            with torch.profiler.profile(activities=profiler_activities()) as profiler:
                fn(prompts[:size])
            write_profile(profiler, Path(bench.profile_dir) / f"eval-{name}.txt")
        baseline = original[name.split("_")[0]]
        out[name] = {"examples": count, "examples_per_s": round(count / seconds, 2), "peak_gpu_memory_gib": peak,
                     "errors": errors, "planned_batch_tokens": stats.get("planned_batch_tokens"),
                     "oom_retries": stats.get("oom_retries"), "original_examples_per_s": round(baseline, 3),
                     "speedup": round(count / seconds / baseline, 1)}
    return out
