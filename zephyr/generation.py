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


def _cuda_peak(fn: Callable[[list], list], batch: list) -> float:
    """Peak GPU memory allocated while ``fn(batch)`` runs, in bytes."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn(batch)
    torch.cuda.synchronize()
    return float(torch.cuda.max_memory_allocated())


def plan_batch_tokens(items: Sequence, fn: Callable[[list], list], extra_tokens: int, budget_bytes: float,
                      max_tokens: int | None, peak_of: Callable[[Callable, list], float] | None = None,
                      batch_size: int | None = None) -> int | None:
    """The most tokens a batch may hold (counted as ``run_batched`` counts them) for its peak GPU memory to stay
    within ``budget_bytes``; ``max_tokens`` unchanged off the GPU, or where the probes cannot tell.

    Two probe batches of the longest prompts (the longest alone, then up to 4 of them within ``batch_size`` and
    ``max_tokens``: the shape of the first real batches) give the peak memory with nothing but the model allocated
    and what each batch token adds: the peak is linear in the batch's tokens (key/value cache, activations). The
    probes' outputs are discarded. A probe that runs out of memory, or a model that leaves no room in the budget,
    leaves ``max_tokens`` in place, with out-of-memory halving as the fallback. ``peak_of(fn, batch)`` measures a
    probe (default: CUDA's peak allocated memory).
    """
    if peak_of is None:
        if not torch.cuda.is_available():
            return max_tokens
        peak_of = _cuda_peak
    longest = sorted(items, key=len, reverse=True)
    row = len(longest[0]) + extra_tokens if longest else 0
    count = min(4, len(longest), batch_size or 4, (max_tokens // row) if max_tokens and row else 4)
    if count < 2:
        return max_tokens
    probes = [longest[:1], longest[:count]]
    tokens = [len(batch) * (len(batch[0]) + extra_tokens) for batch in probes]
    try:
        peaks = [peak_of(fn, batch) for batch in probes]
    except (RuntimeError, torch.cuda.OutOfMemoryError) as err:
        if not _is_oom(err):
            raise
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        log.warning("evaluation batches: a probe batch ran out of memory; batches stay within %s tokens", max_tokens)
        return max_tokens
    per_token = max(1.0, (peaks[1] - peaks[0]) / (tokens[1] - tokens[0]))
    fixed = peaks[0] - per_token * tokens[0]
    if budget_bytes <= fixed + per_token * tokens[0]:
        log.warning("evaluation batches: the model alone takes %.1f GiB, over the %.1f GiB budget "
                    "(--eval_memory_gib); batches stay within %s tokens", fixed / 2**30, budget_bytes / 2**30,
                    max_tokens)
        return max_tokens
    planned = int((budget_bytes - fixed) / per_token)
    log.info("evaluation batches: at most %d tokens (%.0f KiB a token over %.2f GiB) for a %.1f GiB peak",
             planned, per_token / 1024, fixed / 2**30, budget_bytes / 2**30)
    return min(planned, max_tokens) if max_tokens else planned


def run_batched(items: Sequence, batch_size: int, fn: Callable[[list], list], max_tokens: int | None = None,
                extra_tokens: int = 0, progress: Callable[[int], None] | None = None,
                stats: dict | None = None) -> tuple[list, list]:
    """Apply ``fn`` to batches of ``items`` (longest first); returns (results, errors) in input order.

    A batch holds at most ``batch_size`` items and, with ``max_tokens``, at most that many tokens counting each
    item as long as the batch's longest plus ``extra_tokens`` (what padding and generation make of it).
    ``progress(done)`` is called with the number of items finished (scored or failed) after each batch;
    ``stats["oom_retries"]`` counts the batches retried smaller after running out of memory.
    """
    order = sorted(range(len(items)), key=lambda i: -len(items[i]))
    results, errors = [None] * len(items), [None] * len(items)
    start, size = 0, batch_size
    stats = {} if stats is None else stats
    stats["oom_retries"] = 0
    while start < len(order):
        fits = max_tokens // (len(items[order[start]]) + extra_tokens) if max_tokens else size
        chunk = order[start:start + max(1, min(size, fits))]
        try:
            outputs = fn([items[i] for i in chunk])
        except (RuntimeError, torch.cuda.OutOfMemoryError) as err:
            if not _is_oom(err):
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            stats["oom_retries"] += 1
            if len(chunk) > 1:
                size = max(1, len(chunk) // 2)
                log.warning("out of memory at batch size %d; retrying with %d", len(chunk), size)
                continue
            errors[chunk[0]] = f"out of memory on a single {len(items[chunk[0]])}-token prompt"
            start += 1
            size = batch_size
            if progress:
                progress(start)
            continue
        for index, output in zip(chunk, outputs):
            results[index] = output
        start += len(chunk)
        if progress:
            progress(start)
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
def greedy_generate(model, tokenizer, prompts: list[list[int]], max_new_tokens: int, batch_size: int,
                    max_batch_tokens: int | None = None, progress: Callable[[int], None] | None = None,
                    memory_budget: float | None = None, stats: dict | None = None
                    ) -> tuple[list[str | None], list[str | None]]:
    """Greedy continuations, cut at the first stop token (token level), decoded without special tokens.

    ``memory_budget`` (bytes): batches are sized on the GPU so that their peak stays within it
    (``plan_batch_tokens``); ``stats`` receives the plan and the out-of-memory retries."""
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

    return _planned_run(prompts, batch_size, generate, max_batch_tokens, max_new_tokens, progress, memory_budget,
                        stats)


def _planned_run(items, batch_size, fn, max_tokens, extra_tokens, progress, memory_budget, stats):
    stats = {} if stats is None else stats
    if memory_budget:
        max_tokens = plan_batch_tokens(items, fn, extra_tokens, memory_budget, max_tokens, batch_size=batch_size)
    stats["planned_batch_tokens"] = max_tokens
    return run_batched(items, batch_size, fn, max_tokens, extra_tokens, progress, stats)


def _label_layout(label_ids: list[list[int]]):
    """Where each label sits when all labels follow the prompt in one row: label index per column, and each
    token's offset inside its label."""
    owner = torch.cat([torch.full((len(seq),), k) for k, seq in enumerate(label_ids)])
    offset = torch.cat([torch.arange(len(seq)) for seq in label_ids])
    return owner, offset


@torch.inference_mode()
def label_log_likelihoods(model, prompts: list[list[int]], label_ids: list[list[int]], pad_id: int,
                          batch_size: int, max_batch_tokens: int | None = None,
                          progress: Callable[[int], None] | None = None, memory_budget: float | None = None,
                          stats: dict | None = None) -> tuple[list[list[float] | None], list[str | None]]:
    """Total log-probability of each label's tokens (EOS included) after each prompt.

    One forward pass per batch scores every label: each row is ``[left padding][prompt][label 1]...[label K]``,
    and a 4-D attention mask lets each label see the prompt and its own earlier tokens only, at the positions it
    would have right after the prompt. The prompt is run once and its keys and values are never copied, so
    memory grows with prompt + labels tokens per row, not with prompt x labels. Logits are computed only at the
    columns that predict a label token.
    """
    device = next(model.parameters()).device
    dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
    owner, offset = _label_layout(label_ids)
    flat_labels = torch.tensor([tok for seq in label_ids for tok in seq], dtype=torch.long)
    n_label_tokens = len(flat_labels)

    def score(batch: list[list[int]]) -> list[int]:
        width = max(len(p) for p in batch)
        total = width + n_label_tokens
        ids, prompt_mask = left_pad(batch, pad_id, "cpu")
        ids = torch.cat([ids, flat_labels.expand(len(batch), -1)], dim=1)
        lengths = prompt_mask.sum(-1, keepdim=True)  # (B, 1)
        label_positions = lengths + offset.unsqueeze(0)  # a label token's position right after its prompt
        positions = torch.cat([(prompt_mask.cumsum(-1) - 1).clamp(min=0), label_positions], dim=1)
        column = torch.arange(total)
        segment = torch.cat([torch.full((width,), -1), owner])  # -1: prompt region, k: label k
        query, key = column.view(-1, 1), column.view(1, -1)
        causal = key <= query
        same_label = (segment.view(-1, 1) == segment.view(1, -1)) & (segment.view(-1, 1) >= 0)
        real_prompt_key = torch.cat([prompt_mask.bool(), torch.zeros(len(batch), n_label_tokens, dtype=torch.bool)],
                                    dim=1).unsqueeze(1)  # (B, 1, total)
        allowed = (real_prompt_key & (key < width) & causal) | (same_label & causal) | (key == query)
        mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min).unsqueeze(1)
        # The column predicting label token t is the last prompt column (t = 0) or label token t - 1.
        predictor = torch.where(offset == 0, torch.tensor(width - 1), width + torch.arange(n_label_tokens) - 1)
        keep, row_of = torch.unique(predictor, return_inverse=True)
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                       logits_to_keep=keep.to(device), use_cache=False).logits
        logp = logits.float().log_softmax(-1)  # (B, kept columns, V)
        token_logp = logp[:, row_of.to(device), flat_labels.to(device)]  # (B, label tokens)
        totals = torch.zeros(len(batch), len(label_ids), device=device).index_add_(1, owner.to(device), token_logp)
        return totals.tolist()

    return _planned_run(prompts, batch_size, score, max_batch_tokens, n_label_tokens, progress, memory_budget, stats)


def score_labels(model, prompts: list[list[int]], label_ids: list[list[int]], pad_id: int, batch_size: int,
                 max_batch_tokens: int | None = None, progress: Callable[[int], None] | None = None,
                 memory_budget: float | None = None, stats: dict | None = None
                 ) -> tuple[list[int | None], list[str | None]]:
    """Index of the most likely label after each prompt (``None`` where scoring failed)."""
    scores, errors = label_log_likelihoods(model, prompts, label_ids, pad_id, batch_size, max_batch_tokens, progress,
                                           memory_budget, stats)
    return [None if s is None else max(range(len(s)), key=s.__getitem__) for s in scores], errors
