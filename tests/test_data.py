"""Data loading and training-fraction selection."""

import json
from collections import Counter

import pytest

from conftest import requires_shared, shared_dir
from zephyr.data import select_fraction
from zephyr.errors import UsageError
from zephyr.tasks import get_task

FRACTIONS = [0.025, 0.05, 0.1, 0.25, 0.5, 1.0]


def _rows():
    # Imbalanced classes: 400, 250, 120 and 30 rows.
    sizes = {"a": 400, "b": 250, "c": 120, "d": 30}
    return [{"id": f"{label}{i}", "label": label} for label, n in sizes.items() for i in range(n)]


def _key(row):
    return row["label"]


def test_fraction_is_exact_stratified_deterministic_and_nested():
    rows = _rows()
    class_sizes = Counter(map(_key, rows))
    previous = set()
    for fraction in FRACTIONS:
        chosen = select_fraction(rows, fraction, seed=7, key=_key)
        ids = [r["id"] for r in chosen]
        assert len(ids) == round(fraction * len(rows)) and len(set(ids)) == len(ids)
        counts = Counter(map(_key, chosen))
        for label, size in class_sizes.items():
            assert abs(counts[label] - fraction * size) <= 1, (fraction, label, counts[label])
        assert previous <= set(ids), f"{fraction} does not contain the smaller fraction"
        previous = set(ids)
        assert ids == [r["id"] for r in select_fraction(rows, fraction, seed=7, key=_key)]
    assert previous == {r["id"] for r in rows}
    assert select_fraction(rows, 0.1, seed=7, key=_key) != select_fraction(rows, 0.1, seed=8, key=_key)


def test_fraction_too_small_for_every_class_is_an_error():
    with pytest.raises(UsageError, match="--train_fraction: 0.002 .* too few for one row per class"):
        select_fraction(_rows(), 0.002, seed=0, key=_key)


@pytest.mark.parametrize("suffix", ["jsonl", "json", "csv", "parquet"])
def test_each_file_format_loads_and_drops_empty_rows(tmp_path, suffix):
    rows = [{"id": 1, "text": "about rockets", "label": "sci.space"},
            {"id": 2, "text": "  ", "label": "sci.space"},
            {"id": 3, "text": "about cars", "label": "rec.autos"}]
    path = tmp_path / f"train.{suffix}"
    if suffix == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif suffix == "json":
        path.write_text(json.dumps(rows))
    elif suffix == "csv":
        path.write_text("id,text,label\n" + "".join(f"{r['id']},{r['text']},{r['label']}\n" for r in rows))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    loaded = get_task("newsgroups").load_split("train", explicit_file=str(path))
    assert [(e.id, e.text, e.target) for e in loaded.examples] == [
        ("1", "about rockets", "sci.space"), ("3", "about cars", "rec.autos")]
    assert loaded.dropped == 1


@pytest.mark.parametrize("content, message", [
    (None, "data file not found"),
    ("", "data file is empty"),
    ('{"text": "x", "label": "a"}\n{broken\n', "line 2 is not valid JSON"),
    ('{"body": "x", "label": "a"}\n', "missing column 'text'"),
    ('{"text": "x", "label": 3}\n', "column 'label' must be a string"),
])
def test_bad_files_fail_with_a_message_naming_the_file(tmp_path, content, message):
    path = tmp_path / "train.jsonl"
    if content is not None:
        path.write_text(content)
    with pytest.raises(UsageError) as err:
        get_task("newsgroups").load_split("train", explicit_file=str(path))
    assert str(path) in str(err.value) and message in str(err.value)
    assert "\n" not in str(err.value)


def test_samsum_reads_the_original_json_arrays(tmp_path):
    (tmp_path / "samsum").mkdir()
    (tmp_path / "samsum" / "train.json").write_text(json.dumps(
        [{"id": "1", "dialogue": "A: hi\r\nB: hey", "summary": "They greet."},
         {"id": "2", "dialogue": "", "summary": "Empty."}]))
    loaded = get_task("samsum").load_split("train", data_dir=str(tmp_path))
    assert loaded.source.endswith("samsum/train.json") and loaded.dropped == 1
    assert loaded.examples[0].text == "A: hi\r\nB: hey"


def test_missing_data_dir_file_names_the_flag(tmp_path):
    with pytest.raises(UsageError, match="--data_dir: no test file for samsum"):
        get_task("samsum").load_split("test", data_dir=str(tmp_path))


@requires_shared
@pytest.mark.parametrize("task, split, rows, dropped", [
    ("samsum", "train", 14731, 1), ("samsum", "test", 819, 0),
    ("newsgroups", "train", 11014, 300), ("newsgroups", "test", 7317, 215),
])
def test_real_data_files_load_with_their_known_row_counts(task, split, rows, dropped):
    loaded = get_task(task).load_split(split, data_dir=str(shared_dir() / "data"))
    assert (len(loaded.examples), loaded.dropped) == (rows, dropped)
    if task == "newsgroups":
        assert len({e.target for e in loaded.examples}) == 20
