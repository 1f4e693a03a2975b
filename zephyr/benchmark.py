"""Throughput at 7B scale: the study's original settings against the suite's defaults, in one process.

A model in Mistral-7B's exact shape (Zephyr-7B-beta's) gets random weights on the GPU and is saved once as an
ordinary checkpoint; it is then loaded through the suite's own 4-bit loading path, so time and memory equal
Zephyr's. Measured side by side:

- training tokens/s, peak GPU memory and MFU at sequence length 512, for the original settings (NF4 + double
  quant, packing to 512, batch 4 x accumulation 2, gradient checkpointing, paged_adamw_32bit) and for the
  suite's defaults, with LoRA on q,v and on all modules + lm_head;
- evaluation examples/s: one sampled ``generate`` per example on the 4-bit model with its adapter (the
  original way) against the suite's batched path (greedy generation, label log-likelihood) on real test
  prompts.

Any other checkpoint (``--model_name_or_path``, e.g. the SmolLM2 GGUF) can be measured the same way.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Optional

import torch

from zephyr.config import DATA_DIR_ENV, DataArguments, EvalArguments, ModelArguments, TrainArguments
from zephyr.io import atomic_write_json
from zephyr.measure import gpu_peak_tflops, measure_evaluation, measure_training
from zephyr.random_checkpoint import SHAPES, build_random_checkpoint
from zephyr.sweeps.grid import variant

log = logging.getLogger(__name__)

# The original study's training settings, as the independent harness measured them.
# Everything else as stock TRL does it: its padding-free packing collator, no compilation.
ORIGINAL_TRAINING = dict(per_device_train_batch_size=4, gradient_accumulation_steps=2, gradient_checkpointing="true",
                         optim="paged_adamw_32bit", packing=True, packed_rows=False, compile_layers="false")
# The few timed steps of each setting stand for a long run: --compile_layers auto compiles a run of 1,500 steps or
# more on a GPU (every Table 2 run, Table 1's 25 % to 100 %), so the settings that a long run compiles are timed
# compiled. On the CPU (tests) nothing is compiled.
LONG_RUN = "true" if torch.cuda.is_available() else "false"
# The suite's defaults as a long run resolves them: flat batches of 8 whole examples, compiled layers.
SUITE_TRAINING = dict(compile_layers=LONG_RUN)
# The same 8 examples a step padded to the batch's longest, eager (padded batches change shape at every step, so
# auto does not compile them): the plain path that flat batches are tested equal to.
PADDED_TRAINING = dict(batch_layout="padded", compile_layers="false")
# The study's packed rows, compiled (CUDA graphs when nothing is checkpointed): packed rows take 2.6x fewer
# optimizer steps an epoch than batches of examples, which cost quality at the same learning rate (results/quality).
FAST_TRAINING = dict(packing=True, compile_layers=LONG_RUN)
# The study's two LoRA presets, as its variants define them: base (q,v) and all-module (every projection + lm_head).
PRESETS = {"q,v": variant("base").lora_settings(), "all+lm_head": variant("all").lora_settings()}


@dataclass
class BenchmarkArguments:
    shape: str = field(default="mistral-7b", metadata={"help": "Random model shape: mistral-7b, smollm2-135m or tiny"})
    model_name_or_path: Optional[str] = field(
        default=None, metadata={"help": "Benchmark this checkpoint (dir, .gguf or hub id) (default: a random model "
                                        "of --shape)"})
    checkpoint_dir: str = field(default="/tmp/zephyr-benchmark/mistral-7b-random",
                                metadata={"help": "Where the random checkpoint is saved once"})
    tokenizer_dir: Optional[str] = field(
        default=None, metadata={"help": "Tokenizer to save with the random checkpoint (default: Zephyr's, from "
                                        "mistral-common)"})
    data_dir: Optional[str] = field(default=None, metadata={"help": f"Real data root (default: env {DATA_DIR_ENV}, "
                                                                    "else generated data)"})
    output: str = field(default="benchmark.json", metadata={"help": "JSON results file"})
    warmup_steps: int = field(default=3, metadata={"help": "Optimizer steps before timing starts"})
    train_steps: int = field(default=7, metadata={"help": "Timed optimizer steps per setting (the median counts)"})
    sampled_newsgroups: int = field(default=6, metadata={"help": "Examples for the one-at-a-time sampled baseline"})
    sampled_samsum: int = field(default=3, metadata={"help": "SAMSum dialogues for the one-at-a-time sampled baseline"})
    batched_newsgroups: int = field(default=256, metadata={"help": "Examples for the suite's batched path"})
    batched_samsum: int = field(default=128, metadata={"help": "SAMSum dialogues for the suite's batched path"})
    eval_batch_size: Optional[int] = field(default=None, metadata={"help": "Default: the suite's"})
    eval_preset: str = field(default="q,v", metadata={"help": "LoRA preset of the evaluated adapter: q,v or "
                                                                "all+lm_head"})
    memory_cap_gib: Optional[float] = field(
        default=None, metadata={"help": "Cap PyTorch's allocator at this much GPU memory for the whole benchmark "
                                        "(21.5 imitates a 24 GB A10G; default: no cap)"})
    train: bool = field(default=True, metadata={"help": "Measure training (False: evaluation only)"})
    evaluate: bool = field(default=True, metadata={"help": "Also measure evaluation (False: training only)"})
    extra_settings: Optional[str] = field(
        default=None, metadata={"help": 'More training settings to time, JSON: {"name": {"flag": value, ...}} '
                                                  '(default: none)'})
    profile_dir: Optional[str] = field(
        default=None, metadata={"help": "Write torch.profiler tables of one training step per setting and of one "
                                        "evaluation batch per path here (default: no profile)"})
    peak_tflops: Optional[float] = field(default=None, metadata={"help": "Dense bf16 peak for MFU (default: by "
                                                                         "GPU name)"})


    def __post_init__(self):
        from zephyr.errors import UsageError

        if self.shape not in SHAPES:
            raise UsageError(f"--shape: unknown shape {self.shape!r} (choose {', '.join(SHAPES)})")
        if self.eval_preset not in PRESETS:
            raise UsageError(f"--eval_preset: unknown preset {self.eval_preset!r} (choose {', '.join(PRESETS)})")
        if self.memory_cap_gib is not None and not self.memory_cap_gib > 0:
            raise UsageError(f"--memory_cap_gib: must be positive, got {self.memory_cap_gib}")
        from zephyr.preflight_checks import writable_dir

        if Path(self.output).is_dir():
            raise UsageError(f"--output: {self.output} is a directory; give the JSON file to write")
        writable_dir(Path(self.output).parent, "--output")
        if not self.model_name_or_path:
            writable_dir(Path(self.checkpoint_dir).parent, "--checkpoint_dir")
        if self.profile_dir:
            writable_dir(self.profile_dir, "--profile_dir")
        try:
            extra = json.loads(self.extra_settings or "{}")
        except json.JSONDecodeError as err:
            raise UsageError(f"--extra_settings: not JSON ({err})") from None
        known = {f.name for f in fields(TrainArguments)} | {f.name for f in fields(ModelArguments)} | {"preset"}
        if not isinstance(extra, dict) or not all(isinstance(v, dict) for v in extra.values()):
            raise UsageError('--extra_settings: expected {"name": {"flag": value, ...}, ...}')
        for name, overrides in extra.items():
            unknown = sorted(set(overrides) - known)
            if unknown:
                raise UsageError(f"--extra_settings: {name}: unknown setting {unknown[0]!r}")
            if overrides.get("preset", "q,v") not in PRESETS:
                raise UsageError(f"--extra_settings: {name}: unknown preset {overrides['preset']!r} "
                                 f"(choose {', '.join(PRESETS)})")
            model_fields = {f.name for f in fields(ModelArguments)}
            try:  # every setting's flags together, as the benchmark will build them, before any work
                setting_arguments(TrainArguments(), {k: v for k, v in overrides.items()
                                                     if k != "preset" and k not in model_fields})
                replace(ModelArguments(), **{**PRESETS[overrides.get("preset", "q,v")],
                                             **{k: v for k, v in overrides.items() if k in model_fields}})
            except UsageError as err:
                raise UsageError(f"--extra_settings: {name}: {err}") from None
            except (TypeError, ValueError) as err:
                raise UsageError(f"--extra_settings: {name}: {err}") from None


def setting_arguments(defaults: TrainArguments, overrides: dict) -> TrainArguments:
    """One timed setting's training arguments: the defaults with its flags, the batch layout resolved again (a
    setting that pads examples gets padded batches), and the benchmark's own step and logging settings."""
    return replace(defaults, **{"batch_layout": None, **overrides}, save_steps=0, logging_steps=1,
                   num_train_epochs=1.0)


