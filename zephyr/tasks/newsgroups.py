"""20 Newsgroups: 20-way topic classification, scored by exact label match (or label log-likelihood)."""

from __future__ import annotations

from zephyr.metrics import classification_metrics
from zephyr.tasks.base import Task

# Generated posts for the offline quickstart: filler words and three keywords of the post's topic.
TOPICS = {
    "sci.space": ["rocket", "orbit", "launch", "satellite", "moon", "shuttle"],
    "rec.autos": ["engine", "brakes", "sedan", "dealer", "tires", "mileage"],
    "comp.graphics": ["pixel", "render", "polygon", "shader", "bitmap", "texture"],
    "talk.politics.guns": ["rifle", "firearm", "pistol", "holster", "permit", "ammo"],
}
FILLER = ("i think the new one is really good but we should ask about it before next week since "
          "people say that this was not what they expected from such a thing anyway").split()


def _post(rng, keywords: list[str]) -> str:
    words = rng.sample(FILLER, 10) + rng.sample(keywords, 3)
    rng.shuffle(words)
    return " ".join(words).capitalize() + "."


class Newsgroups(Task):
    name = "newsgroups"
    hub_id = "rungalileo/20_Newsgroups_Fixed"
    hub_splits = {"train": "train", "test": "test"}
    file_stems = {"train": ("train",), "test": ("test",)}
    input_field = "text"
    target_field = "label"
    is_classification = True
    max_new_tokens = 20
    defaults = {"lora_r": 8, "num_train_epochs": 5.0}
    metric = "accuracy"
    original_prompt_template = "### Sentence:{text} ### Class:"
    system_prompt = "You are a precise text classifier. Reply with the newsgroup name only."
    instruction_template = ("Classify the following newsgroup post into exactly one of these newsgroups:\n{labels}\n\n"
                            "Post:\n{text}\n\nAnswer with the newsgroup name only.")
    finetune_script = "zephyr_classification.py"
    inference_script = "zephyr_classification_inference.py"

    def labels(self, train_examples):
        return sorted({e.target for e in train_examples})

    def score(self, references, predictions, labels):
        return classification_metrics(references, predictions, labels)

    def synthetic_rows(self, rng, count, split):
        labels = [label for _ in range(count // len(TOPICS) + 1) for label in TOPICS][:count]
        rng.shuffle(labels)
        return [{"id": f"{split}-{i}", "text": _post(rng, TOPICS[label]), "label": label}
                for i, label in enumerate(labels)]
