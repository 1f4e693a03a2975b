"""A task owns its data sources, prompt rendering and scoring; the rest of the suite is task-agnostic."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

from zephyr.data import Example, select_fraction
from zephyr.errors import UsageError
from zephyr.io import DATA_EXTENSIONS, is_missing, read_rows


@dataclass
class LoadedSplit:
    examples: list[Example]
    source: str
    dropped: int = 0  # rows whose input or target was missing or empty
    notes: list[str] = field(default_factory=list)


TASKS: dict[str, type["Task"]] = {}  # every Task subclass that sets a name, wherever it is defined


class Task:
    """One dataset's data sources, prompt texts, labels and scoring. A subclass that sets ``name`` is registered
    when it is defined (``TASKS``): a task is one class, in zephyr/tasks/ or in a user's own module."""

    name: str
    hub_id: str
    hub_splits: dict[str, str]
    file_stems: dict[str, tuple[str, ...]]  # local file names (without extension) per split
    input_field: str
    target_field: str
    is_classification: bool = False
    max_new_tokens: int
    defaults: dict  # argument defaults of this task's entry scripts (the study's settings)
    metric: str  # the headline metric of metrics.json (the quality benchmark compares it)
    # Prompt texts. ``original``: the study's plain format, prompt then answer; ``chat``: the system prompt and the
    # instruction (``{text}``, and ``{labels}`` one per line), rendered by the tokenizer's chat template.
    original_prompt_template: str = "{text}"
    original_answer_template: str = "{answer}"
    system_prompt: str = "You are a helpful assistant."
    instruction_template: str = "{text}"
    # Entry scripts in scripts/ with the study's names; None: the generic scripts/zephyr_train.py --task NAME.
    finetune_script: str | None = None
    inference_script: str | None = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("name"):  # a subclass that only changes an inherited task stays unregistered
            TASKS[cls.name] = cls

    # -- data ---------------------------------------------------------------------------------------
    def source(self, split: str, data_dir: str | None, explicit_file: str | None) -> str:
        """A local file path, or ``hub:<id>:<split>``."""
        if explicit_file:
            return explicit_file
        if not data_dir:
            return f"hub:{self.hub_id}:{self.hub_splits[split]}"
        root = Path(data_dir)
        if not root.is_dir():
            raise UsageError(f"--data_dir: {data_dir}: directory not found")
        for folder in (root / self.name, root):
            for stem in self.file_stems[split]:
                for ext in DATA_EXTENSIONS:
                    if (folder / f"{stem}{ext}").is_file():
                        return str(folder / f"{stem}{ext}")
        looked = ", ".join(f"{s}{e}" for s in self.file_stems[split] for e in DATA_EXTENSIONS)
        raise UsageError(f"--data_dir: no {split} file for {self.name} in {root / self.name} (looked for {looked})")

    def read_source(self, source: str) -> list[dict]:
        if not source.startswith("hub:"):
            return read_rows(source)
        _, hub_id, split = source.split(":", 2)
        from zephyr.hub import cache_only, hub_unreachable

        offline = hub_unreachable()
        try:
            from datasets import load_dataset

            with cache_only() if offline else contextlib.nullcontext():
                return list(load_dataset(hub_id, split=split))
        except Exception as err:
            why = (f": not in the datasets cache, and the hub cannot be reached ({offline})" if offline
                   else f" ({type(err).__name__}: {str(err)[:200]})")
            raise UsageError(f"cannot load hub dataset {hub_id}{why}; use --data_dir or --train_file/--test_file "
                             "for local files") from None

    def load_split(self, split: str, data_dir: str | None = None, explicit_file: str | None = None) -> LoadedSplit:
        source = self.source(split, data_dir, explicit_file)
        rows = self.read_source(source)
        for column in (self.input_field, self.target_field):
            if column not in rows[0]:
                raise UsageError(f"{source}: missing column {column!r} (found {', '.join(map(str, rows[0]))})")
        examples, dropped = [], 0
        for number, row in enumerate(rows):
            text, target = row.get(self.input_field), row.get(self.target_field)
            if is_missing(text) or is_missing(target):
                dropped += 1
                continue
            for column, value in ((self.input_field, text), (self.target_field, target)):
                if not isinstance(value, str):
                    raise UsageError(f"{source}: row {number}: column {column!r} must be a string, "
                                     f"got {type(value).__name__} {value!r}")
            row_id = row.get("id")
            examples.append(Example(id=str(number if is_missing(row_id) else row_id), text=text,
                                    target=self.clean_target(target)))
        if not examples:
            raise UsageError(f"{source}: no usable rows ({dropped} had an empty {self.input_field} or "
                             f"{self.target_field})")
        return LoadedSplit(examples, source, dropped)

    def clean_target(self, target: str) -> str:
        return target.strip()

    def select_train(self, examples: list[Example], fraction: float, seed: int) -> list[Example]:
        key = (lambda e: e.target) if self.is_classification else None
        return select_fraction(examples, fraction, seed, key)

    def labels(self, train_examples: list[Example]) -> list[str]:
        return []

    # -- prompts ------------------------------------------------------------------------------------
    def original_prompt(self, text: str) -> str:
        return self.original_prompt_template.format(text=text)

    def original_answer(self, target: str) -> str:
        return self.original_answer_template.format(answer=target)

    def instruction(self, text: str, labels: list[str] | None = None) -> str:
        return self.instruction_template.format(text=text, labels="\n".join(labels or []))

    def chat_messages(self, text: str, labels: list[str], shots=()) -> list[dict]:
        """System message, then one user/assistant pair per few-shot example, then the query."""
        messages = [{"role": "system", "content": self.system_prompt}]
        for shot_text, shot_answer in shots:
            messages.append({"role": "user", "content": self.instruction(shot_text, labels)})
            messages.append({"role": "assistant", "content": shot_answer})
        messages.append({"role": "user", "content": self.instruction(text, labels)})
        return messages

    def pick_shots(self, train_examples: list[Example], k: int, seed: int) -> list[Example]:
        """k training examples, deterministic for the seed; classification prefers distinct labels."""
        import random

        if k == 0:
            return []
        pool = sorted(train_examples, key=lambda e: (len(e.text), e.id))[: max(8 * k, 64)]
        random.Random(seed).shuffle(pool)
        chosen, seen = [], set()
        for example in pool:
            if self.is_classification and example.target in seen:
                continue
            chosen.append(example)
            seen.add(example.target)
            if len(chosen) == k:
                break
        return chosen

    # -- scoring ------------------------------------------------------------------------------------
    def synthetic_rows(self, rng, count: int, split: str) -> list[dict]:
        """``count`` generated rows in this task's file format, small and learnable, for the offline quickstart
        (zephyr.embedded.write_synthetic_data); a task without them is left out of the generated data."""
        raise NotImplementedError

    def score(self, references: list[str], predictions: list[str | None], labels: list[str]) -> dict:
        raise NotImplementedError
