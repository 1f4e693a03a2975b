"""Scoring. Predictions of ``None`` are error rows (generation failed): they count, and count as wrong."""

from __future__ import annotations

import string

_STRIP = string.whitespace + "\"'`*"


def normalize_label(text: str | None) -> str:
    """First line, without quotes, markdown emphasis or a trailing period, lower-cased."""
    if not text:
        return ""
    lines = text.strip().splitlines()
    first = lines[0] if lines else ""
    return first.strip(_STRIP).rstrip(".").strip(_STRIP).lower()


def match_label(prediction: str | None, labels: list[str]) -> str | None:
    """The label that the normalized prediction equals exactly, else None (an invalid prediction)."""
    by_norm = {normalize_label(label): label for label in labels}
    return by_norm.get(normalize_label(prediction))


def _ratio(num: float, den: float) -> float:
    return num / den if den else 0.0


def _f1(p: float, r: float) -> float:
    return _ratio(2 * p * r, p + r)


def classification_metrics(references: list[str], predictions: list[str | None], labels: list[str]) -> dict:
    """Accuracy, micro/macro precision/recall/F1 (x100) over ``labels``; invalid predictions hit no class."""
    n = len(references)
    matched = [match_label(p, labels) if p is not None else None for p in predictions]
    classes = sorted(set(labels) | set(references))
    tp = {c: 0 for c in classes}
    fp = {c: 0 for c in classes}
    fn = {c: 0 for c in classes}
    for ref, pred in zip(references, matched):
        if pred == ref:
            tp[ref] += 1
        else:
            fn[ref] += 1
            if pred is not None:
                fp[pred] += 1
    per_class = {}
    for c in classes:
        p, r = _ratio(tp[c], tp[c] + fp[c]), _ratio(tp[c], tp[c] + fn[c])
        per_class[c] = (p, r, _f1(p, r))
    total_tp, total_fp = sum(tp.values()), sum(fp.values())
    micro_p, micro_r = _ratio(total_tp, total_tp + total_fp), _ratio(total_tp, n)
    errors = sum(p is None for p in predictions)
    invalid = sum(m is None for m in matched)
    return {
        "accuracy": 100 * _ratio(total_tp, n),
        "micro_precision": 100 * micro_p,
        "micro_recall": 100 * micro_r,
        "micro_f1": 100 * _f1(micro_p, micro_r),
        "macro_precision": 100 * sum(v[0] for v in per_class.values()) / len(classes),
        "macro_recall": 100 * sum(v[1] for v in per_class.values()) / len(classes),
        "macro_f1": 100 * sum(v[2] for v in per_class.values()) / len(classes),
        "invalid_rate": 100 * _ratio(invalid, n),
        "n_examples": n,
        "n_invalid": invalid,
        "n_errors": errors,
    }


def rouge_metrics(references: list[str], predictions: list[str | None]) -> dict:
    """Mean ROUGE-1/2/L/Lsum F-measure x100 with Porter stemming; error rows score as empty summaries."""
    from rouge_score import rouge_scorer

    keys = ["rouge1", "rouge2", "rougeL", "rougeLsum"]
    scorer = rouge_scorer.RougeScorer(keys, use_stemmer=True)
    totals = dict.fromkeys(keys, 0.0)
    for ref, pred in zip(references, predictions):
        scores = scorer.score(ref, pred or "")
        for key in keys:
            totals[key] += scores[key].fmeasure
    n = len(references)
    out = {key: 100 * _ratio(totals[key], n) for key in keys}
    out.update(n_examples=n, n_errors=sum(p is None for p in predictions))
    return out


def _words(text: str) -> list[str]:
    return [word.strip(string.punctuation) for word in text.lower().split() if word.strip(string.punctuation)]


def echoes_prompt(prediction: str | None, prompt: str) -> bool:
    """True when a non-empty prediction is only a copy: its words form one contiguous run of the prompt's words
    (a line of the dialogue, the whole dialogue, or the prompt's own cue such as ``Dialogue:``)."""
    words = _words(prediction or "")
    if not words:
        return False
    haystack = _words(prompt)
    n = len(words)
    return any(haystack[i:i + n] == words for i in range(len(haystack) - n + 1))
