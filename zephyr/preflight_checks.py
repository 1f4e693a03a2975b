"""The single checks the pre-flight (zephyr/preflight.py) combines: environment, output locations, model, data.

Each reads what it needs without loading weights or writing anything, and raises UsageError naming the flag.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path

from zephyr.config import DataArguments, EvalArguments, ModelArguments
from zephyr.errors import UsageError
from zephyr.tasks import LoadedSplit, Task

LOG_LEVEL_ENV = "LOGLEVEL"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


# -- environment and output locations ----------------------------------------------------------------
def log_level() -> str:
    """The level named by LOGLEVEL (default INFO)."""
    value = os.environ.get(LOG_LEVEL_ENV, "INFO")
    if value.upper() not in LOG_LEVELS:
        raise UsageError(f"{LOG_LEVEL_ENV}: unknown log level {value!r} (choose {', '.join(LOG_LEVELS)})")
    return value.upper()


def writable_dir(path: str | Path, name: str) -> None:
    """``path`` is a directory that exists or can be created, and can be written into; creates nothing."""
    path = Path(path).expanduser()
    existing = path
    while not existing.exists():
        if existing.is_symlink():
            raise UsageError(f"{name}: {path}: {existing} is a broken symbolic link")
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{name}: {path}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{name}: {path}: {existing} is not writable")


def run_dir_inside(output_root: str, run_name: str | None) -> None:
    """``--run_name`` names a directory inside ``--output_root`` ("..", absolute paths and "." do not)."""
    if run_name is None:
        return
    root = Path(output_root).expanduser().resolve()
    target = (root / run_name).resolve()
    if not run_name.strip() or root not in target.parents:
        raise UsageError(f"--run_name: {run_name!r} must name a directory inside --output_root ({output_root})")


# -- model ----------------------------------------------------------------------------------------------
def model_config(name: str, cache_dir: str | None, flag: str, hub: bool = True):
    """The config of the model a run will load, read without loading weights or writing anything; None for a
    hub id when ``hub`` is False. A GGUF file not yet converted is checked whole (header, tensor table, size) and
    its cache location must be writable."""
    from zephyr.modeling import (causal_config, check_causal, check_model_path, checked_gguf_config,
                                 gguf_cache_target, is_gguf, model_cache_root)

    path = check_model_path(name, flag)
    if is_gguf(name):
        target = gguf_cache_target(path, cache_dir)
        if (target / "config.json").is_file():
            return causal_config(str(target), flag)
        writable_dir(target.parent, model_cache_root(cache_dir)[1])
        config = checked_gguf_config(path, flag)
        check_causal(config, path, flag)
        return config
    if not path.exists() and not hub:
        return None
    config = causal_config(name, flag)
    if path.is_dir():
        from zephyr.weight_files import checkpoint_weights

        checkpoint_weights(path, flag)
    return config


@functools.lru_cache(maxsize=8)
def _adaptable_layers(config_json: str) -> dict[str, tuple[int, int]]:
    """The layers LoRA can adapt (linear, embedding) by name, with their (inputs, outputs) (an embedding's rows and
    width), from a weightless copy of the model."""
    import json

    import torch
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    settings = json.loads(config_json)
    config = AutoConfig.for_model(settings.pop("model_type"), **settings)
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config)
    layers = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            layers[name] = (module.in_features, module.out_features)
        elif isinstance(module, torch.nn.Embedding):
            layers[name] = (module.num_embeddings, module.embedding_dim)
        elif type(module).__name__ == "Conv1D":  # GPT-2's: weight [inputs, outputs]
            layers[name] = tuple(module.weight.shape)
    return layers


def adapter_fits(config, adapter: Path, name: str, flag: str) -> None:
    """The run's adapter is whole and its tensors fit the base model it will be loaded on (headers only)."""
    from zephyr.weight_files import adapter_header, adapter_mismatch

    mismatch = adapter_mismatch(adapter_header(adapter, "--run_dir"),
                                _adaptable_layers(config.to_json_string(use_diff=False)))
    if mismatch:
        raise UsageError(f"{flag}: {name} is not the model the adapter in {adapter} was trained on: {mismatch}; "
                         "pass that base model with --base_model")


