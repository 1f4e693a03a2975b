"""Shared fixtures: one tiny random Mistral with Zephyr's real tokenizer, inline data, and ../shared."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from zephyr.io import atomic_write_jsonl

REPO = Path(__file__).resolve().parents[1]

if "MUTANT_UNDER_TEST" in os.environ:  # under mutmut (results/tests/mutation.md)
    # tqdm's default lock holds a multiprocessing semaphore that every process forked after it shares. mutmut forks
    # one child per mutant and kills one that runs too long: a child killed while drawing a bar kept that semaphore,
    # and every later child then hung on its first bar (all timeouts). Here bars are drawn by one process at a time.
    import threading

    from tqdm import tqdm

    tqdm.set_lock(threading.RLock())


def shared_dir() -> Path | None:
    """ZEPHYR_SHARED_DIR (CI sets it to ../shared), else ../shared beside the checkout if present."""
    configured = os.environ.get("ZEPHYR_SHARED_DIR")
    if configured:
        path = Path(configured)
        assert path.is_dir(), f"ZEPHYR_SHARED_DIR={configured} does not exist"
        return path
    default = REPO.parent / "shared"
    return default if default.is_dir() else None


requires_shared = pytest.mark.skipif(shared_dir() is None, reason="../shared not present (set ZEPHYR_SHARED_DIR)")


SMOLLM2_GGUF = Path("models") / "smollm2-135m-instruct" / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def smollm2_conversion(tmp_path_factory):
    """SmolLM2's GGUF converted once for the session, as a script converts it (logging set up first, then the
    libraries imported), into a model cache folder: (the finished process, that folder). A later run given the
    folder as --model_cache_dir finds the conversion there."""
    import subprocess
    import sys

    cache = tmp_path_factory.mktemp("model-cache")
    code = ("from pathlib import Path; from zephyr.progress import configure_logging; configure_logging('INFO'); "
            f"from zephyr.modeling import convert_gguf; convert_gguf(Path('{shared_dir() / SMOLLM2_GGUF}'), '{cache}')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    return result, cache


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from zephyr.embedded import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-mistral", seed=0)


@pytest.fixture(scope="session")
def tokenizer(tiny_model_dir):
    from zephyr.modeling import load_tokenizer

    return load_tokenizer(str(tiny_model_dir))


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> Path:
    from zephyr.embedded import write_synthetic_data

    return write_synthetic_data(tmp_path_factory.mktemp("data"), seed=0, train_rows=48, test_rows=12)


def write_newsgroups(root: Path, train: list[tuple[str, str]], test: list[tuple[str, str]]) -> Path:
    for split, rows in (("train", train), ("test", test)):
        atomic_write_jsonl(root / "newsgroups" / f"{split}.jsonl",
                           [{"id": f"{split}{i}", "text": t, "label": l} for i, (t, l) in enumerate(rows)])
    return root


def run_args(tiny_model_dir, data_dir, out, **overrides):
    """Data, model and training arguments of a short run of the tiny model (QLoRA on all projections)."""
    from zephyr.config import DataArguments, ModelArguments, TrainArguments

    data = DataArguments(task=overrides.pop("task", "newsgroups"), data_dir=str(data_dir), max_length=96)
    model = ModelArguments(model_name_or_path=str(tiny_model_dir), quantization=overrides.pop("quantization", "4bit"),
                           lora_r=8, lora_targets=overrides.pop("lora_targets", "all"),
                           lora_lm_head=overrides.pop("lora_lm_head", False))
    train_args = TrainArguments(output_root=str(out), num_train_epochs=1, max_steps=overrides.pop("max_steps", 6),
                                per_device_train_batch_size=8, learning_rate=2e-3,
                                gradient_accumulation_steps=overrides.pop("gradient_accumulation_steps", 1),
                                gradient_checkpointing=overrides.pop("gradient_checkpointing", False),
                                optim="adamw_torch", logging_steps=1, **overrides)
    return data, model, train_args


def packed_rows_trainer(tokenizer, tmp_path, trainer_class):
    """A tiny random Mistral, six short Newsgroups examples packed into rows, and ``trainer_class`` over them."""
    import torch
    from transformers import AutoModelForCausalLM, MistralConfig

    from zephyr.data import Example
    from zephyr.embedded import TINY_MISTRAL
    from zephyr.prompting import PromptBuilder
    from zephyr.tasks import get_task
    from zephyr.training import build_sft_config, build_training_dataset

    builder = PromptBuilder(get_task("newsgroups"), tokenizer, "original", ["sci.space", "rec.autos"])
    texts = ["The rocket reached orbit.", "New brakes.", "Shuttle tiles and heat shields again.", "Cars rust.",
             "The orbiter landed at night on the long runway.", "Tyres wear out."]
    examples = [Example(str(i), t, "sci.space" if i % 2 == 0 else "rec.autos") for i, t in enumerate(texts)]
    dataset, _ = build_training_dataset(builder, examples, max_length=48)
    data, _, train_args = run_args("unused", "unused", tmp_path, packing=True)
    data.max_length = 48
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(MistralConfig(**TINY_MISTRAL)).eval()
    trainer = trainer_class(model=model, args=build_sft_config(train_args, data, tmp_path),
                            train_dataset=dataset, processing_class=tokenizer)
    return trainer, dataset, examples


def training_rows(tokenizer, count=8, max_length=96):
    """``count`` Newsgroups training rows of different lengths (``input_ids``, ``completion_mask``), as the trainer's
    dataset holds them."""
    from zephyr.data import Example
    from zephyr.prompting import PromptBuilder
    from zephyr.tasks import get_task
    from zephyr.training import build_training_dataset

    words = "orbit rocket brakes tyres shuttle engine night runway heat shield rust".split()
    texts = [" ".join(words[(i * 3 + j) % len(words)] for j in range(2 + 7 * i)) for i in range(count)]
    builder = PromptBuilder(get_task("newsgroups"), tokenizer, "original", ["sci.space", "rec.autos"])
    examples = [Example(str(i), t, "sci.space" if i % 2 else "rec.autos") for i, t in enumerate(texts)]
    dataset, _ = build_training_dataset(builder, examples, max_length)
    return dataset


TINY_SWEEP_ARGS = ("--max_steps 2 --max_length 96 --per_device_train_batch_size 4 --optim adamw_torch "
                   "--gradient_checkpointing False --eval_batch_size 8")


def tiny_sweep_env(model: Path, data: Path, out: Path, **more) -> dict:
    """Environment of sample_ablate.sh for two short runs of the tiny model (base and NEFTune, all rows)."""
    import sys

    return {**os.environ, "PYTHON": sys.executable, "MODEL": str(model), "DATA_DIR": str(data), "OUT_ROOT": str(out),
            "FRACTIONS": "1.0", "VARIANTS": "base neftune", "MAX_TEST_ROWS": "4", "EXTRA_ARGS": TINY_SWEEP_ARGS,
            "RUNS_PER_GPU": "2", **more}  # both runs at once: each mostly waits on its imports


@pytest.fixture(scope="session")
def tiny_sweep(tmp_path_factory, tiny_model_dir) -> dict:
    """A finished local sweep of the tiny model: its environment (data, model, output root) and its output."""
    import subprocess

    from zephyr.embedded import write_synthetic_data

    root = tmp_path_factory.mktemp("tiny-sweep")
    data = write_synthetic_data(root / "data", seed=0, train_rows=48, test_rows=8)
    env = tiny_sweep_env(tiny_model_dir, data, root / "local")
    result = subprocess.run(["bash", str(REPO / "sample_ablate.sh")], env={k: v for k, v in env.items()
                                                                          if k != "RAY_ADDRESS"},
                            cwd=root, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return {"env": env, "out": root / "local", "data": data, "root": root, "stdout": result.stdout}
