"""Decoding, label scoring, metrics and the tokenizer, against independent references."""

import pytest
import torch

from zephyr.generation import greedy_generate, label_log_likelihoods, score_labels
from zephyr.metrics import classification_metrics, normalize_label, rouge_metrics


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


PROMPTS = ["The rocket reached a stable orbit", "Brakes", "Which shader renders this polygon best, and why not?",
           "A: hi\nB: hello there, how are you doing today my friend"]


def test_batched_greedy_equals_one_at_a_time(tiny_model, tokenizer):
    ids = [tokenizer(p)["input_ids"] for p in PROMPTS]
    batched, errors = greedy_generate(tiny_model, tokenizer, ids, max_new_tokens=12, batch_size=4)
    single = [greedy_generate(tiny_model, tokenizer, [i], max_new_tokens=12, batch_size=1)[0][0] for i in ids]
    assert errors == [None] * 4 and batched == single
    assert all(text for text in batched), batched


def test_generation_stops_at_eos_on_the_token_level(tiny_model, tokenizer, monkeypatch):
    ids = tokenizer(PROMPTS[0])["input_ids"]
    with torch.no_grad():
        free = tiny_model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False, pad_token_id=2)
    new_tokens = free[0, len(ids):].tolist()
    stop_at = next(i for i, tok in enumerate(new_tokens) if i >= 2 and tok not in new_tokens[:i])
    monkeypatch.setattr(tiny_model.generation_config, "eos_token_id", new_tokens[stop_at])
    texts, _ = greedy_generate(tiny_model, tokenizer, [ids], max_new_tokens=8, batch_size=1)
    assert texts[0] == tokenizer.decode(new_tokens[:stop_at], skip_special_tokens=True).strip()


def test_label_scoring_in_one_pass_equals_full_sequence_scoring(tiny_model, tokenizer):
    prompts = [tokenizer(p)["input_ids"] for p in PROMPTS]
    labels = [tokenizer(l, add_special_tokens=False)["input_ids"] + [2] for l in ["sci.space", "rec.autos", "x"]]
    scores, errors = label_log_likelihoods(tiny_model, prompts, labels, pad_id=2, batch_size=3)
    picks, _ = score_labels(tiny_model, prompts, labels, pad_id=2, batch_size=3)
    expected = []
    with torch.no_grad():
        for prompt in prompts:
            row = []
            for label in labels:
                logits = tiny_model(torch.tensor([prompt + label])).logits[0].log_softmax(-1)
                row.append(sum(logits[len(prompt) - 1 + j, tok].item() for j, tok in enumerate(label)))
            expected.append(row)
    assert errors == [None] * len(prompts)
    assert torch.allclose(torch.tensor(scores), torch.tensor(expected), atol=1e-4), (scores, expected)
    assert picks == [max(range(len(labels)), key=row.__getitem__) for row in expected]


def test_out_of_memory_halves_the_batch_then_records_an_error():
    from zephyr.generation import run_batched

    calls = []

    def fn(batch):
        calls.append(len(batch))
        if len(batch) > 1 or batch[0] == [9] * 5:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return [len(batch[0])]

    results, errors = run_batched([[1], [9] * 5, [1, 2]], batch_size=4, fn=fn)
    assert results == [1, None, 2]
    assert errors[1].startswith("out of memory") and errors[0] is None and errors[2] is None
    assert calls == [3, 1, 2, 1, 1]  # halve to 1, error row; the rest restart at full size and halve


def test_out_of_memory_retries_are_counted():
    from zephyr.generation import run_batched

    stats = {}
    run_batched([[1]] * 8, batch_size=8, stats=stats,
                fn=lambda batch: (_ for _ in ()).throw(torch.cuda.OutOfMemoryError("out of memory"))
                if len(batch) > 2 else batch)
    assert stats == {"oom_retries": 2}  # 8 -> 4 -> 2


def test_evaluation_batches_are_planned_from_the_memory_budget():
    """Two probes (the longest prompt alone, then the four longest) give the fixed memory and the cost of a batch
    token; the plan is the most tokens under the budget, capped by --eval_batch_tokens."""
    from zephyr.generation import plan_batch_tokens

    gib, kib = 2**30, 2**10
    probed = []

    def peak_of(fn, batch):  # 14 GiB of weights, 430 KiB a batch token (prompt + 20 new tokens)
        probed.append([len(b) for b in batch])
        return 14 * gib + len(batch) * (len(batch[0]) + 20) * 430 * kib

    items = [[0] * n for n in (100, 480, 300, 460, 470, 50)]
    planned = plan_batch_tokens(items, lambda batch: batch, 20, 18 * gib, 16384, peak_of=peak_of)
    assert probed == [[480], [480, 470, 460, 300]]
    assert planned == int(4 * gib / (430 * kib))  # 9,754 tokens: 4 GiB over the weights
    probed.clear()
    assert plan_batch_tokens(items, None, 20, 18 * gib, 1200, peak_of=peak_of) == 1200  # the flag caps it
    assert probed == [[480], [480, 470]]  # probes stay within the flag's tokens (2 x 500)
    assert plan_batch_tokens(items, None, 20, 18 * gib, 16384, peak_of=peak_of, batch_size=1) == 16384  # no probe
    # weights over the budget: nothing to plan; the flag stands and out-of-memory halving is the fallback
    assert plan_batch_tokens(items, None, 20, 10 * gib, 16384, peak_of=peak_of) == 16384

    def out_of_memory(fn, batch):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    assert plan_batch_tokens(items, None, 20, 18 * gib, 16384, peak_of=out_of_memory) == 16384
    if not torch.cuda.is_available():  # nothing to measure on the CPU: the flag's cap stands
        assert plan_batch_tokens(items, None, 20, 18 * gib, 16384) == 16384


