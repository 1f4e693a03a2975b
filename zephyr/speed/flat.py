"""Flat batches: a micro-batch of whole examples laid end to end in one row, without padding.

The padded batch of the plain path pads every example to the longest one in the batch; at the study's 512 tokens
and 8 Newsgroups examples a step, a third to a half of its tokens are padding, computed and discarded. Here the
same examples, in the same order, are concatenated into one row (TRL's padding-free collator): each example keeps
its own positions, starting at 0, and attends only to its own earlier tokens, so every real token is computed from
exactly what it sees in the padded batch, and the loss covers the same answer tokens with the same normalization.
Only the order of floating-point sums inside the matrix products differs (tests/speed/test_flat.py).

Attention over the row takes the examples' boundaries (``cu_seq_lens_q``, which the collator computes on the CPU):
on a CUDA GPU, PyTorch's variable-length flash attention kernel; elsewhere, SDPA with a block-diagonal causal mask.
The attention function is registered with transformers under ``ATTENTION`` and used only while training.

NEFTune's noise scale depends on the padded batch's width (alpha / sqrt(width x hidden)); the collator passes that
width (``PADDED_WIDTH``) so that the noise keeps its distribution (``neftune_hook``).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from zephyr.trl_compat import NUM_TOKENS, PADDED_WIDTH

ATTENTION = "zephyr_flat"
# A micro-batch too long for one row (``FlatBatchCollator.split_tokens``): its rows, run one after the other, and the
# answer tokens of all of them (a plain int), by which each part's loss is normalized.
SPLIT_PARTS = "split_parts"
SPLIT_LABELS = "split_labels"
# Keys of TRL's padding-free batches that only a varlen attention kernel reads; removed before the forward pass.
SEQUENCE_KEYS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k", "seq_idx")


def bucket_length(tokens: int, bucket: int, padding: int = 1) -> int:
    """A row's length for ``tokens`` real tokens in buckets of ``bucket``: the next multiple with room for at least
    ``padding`` padding tokens (at least one, so that every row ends in padding)."""
    return ((tokens + padding - 1) // bucket + 1) * bucket


@dataclass
class FlatBatchCollator:
    """TRL's padding-free collator plus the batch's real token count and its padded width.

    ``bucket`` (tokens, at most ``max_length``) rounds each row up to a multiple of itself with one more example of
    padding tokens that carries no loss and attends only to itself, and fixes the longest-example bound of the
    attention kernel at ``max_length``: a row then has one of a few shapes, each of which a CUDA graph can replay.
    The real examples, their positions, labels and example boundaries are those of the row without the bucket.
    ``segments`` (with ``bucket``) fixes how many segments, examples and padding, every row holds: the padding is
    laid as one-token segments and one of the rest. The example boundaries (``cu_seq_lens_q``) are an input of
    every layer whose size a CUDA graph fixes too, so without it each split part's number of examples would be
    one more shape to record (scripts/analysis/flat_graph_shapes.py: 21 shapes in Newsgroups' first 40 steps
    split at 1,536 tokens, against 6 row lengths).

    ``split_tokens`` caps a row's length: a micro-batch whose row would be longer is laid into consecutive parts of
    whole examples, in order, each at most that long (``SPLIT_PARTS``; ``SPLIT_LABELS``, the micro-batch's answer
    tokens, normalizes each part's loss as the whole row's). The trainer runs the parts' forward and backward passes
    one after the other before the optimizer step: the gradients add up to the whole row's, so a step of the
    largest size needs the memory of a part, and the parts can be replayed as CUDA graphs where the whole row
    would need checkpointing. The batch keeps the whole row's tensors as well, for the Trainer's token and FLOP
    counts.
    """

    pad_token_id: int
    bucket: int | None = None
    max_length: int | None = None
    split_tokens: int | None = None
    segments: int | None = None

    def __post_init__(self):
        from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

        self._collate = DataCollatorForLanguageModeling(pad_token_id=self.pad_token_id, padding_free=True)
        if self.bucket is not None and not (self.max_length and 0 < self.bucket <= self.max_length):
            raise ValueError(f"bucket: {self.bucket} tokens must be positive and at most max_length "
                             f"({self.max_length}), the longest example the attention kernel is told of")
        if self.split_tokens is not None and not (self.max_length and
                                                  self.split_tokens >= self.row_length(self.max_length, 1)):
            raise ValueError(f"split_tokens: {self.split_tokens} tokens must hold a row of one example of "
                             f"max_length ({self.max_length}) tokens")

    def padding_segments(self, examples: int) -> int:
        """The padding segments of a bucketed row of ``examples`` examples: those that bring it to ``segments``,
        and at least one."""
        return max(1, self.segments - examples) if self.segments else 1

    def row_length(self, tokens: int, examples: int) -> int:
        """The length of the row that holds ``examples`` examples of ``tokens`` real tokens in all (its bucket's,
        with room for its padding segments, when rows are bucketed)."""
        if self.bucket is None:
            return tokens
        return bucket_length(tokens, self.bucket, self.padding_segments(examples))

    def parts(self, lengths: list[int]) -> list[int]:
        """How many consecutive examples each part of a micro-batch holds (one part when the row fits)."""
        counts, tokens = [0], 0
        for length in lengths:
            if (counts[-1] and self.split_tokens is not None
                    and self.row_length(tokens + length, counts[-1] + 1) > self.split_tokens):
                counts.append(0)
                tokens = 0
            counts[-1] += 1
            tokens += length
        return counts

    def _row(self, rows: list[dict], lengths: list[int]) -> dict:
        if self.bucket is not None:
            segments = self.padding_segments(len(lengths))
            padding = self.row_length(sum(lengths), len(lengths)) - sum(lengths)
            rows = rows + [{"input_ids": [self.pad_token_id] * n, "labels": [-100] * n,
                            **({"seq_lengths": [n]} if "seq_lengths" in rows[0] else {})}
                           for n in [1] * (segments - 1) + [padding - segments + 1]]
        batch = self._collate(rows)
        batch.pop("seq_idx", None)  # for linear-attention layers' convolutions; no decoder here has one
        if self.bucket is not None:
            batch["max_length_q"] = batch["max_length_k"] = self.max_length
        return batch

    def __call__(self, rows: list[dict]) -> dict:
        lengths = [len(row["input_ids"]) for row in rows]
        rows = [{k: row[k] for k in ("input_ids", "labels", "seq_lengths") if k in row} for row in rows]
        counts = self.parts(lengths)
        if len(counts) == 1:
            batch = self._row(rows, lengths)
        else:
            batch = self._collate(rows)  # the whole row, unpadded: what the Trainer counts tokens and FLOPs of
            batch.pop("seq_idx", None)
            starts = [sum(counts[:i]) for i in range(len(counts))]
            batch[SPLIT_PARTS] = [self._row(rows[a:a + n], lengths[a:a + n]) for a, n in zip(starts, counts)]
            batch[SPLIT_LABELS] = int((batch["labels"] != -100).sum())
        batch[NUM_TOKENS] = sum(lengths)
        batch[PADDED_WIDTH] = max(lengths)
        return batch


def document_mask(cu_seq_lens: torch.Tensor, length: int) -> torch.Tensor:
    """[length, length] boolean mask: token i sees token j when both are in the same example and j <= i."""
    sizes = cu_seq_lens.diff().to(torch.long)
    document = torch.repeat_interleave(torch.arange(len(sizes), device=cu_seq_lens.device), sizes, output_size=length)
    causal = torch.ones(length, length, dtype=torch.bool, device=cu_seq_lens.device).tril()
    return causal & (document[:, None] == document[None, :])


def _resolve_flash_varlen():
    """PyTorch's variable-length flash attention as ``f(q, k, v, cu_seq_lens, max_len, scale)``, or None where this
    PyTorch has none. Its causal switch is spelled ``is_causal`` in some releases and ``window_size=(-1, 0)`` in
    others."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    parameters = inspect.signature(varlen_attn).parameters
    if "is_causal" in parameters:
        causal = {"is_causal": True}
    elif "window_size" in parameters:
        causal = {"window_size": (-1, 0)}
    else:
        return None
    takes_scale = "scale" in parameters

    def attend(q, k, v, cu_seq_lens, max_len, scale):
        extra = {"scale": scale} if takes_scale else {}
        return varlen_attn(q, k, v, cu_seq_lens, cu_seq_lens, max_len, max_len, **causal, **extra)

    attend.takes_scale = takes_scale
    return attend


