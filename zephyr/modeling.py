"""Model and tokenizer loading, and the pure config factories (quantization, LoRA)."""

from __future__ import annotations

import contextlib
import functools
import json
import os
from pathlib import Path

import torch

from zephyr.config import ModelArguments
from zephyr.errors import UsageError
from zephyr.io import atomic_directory, file_sha256

FLAG = "--model_name_or_path"
CACHE_ENV = "ZEPHYR_CACHE"


# -- pure factories ---------------------------------------------------------------------------------
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def compute_dtype(requested: str = "auto", flag: str = "--dtype") -> torch.dtype:
    """``auto``: bf16 on GPUs that support it, else float32 (CPU bf16 matmuls are slow; tests want exactness)."""
    cuda = torch.cuda.is_available()
    if requested == "auto":
        return torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32
    if requested == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise UsageError(f"{flag} bf16: {torch.cuda.get_device_name()} has no bf16 support; use {flag} fp16")
    return DTYPES[requested]


def build_bnb_config(model_args: ModelArguments, dtype: torch.dtype | None = None):
    """4-bit NF4 with double quantization (the study's QLoRA setting), or None for ``--quantization none``."""
    if model_args.quantization == "none":
        return None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=dtype or compute_dtype(model_args.dtype))


def build_lora_config(model_args: ModelArguments):
    from peft import LoraConfig

    return LoraConfig(r=model_args.lora_r, lora_alpha=model_args.lora_alpha, lora_dropout=model_args.lora_dropout,
                      target_modules=model_args.target_modules(), bias="none", task_type="CAUSAL_LM")


# -- checkpoint resolution --------------------------------------------------------------------------
def _looks_local(name: str) -> bool:
    """Hub ids are ``name`` or ``org/name``; anything path-like that does not exist is a missing directory."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def resolve_model_path(name: str, cache_dir: str | None = None, flag: str = FLAG) -> str:
    """A local checkpoint directory or hub id; a .gguf file is converted once into a checkpoint directory."""
    path = check_model_path(name, flag)
    return str(convert_gguf(path, cache_dir, flag)) if is_gguf(name) else str(path if path.exists() else name)


def is_gguf(name: str) -> bool:
    return name.lower().endswith(".gguf")


def check_model_path(name: str, flag: str = FLAG) -> Path:
    """Refuse a model path that cannot be a checkpoint directory, a .gguf file or a hub id; reads nothing."""
    path = Path(name).expanduser()
    if is_gguf(name):
        if not path.is_file():
            raise UsageError(f"{flag}: {name}: GGUF file not found")
        return path
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UsageError(f"{flag}: {name}: directory has no config.json (not a transformers checkpoint)")
        return path
    if path.exists():
        raise UsageError(f"{flag}: {name}: is a file; give a checkpoint directory, a .gguf file or a hub id")
    if _looks_local(name):
        raise UsageError(f"{flag}: {name}: no such directory")
    return path


def model_cache_root(cache_dir: str | None = None) -> tuple[Path, str]:
    """Where GGUF conversions go, and the flag or variable that chose it (for error messages)."""
    if cache_dir:
        return Path(cache_dir).expanduser(), "--model_cache_dir"
    configured = os.environ.get(CACHE_ENV)
    if configured is not None:
        if not configured.strip():
            raise UsageError(f"{CACHE_ENV}: set but empty (unset it or give a directory)")
        return Path(configured).expanduser(), CACHE_ENV
    return Path.home() / ".cache" / "zephyr-suite", CACHE_ENV


def gguf_cache_target(path: Path, cache_dir: str | None = None) -> Path:
    """The checkpoint directory a GGUF file converts to (named by its content hash, so a changed file converts
    again)."""
    return model_cache_root(cache_dir)[0] / "gguf" / f"{path.stem}-{file_sha256(path)[:16]}"


@functools.lru_cache(maxsize=4)
def _gguf_config(path: Path, size: int, mtime_ns: int, flag: str):
    return gguf_config(path, flag)


def checked_gguf_config(path: Path, flag: str = FLAG):
    """gguf_config, parsed once per file version in a process (the preflight and the conversion both ask)."""
    stat = path.stat()
    return _gguf_config(path, stat.st_size, stat.st_mtime_ns, flag)


def gguf_config(path: Path, flag: str = FLAG):
    """The model config inside a GGUF file, after checking its header, tensor table and size.

    transformers' reader (the gguf package's GGUFReader) maps every tensor of the table onto the file: a file
    cut short or a corrupt table fails here, in seconds, before a conversion writes anything.
    """
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise UsageError(f"{flag}: {path}: reading GGUF files needs the 'gguf' package (pip install gguf==0.19.0)")
    from transformers import AutoConfig
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    try:
        parsed = load_gguf_checkpoint(str(path), return_tensors=False)["config"]
        model_type = parsed.pop("model_type")
        return AutoConfig.for_model(model_type, **parsed)
    except Exception as err:  # the reader raises ValueError, IndexError, KeyError... for broken files
        detail = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
        raise UsageError(f"{flag}: {path}: not a readable GGUF model (truncated or corrupt? {detail})") from None


@contextlib.contextmanager
def _gguf_bar_follows_the_switch():
    """transformers' GGUF reader draws its "Converting and de-quantizing" bar with tqdm itself, past the progress-bar
    switch that zephyr.progress turns off: for the conversion it gets the switch's tqdm."""
    from unittest import mock

    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    with mock.patch.object(gguf_utils, "tqdm", hf_logging.tqdm) if hasattr(gguf_utils, "tqdm") else \
            contextlib.nullcontext():
        yield


