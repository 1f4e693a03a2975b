"""Prompt rendering: formats, deterministic few-shot picks, and fitting the context."""

import pytest

from zephyr.data import Example
from zephyr.errors import UsageError
from zephyr.prompting import PromptBuilder
from zephyr.tasks import get_task

TRAIN = [Example(str(i), f"post number {i} about topic {i % 4} " * (1 + i % 3), f"label{i % 4}") for i in range(40)]


def test_few_shot_examples_are_deterministic_and_distinct_labels():
    task = get_task("newsgroups")
    picks = task.pick_shots(TRAIN, 3, seed=1)
    assert [e.id for e in picks] == [e.id for e in task.pick_shots(TRAIN, 3, seed=1)]
    assert len({e.target for e in picks}) == 3
    assert [e.id for e in picks] != [e.id for e in task.pick_shots(TRAIN, 3, seed=2)]


def test_few_shot_prompt_holds_the_shots_and_fits_its_budget(tokenizer):
    task = get_task("newsgroups")
    shots = task.pick_shots(TRAIN, 3, seed=0)
    builder = PromptBuilder(task, tokenizer, "chat", sorted({e.target for e in TRAIN}), shots)
    prompt = builder.prompt_text("the query post")
    assert all(s.text.strip() in prompt for s in shots) and prompt.count("<|assistant|>") == 4
    long_query = "very long post " * 400
    encoded = builder.encode_prompt(long_query, budget=300)
    assert encoded.truncated and len(encoded.ids) <= 300
    lengths = [len(builder.encode(builder.prompt_text("", builder.shots[:k]))) for k in range(4)]
    builder.fit_shots(budget=2 * lengths[3])  # shots may take at most half the budget
    with pytest.raises(UsageError, match="--num_shots: 3 examples take"):  # never dropped silently
        builder.fit_shots(budget=2 * lengths[3] - 2)


def test_original_format_is_the_study_template(tokenizer):
    builder = PromptBuilder(get_task("samsum"), tokenizer, "original")
    assert builder.prompt_text("A: hi") == "### Dialogue:A: hi ### Summary:"
    assert PromptBuilder(get_task("newsgroups"), tokenizer, "original").prompt_text("x") == "### Sentence:x ### Class:"


def test_zero_shot_prompt_without_chat_template_uses_plain_turns(tokenizer):
    import copy

    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    builder = PromptBuilder(get_task("samsum"), plain, "chat")
    text = builder.prompt_text("A: hi")
    assert text.startswith("You are a helpful assistant.")
    assert 'sentences.\n\n"""\nA: hi\n"""\n\nWrite only the summary, in your own words.' in text


def test_a_generated_answer_ends_where_its_plain_turn_ends(tokenizer):
    import copy

    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    shots = [Example("s", "A: late again\nB: ok", "A will be late.")]
    builder = PromptBuilder(get_task("samsum"), plain, "chat", shots=shots)
    assert builder.prompt_text("A: hi").count("A will be late.\n\n") == 1  # the turn's end that the shot shows
    # A pretrained model goes on with the next turn; only its first turn is its answer.
    assert builder.answer_from('Eric will be late.\n\nSummarize the following dialogue') == "Eric will be late."
    assert builder.answer_from("no turn end") == "no turn end" and builder.answer_from(None) is None
    assert builder.answer_from("\n\nafter a leading blank line\n\nnext") == "after a leading blank line"
    # With a chat template, or the original format, the stop token ends the answer: nothing is cut.
    task = get_task("samsum")
    for kept in (PromptBuilder(task, tokenizer, "chat"), PromptBuilder(task, plain, "original")):
        assert kept.answer_from("one\n\ntwo") == "one\n\ntwo"