# -- the whole benchmark ----------------------------------------------------------------------------
def benchmark_rows(steps: int) -> int:
    """The Newsgroups training rows the benchmark loads for ``steps`` warm-up and timed steps: generous, since
    packing merges short examples; the Trainer draws its steps from them in a seeded random order."""
    return steps * 16 * 8


def training_data(tokenizer, data_dir: str, rows: int):
    from zephyr.prompting import PromptBuilder
    from zephyr.tasks import get_task
    from zephyr.training import build_training_dataset

    task = get_task("newsgroups")
    loaded = task.load_split("train", data_dir)
    labels = task.labels(loaded.examples)
    builder = PromptBuilder(task, tokenizer, "original", labels)
    dataset, _ = build_training_dataset(builder, loaded.examples[:rows], DataArguments.max_length)
    lengths = [len(ids) for ids in dataset["input_ids"]]
    return dataset, labels, sum(lengths) / len(lengths)


def training_settings(bench: BenchmarkArguments) -> dict[str, tuple[str, dict]]:
    """name -> (LoRA preset, flag overrides): original, suite, padded and fast for each preset (unless
    ``--train False``), then ``--extra_settings``."""
    settings = {}
    if bench.train:
        for name, overrides in (("original", ORIGINAL_TRAINING), ("suite", SUITE_TRAINING),
                                ("padded", PADDED_TRAINING), ("fast", FAST_TRAINING)):
            settings.update({f"{name} {p}": (p, overrides) for p in PRESETS})
    for name, overrides in json.loads(bench.extra_settings or "{}").items():
        overrides = dict(overrides)
        preset = overrides.pop("preset", "q,v")
        settings[name] = (preset, overrides)
    return settings


