"""Edge cases of answer matching, echo detection and the fraction selection, each one a mutant that survived the
other tests (results/tests/mutation.md)."""

import pytest

from zephyr.data import select_fraction
from zephyr.errors import UsageError
from zephyr.metrics import classification_metrics, echoes_prompt, match_label, normalize_label, rouge_metrics

LABELS = ["sci.space", "comp.windows.x", "rec.autos"]


@pytest.mark.parametrize("answer, label", [
    ("**sci.space**.", "sci.space"),  # emphasis around the label, then a period
    ("COMP.WINDOWS.X", "comp.windows.x"),  # a label ending in x, in capitals
    ('"rec.autos"\nbecause cars', "rec.autos"),  # the first line only
    ("  \n  ", None),  # nothing but whitespace is no answer
])
def test_answers_match_their_label_exactly_once_normalized(answer, label):
    assert match_label(answer, LABELS) == label
    assert normalize_label("  \n ") == ""


def test_metrics_count_every_row_they_score():
    metrics = classification_metrics(["sci.space", "rec.autos"], ["sci.space", None], LABELS)
    assert metrics["n_examples"] == 2 and metrics["n_errors"] == 1 and metrics["accuracy"] == 50.0
    assert rouge_metrics(["a b"], ["a b"])["n_examples"] == 1


def test_a_failed_summary_scores_as_an_empty_one():
    """Even against a reference whose words a placeholder string might share."""
    assert rouge_metrics(["xxxx yyyy"], [None])["rouge1"] == 0.0


def test_echoes_need_real_words():
    assert not echoes_prompt(None, "xxxx said xxxx")
    assert not echoes_prompt("--", "a -- b")  # punctuation alone is no word
    assert echoes_prompt("Will call later!", "Tom: Amanda will call later. Ok?")


def _rows(n=40):
    return [{"id": str(i), "label": "ab"[i % 2]} for i in range(n)]


def test_the_whole_training_set_keeps_its_file_order():
    rows = _rows()
    assert select_fraction(rows, 1.0, seed=3, key=lambda r: r["label"]) == rows
    assert select_fraction(rows, 1.0, seed=3) == rows


def test_fractions_without_classes_select_rows_and_refuse_none():
    """SAMSum has no classes (key None): a fraction is a seeded sample, and one that selects no row is refused."""
    rows = _rows()
    chosen = select_fraction(rows, 0.25, seed=3)
    assert len(chosen) == 10 and chosen != rows[:10]
    with pytest.raises(UsageError, match=r"--train_fraction: 0\.001 of 40 rows selects no row"):
        select_fraction(rows, 0.001, seed=3)


def test_a_fraction_that_would_empty_one_class_names_it():
    rows = [{"id": str(i), "label": "rare" if i == 0 else "common"} for i in range(30)]
    with pytest.raises(UsageError, match=r"\(1 of 2 classes would be empty, e\.g\. 'rare'\)"):
        select_fraction(rows, 0.05, seed=0, key=lambda r: r["label"])
