"""Packed rows with a block mask score exactly what the examples score one by one."""

import pytest
import torch

from conftest import packed_rows_trainer


def test_packed_rows_score_exactly_like_separate_examples(tokenizer, tmp_path):
    """Packing: each example keeps its positions and attends only to itself, in rows of several examples,
    padded to the longest row; the token count excludes the padding."""
    from trl import SFTTrainer

    from zephyr.speed.packing import NUM_TOKENS, PackedRowsCollator

    trainer, dataset, examples = packed_rows_trainer(tokenizer, tmp_path, SFTTrainer)
    model = trainer.model
    rows = list(trainer.train_dataset)
    assert 2 <= len(rows) < len(examples), "short examples share rows"
    batch = PackedRowsCollator(tokenizer.pad_token_id, torch.float32)(rows)
    assert batch["input_ids"].shape[0] == len(rows) and batch["attention_mask"].shape[1] == 1
    assert batch.pop(NUM_TOKENS) == sum(len(row["input_ids"]) for row in dataset) < batch["input_ids"].numel()
    with torch.no_grad():
        logp = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[:, :-1].log_softmax(-1)
        targets = batch["labels"][:, 1:]
        scored = targets != -100
        packed = logp.gather(2, targets.clamp(min=0).unsqueeze(2)).squeeze(2)[scored].sum().item()
        separate = 0.0
        for row in dataset:
            ids = torch.tensor([row["input_ids"]])
            logp = model(input_ids=ids).logits[0, :-1].log_softmax(-1)
            trained = torch.tensor(row["completion_mask"][1:], dtype=torch.bool)
            separate += logp.gather(1, ids[0, 1:].unsqueeze(1)).squeeze(1)[trained].sum().item()
    assert scored.sum() == sum(sum(row["completion_mask"][1:]) for row in dataset)
    assert packed == pytest.approx(separate, abs=1e-3)