_FLASH_VARLEN = _resolve_flash_varlen()  # resolved once: a compiled layer traces this module's code on every call


def _flash_varlen():
    return _FLASH_VARLEN


def uses_flash_kernel(query: torch.Tensor, scaling: float | None, dropout: float) -> bool:
    """The flash kernel where it applies: a CUDA tensor in 16 bits, no attention dropout, and the kernel's own
    1/sqrt(dim) scale where this PyTorch's varlen_attn takes no scale."""
    if not (query.is_cuda and query.dtype in (torch.float16, torch.bfloat16)) or dropout or _flash_varlen() is None:
        return False
    return _flash_varlen().takes_scale or scaling is None or abs(scaling - query.shape[-1] ** -0.5) < 1e-9


def flat_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
                   cu_seq_lens_q: torch.Tensor | None = None, max_length_q: int | None = None, **kwargs):
    """Causal attention within each example of a flat row: ``query`` [1, heads, T, dim], ``key``/``value``
    [1, kv_heads, T, dim]; returns [1, T, heads, dim] as transformers' attention functions do."""
    if cu_seq_lens_q is None:
        raise ValueError("flat attention needs the batch's example boundaries (cu_seq_lens_q): this attention "
                         "function is for FlatBatchCollator's batches")
    if query.shape[0] != 1:
        raise ValueError(f"flat attention takes one row, got a batch of {query.shape[0]}")
    length = query.shape[2]
    cu_seq_lens = cu_seq_lens_q.to(device=query.device, dtype=torch.int32)
    if uses_flash_kernel(query, scaling, dropout):
        groups = query.shape[1] // key.shape[1]
        q = query[0].transpose(0, 1)  # [T, heads, dim]
        k = key[0].transpose(0, 1)
        v = value[0].transpose(0, 1)
        if groups > 1:  # the kernel's grouped-query support is not promised across releases: expand, as eager does
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        # an int, not int(...): in a compiled layer it is symbolic, and int() would compile once per value
        max_len = max_length_q if max_length_q is not None else length
        out = _flash_varlen()(q.contiguous(), k.contiguous(), v.contiguous(), cu_seq_lens, max_len, scaling)
        return out.unsqueeze(0), None
    if attends_each_example(query):
        return _attend_each_example(query, key, value, cu_seq_lens, scaling, dropout), None
    mask = document_mask(cu_seq_lens, length)
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scaling, dropout_p=dropout,
                                         enable_gqa=query.shape[1] != key.shape[1])
    return out.transpose(1, 2).contiguous(), None