def _time_training(bench: BenchmarkArguments, base, tokenizer, dataset, data_args: DataArguments,
                   model_args: ModelArguments, mean_tokens: float, peak_tflops,
                   on_setting=lambda training: None) -> tuple[dict, object]:
    """Every training setting timed in turn on the one loaded base model; ``on_setting`` gets the settings timed
    so far after each one."""
    training = {}
    for name, (preset, overrides) in training_settings(bench).items():
        model_overrides = {k: v for k, v in overrides.items() if hasattr(ModelArguments, k)}
        train_overrides = {k: v for k, v in overrides.items() if k not in model_overrides}
        if not torch.cuda.is_available() and train_overrides.get("optim", "").startswith("paged"):
            train_overrides["optim"] = "adamw_torch"  # paged optimizers need CUDA
        setting_model = replace(model_args, **{**PRESETS[preset], **model_overrides})  # a named flag wins
        setting_train = setting_arguments(TrainArguments(), train_overrides)
        log.info("training: %s", name)
        profile = Path(bench.profile_dir) / f"train-{name.replace(' ', '_').replace(',', '')}.txt" \
            if bench.profile_dir else None
        training[name], base = measure_training(base, tokenizer, dataset, data_args, setting_model, setting_train,
                                                bench.warmup_steps, bench.train_steps, mean_tokens, peak_tflops,
                                                profile)
        training[name]["preset"] = preset
        _speedups(training)
        print(json.dumps({name: training[name]}), flush=True)
        on_setting(training)
    return training, base


def _speedups(training: dict) -> None:
    """Every setting against the original of its preset, where one was timed."""
    for row in training.values():
        original = training.get(f"original {row['preset']}")
        if original and original is not row and original["tokens_per_s"] and row["tokens_per_s"]:
            row["speedup"] = round(row["tokens_per_s"] / original["tokens_per_s"], 2)


