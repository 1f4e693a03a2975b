"""Export a fine-tuned run as one merged model: safetensors weights, tokenizer and chat template.

Every 4-bit weight is de-quantized as evaluation does it (``zephyr.speed.dense``: bitsandbytes' own
``dequantize_4bit``), the LoRA delta is added in float32 (``merged_for_export``), and the sum is cast to the
export dtype once. The base model is loaded with float32 weights for this, so that the 4-bit de-quantization itself is
not rounded to bf16 first. The result loads with ``AutoModelForCausalLM.from_pretrained`` (and so with vLLM or
llama.cpp's ``convert_hf_to_gguf.py``); no peft or bitsandbytes is needed to run it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

import torch

from zephyr import preflight
from zephyr.config import ModelArguments
from zephyr.errors import UsageError
from zephyr.io import read_json
from zephyr.modeling import DTYPES, load_model, load_tokenizer, resolve_model_path
from zephyr.preflight_checks import adapter_fits, model_config, writable_dir
from zephyr.progress import phase_done
from zephyr.rundir import CONFIG, finished_adapter
from zephyr.speed.dense import dense_weight, merged_for_export


@dataclass
class ExportArguments:
    run_dir: Optional[str] = field(default=None, metadata={"help": "Fine-tuned run directory to export (required)"})
    output_dir: Optional[str] = field(default=None, metadata={"help": "Where the merged model goes (default: "
                                                                      "<run_dir>/merged)"})
    dtype: str = field(default="bf16", metadata={"help": "Weights of the exported model: bf16, fp16 or fp32 (fp32 "
                                                         "keeps the merge bit-exact; bf16 rounds it once)"})
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing export in output_dir"})
    base_model: Optional[str] = field(
        default=None, metadata={"help": "Base model of --run_dir (default: the one its config.json records): for a "
                                        "run directory copied from another machine"})

    def __post_init__(self):
        if not self.run_dir:
            raise UsageError("--run_dir: required (a directory written by a fine-tuning script)")
        if self.dtype not in DTYPES:
            raise UsageError(f"--dtype: unknown value {self.dtype!r} (choose {', '.join(DTYPES)})")


def rounding_report(model, dtype: torch.dtype) -> dict:
    """What casting the merged weights to ``dtype`` does to the LoRA deltas, over every adapted layer.

    For each weight entry: W (de-quantized, float32), the delta D and the exported value round(W + D). Reports
    the delta's size against W and against the spacing of ``dtype`` at W (one ulp), the share of delta entries
    that the rounding wipes out (round(W + D) == round(W)), and the relative error of the delta the exported
    model really carries, ||(round(W + D) - W) - D|| / ||D||.
    """
    from peft.tuners.lora import LoraLayer

    total = lost = 0
    delta_sq = weight_sq = error_sq = 0.0
    ulp_ratios = []
    for module in model.modules():
        if not isinstance(module, LoraLayer):
            continue
        weight = dense_weight(module.get_base_layer(), torch.float32)
        delta = sum(module.get_delta_weight(name).float() for name in module.active_adapters if name in module.lora_A)
        merged = (weight + delta).to(dtype).float()
        info = torch.finfo(dtype)  # one ulp of dtype at |W|: eps x the power of two at or below |W|
        ulp = info.eps * torch.exp2(torch.floor(torch.log2(weight.abs().clamp(min=info.tiny))))
        nonzero = delta != 0
        total += int(nonzero.sum())
        lost += int((nonzero & (merged == weight.to(dtype).float())).sum())
        delta_sq += float(delta.pow(2).sum())
        weight_sq += float(weight.pow(2).sum())
        error_sq += float(((merged - weight) - delta).pow(2).sum())
        ulp_ratios.append((delta.abs() / ulp.clamp(min=torch.finfo(torch.float32).tiny))[nonzero].flatten())
    if not total:
        return {}
    ratios = torch.cat(ulp_ratios)
    sample = ratios[torch.randperm(len(ratios), generator=torch.Generator().manual_seed(0))[:1_000_000]]
    return {"dtype": str(dtype).removeprefix("torch."), "delta_entries": total,
            "delta_rms_over_weight_rms": (delta_sq / weight_sq) ** 0.5,
            "median_abs_delta_in_ulps": float(sample.median()),
            "delta_entries_lost": lost / total,
            "delta_relative_error": (error_sq / delta_sq) ** 0.5 if delta_sq else 0.0}


def export_run(args: ExportArguments) -> tuple[Path, dict]:
    """Write the merged model of ``args.run_dir``; returns the output directory and the rounding report."""
    from peft import PeftModel

    run_dir = Path(args.run_dir)
    adapter = finished_adapter(run_dir)
    out = Path(args.output_dir or run_dir / "merged")
    if (out / "config.json").is_file() and not args.overwrite:
        raise UsageError(f"--output_dir: {out}: an exported model is already there; pass --overwrite True")
    config = read_json(run_dir / CONFIG)
    try:
        model_args = ModelArguments(**config["arguments"]["ModelArguments"])
    except (KeyError, TypeError) as err:
        raise UsageError(f"{run_dir / CONFIG}: no usable ModelArguments ({err})") from None
    writable_dir(out, "--output_dir")
    base, flag = preflight.base_model(run_dir, config, args)
    base_config = model_config(base, model_args.model_cache_dir, flag)
    adapter_fits(base_config, adapter, base, flag)
    started = time.perf_counter()
    tokenizer = load_tokenizer(str(adapter))
    # float32 weights: the 4-bit de-quantization and the delta are summed before any rounding
    base_path = resolve_model_path(base, model_args.model_cache_dir, flag)
    model = PeftModel.from_pretrained(load_model(replace(model_args, dtype="fp32"), base_path, flag), adapter)
    started = phase_done("loading model", started, f"{base} + {adapter}")
    dtype = DTYPES[args.dtype]
    report = rounding_report(model, dtype) if dtype != torch.float32 else {}
    merged = merged_for_export(model).to(dtype)
    text_config = merged.config.get_text_config()
    head, embeddings = merged.get_output_embeddings(), merged.get_input_embeddings()
    if getattr(text_config, "tie_word_embeddings", False) and not torch.equal(head.weight, embeddings.weight):
        text_config.tie_word_embeddings = False  # an adapted lm_head is no longer the embedding matrix
        merged.config.tie_word_embeddings = False
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)  # with the chat template the run was trained and evaluated with
    phase_done("writing results", started, f"{args.dtype} model and tokenizer in {out}")
    return out, report
