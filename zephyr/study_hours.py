"""GPU-hours of the study's grids at 7B, from a benchmark's measured training tokens/s.

Training tokens are counted exactly: every example the study's runs train on, tokenized by the model's tokenizer
and cut to 512 tokens as training cuts it, times epochs and runs. Table 1: 20 Newsgroups, 6 fractions x 5 epochs
x 4 variants; Table 2: SAMSum, all rows, 1 epoch x 4 variants; the LoRA grid (run_lora.sh): SAMSum, all rows,
epochs {2, 5, 10, 20, 30, 50} x rank {2, 4, 8, 16} x dropout {0.1, 0.2, 0.5} x NEFTune on/off, q,v adapters.
Base and NEFTune variants train q,v adapters, the all-module variants all + lm_head, each at its preset's
measured rate. Evaluation is not counted.

An A10G's figures are an estimate, not a measurement: the same MFU as on the benchmark's GPU, at an A10G's 70
TFLOP/s of dense bf16 (the default's step on an H100 is bound by the CPU, so an A10G, with 14x less compute, is
more likely to reach a higher MFU than a lower one: the estimate leans long).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from zephyr.io import read_json

TABLE1_FRACTIONS = (1.0, 0.5, 0.25, 0.1, 0.05, 0.025)
GRID_EPOCHS = (2, 5, 10, 20, 30, 50)
GRID_RUNS_PER_EPOCH_SETTING = 4 * 3 * 2  # ranks x dropouts x NEFTune
A10G_BF16_TFLOPS = 70.0
PATHS = {"original": "the study's scripts", "suite": "suite default", "fast": "packed rows (opt-in)"}


@dataclass
class StudyHoursArguments:
    benchmark: str = field(metadata={"help": "A benchmark JSON with training rows (scripts/benchmark.py --output)"})
    data_dir: str = field(default="../shared/data", metadata={"help": "Data root holding samsum/ and newsgroups/"})
    tokenizer: str | None = field(
        default=None, metadata={"help": "Tokenizer directory (default: Zephyr's, built from mistral-common)"})
    max_length: int = field(default=512, metadata={"help": "Training sequence length"})


def training_tokens(task_name: str, tokenizer, data_dir: str, fraction: float, max_length: int) -> int:
    """Tokens of one epoch over ``fraction`` of a task's training rows, as the suite selects and encodes them."""
    from zephyr.prompting import PromptBuilder
    from zephyr.tasks import get_task

    task = get_task(task_name)
    loaded = task.load_split("train", data_dir)
    examples = task.select_train(loaded.examples, fraction, 42)
    builder = PromptBuilder(task, tokenizer, "original", task.labels(loaded.examples))
    return sum(len(builder.encode_training(e, max_length)["input_ids"]) for e in examples)


def study_tokens(tokenizer, data_dir: str, max_length: int = 512) -> dict[str, dict[str, int]]:
    """table -> LoRA preset -> training tokens of all its runs."""
    table1 = sum(training_tokens("newsgroups", tokenizer, data_dir, f, max_length) * 5 for f in TABLE1_FRACTIONS)
    samsum_epoch = training_tokens("samsum", tokenizer, data_dir, 1.0, max_length)
    return {"Table 1": {"q,v": 2 * table1, "all+lm_head": 2 * table1},
            "Table 2": {"q,v": 2 * samsum_epoch, "all+lm_head": 2 * samsum_epoch},
            "LoRA grid": {"q,v": samsum_epoch * sum(GRID_EPOCHS) * GRID_RUNS_PER_EPOCH_SETTING}}


def study_hours(benchmark: dict, tokens: dict[str, dict[str, int]]) -> list[dict]:
    """One row per table and path: GPU-hours on the benchmark's GPU and the A10G estimate."""
    training, peak = benchmark["training"], benchmark.get("peak_bf16_tflops")
    rows = []
    for table, by_preset in tokens.items():
        for path in PATHS:
            if not all(f"{path} {preset}" in training for preset in by_preset):
                continue  # a path the benchmark did not time (the fast path is optional)
            hours, a10g = 0.0, 0.0 if peak else None
            for preset, count in by_preset.items():
                row = training[f"{path} {preset}"]
                hours += count / row["tokens_per_s"] / 3600
                if a10g is not None:  # the same MFU at an A10G's peak: the rate scales by the peaks' ratio
                    a10g += count / (row["tokens_per_s"] * A10G_BF16_TFLOPS / peak) / 3600
            rows.append({"table": table, "path": path, "tokens": sum(by_preset.values()), "gpu_hours": hours,
                         "a10g_hours_estimate": a10g})
    return rows


def to_markdown(rows: list[dict], benchmark: dict) -> str:
    gpu = benchmark.get("device", {}).get("name", "the benchmark's GPU")
    lines = [f"| grid | training tokens | path | {gpu} GPU-hours (measured rate) | A10G hours (estimate) |",
             "|---|---|---|---|---|"]
    for row in rows:
        a10g = f"{row['a10g_hours_estimate']:,.1f}" if row["a10g_hours_estimate"] else "—"
        lines.append(f"| {row['table']} | {row['tokens'] / 1e6:,.1f} M | {PATHS[row['path']]} | "
                     f"{row['gpu_hours']:,.1f} | {a10g} |")
    return "\n".join(lines)


def main_hours(args: StudyHoursArguments) -> str:
    from zephyr.errors import UsageError
    from zephyr.modeling import load_tokenizer

    path = Path(args.benchmark)
    if not path.is_file():
        raise UsageError(f"--benchmark: {path}: file not found")
    benchmark = read_json(path)
    rows = benchmark.get("training", {})
    missing = [f"{p} {preset}" for p in ("original", "suite") for preset in ("q,v", "all+lm_head")
               if not (rows.get(f"{p} {preset}") or {}).get("tokens_per_s")]
    if missing:
        raise UsageError(f"--benchmark: {path}: no measured training row {missing[0]!r} (run the benchmark with "
                         "--train True)")
    if args.tokenizer:
        tokenizer = load_tokenizer(args.tokenizer, "--tokenizer")
    else:
        import tempfile

        from zephyr.embedded import build_zephyr_tokenizer

        with tempfile.TemporaryDirectory() as scratch:
            build_zephyr_tokenizer(scratch)
            tokenizer = load_tokenizer(scratch, "--tokenizer")
    tokens = study_tokens(tokenizer, args.data_dir, args.max_length)
    return to_markdown(study_hours(benchmark, tokens), benchmark)
