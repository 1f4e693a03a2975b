"""Prompting by exact tokens: BOS once, the answer as the chat template writes it after the prompt, EOS once, few-shot
examples cut to their token budget, and what is kept when even the instruction does not fit."""

from __future__ import annotations

import copy

import pytest

from zephyr.data import Example
from zephyr.errors import UsageError
from zephyr.prompting import PromptBuilder
from zephyr.tasks import get_task

# A template whose answer turn starts with a space after the generation prompt ("ASSISTANT:" + " answer</s>"):
# the answer tokens must be what really follows the prompt, the space included.
SPACED_TEMPLATE = ("{% for m in messages %}{% if m['role'] == 'assistant' %}ASSISTANT: {{ m['content'] }}{{ eos_token }}"
                   "{% else %}USER: {{ m['content'] }}\n{% endif %}{% endfor %}"
                   "{% if add_generation_prompt %}ASSISTANT:{% endif %}")


def _with_template(tokenizer, template):
    copied = copy.deepcopy(tokenizer)
    copied.chat_template = template
    return copied


def test_bos_is_written_once_whether_or_not_the_text_starts_with_it(tokenizer):
    builder = PromptBuilder(get_task("samsum"), tokenizer, "original")
    plain = tokenizer("hello world", add_special_tokens=False)["input_ids"]
    assert builder.encode("hello world") == [tokenizer.bos_token_id, *plain]
    assert builder.encode(tokenizer.bos_token + "hello world") == [tokenizer.bos_token_id, *plain]


def test_the_answer_is_what_the_chat_template_writes_after_the_prompt(tokenizer):
    task = get_task("samsum")
    spaced = PromptBuilder(task, _with_template(tokenizer, SPACED_TEMPLATE), "chat")
    prompt = spaced.prompt_text("A: hi")
    assert prompt.endswith("ASSISTANT:") and prompt.count("USER: ") == 2  # the system message and the user's
    assert spaced.answer_text(prompt, "A: hi", "They greet.") == " They greet."
    # The study's template and a plain conversation put the answer right after the prompt; the original format
    # writes it after its own cue.
    zephyr_chat = PromptBuilder(task, tokenizer, "chat")
    assert zephyr_chat.answer_text(zephyr_chat.prompt_text("A: hi"), "A: hi", "They greet.") == "They greet."
    plain = PromptBuilder(task, _with_template(tokenizer, None), "chat")
    assert plain.answer_text(plain.prompt_text("A: hi"), "A: hi", "They greet.") == "They greet."
    original = PromptBuilder(task, tokenizer, "original")
    assert original.answer_text(original.prompt_text("A: hi"), "A: hi", "x") == task.original_answer("x")


def test_a_template_that_does_not_continue_its_prompt_falls_back_to_the_bare_answer(tokenizer):
    """If the rendered conversation does not start with the generation prompt, the answer is tokenized alone."""
    template = SPACED_TEMPLATE.replace("{% if add_generation_prompt %}ASSISTANT:", "{% if add_generation_prompt %}BOT:")
    builder = PromptBuilder(get_task("samsum"), _with_template(tokenizer, template), "chat")
    prompt = builder.prompt_text("A: hi")
    assert builder.answer_text(prompt, "A: hi", "They greet.") == "They greet."


def test_answer_tokens_follow_the_joint_tokenization_and_end_in_one_eos(tokenizer):
    builder = PromptBuilder(get_task("samsum"), tokenizer, "original")
    prompt = builder.prompt_text("A: hi")
    prompt_ids = builder.encode(prompt)
    answer = builder.answer_text(prompt, "A: hi", "They greet.")
    ids = builder.answer_ids(prompt_ids, prompt, answer)
    assert builder.encode(prompt + answer) + [tokenizer.eos_token_id] == prompt_ids + ids
    assert ids.count(tokenizer.eos_token_id) == 1 and ids[-1] == tokenizer.eos_token_id
    with_eos = builder.answer_ids(prompt_ids, prompt, answer + tokenizer.eos_token)
    assert with_eos == ids  # an answer that already ends in EOS gets no second one


def test_an_answer_that_merges_with_the_prompt_is_tokenized_alone(tokenizer):
    """A prompt ending inside a word ('... ### Summary:hel' + 'lo'): the joint tokenization no longer starts with
    the prompt's tokens, so the answer's own tokens are used."""
    builder = PromptBuilder(get_task("samsum"), tokenizer, "original")
    prompt = "say hel"
    prompt_ids = builder.encode(prompt)
    assert builder.encode(prompt + "lo")[: len(prompt_ids)] != prompt_ids  # the boundary token merges
    assert builder.answer_ids(prompt_ids, prompt, "lo") == [*tokenizer("lo", add_special_tokens=False)["input_ids"],
                                                            tokenizer.eos_token_id]


