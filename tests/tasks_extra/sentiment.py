"""A third task, defined outside the suite: movie-review sentiment, two labels, scored by exact label match."""

from zephyr.metrics import classification_metrics
from zephyr.tasks import Task


class ReviewSentiment(Task):
    name = "review_sentiment"
    hub_id = "example/reviews"
    hub_splits = {"train": "train", "test": "test"}
    file_stems = {"train": ("train",), "test": ("test",)}
    input_field = "review"
    target_field = "sentiment"
    is_classification = True
    max_new_tokens = 4
    defaults = {"lora_r": 4, "num_train_epochs": 1.0}
    metric = "accuracy"
    original_prompt_template = "### Review:{text} ### Sentiment:"
    system_prompt = "You label movie reviews."
    instruction_template = "Is this review {labels}?\n\n{text}\n\nAnswer with one word."

    def labels(self, train_examples):
        return sorted({e.target for e in train_examples})

    def score(self, references, predictions, labels):
        return classification_metrics(references, predictions, labels)

    def synthetic_rows(self, rng, count, split):
        words = {"positive": "wonderful moving brilliant", "negative": "dull boring awful"}
        return [{"review": f"{words[s]} film number {i}", "sentiment": s}
                for i, s in enumerate(rng.choice(sorted(words)) for _ in range(count))]
