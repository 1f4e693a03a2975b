"""The offline embedded default: Zephyr's real tokenizer, a tiny random Mistral model and generated data.

The tokenizer is Mistral-7B-v0.1's sentencepiece model, shipped in the ``mistral-common`` package and used
unchanged by Zephyr-7B-beta, plus Zephyr's chat template and ``pad = </s>``. Nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import random
import shutil
import tempfile
from pathlib import Path

from zephyr.io import atomic_directory, atomic_write_jsonl, atomic_write_text
from zephyr.protocol import EMBEDDED_MARKER

MARKER_TEXT = ("Made by zephyr.embedded to check the pipeline: {what}. Runs on it are no results; the tables leave "
               "them out.\n")

TOKENIZER_SHA256 = "dadfd56d766715c61d2ef780a525ab43b8e6da4de6865bda3d95fdef5e134055"

# A tiny Mistral: the architecture of Zephyr-7B-beta at a size that trains in seconds on a CPU.
# Zephyr-7B-beta's chat template (alignment-handbook), as shipped in its tokenizer_config.json. Used by the
# embedded default, whose tokenizer is built offline from Mistral's sentencepiece model.
ZEPHYR_CHAT_TEMPLATE = (
    "{% for message in messages %}\n"
    "{% if message['role'] == 'user' %}\n"
    "{{ '<|user|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'system' %}\n"
    "{{ '<|system|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n"
    "{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
    "{% endif %}\n"
    "{% if loop.last and add_generation_prompt %}\n"
    "{{ '<|assistant|>' }}\n"
    "{% endif %}\n"
    "{% endfor %}"
)
TINY_MISTRAL = dict(vocab_size=32000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                    bos_token_id=1, eos_token_id=2, pad_token_id=2, tie_word_embeddings=False, sliding_window=None)


def sentencepiece_model_path() -> Path:
    """Mistral-7B-v0.1's tokenizer.model, from mistral-common, checked against its known sha256."""
    import mistral_common

    path = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"
    digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
    if digest != TOKENIZER_SHA256:
        raise RuntimeError(f"{path}: expected Mistral's tokenizer.model (sha256 {TOKENIZER_SHA256[:12]}...), "
                           f"found {digest and digest[:12]}; reinstall mistral-common==1.13.1")
    return path


def build_zephyr_tokenizer(out_dir: str | Path):
    """Save Zephyr-7B-beta's tokenizer (BOS added, EOS = pad = </s>, Zephyr chat template) to ``out_dir``."""
    from transformers import LlamaTokenizer

    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory() as scratch:
        # from_pretrained on a directory holding tokenizer.model: the vocab_file= constructor silently gives a
        # 3-token vocabulary in transformers 5.
        shutil.copy(sentencepiece_model_path(), Path(scratch) / "tokenizer.model")
        tokenizer = LlamaTokenizer.from_pretrained(scratch, add_bos_token=True, add_eos_token=False,
                                                  legacy=True, padding_side="left")
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.chat_template = ZEPHYR_CHAT_TEMPLATE
    tokenizer.model_max_length = TINY_MISTRAL["max_position_embeddings"]
    tokenizer.save_pretrained(out_dir)
    return tokenizer


def build_tiny_model(out_dir: str | Path, seed: int = 0) -> Path:
    """A randomly initialised tiny Mistral checkpoint with the Zephyr tokenizer, saved once into ``out_dir``."""
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    out_dir = Path(out_dir)
    if (out_dir / "config.json").is_file() and (out_dir / "tokenizer_config.json").is_file():
        return out_dir
    with atomic_directory(out_dir) as staging:
        torch.manual_seed(seed)
        MistralForCausalLM(MistralConfig(**TINY_MISTRAL)).save_pretrained(staging)
        build_zephyr_tokenizer(staging)
        atomic_write_text(Path(staging) / EMBEDDED_MARKER, MARKER_TEXT.format(what="a tiny random model"))
    return out_dir


# -- generated data ---------------------------------------------------------------------------------
def write_synthetic_data(root: str | Path, seed: int = 0, train_rows: int = 160, test_rows: int = 40,
                         samsum_train_rows: int | None = None) -> Path:
    """A small learnable dataset in the suite's local layout: <root>/newsgroups/*.jsonl, <root>/samsum/*.jsonl
    (``samsum_train_rows`` training dialogues, default ``train_rows``)."""
    from zephyr.tasks import TASKS, Task

    rng = random.Random(seed)  # one stream over the tasks in turn, split by split
    root = Path(root)
    tasks = [cls() for cls in TASKS.values() if cls.synthetic_rows is not Task.synthetic_rows]
    for split, rows in (("train", train_rows), ("test", test_rows)):
        for task in tasks:
            count = samsum_train_rows if task.name == "samsum" and split == "train" and samsum_train_rows else rows
            atomic_write_jsonl(root / task.name / f"{split}.jsonl", task.synthetic_rows(rng, count, split))
    atomic_write_text(root / EMBEDDED_MARKER, MARKER_TEXT.format(what="generated data"))
    return root