def flat_batches(config, max_length: int) -> None:
    """Flat batches (zephyr/speed/flat.py) compute plain causal attention within each example: a model whose
    attention also caps its logits, or looks back a window shorter than an example, needs padded batches."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    if getattr(text, "attn_logit_softcapping", None):
        raise UsageError(f"--batch_layout flat: this {text.model_type} model caps its attention logits, which flat "
                         "attention does not; pass --batch_layout padded")
    window = getattr(text, "sliding_window", None)
    if window and window < max_length:
        raise UsageError(f"--batch_layout flat: this {text.model_type} model attends over a sliding window of "
                         f"{window} tokens, under --max_length {max_length}; pass --batch_layout padded")


def flat_split(split_tokens: int, max_length: int, examples: int) -> None:
    """A split row must hold one example of ``max_length`` tokens and the padding of its length bucket: a
    one-token segment for each other example of the micro-batch of ``examples`` and one more
    (zephyr/speed/flat.py, ``FlatBatchCollator.segments``)."""
    from zephyr.speed.flat import bucket_length
    from zephyr.speed.memory import flat_row_bucket

    bucket = flat_row_bucket(max_length)
    shortest = bucket_length(max_length, bucket, examples)
    if split_tokens < shortest:
        raise UsageError(f"--flat_split_tokens: {split_tokens} tokens cannot hold one example of --max_length "
                         f"{max_length} in its {bucket}-token length bucket, with a padding token for each example "
                         f"of --per_device_train_batch_size {examples} (at least {shortest})")


def lora_targets(config, model_args: ModelArguments) -> None:
    """Every LoRA target names layers of the model (peft matches a name or a dotted suffix)."""
    layers = _adaptable_layers(config.to_json_string(use_diff=False))
    missing = [t for t in model_args.target_modules() if not any(n == t or n.endswith("." + t) for n in layers)]
    if missing:
        flag = "--lora_lm_head" if missing == ["lm_head"] else "--lora_targets"
        known = sorted({n.rsplit(".", 1)[-1] for n in layers})
        raise UsageError(f"{flag}: {', '.join(missing)}: no such layer in this {config.model_type} model "
                         f"(its layers: {', '.join(known)})")


def check_eval_method(task: Task, eval_args: EvalArguments) -> None:
    if eval_args.eval_method == "loglik" and not task.is_classification:
        raise UsageError(f"--eval_method: loglik needs a classification task, not {task.name}")


def model_runtime(model_args: ModelArguments) -> None:
    """What loading the model needs besides its files: the 4-bit backend, the dtype, the attention kernel."""
    from zephyr.modeling import check_quantization_backend, compute_dtype

    check_quantization_backend(model_args)
    compute_dtype(model_args.dtype)
    if model_args.attn_implementation == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        raise UsageError("--attn_implementation: flash_attention_2 needs the flash-attn package (or use sdpa)")


def prompt_budget(config, eval_args: EvalArguments, max_new_tokens: int, max_length: int | None = None) -> int:
    """The prompt budget evaluation will use; a --max_prompt_tokens or --max_new_tokens the context cannot hold
    is an error, not a silent cut."""
    from zephyr.modeling import config_context_length

    context = config_context_length(config)
    room = context - max_new_tokens
    if room < 1:
        raise UsageError(f"--max_new_tokens: {max_new_tokens} leaves no room for a prompt in the model's context "
                         f"of {context} tokens")
    if eval_args.max_prompt_tokens is not None and eval_args.max_prompt_tokens > room:
        raise UsageError(f"--max_prompt_tokens: {eval_args.max_prompt_tokens} plus {max_new_tokens} new tokens "
                         f"exceeds the model's context of {context} tokens")
    return eval_args.max_prompt_tokens or min(room, max_length or room)


# -- data ----------------------------------------------------------------------------------------------
def is_hub_source(task: Task, split: str, data_args: DataArguments) -> bool:
    return not (data_args.data_dir or (data_args.train_file if split == "train" else data_args.test_file))


@functools.lru_cache(maxsize=16)
def _read_split(task_name: str, source: str, size: int, mtime_ns: int) -> LoadedSplit:
    from zephyr.tasks import get_task

    return get_task(task_name).load_split("train", None, source)


def load_split(task: Task, split: str, data_args: DataArguments) -> LoadedSplit:
    """A split as the run will load it; a local file is read once per version in a process (a sweep checks the
    same files for every run)."""
    explicit = data_args.train_file if split == "train" else data_args.test_file
    source = task.source(split, data_args.data_dir, explicit)
    if source.startswith("hub:") or not Path(source).is_file():
        return task.load_split(split, data_args.data_dir, explicit)  # names the missing file
    stat = Path(source).stat()
    return _read_split(task.name, source, stat.st_size, stat.st_mtime_ns)


def select_test(task: Task, test, data_args: DataArguments, labels: list[str]) -> list:
    """The test rows to score: the first ``--max_test_rows``; every label must be one training saw."""
    examples = test.examples[: data_args.max_test_rows] if data_args.max_test_rows else test.examples
    if task.is_classification:
        unseen = sorted({e.target for e in examples} - set(labels))
        if unseen:
            raise UsageError(f"{test.source}: test label {unseen[0]!r} never appears in the training labels "
                             f"({len(unseen)} unseen label(s))")
    return examples


def test_rows(task: Task, data_args: DataArguments, labels: list[str]):
    """(test split, rows to score); more --max_test_rows than the split has is an error."""

    test = load_split(task, "test", data_args)
    if data_args.max_test_rows and data_args.max_test_rows > len(test.examples):
        raise UsageError(f"--max_test_rows: {data_args.max_test_rows} asked, but {test.source} has "
                         f"{len(test.examples)} usable rows")
    return test, select_test(task, test, data_args, labels)

