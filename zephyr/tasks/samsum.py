"""SAMSum: abstractive dialogue summarization, scored by ROUGE-1/2/L/Lsum (stemmed, x100)."""

from __future__ import annotations

from zephyr.metrics import rouge_metrics
from zephyr.tasks.base import Task

# Generated dialogues for the offline quickstart: two people agree on a place and a time.
NAMES = ["Anna", "Ben", "Carla", "Dev", "Eve", "Farid", "Gina", "Hugo"]
PLACES = ["cafe", "station", "library", "park", "office", "gym"]
TIMES = ["5 pm", "noon", "8 am", "7 pm", "10 am", "3 pm"]


def _dialogue(rng) -> dict:
    a, b = rng.sample(NAMES, 2)
    place, time = rng.choice(PLACES), rng.choice(TIMES)
    dialogue = (f"{a}: Hi {b}, shall we meet at the {place}?\r\n{b}: Sure, what time?\r\n"
                f"{a}: Let's say {time}.\r\n{b}: Great, see you then.")
    return {"dialogue": dialogue, "summary": f"{a} and {b} will meet at the {place} at {time}."}


class SamSum(Task):
    name = "samsum"
    hub_id = "knkarthick/samsum"
    hub_splits = {"train": "train", "test": "test"}
    file_stems = {"train": ("train",), "test": ("test",)}
    input_field = "dialogue"
    target_field = "summary"
    max_new_tokens = 100
    defaults = {"lora_r": 64, "num_train_epochs": 1.0}
    metric = "rouge1"
    original_prompt_template = "### Dialogue:{text} ### Summary:"
    # Plain: with "...that writes short, faithful summaries of chat dialogues." more zero-shot answers copied the
    # dialogue (results/quality/zero-shot-prompt-trial/, variants O and P).
    system_prompt = "You are a helpful assistant."
    # Instruction, the dialogue between quotes, then a reminder: on SmolLM2 in 4-bit, a "Dialogue:" header and a
    # trailing "Summary:" cue made 230 of 819 zero-shot answers the bare word "Dialogue:", and without the quotes and
    # "Do not repeat lines" more answers copied the dialogue's first lines (results/quality/zero-shot-prompt-trial/).
    instruction_template = ('Summarize the following dialogue in one or two sentences.\n\n"""\n{text}\n"""\n\n'
                            "Write only the summary, in your own words. Do not repeat lines of the dialogue.")
    finetune_script = "zephyr_summarization.py"
    inference_script = "zephyr_summarization_inference.py"

    def score(self, references, predictions, labels):
        return rouge_metrics(references, predictions)

    def synthetic_rows(self, rng, count, split):
        return [{"id": f"{split}-{i}", **_dialogue(rng)} for i in range(count)]