def test_few_shot_examples_are_cut_to_their_token_budget(tokenizer):
    task = get_task("samsum")
    words = " ".join(f"word{i}" for i in range(400))
    ids = tokenizer(words, add_special_tokens=False)["input_ids"]
    assert len(ids) > 300
    exact = tokenizer.decode(ids[:256])
    builder = PromptBuilder(task, tokenizer, "chat", shots=[Example("0", words, "s"), Example("1", exact, "t")])
    assert builder.shots[0] == (tokenizer.decode(ids[:256]), "s")  # 256 tokens by default
    assert builder.shots[1] == (exact, "t")  # within the budget: kept as written
    tight = PromptBuilder(task, tokenizer, "chat", shots=[Example("0", words, "s")], shot_max_tokens=10)
    assert tight.shots[0][0] == tokenizer.decode(ids[:10])


def test_explicit_shots_replace_the_builders_own(tokenizer):
    task = get_task("samsum")
    builder = PromptBuilder(task, tokenizer, "chat", shots=[Example("0", "A: one", "first")])
    assert builder.prompt_text("A: q").count("<|assistant|>") == 2
    assert builder.prompt_text("A: q", shots=[]).count("<|assistant|>") == 1
    assert builder.prompt_text("A: q", shots=[]) == PromptBuilder(task, tokenizer, "chat").prompt_text("A: q")


def test_without_shots_any_budget_fits(tokenizer):
    PromptBuilder(get_task("samsum"), tokenizer, "chat").fit_shots(budget=1)  # nothing to refuse


def test_a_classification_prompt_lists_every_label(tokenizer):
    labels = ["rec.autos", "sci.space", "talk.politics.guns"]
    prompt = PromptBuilder(get_task("newsgroups"), tokenizer, "chat", labels).prompt_text("post")
    assert all(label in prompt for label in labels)


def test_label_ids_are_each_labels_answer_tokens_after_the_prompt(tokenizer):
    labels = ["rec.autos", "sci.space"]
    builder = PromptBuilder(get_task("newsgroups"), tokenizer, "original", labels)
    prompt = builder.prompt_text("post")
    prompt_ids = builder.encode(prompt)
    expected = [builder.answer_ids(prompt_ids, prompt, builder.answer_text(prompt, "post", label)) for label in labels]
    assert builder.label_ids("post") == expected and expected[0] != expected[1]
    assert all(ids[-1] == tokenizer.eos_token_id for ids in expected)


@pytest.mark.parametrize("budget", [30, 45, 60])
def test_a_long_text_is_cut_to_the_budget_keeping_the_instruction_and_answer(tokenizer, budget):
    """The dialogue is cut at the token level from its end; the template around it and the whole answer stay, and
    the row fills its budget (for these texts exactly: no decode/re-encode drift)."""
    builder = PromptBuilder(get_task("samsum"), tokenizer, "original")
    text = " ".join(f"A: line {i}." for i in range(200))
    row = builder.encode_training(Example("0", text, "They talk."), budget)
    prompt = builder.prompt_text("x")
    answer = builder.answer_ids(builder.encode(prompt), prompt, builder.answer_text(prompt, "x", "They talk."))
    decoded = tokenizer.decode(row["input_ids"])
    assert row["truncated"] and len(row["input_ids"]) == budget
    assert row["input_ids"][-len(answer):] == answer and sum(row["completion_mask"]) == len(answer) == 4
    assert decoded.startswith("<s> ### Dialogue:A: line 0. A: line 1.") and decoded.endswith(
        " ### Summary:They talk.</s>")
    assert len(builder.encode_prompt(text, budget).ids) == budget  # a prompt alone gets the whole budget


def test_a_prompt_that_fits_exactly_is_not_cut(tokenizer):
    builder = PromptBuilder(get_task("samsum"), tokenizer, "original")
    full = builder.encode_prompt("A: hi", budget=1000)
    exact = builder.encode_prompt("A: hi", budget=len(full.ids))
    assert not full.truncated and not exact.truncated and exact.ids == full.ids


