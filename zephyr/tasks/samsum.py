"""SAMSum: abstractive dialogue summarization, scored by ROUGE-1/2/L/Lsum (stemmed, x100)."""

from __future__ import annotations

from zephyr.metrics import rouge_metrics
from zephyr.tasks.base import Task


class SamSum(Task):
    name = "samsum"
    hub_id = "knkarthick/samsum"
    hub_splits = {"train": "train", "test": "test"}
    file_stems = {"train": ("train",), "test": ("test",)}
    input_field = "dialogue"
    target_field = "summary"
    max_new_tokens = 100
    defaults = {"lora_r": 64, "num_train_epochs": 1.0}

    def score(self, references, predictions, labels):
        return rouge_metrics(references, predictions)
