"""A model of a given architecture with random weights, saved once as an ordinary checkpoint: 7B speed and memory
without 7B weights (the benchmark loads it through the suite's own 4-bit path)."""

from __future__ import annotations

from pathlib import Path

import torch

from zephyr.io import atomic_directory
from zephyr.measure import free_memory

# Zephyr-7B-beta's architecture (MistralForCausalLM).
SHAPES = {
    "mistral-7b": dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=32768,
                       rope_theta=10000.0, sliding_window=4096, rms_norm_eps=1e-5),
    # SmolLM2-135M-Instruct's architecture (LlamaForCausalLM, tied embeddings): its speed without its weights.
    "smollm2-135m": dict(architecture="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536,
                         num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                         max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-5,
                         tie_word_embeddings=True),
    # For tests: the same code path in seconds on a CPU.
    "tiny": dict(vocab_size=32000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, sliding_window=None),
}


def build_random_checkpoint(out_dir: Path, shape: str, tokenizer_dir: str | None = None) -> Path:
    """Save a randomly initialised model of ``shape`` (bf16, built on the GPU when there is one) once."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, MistralConfig

    from zephyr.embedded import build_zephyr_tokenizer

    if (out_dir / "config.json").is_file():
        return out_dir
    shape_config = dict(SHAPES[shape])
    config_class = LlamaConfig if shape_config.pop("architecture", "mistral") == "llama" else MistralConfig
    config = config_class(**{"tie_word_embeddings": False, **shape_config}, bos_token_id=1, eos_token_id=2,
                          pad_token_id=2)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    with atomic_directory(out_dir) as staging:
        model.save_pretrained(staging)
        del model
        if tokenizer_dir:
            AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(staging)
        else:
            build_zephyr_tokenizer(staging)
    free_memory()
    return out_dir