def test_when_the_instruction_alone_is_too_long_the_start_is_kept(tokenizer):
    """Even an empty text does not fit: the prompt keeps its first ``budget`` tokens; a training row keeps the
    prompt's start and as much of the answer as fits after the whole prompt, marked truncated."""
    builder = PromptBuilder(get_task("samsum"), tokenizer, "original")
    empty = builder.encode(builder.prompt_text(""))
    prompt = builder.encode_prompt("A: hi", budget=4)
    assert prompt.truncated and prompt.ids == empty[:4]
    row = builder.encode_training(Example("0", "A: hi", "They greet."), len(empty) + 2)
    answer = builder.answer_ids(empty, builder.prompt_text(""), builder.answer_text(builder.prompt_text(""), "",
                                                                                     "They greet."))
    assert row["truncated"] and row["input_ids"] == empty + answer[:2]
    assert row["completion_mask"] == [0] * len(empty) + [1, 1]
    short = builder.encode_training(Example("0", "A: hi", "They greet."), 3)
    assert short["input_ids"] == empty[:3] and sum(short["completion_mask"]) == 0


def test_too_many_shots_for_the_budget_is_an_error_not_a_silent_drop(tokenizer):
    task = get_task("samsum")
    builder = PromptBuilder(task, tokenizer, "chat", shots=[Example(str(i), f"A: line {i}", "s") for i in range(3)])
    used = len(builder.encode(builder.prompt_text("")))
    builder.fit_shots(budget=2 * used)
    with pytest.raises(UsageError, match=f"--num_shots: 3 examples take {used} prompt tokens"):
        builder.fit_shots(budget=2 * used - 2)


class _SpacedAnswers(get_task("samsum").__class__):
    """SAMSum whose plain format puts a space before the answer (an unregistered variant: it sets no name)."""

    original_answer_template = " {answer}"


def test_the_original_format_writes_the_tasks_own_answer_text(tokenizer):
    from zephyr.tasks import TASKS

    assert TASKS["samsum"] is not _SpacedAnswers  # a variant that sets no name is not registered
    original = PromptBuilder(_SpacedAnswers(), tokenizer, "original")
    assert original.answer_text(original.prompt_text("A: hi"), "A: hi", "They greet.") == " They greet."
    chat = PromptBuilder(_SpacedAnswers(), _with_template(tokenizer, None), "chat")  # plain turns: the bare answer
    assert chat.answer_text(chat.prompt_text("A: hi"), "A: hi", "They greet.") == "They greet."


def test_a_plain_turn_answer_ends_at_the_first_turn_break(tokenizer):
    builder = PromptBuilder(get_task("samsum"), _with_template(tokenizer, None), "chat")
    assert builder.answer_from("They greet.\n\nNext dialogue\n\nand more") == "They greet."


def test_a_shot_is_kept_exactly_as_written_up_to_its_budget(tokenizer):
    """Within the budget (to the token) a shot is not decoded again, which would drop its leading space."""
    text = "  two  spaces  "
    length = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) != text
    builder = PromptBuilder(get_task("samsum"), tokenizer, "chat", shots=[Example("0", text, "s")],
                            shot_max_tokens=length)
    assert builder.shots == [(text, "s")]


def test_chat_training_rows_and_label_ids_carry_the_templates_answer_text(tokenizer):
    """With a template that writes ' answer' after its prompt, training rows and label ids hold that space."""
    spaced = _with_template(tokenizer, SPACED_TEMPLATE)
    labels = ["rec.autos", "sci.space"]
    builder = PromptBuilder(get_task("newsgroups"), spaced, "chat", labels)
    prompt = builder.prompt_text("post")
    prompt_ids = builder.encode(prompt)
    row = builder.encode_training(Example("0", "post", "sci.space"), 512)
    expected = builder.answer_ids(prompt_ids, prompt, " sci.space")
    assert row["input_ids"] == prompt_ids + expected and sum(row["completion_mask"]) == len(expected)
    assert builder.label_ids("post") == [builder.answer_ids(prompt_ids, prompt, f" {label}") for label in labels]


def test_a_row_one_token_over_its_budget_is_cut(tokenizer):
    builder = PromptBuilder(get_task("samsum"), tokenizer, "original")
    example = Example("0", "A: one. B: two. C: three.", "They count.")
    whole = builder.encode_training(example, 1000)
    cut = builder.encode_training(example, len(whole["input_ids"]) - 1)
    assert not whole["truncated"] and cut["truncated"] and len(cut["input_ids"]) <= len(whole["input_ids"]) - 1
    assert cut["input_ids"][-sum(whole["completion_mask"]):] == whole["input_ids"][-sum(whole["completion_mask"]):]


def test_a_plain_conversation_is_exact():
    """Without a chat template: system texts first, each followed by a blank line, then the turns."""
    from zephyr.prompting import plain_conversation

    messages = [{"role": "system", "content": "S1"}, {"role": "system", "content": "S2"},
                {"role": "user", "content": "U"}, {"role": "assistant", "content": "A"},
                {"role": "user", "content": "Q"}]
    assert plain_conversation(messages) == "S1\n\nS2\n\nU\nA\n\nQ\n"