def test_evaluation_writes_the_answer_not_the_next_turns(tokenizer, tmp_path, monkeypatch, caplog):
    import copy
    import json
    from types import SimpleNamespace

    import torch

    from zephyr import evaluation
    from zephyr.config import EvalArguments
    from zephyr.tasks.base import LoadedSplit

    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    model = torch.nn.Module()
    model.config = SimpleNamespace(max_position_embeddings=512)
    model.get_input_embeddings = lambda: torch.nn.Embedding(2, 2)  # the dtype that metrics.json records
    monkeypatch.setattr(evaluation, "greedy_generate", lambda model, tok, prompts, *args, **kwargs: (
        ["A will be late.\n\nSummarize the following dialogue"] * len(prompts), [None] * len(prompts)))
    examples = [Example("1", "A: late again", "A is late.")]
    task = get_task("samsum")
    evaluation.evaluate(task, model, plain, PromptBuilder(task, plain, "chat"), LoadedSplit(examples, "inline"),
                        examples, EvalArguments(merge_adapter=False), tmp_path)
    [row] = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert row["prediction"] == "A will be late."
    assert row["continuation"] == "A will be late.\n\nSummarize the following dialogue"  # what the rule cut
    assert json.loads((tmp_path / "metrics.json").read_text())["n_cut_at_turn_end"] == 1
    # evaluating again into the same folder says what it replaces
    with caplog.at_level("WARNING", logger="zephyr.evaluation"):
        evaluation.evaluate(task, model, plain, PromptBuilder(task, plain, "chat"), LoadedSplit(examples, "inline"),
                            examples, EvalArguments(merge_adapter=False), tmp_path)
    rouge1 = json.loads((tmp_path / "metrics.json").read_text())["rouge1"]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [f"replacing the earlier evaluation in {tmp_path} (its rouge1 was {rouge1:.2f}, now "
                        f"{rouge1:.2f}); --eval_output_dir keeps both"]


@pytest.mark.parametrize("prompt_format", ["original", "chat"])
def test_training_rows_are_the_prompt_tokens_then_the_answer_tokens_and_eos(tokenizer, prompt_format):
    """Token for token: the prompt as the tokenizer encodes it, then the answer as it follows the prompt in the joint
    tokenization, then EOS; the loss mask covers exactly the answer and EOS. A long text is cut from its end so that
    the whole answer still fits max_length, and the row says it was cut."""
    from zephyr.data import Example
    from zephyr.prompting import PromptBuilder
    from zephyr.tasks import get_task

    builder = PromptBuilder(get_task("newsgroups"), tokenizer, prompt_format, ["sci.space", "rec.autos"])
    example = Example("1", "The rocket reached orbit.", "sci.space")
    row = builder.encode_training(example, 512)
    prompt = builder.prompt_text(example.text)
    prompt_ids = builder.encode(prompt)
    answer = builder.answer_text(prompt, example.text, "sci.space")
    joint = builder.encode(prompt + answer)
    assert row["input_ids"][: len(prompt_ids)] == prompt_ids and joint[: len(prompt_ids)] == prompt_ids
    assert row["input_ids"][len(prompt_ids):] == joint[len(prompt_ids):] + [tokenizer.eos_token_id]
    assert row["completion_mask"] == [0] * len(prompt_ids) + [1] * (len(row["input_ids"]) - len(prompt_ids))
    assert tokenizer.decode(row["input_ids"][len(prompt_ids):-1]).strip().endswith("sci.space")
    assert row["truncated"] is False

    long = Example("2", " ".join(["orbit"] * 400), "rec.autos")
    budget = len(builder.encode_training(Example("3", "", "rec.autos"), 512)["input_ids"]) + 40  # room for 40 tokens
    cut = builder.encode_training(long, budget)
    assert cut["truncated"] is True and len(cut["input_ids"]) <= budget
    answer_tokens = sum(cut["completion_mask"])
    assert cut["input_ids"][-1] == tokenizer.eos_token_id
    assert tokenizer.decode(cut["input_ids"][-answer_tokens:-1]).strip().endswith("rec.autos")
    assert len(cut["input_ids"]) >= budget - 3  # filled to the budget, give or take the tokenizer's re-encoding