def convert_gguf(path: Path, cache_dir: str | None = None, flag: str = FLAG) -> Path:
    """Dequantize a GGUF file into a plain checkpoint (once; cached by content hash).

    A model loaded from GGUF refuses ``save_pretrained`` and 4-bit re-quantization, so a plain model is
    rebuilt from its config, given the loaded weights, and saved as an ordinary bf16 checkpoint.
    """
    target = gguf_cache_target(path, cache_dir)
    if (target / "config.json").is_file():
        return target
    checked_gguf_config(path, flag)  # a broken file fails before the cache folder is created
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    with _gguf_bar_follows_the_switch():
        loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    plain.tie_weights()
    plain = plain.to(torch.bfloat16)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    repair_gguf_tokenizer(tokenizer, path)
    # transformers' GGUF tokenizer conversion can set EOS to the BOS token (SmolLM2: <|im_start|>); the model's
    # own config names the token that ends its turns.
    if config.eos_token_id is not None and tokenizer.eos_token_id != config.eos_token_id:
        tokenizer.eos_token = tokenizer.convert_ids_to_tokens(config.eos_token_id)
    # another process (a second rank under accelerate launch) may finish the same conversion first: its copy stays
    with atomic_directory(target, keep_existing=True) as staging:
        plain.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return target


def repair_gguf_tokenizer(tokenizer, path: Path) -> None:
    """Give a GGUF sentencepiece vocabulary (Gemma 3) the BPE merges its tokenizer class needs on reload.

    Such a file ships pieces and scores but no merges. transformers 5.17 converts it to a Unigram tokenizer,
    but Gemma's tokenizer class rebuilds a BPE from the saved vocabulary and merges, and with no merges BPE
    splits every word into single characters. The merges are rebuilt from the pieces' ranks, as transformers
    does for a sentencepiece model file. The file's ``add_bos_token``, which the conversion drops, is honoured
    too: Gemma expects ``<bos>`` at the start of every sequence.
    """
    import gguf
    from tokenizers.models import BPE, Unigram
    from transformers.tokenization_utils_base import generate_merges

    backend = tokenizer.backend_tokenizer
    if isinstance(backend.model, Unigram) and getattr(type(tokenizer), "model", None) is BPE:
        pieces = json.loads(backend.to_str())["model"]["vocab"]
        vocab = {piece: rank for rank, (piece, _score) in enumerate(pieces)}
        backend.model = BPE(vocab, generate_merges(vocab), unk_token=tokenizer.unk_token, fuse_unk=True,
                            byte_fallback=True)
    add_bos = gguf.GGUFReader(path).fields.get("tokenizer.ggml.add_bos_token")
    if add_bos is not None and add_bos.contents() and not tokenizer.add_bos_token:
        tokenizer.add_bos_token = True


# -- loading ----------------------------------------------------------------------------------------
def load_tokenizer(path: str, flag: str = FLAG):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise UsageError(f"{flag}: {path}: cannot load a tokenizer ({str(err).splitlines()[0][:200]})") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def device_map():
    """Whole model on this process's GPU (one GPU per process also under ``accelerate launch``)."""
    if torch.cuda.is_available():
        return {"": int(os.environ.get("LOCAL_RANK", torch.cuda.current_device()))}
    return None


def causal_config(path: str, flag: str = FLAG):
    """The config of a checkpoint directory or hub id, which must be a causal language model's. A hub id is read
    from the Hugging Face cache alone when the hub cannot be reached, so that an offline run fails at once."""
    from transformers import AutoConfig

    from zephyr.hub import hub_unreachable

    offline = None if Path(path).exists() else hub_unreachable()
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=offline is not None)
    except (OSError, ValueError) as err:
        if offline:
            raise UsageError(f"{flag}: {path}: not in the Hugging Face cache, and the hub cannot be reached "
                             f"({offline}); give a local checkpoint directory or .gguf file") from None
        raise UsageError(f"{flag}: {path}: cannot load a model config ({str(err).splitlines()[0][:200]})") from None
    check_causal(config, path, flag)
    return config


def check_causal(config, path, flag: str = FLAG) -> None:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise UsageError(f"{flag}: {path}: a {config.model_type!r} checkpoint is not a causal language model")


def check_quantization_backend(model_args: ModelArguments) -> None:
    if model_args.quantization == "4bit":
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise UsageError("--quantization 4bit: bitsandbytes is not installed "
                             "(pip install bitsandbytes==0.50.2, or pass --quantization none)") from None


def load_model(model_args: ModelArguments, path: str | None = None, flag: str = FLAG):
    """The base causal LM, quantized to 4-bit NF4 unless ``--quantization none``."""
    from transformers import AutoModelForCausalLM

    path = path or resolve_model_path(model_args.model_name_or_path, model_args.model_cache_dir, flag)
    config = causal_config(path, flag)
    dtype = compute_dtype(model_args.dtype)
    quantization = build_bnb_config(model_args, dtype)
    check_quantization_backend(model_args)
    avoid_per_shape_attention_plans()
    return AutoModelForCausalLM.from_pretrained(
        path, config=config, quantization_config=quantization, dtype=dtype,
        attn_implementation=model_args.attn_implementation, device_map=device_map())


def avoid_per_shape_attention_plans() -> None:
    """Keep SDPA off its cuDNN backend, which builds a new execution plan for every new sequence length.

    Padding-free packing changes the packed length at every step and decoding grows it by one token per step, so
    cuDNN attention spends most of its time planning; the flash and memory-efficient kernels need no plans.
    """
    if torch.cuda.is_available():
        torch.backends.cuda.enable_cudnn_sdp(False)


def context_length(model) -> int:
    return config_context_length(model.config)


def config_context_length(config) -> int:
    return int(getattr(config, "max_position_embeddings", None) or 2048)