def test_token_budget_gives_long_prompts_smaller_batches():
    from zephyr.generation import run_batched

    calls = []
    items = [[0] * n for n in (30, 10, 10, 10, 10, 30, 10, 10)]
    results, _ = run_batched(items, batch_size=4, fn=lambda batch: calls.append([len(b) for b in batch]) or batch,
                             max_tokens=80, extra_tokens=10)
    # (30 + 10) tokens a row: 2 rows; (10 + 10): 4 rows, capped by batch_size
    assert calls == [[30, 30], [10, 10, 10, 10], [10, 10]]
    assert results == items


def test_classification_metrics_match_hand_computation():
    labels = ["a", "b", "c"]
    m = classification_metrics(["a", "a", "b", "c"], ["A.", "b", "banana", None], labels)
    # a: tp1 fn1 ; b: fp1 fn1 ; c: fn1. micro P=1/2, R=1/4 ; macro P=(1+0+0)/3, R=(.5+0+0)/3, F1=(2/3)/3
    assert m["accuracy"] == pytest.approx(25.0)
    assert m["micro_precision"] == pytest.approx(50.0) and m["micro_recall"] == pytest.approx(25.0)
    assert m["micro_f1"] == pytest.approx(100 * 2 * 0.5 * 0.25 / 0.75)
    assert m["macro_precision"] == pytest.approx(100 / 3) and m["macro_recall"] == pytest.approx(50 / 3)
    assert m["macro_f1"] == pytest.approx(100 * (2 / 3) / 3)
    assert (m["invalid_rate"], m["n_invalid"], m["n_errors"]) == (50.0, 2, 1)


def test_label_normalization():
    assert normalize_label('  "Sci.Space."\nbecause rockets') == "sci.space"
    assert normalize_label("**comp.graphics**") == "comp.graphics"
    assert normalize_label(None) == ""


def test_rouge_matches_hand_computation():
    m = rouge_metrics(["the cat sat on the mat", "hello world"], ["the cat sat", None])
    # pair 1: unigram P=3/3 R=3/6 -> F=2/3 ; bigram P=2/2 R=2/5 -> F=4/7 ; pair 2 (error row) scores 0
    assert m["rouge1"] == pytest.approx(100 * (2 / 3) / 2)
    assert m["rouge2"] == pytest.approx(100 * (4 / 7) / 2)
    assert m["rougeL"] == pytest.approx(100 * (2 / 3) / 2)
    assert (m["n_errors"], m["n_examples"]) == (1, 2)
    assert rouge_metrics(["Amanda runs"], ["amanda running"])["rouge1"] == pytest.approx(100.0)  # stemming


def test_a_copy_of_the_prompt_counts_as_an_echo_and_a_summary_does_not():
    from zephyr.metrics import echoes_prompt

    prompt = "Summarize the following dialogue.\n\nDialogue:\nAmanda: I baked cookies.\r\nJerry: Sure!\n\nSummary:"
    assert echoes_prompt("Dialogue:", prompt) and echoes_prompt("Amanda: I baked  cookies", prompt)
    assert echoes_prompt("amanda: i baked cookies. jerry: sure!", prompt)  # case, punctuation and line breaks
    assert not echoes_prompt("Amanda baked cookies for Jerry.", prompt)
    assert not echoes_prompt("", prompt) and not echoes_prompt(None, prompt)


ORDINARY = ["Hello world! The quick brown fox jumps over the lazy dog.",
            "Amanda: I baked cookies. Do you want some?\r\nJerry: Sure!",
            "In 1969, Apollo 11 landed on the Moon; it cost $25.4 billion (about 150% over budget).",
            "Café naïve résumé — “quotes” and emoji 🚀 too.", "### Sentence:GPUs are fast ### Class:comp.graphics"]


def test_tokenizer_ids_equal_sentencepiece(tokenizer):
    import sentencepiece as spm

    from zephyr.embedded import sentencepiece_model_path

    sp = spm.SentencePieceProcessor(model_file=str(sentencepiece_model_path()))
    assert len(tokenizer) == 32000 and tokenizer.pad_token == tokenizer.eos_token == "</s>"
    for text in ORDINARY:
        assert tokenizer(text)["input_ids"] == [sp.bos_id()] + sp.encode(text), text


def test_zephyr_chat_template(tokenizer):
    text = tokenizer.apply_chat_template([{"role": "system", "content": "S"}, {"role": "user", "content": "U"}],
                                         tokenize=False, add_generation_prompt=True)
    assert text == "<|system|>\nS</s>\n<|user|>\nU</s>\n<|assistant|>\n"


def test_bitsandbytes_kernels_advice_is_filtered_and_other_messages_are_not(caplog):
    import logging

    import zephyr  # noqa: F401  (installs the filter)

    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    with caplog.at_level(logging.WARNING, logger=logger.name):
        logger.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure you "
                       "already `pip install kernels` and the kernels >= 0.11.1", "no module")
        logger.warning("another bitsandbytes warning")
    assert [r.getMessage() for r in caplog.records] == ["another bitsandbytes warning"]