def attends_each_example(query: torch.Tensor) -> bool:
    """Off a GPU, SDPA with a mask computes and keeps (for the backward pass) every [T, T] score of the row, masked
    or not: 8 examples of 512 tokens hold 8 times the scores of a padded batch, in every layer. There, outside a
    compiled graph (whose shapes the examples' lengths would change), each example is attended on its own."""
    return not query.is_cuda and not torch.compiler.is_compiling()


def _attend_each_example(query, key, value, cu_seq_lens: torch.Tensor, scaling: float | None, dropout: float):
    """Causal SDPA over each example's slice of the row: the block-diagonal mask's function, at each example's own
    [length, length] scores; returns [1, T, heads, dim]."""
    bounds = cu_seq_lens.tolist()
    parts = [F.scaled_dot_product_attention(query[:, :, start:end], key[:, :, start:end], value[:, :, start:end],
                                            is_causal=True, scale=scaling, dropout_p=dropout,
                                            enable_gqa=query.shape[1] != key.shape[1])
             for start, end in zip(bounds, bounds[1:]) if end > start]
    return torch.cat(parts, dim=2).transpose(1, 2).contiguous()


def register_attention() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION, flat_attention)


def use_flat_attention(model):
    """Switch ``model`` (a PEFT model or a plain one) to flat attention; returns a function that switches it back."""
    register_attention()
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    configs = [m.config for m in base.modules() if hasattr(m, "config") and hasattr(m.config, "_attn_implementation")]
    before = [(config, config._attn_implementation) for config in {id(c): c for c in configs}.values()]
    for config, _ in before:
        config._attn_implementation_internal = ATTENTION

    def restore():
        for config, implementation in before:
            config._attn_implementation_internal = implementation

    return restore


class NEFTuneWidth:
    """NEFTune's forward hook on the input embeddings, with the noise scale of the padded batch.

    transformers' hook draws uniform noise in +-alpha / sqrt(width x hidden), the width being the batch's second
    dimension: a flat row's would be the whole step's tokens. The trainer sets ``width`` from each batch's
    ``PADDED_WIDTH`` before its forward pass.
    """

    def __init__(self, alpha: float):
        self.alpha, self.width = alpha, None

    def __call__(self, module, inputs, output):
        if not module.training:
            return output
        width = self.width or output.size(1)
        magnitude = self.alpha / (width * output.size(2)) ** 0.5
        return output + torch.zeros_like(output).uniform_(-magnitude, magnitude)


def add_neftune(model, alpha: float):
    """Register ``NEFTuneWidth`` on the model's input embeddings; returns (hook, remove)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    hook = NEFTuneWidth(alpha)
    handle = base.get_input_embeddings().register_forward_hook(hook)
    return hook, handle.remove
