"""Batched greedy decoding and label log-likelihood scoring, with out-of-memory back-off.

Prompts are processed longest first (so an OOM shows up early and batches hold similar lengths). On CUDA
out-of-memory a batch is halved and retried down to one prompt; a prompt that still fails becomes an error
row (``None`` result plus the reason) instead of being dropped.
"""

from __future__ import annotations

import logging
from typing import Callable, Sequence

import torch

log = logging.getLogger(__name__)


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


def run_batched(items: Sequence, batch_size: int, fn: Callable[[list], list]) -> tuple[list, list]:
    """Apply ``fn`` to batches of ``items`` (longest first); returns (results, errors) in input order."""
    order = sorted(range(len(items)), key=lambda i: -len(items[i]))
    results, errors = [None] * len(items), [None] * len(items)
    start, size = 0, batch_size
    while start < len(order):
        chunk = order[start:start + size]
        try:
            outputs = fn([items[i] for i in chunk])
        except (RuntimeError, torch.cuda.OutOfMemoryError) as err:
            if not _is_oom(err):
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if len(chunk) > 1:
                size = max(1, len(chunk) // 2)
                log.warning("out of memory at batch size %d; retrying with %d", len(chunk), size)
                continue
            errors[chunk[0]] = f"out of memory on a single {len(items[chunk[0]])}-token prompt"
            start += 1
            size = batch_size
            continue
        for index, output in zip(chunk, outputs):
            results[index] = output
        start += len(chunk)
    return results, errors


def left_pad(sequences: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
        mask[row, width - len(seq):] = 1
    return ids.to(device), mask.to(device)


def stop_token_ids(model, tokenizer) -> list[int]:
    ids = {tokenizer.eos_token_id}
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    return sorted(i for i in ids if i is not None)


@torch.inference_mode()
def greedy_generate(model, tokenizer, prompts: list[list[int]], max_new_tokens: int,
                    batch_size: int) -> tuple[list[str | None], list[str | None]]:
    """Greedy continuations, cut at the first stop token (token level), decoded without special tokens."""
    from transformers import GenerationConfig

    stops = stop_token_ids(model, tokenizer)
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stops,
                              pad_token_id=tokenizer.pad_token_id)
    device = next(model.parameters()).device

    def generate(batch: list[list[int]]) -> list[str]:
        ids, mask = left_pad(batch, tokenizer.pad_token_id, device)
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
        texts = []
        for row in out[:, ids.shape[1]:].tolist():
            cut = next((i for i, tok in enumerate(row) if tok in stops), len(row))
            texts.append(tokenizer.decode(row[:cut], skip_special_tokens=True).strip())
        return texts

    return run_batched(prompts, batch_size, generate)


@torch.inference_mode()
def score_labels(model, prompts: list[list[int]], label_ids: list[list[int]], pad_id: int,
                 batch_size: int) -> tuple[list[int | None], list[str | None]]:
    """Index of the label whose tokens (EOS included) have the highest total log-probability after each prompt.

    Each prompt is run once; its KV cache is then repeated for all labels, which are scored in one pass.
    """
    device = next(model.parameters()).device
    n_labels, width = len(label_ids), max(len(l) for l in label_ids)
    labels = torch.full((n_labels, width), pad_id, dtype=torch.long)
    label_mask = torch.zeros((n_labels, width), dtype=torch.long)
    for row, seq in enumerate(label_ids):
        labels[row, : len(seq)] = torch.tensor(seq)
        label_mask[row, : len(seq)] = 1
    labels, label_mask = labels.to(device), label_mask.to(device)

    def score(batch: list[list[int]]) -> list[int]:
        ids, mask = left_pad(batch, pad_id, device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
        first = out.logits[:, -1].float().log_softmax(-1)  # (B, V): distribution of each label's first token
        cache = out.past_key_values
        cache.batch_repeat_interleave(n_labels)
        rows = len(batch) * n_labels
        tiled = labels.repeat(len(batch), 1)
        tiled_mask = label_mask.repeat(len(batch), 1)
        full_mask = torch.cat([mask.repeat_interleave(n_labels, 0), tiled_mask], dim=1)
        start = mask.sum(-1).repeat_interleave(n_labels).unsqueeze(1)
        label_positions = start + torch.arange(width, device=device).unsqueeze(0)
        rest = model(input_ids=tiled, attention_mask=full_mask, position_ids=label_positions,
                     past_key_values=cache, use_cache=False).logits.float().log_softmax(-1)
        token_logp = torch.empty((rows, width), device=device)
        token_logp[:, 0] = first.repeat_interleave(n_labels, 0).gather(1, tiled[:, :1]).squeeze(1)
        if width > 1:
            token_logp[:, 1:] = rest[:, :-1].gather(2, tiled[:, 1:].unsqueeze(-1)).squeeze(-1)
        totals = (token_logp * tiled_mask).sum(-1).view(len(batch), n_labels)
        return totals.argmax(-1).tolist()

    return run_batched(prompts, batch_size, score)