def run_benchmark(bench: BenchmarkArguments) -> dict:
    from zephyr.embedded import write_synthetic_data
    from zephyr.modeling import load_model, load_tokenizer, resolve_model_path
    from zephyr.runinfo import device_info, git_commit, versions

    started = time.perf_counter()
    if bench.memory_cap_gib and torch.cuda.is_available():
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, bench.memory_cap_gib * 2**30 / total))
    scratch = Path(bench.checkpoint_dir).parent
    data_dir = bench.data_dir or str(write_synthetic_data(scratch / "generated-data"))
    if bench.model_name_or_path:
        model_path = resolve_model_path(bench.model_name_or_path)
    else:
        model_path = str(build_random_checkpoint(Path(bench.checkpoint_dir), bench.shape, bench.tokenizer_dir))
    build_seconds = time.perf_counter() - started
    model_args = ModelArguments(model_name_or_path=model_path, lora_r=8)
    tokenizer = load_tokenizer(model_path)
    load_start = time.perf_counter()
    base = load_model(model_args, model_path)
    load_seconds = time.perf_counter() - load_start
    rows_needed = benchmark_rows(bench.warmup_steps + bench.train_steps)
    dataset, labels, mean_tokens = training_data(tokenizer, data_dir, rows_needed)
    peak_tflops = gpu_peak_tflops(bench.peak_tflops)
    data_args = DataArguments(task="newsgroups", data_dir=data_dir)
    head = {
        "command_args": asdict(bench), "model_path": model_path, "shape": None if bench.model_name_or_path
        else SHAPES[bench.shape], "data_dir": data_dir, "mean_training_example_tokens": round(mean_tokens, 1),
        "build_and_save_s": round(build_seconds, 1), "load_4bit_s": round(load_seconds, 1),
        "peak_bf16_tflops": peak_tflops, "device": device_info(), "versions": versions(), "git_commit": git_commit()}

    def write(training: dict, evaluation: dict, complete: bool) -> dict:
        """The JSON as it stands: written after each setting, so that a benchmark stopped early keeps what it
        measured (``complete``: false)."""
        result = {**head, "training": training, "evaluation": evaluation, "complete": complete,
                  "wall_s": round(time.perf_counter() - started, 1)}
        atomic_write_json(Path(bench.output), result)
        return result

    training, base = _time_training(bench, base, tokenizer, dataset, data_args, model_args, mean_tokens, peak_tflops,
                                    on_setting=lambda so_far: write(so_far, {}, complete=False))
    from peft import get_peft_model

    from zephyr.modeling import build_lora_config

    # The study's default adapter (q,v): the cheaper one for the original unmerged path.
    eval_model = get_peft_model(base, build_lora_config(replace(model_args, **PRESETS[bench.eval_preset])))
    for name, param in eval_model.named_parameters():
        if "lora_B" in name:  # a trained-looking adapter, so merging has something to merge
            torch.nn.init.normal_(param, std=1e-3)
    evaluation = measure_evaluation(eval_model, tokenizer, data_dir, labels, bench) if bench.evaluate else {}
    return write(training, evaluation, complete=True)


def summary_table(result: dict) -> str:
    """A Markdown table of the ratios, as the README shows it."""
    lines = ["| measurement | original | suite | ratio | suite peak GiB |", "|---|---|---|---|---|"]
    for preset in PRESETS:
        original = result["training"].get(f"original {preset}")
        for name, suite in result["training"].items() if original else ():
            if suite is original or suite["preset"] != preset:
                continue
            path = name.removesuffix(f" {preset}")
            lines.append(f"| training tokens/s, LoRA {preset} ({path}) | {_rate(original)} | {_rate(suite)} | "
                         f"{suite.get('speedup', '—')}x | {suite['peak_gpu_memory_gib']} |")
    for name, row in result["evaluation"].items():
        if isinstance(row, dict) and "speedup" in row:
            lines.append(f"| {name} examples/s | {row['original_examples_per_s']} | {row['examples_per_s']} | "
                         f"{row['speedup']}x | {row['peak_gpu_memory_gib']} |")
    return "\n".join(lines)


def _rate(row: dict) -> str:
    return f"failed: {row['error']}" if row.get("error") else str(row["tokens_per_s"])


def failed_settings(result: dict) -> list[str]:
    """One line per training setting that failed (the benchmark ran the others)."""
    return [f"{name}: {row['error']}" for name, row in result["training"].items() if row.get("error")]


def mfu_line(result: dict) -> str:
    parts = [f"{name}: {row['mfu_percent']}%" for name, row in result["training"].items()
             if row.get("mfu_percent") is not None]
    return "MFU " + ", ".join(parts) if parts else ""

