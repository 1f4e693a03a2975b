"""Turn examples into token ids for training and inference, within a token budget.

Training and inference share this code, so a fine-tuned model is evaluated on exactly the prompt tokens it
was trained on. When a prompt (plus, in training, the answer) exceeds its budget, the example's *input text*
is cut at the token level, keeping its beginning: the instruction, the answer cue and the answer survive.
"""

from __future__ import annotations

from dataclasses import dataclass

from zephyr.data import Example
from zephyr.errors import UsageError
from zephyr.tasks.base import Task

_MAX_FIT_ATTEMPTS = 6
# Chat messages rendered without a chat template (zero/few-shot prompts of a model that has none).
PLAIN_TURN = {"user": "{content}\n", "assistant": "{content}\n\n"}


def plain_conversation(messages: list[dict]) -> str:
    """Render chat messages without a chat template (system text is prepended to the first user turn)."""
    out = "".join(m["content"] + "\n\n" for m in messages if m["role"] == "system")
    for message in (m for m in messages if m["role"] != "system"):
        out += PLAIN_TURN[message["role"]].format(content=message["content"])
    return out


@dataclass
class EncodedPrompt:
    ids: list[int]
    truncated: bool


class PromptBuilder:
    """Renders one task's prompts in one format (``original`` or ``chat``), optionally with few-shot examples."""

    def __init__(self, task: Task, tokenizer, prompt_format: str, labels: list[str] | None = None,
                 shots: list[Example] = (), shot_max_tokens: int = 256):
        self.task, self.tokenizer, self.prompt_format = task, tokenizer, prompt_format
        self.labels = labels or []
        self.shots = [(self._head(s.text, shot_max_tokens), s.target) for s in shots]

    def fit_shots(self, budget: int) -> None:
        """Refuse few-shot examples that take more than half of ``budget`` tokens (the prompt without its query
        text), so the other half is left for the query: dropping some would silently change --num_shots."""
        used = len(self.encode(self.prompt_text(""))) if self.shots else 0
        if used > budget // 2:
            raise UsageError(f"--num_shots: {len(self.shots)} examples take {used} prompt tokens, more than half "
                             f"the prompt budget of {budget}; ask for fewer shots or a larger --max_prompt_tokens")

    # -- text ---------------------------------------------------------------------------------------
    def _messages(self, text: str, shots) -> list[dict]:
        return self.task.chat_messages(text, self.labels, shots)

    def _render(self, messages: list[dict], generation_prompt: bool) -> str:
        if self.tokenizer.chat_template:
            return self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                      add_generation_prompt=generation_prompt)
        return plain_conversation(messages)

    def prompt_text(self, text: str, shots=None) -> str:
        if self.prompt_format == "original":
            return self.task.original_prompt(text)
        return self._render(self._messages(text, self.shots if shots is None else shots), True)

    def answer_from(self, continuation: str | None) -> str | None:
        """The answer in a generated continuation. A plain conversation (chat format on a model without a chat
        template) ends every answer turn with a blank line and no stop token, so a model not tuned to stop, like a
        pretrained one in a few-shot prompt, goes on with the next turn; that is not part of its answer."""
        if continuation is None or self.prompt_format != "chat" or self.tokenizer.chat_template:
            return continuation
        return continuation.strip().split(PLAIN_TURN["assistant"].format(content=""), 1)[0].strip()

    def answer_text(self, prompt: str, text: str, target: str) -> str:
        """What follows the prompt in a full training sequence, up to the end of the answer (EOS excluded)."""
        if self.prompt_format == "original" or not self.tokenizer.chat_template:
            return self.task.original_answer(target) if self.prompt_format == "original" else target
        messages = self._messages(text, self.shots) + [{"role": "assistant", "content": target}]
        full = self._render(messages, False)
        if not full.startswith(prompt) or target not in full[len(prompt):]:
            return target
        tail = full[len(prompt):]
        return tail[: tail.index(target) + len(target)]

    # -- tokens -------------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Tokenize a rendered string, adding BOS unless the chat template already wrote it."""
        bos = self.tokenizer.bos_token
        add_special = not (bos and text.startswith(bos))
        return self.tokenizer(text, add_special_tokens=add_special)["input_ids"]

    def _head(self, text: str, max_tokens: int) -> str:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return text if len(ids) <= max_tokens else self.tokenizer.decode(ids[:max_tokens])

    def answer_ids(self, prompt_ids: list[int], prompt: str, answer: str) -> list[int]:
        """Answer tokens as they appear after the prompt in the joint tokenization, then EOS."""
        full = self.encode(prompt + answer)
        if full[: len(prompt_ids)] == prompt_ids:
            ids = full[len(prompt_ids):]
        else:  # a merge across the boundary: fall back to the answer tokenized alone
            ids = self.tokenizer(answer, add_special_tokens=False)["input_ids"]
        eos = self.tokenizer.eos_token_id
        return ids if ids and ids[-1] == eos else ids + [eos]

    def _fit(self, text: str, budget: int, answer_target: str | None):
        """Shorten ``text`` until prompt (+ answer) fits ``budget`` tokens; returns the final pieces."""
        current, truncated = text, False
        for attempt in range(_MAX_FIT_ATTEMPTS):
            prompt = self.prompt_text(current)
            prompt_ids = self.encode(prompt)
            answer_ids = []
            if answer_target is not None:
                answer_ids = self.answer_ids(prompt_ids, prompt, self.answer_text(prompt, current, answer_target))
            excess = len(prompt_ids) + len(answer_ids) - budget
            if excess <= 0:
                return prompt_ids, answer_ids, truncated
            text_ids = self.tokenizer(current, add_special_tokens=False)["input_ids"]
            keep = max(0, len(text_ids) - excess - attempt)  # decode/re-encode can drift a token or two
            truncated = True
            if keep == 0 and not current:
                break
            current = self.tokenizer.decode(text_ids[:keep]) if keep else ""
        # Only the instruction or the answer itself is too long: cut the sequence, keeping the answer's start.
        if answer_target is None:
            return prompt_ids[:budget], [], True
        ids = (prompt_ids + answer_ids)[:budget]
        return ids[: len(prompt_ids)], ids[len(prompt_ids):], True

    def encode_prompt(self, text: str, budget: int) -> EncodedPrompt:
        prompt_ids, _, truncated = self._fit(text, budget, None)
        return EncodedPrompt(prompt_ids, truncated)

    def encode_training(self, example: Example, max_length: int) -> dict:
        """``input_ids`` and ``completion_mask`` (1 on answer tokens and EOS), as TRL's SFTTrainer takes them."""
        prompt_ids, answer_ids, truncated = self._fit(example.text, max_length, example.target)
        return {"input_ids": prompt_ids + answer_ids,
                "completion_mask": [0] * len(prompt_ids) + [1] * len(answer_ids),
                "truncated": truncated}

    def label_ids(self, reference_text: str) -> list[list[int]]:
        """Token ids (EOS included) of every label, as they follow a prompt built from ``reference_text``."""
        prompt = self.prompt_text(reference_text)
        prompt_ids = self.encode(prompt)
        return [self.answer_ids(prompt_ids, prompt, self.answer_text(prompt, reference_text, label))
                for label in self.labels]
