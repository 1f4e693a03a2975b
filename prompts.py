"""Every prompt template of the suite, in one place.

Two fine-tuning formats exist for each task:

* ``original``: the study's plain-text format, e.g. ``### Sentence:{text} ### Class:`` followed by the
  label. It needs no chat template, so it works with any base model.
* ``chat``: the same instruction rendered through the tokenizer's chat template (Zephyr's
  ``<|system|>``/``<|user|>``/``<|assistant|>`` turns), the assistant turn being the answer.

Zero-shot and few-shot baselines always use the instruction messages below; they are rendered through the
chat template when the tokenizer has one and through ``PLAIN_TURN`` otherwise.
"""

from __future__ import annotations

ORIGINAL_FORMATS = {
    "newsgroups": {"prompt": "### Sentence:{text} ### Class:", "answer": "{answer}"},
    "samsum": {"prompt": "### Dialogue:{text} ### Summary:", "answer": "{answer}"},
}

SYSTEM_PROMPTS = {
    "newsgroups": "You are a precise text classifier. Reply with the newsgroup name only.",
    # Plain: with "...that writes short, faithful summaries of chat dialogues." more zero-shot answers copied the
    # dialogue (results/quality/zero-shot-prompt-trial/, variants O and P).
    "samsum": "You are a helpful assistant.",
}

INSTRUCTIONS = {
    "newsgroups": (
        "Classify the following newsgroup post into exactly one of these newsgroups:\n{labels}\n\n"
        "Post:\n{text}\n\nAnswer with the newsgroup name only."
    ),
    # Instruction, the dialogue between quotes, then a reminder: on SmolLM2 in 4-bit, a "Dialogue:" header and a
    # trailing "Summary:" cue made 230 of 819 zero-shot answers the bare word "Dialogue:", and without the quotes and
    # "Do not repeat lines" more answers copied the dialogue's first lines (results/quality/zero-shot-prompt-trial/).
    "samsum": ('Summarize the following dialogue in one or two sentences.\n\n"""\n{text}\n"""\n\n'
               "Write only the summary, in your own words. Do not repeat lines of the dialogue."),
}

# Used for zero/few-shot prompts when a tokenizer has no chat template.
PLAIN_TURN = {"user": "{content}\n", "assistant": "{content}\n\n"}


def original_prompt(task: str, text: str) -> str:
    return ORIGINAL_FORMATS[task]["prompt"].format(text=text)


def original_answer(task: str, answer: str) -> str:
    return ORIGINAL_FORMATS[task]["answer"].format(answer=answer)


def instruction(task: str, text: str, labels: list[str] | None = None) -> str:
    return INSTRUCTIONS[task].format(text=text, labels="\n".join(labels or []))


def chat_messages(task: str, text: str, labels: list[str] | None = None,
                  shots: list[tuple[str, str]] = ()) -> list[dict]:
    """System message, then one user/assistant pair per few-shot example, then the query."""
    messages = [{"role": "system", "content": SYSTEM_PROMPTS[task]}]
    for shot_text, shot_answer in shots:
        messages.append({"role": "user", "content": instruction(task, shot_text, labels)})
        messages.append({"role": "assistant", "content": shot_answer})
    messages.append({"role": "user", "content": instruction(task, text, labels)})
    return messages


def plain_conversation(messages: list[dict]) -> str:
    """Render chat messages without a chat template (system text is prepended to the first user turn)."""
    system = "".join(m["content"] + "\n\n" for m in messages if m["role"] == "system")
    turns = [m for m in messages if m["role"] != "system"]
    out = system
    for message in turns:
        out += PLAIN_TURN[message["role"]].format(content=message["content"])
    return out


# Zephyr-7B-beta's chat template (alignment-handbook), as shipped in its tokenizer_config.json. Used by the
# embedded default, whose tokenizer is built offline from Mistral's sentencepiece model.
ZEPHYR_CHAT_TEMPLATE = (
    "{% for message in messages %}\n"
    "{% if message['role'] == 'user' %}\n"
    "{{ '<|user|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'system' %}\n"
    "{{ '<|system|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n"
    "{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
    "{% endif %}\n"
    "{% if loop.last and add_generation_prompt %}\n"
    "{{ '<|assistant|>' }}\n"
    "{% endif %}\n"
    "{% endfor %}"
)
