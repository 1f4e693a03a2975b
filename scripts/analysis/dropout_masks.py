"""LoRA dropout masks in the suite's compiled decoder layers against eager ones: are they the masks dropout promises?

Table 1's fast path scored 0.42 ± 0.21 points above eager with all-module LoRA (fast_check.py), where training runs
five epochs into overfitting and LoRA dropout is the one regularizer. Compiled layers draw dropout's random numbers
from inductor's own generator, not from eager's; a mask that kept more than 1 - p, repeated itself from step to
step (CUDA graph replays) or tied neighbouring channels together would regularize differently. PEFT applies
dropout to each adapted linear's input in the adapter's dtype, bf16 (TRL casts a quantized model's LoRA weights to
bf16); o_proj's input is attention's output transposed back to
(batch, tokens, heads x head_dim), the layout of a known inductor bug that gave groups of channels one mask
(pytorch/pytorch#198333). This compiles probe layers with ``compile_decoder_layers`` (the suite's settings: CUDA
graphs on a GPU, bf16 rounding as eager) and reads their masks over several training steps, forward and backward.
On the H200 (torch 2.11, CUDA graphs) compiled masks are as independent as eager ones
(results/smollm2/study/fast-check/h200-dropout-masks.md): dropout is not what moves the fast path's accuracy.

    python scripts/analysis/dropout_masks.py   # on the GPU if there is one
    python scripts/analysis/dropout_masks.py --device cpu --tokens 16 --heads 2 --head_dim 8 --steps 4

Independent masks give: kept ≈ 1 - p; the same mask in two neighbouring channels, or in one channel at two steps,
with probability (1 - p)² + p² (0.82 at p = 0.1); all four channels of an aligned group alike with probability
(1 - p)⁴ + p⁴ (0.656).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from zephyr.cli import entry_point
from zephyr.errors import UsageError, raise_usage_errors
from zephyr.speed.compile import compile_decoder_layers

P = 0.1


class TransposedInputDecoderLayer(torch.nn.Module):
    """Dropout on o_proj's LoRA input: attention's (batch, heads, tokens, head_dim) output made contiguous as
    (batch, tokens, heads x head_dim)."""

    def forward(self, attention):
        batch, heads, tokens, head_dim = attention.shape
        hidden = attention.transpose(1, 2).contiguous().reshape(batch, tokens, heads * head_dim)
        return F.dropout(hidden, P, self.training)


class HiddenInputDecoderLayer(torch.nn.Module):
    """Dropout on the other projections' LoRA input: the (batch, tokens, hidden) states themselves."""

    def forward(self, hidden):
        return F.dropout(hidden, P, self.training)


def masks(layer: torch.nn.Module, shape: tuple[int, ...], steps: int, device: str) -> list[torch.Tensor]:
    """The kept-or-dropped mask of each training step, with a backward pass after each forward as in training."""
    found = []
    for _ in range(steps):
        x = torch.ones(shape, device=device, dtype=torch.bfloat16, requires_grad=True)
        out = layer(x)
        found.append((out != 0).flatten(0, -2).clone())  # (positions, channels); a CUDA graph reuses its output
        out.sum().backward()
    return found


def statistics(step_masks: list[torch.Tensor], group: int = 4) -> dict[str, float]:
    first = step_masks[0]
    channels = first.shape[-1] // group * group
    grouped = first[:, :channels].reshape(first.shape[0], -1, group)
    return {
        "kept": torch.stack(step_masks).float().mean().item(),
        "neighbours alike": (first[:, 1:] == first[:, :-1]).float().mean().item(),
        f"groups of {group} alike": (grouped.all(-1) | ~grouped.any(-1)).float().mean().item(),
        "alike at the next step": torch.stack([(a == b).float().mean() for a, b in
                                               zip(step_masks, step_masks[1:])]).mean().item(),
    }


def measure(device: str, batch: int, tokens: int, heads: int, head_dim: int, steps: int) -> dict:
    """{probe: {"eager": statistics, "compiled": statistics}} for both dropout inputs."""
    probes = {"o_proj input (transposed)": (TransposedInputDecoderLayer, (batch, heads, tokens, head_dim)),
              "hidden states": (HiddenInputDecoderLayer, (batch, tokens, heads * head_dim))}
    results = {}
    for name, (layer_class, shape) in probes.items():
        eager = torch.nn.Sequential(layer_class()).train()
        compiled = torch.nn.Sequential(layer_class()).train()
        uncompile = compile_decoder_layers(compiled, cuda_graphs=device == "cuda", fused_nf4=False)
        try:
            # the first steps compile and (with CUDA graphs) warm up and record; the masks read are the later ones
            warmup = 3
            results[name] = {"eager": statistics(masks(eager, shape, steps, device)),
                             "compiled": statistics(masks(compiled, shape, warmup + steps, device)[warmup:])}
        finally:
            uncompile()
    return results


def to_markdown(results: dict) -> str:
    columns = list(next(iter(next(iter(results.values())).values())))
    lines = ["| dropout input | layers | " + " | ".join(columns) + " |", "|---|---|" + "---|" * len(columns)]
    for name, sides in results.items():
        for side, stats in sides.items():
            lines.append(f"| {name} | {side} | " + " | ".join(f"{stats[c]:.4f}" for c in columns) + " |")
    return "\n".join(lines)


@entry_point
def main(argv: list[str]) -> None:
    parser = raise_usage_errors(argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False))
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    # SmolLM2-135M's attention (9 heads of 64) on Table 1's batches (8 examples of up to 512 tokens)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--heads", type=int, default=9)
    parser.add_argument("--head_dim", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device: cuda: no GPU is visible")
    for flag in ("batch", "tokens", "heads", "head_dim"):
        if getattr(args, flag) < 1:
            raise UsageError(f"--{flag}: {getattr(args, flag)}: must be at least 1")
    if args.steps < 2:  # "alike at the next step" compares consecutive steps
        raise UsageError(f"--steps: {args.steps}: must be at least 2")
    torch.manual_seed(0)
    print(to_markdown(measure(args.device, args.batch, args.tokens, args.heads, args.head_dim, args.steps)))


if __name__ == "__main__":
    main()
