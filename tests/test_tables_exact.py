"""The tables' code value by value: each column of a run's summary row, the CSV and Markdown text, which runs a table
takes and why it leaves one out, the warnings, and which runs each loss plot draws (the mutation run of
zephyr/results.py and zephyr/protocol.py: results/tests/mutation.md). Run directories are written inline."""

from __future__ import annotations

import csv
import json
import logging

import pytest

from zephyr import reference, results
from zephyr.errors import UsageError
from zephyr.protocol import EMBEDDED_MARKER, run_facts, select, suite_defaults
from zephyr.results import ROW_COLUMNS, collect, summarize_run, table1, table3, to_csv, to_markdown, write_tables


def _write(run, config: dict, metrics, train_metrics: dict | None = None):
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(config))
    (run / "metrics.json").write_text(json.dumps(metrics))
    if train_metrics is not None:
        (run / "train_metrics.json").write_text(json.dumps(train_metrics))
    return run


FINETUNE = {"kind": "finetune", "data": {"train_rows_used": 1101}, "arguments": {
    "DataArguments": {"task": "newsgroups", "train_fraction": 0.1},
    "ModelArguments": {"model_name_or_path": "/m/zephyr-7b-beta/", "lora_r": 64, "lora_dropout": 0.05,
                       "lora_targets": "all", "lora_lm_head": True},
    "TrainArguments": {"num_train_epochs": 5.0, "neftune_alpha": 5.0},
    "EvalArguments": {"num_shots": 0}}}
METRICS = {"accuracy": 71.5, "macro_f1": 70.25, "invalid_rate": 0.5, "n_examples": 7317, "n_errors": 2,
           "examples_per_s": 12.5, "rouge1": None}


def test_a_fine_tunes_summary_row_is_every_column_it_recorded(tmp_path):
    run = _write(tmp_path / "ft", FINETUNE, METRICS, {"tokens_per_s": 1234.5, "peak_gpu_memory_gib": 7.25})
    assert summarize_run(run) == {
        "run": "ft", "kind": "finetune", "task": "newsgroups", "model": "zephyr-7b-beta", "variant": "NEFTune + all-module",
        "train_fraction": 0.1, "train_rows": 1101, "lora_r": 64, "lora_dropout": 0.05, "epochs": 5.0,
        "lora_targets": "all", "lora_lm_head": True, "neftune_alpha": 5.0, "num_shots": 0, "tokens_per_s": 1234.5,
        "peak_gpu_memory_gib": 7.25, "accuracy": 71.5, "macro_f1": 70.25, "invalid_rate": 0.5, "rouge1": None,
        "rouge2": None, "rougeL": None, "rougeLsum": None, "n_examples": 7317, "n_errors": 2, "examples_per_s": 12.5}
    assert list(summarize_run(run)) == ROW_COLUMNS
    # Without train_metrics.json (evaluated from an adapter made elsewhere): no speed, the rest as before.
    (run / "train_metrics.json").unlink()
    assert (summarize_run(run)["tokens_per_s"], summarize_run(run)["lora_r"]) == (None, 64)


def test_a_baselines_variant_is_its_shots_and_missing_groups_are_missing_cells(tmp_path):
    def baseline(name, **evaluation):
        config = {"kind": "baseline", "arguments": {"DataArguments": {"task": "samsum"},
                                                    "ModelArguments": {"model_name_or_path": "hub:org/gemma-3"},
                                                    "EvalArguments": evaluation}}
        return summarize_run(_write(tmp_path / name, config, {"rouge1": 30.0}))

    three = baseline("three", num_shots=3)
    assert (three["variant"], three["num_shots"], three["model"], three["train_rows"]) == ("few-shot", 3, "gemma-3", None)
    assert (baseline("zero", num_shots=0)["variant"], baseline("unset")["variant"]) == ("zero-shot", "zero-shot")
    bare = summarize_run(_write(tmp_path / "bare", {"kind": "finetune", "arguments": {}}, {"accuracy": 1.0}))
    assert {k: v for k, v in bare.items() if v is not None} == {"run": "bare", "kind": "finetune", "model": "model",
                                                                 "variant": "base", "accuracy": 1.0}


def test_a_summary_refuses_files_of_another_program(tmp_path):
    not_ours = _write(tmp_path / "a", {"kind": "finetune"}, {"accuracy": 1.0})
    listed = _write(tmp_path / "b", FINETUNE, [1.0])
    for run in (not_ours, listed):
        with pytest.raises(UsageError) as error:
            summarize_run(run)
        assert str(error.value) == f"{run}: metrics.json or config.json is not from this suite"
    assert summarize_run(tmp_path / "c") is None


def test_collect_reads_every_root_and_names_a_root_it_cannot_use(tmp_path):
    first = _write(tmp_path / "one" / "r1", FINETUNE, METRICS)
    second = _write(tmp_path / "two" / "r2", FINETUNE, METRICS)
    rows = collect([tmp_path / "one", str(tmp_path / "two")])
    assert [(row["run"], row["path"]) for row in rows] == [("r1", str(first)), ("r2", str(second))]
    assert rows[0]["facts"] == run_facts(first)
    (tmp_path / "empty").mkdir()
    for root, message in ((tmp_path / "none", "directory not found"),
                          (tmp_path / "empty", "no finished run in it (no metrics.json below it)")):
        with pytest.raises(UsageError) as error:
            collect([tmp_path / "one", root])
        assert str(error.value) == f"--runs: {root}: {message}"
    # A second evaluation given as a root of its own is not taken for a run of its own: it has no config.json.
    (first / "eval-loglik").mkdir()
    (first / "eval-loglik" / "metrics.json").write_text("{}")
    with pytest.raises(UsageError) as error:
        collect([first / "eval-loglik"])
    assert str(error.value) == f"{first / 'eval-loglik' / 'config.json'}: file not found"


def test_csv_and_markdown_text():
    rows = [{"a": 1.5, "b": None, "extra": "x"}, {"a": 0, "b": "y"}]
    assert to_csv(rows, ["a", "b"]) == "a,b\n1.5,\n0,y\n"
    assert to_markdown(rows, ["a", "b"]) == "| a | b |\n|---|---|\n| 1.50 | — |\n| 0 | y |\n"
    assert to_markdown([], ["a"]) == "| a |\n|---|\n"


def _row(task, variant, run, **fields) -> dict:
    kind = "baseline" if variant in ("zero-shot", "few-shot") else "finetune"
    return {"run": run, "task": task, "kind": kind, "variant": variant, "model": "m", "train_fraction": None,
            "train_rows": None, "accuracy": None, "rouge1": None, "rouge2": None, **fields}


def test_runs_sharing_a_cell_are_named_in_one_warning(tmp_path, caplog):
    rows = [_row("newsgroups", "base", "a", train_fraction=0.1, accuracy=1.0, path="/runs/a"),
            _row("newsgroups", "base", "b", train_fraction=0.1, accuracy=2.0),
            _row("newsgroups", "base", "c", train_fraction=0.25, accuracy=3.0, path="/runs/c"),
            _row("newsgroups", "NEFTune", "d", train_fraction=0.1, accuracy=4.0, path="/runs/d")]
    with caplog.at_level(logging.WARNING):
        write_tables(rows, tmp_path)
    assert [r.getMessage() for r in caplog.records] == ["2 runs fill one cell (/runs/a, b); the table shows the last"]


def test_a_runs_training_rows_without_a_record_are_missing_not_zero():
    table = {r["train_fraction"]: r for r in table1([_row("newsgroups", "base", "a", train_fraction=0.1, accuracy=1.0),
                                                     _row("newsgroups", "all-module", "b", train_fraction=0.1,
                                                          train_rows=1101, accuracy=2.0),
                                                     _row("newsgroups", "base", "c", train_fraction=0.5,
                                                          accuracy=3.0)])}
    assert (table["0.1"]["train_rows"], table["0.5"]["train_rows"], table["1"]["train_rows"]) == (1101, None, None)


def test_table3_keeps_a_full_row_of_ours_drops_an_empty_one_and_spells_the_studys_like_ours():
    rows = [_row("samsum", setting, setting, model="full", rouge1=r1, rouge2=r2)
            for setting, r1, r2 in (("zero-shot", 10.0, 2.0), ("few-shot", 20.0, 5.0), ("base", 40.0, 15.0))]
    rows.append(_row("samsum", "NEFTune", "n", model="neftune-only", rouge1=41.0, rouge2=16.0))  # not in Table 3
    table = table3(rows)
    assert table[0] == {"model": "full", "source": "ours", "zero-shot ROUGE-1": 10.0, "zero-shot ROUGE-2": 2.0,
                        "few-shot ROUGE-1": 20.0, "few-shot ROUGE-2": 5.0, "fine-tuned ROUGE-1": 40.0,
                        "fine-tuned ROUGE-2": 15.0}
    assert [r["model"] for r in table] == ["full", *reference.TABLE3_ROUGE]
    rouge1, rouge2 = reference.TABLE3_ROUGE["Mistral-7B"]
    assert table[1 + list(reference.TABLE3_ROUGE).index("Mistral-7B")] == {
        "model": "Mistral-7B", "source": "study", "zero-shot ROUGE-1": None, "zero-shot ROUGE-2": None,
        "few-shot ROUGE-1": None, "few-shot ROUGE-2": None, "fine-tuned ROUGE-1": rouge1, "fine-tuned ROUGE-2": rouge2}


def _facts(*reasons, settings=None) -> dict:
    return {"not_a_study_number": list(reasons), "settings": settings}


def test_tables_md_its_protocol_and_the_runs_left_out(tmp_path, caplog):
    rows = [_row("newsgroups", "base", "kept", train_fraction=0.1, accuracy=46.6),
            _row("newsgroups", "base", "smoke", train_fraction=0.1, accuracy=1.0,
                 facts=_facts("a smoke test (--max_steps 3)")),
            _row("mytask", "zero-shot", "other-task", facts=_facts("the quickstart's generated data"))]
    out = tmp_path / "a" / "b"
    with caplog.at_level(logging.WARNING):
        written = write_tables(rows, out, protocol="Protocol: 1 epoch.")
    markdown = written["markdown"].read_text()
    assert markdown.startswith("# Result tables\n\nProtocol: 1 epoch.\n\n## Table 1: 20 Newsgroups accuracy (%) by "
                               "training rows\n\n| model | train_fraction |")
    assert markdown.endswith(
        "\n## Runs left out\n\n2 finished run(s) are no study number and fill no cell above:\n\n"
        "- `smoke`: Table 1: a smoke test (--max_steps 3)\n"
        "- `other-task`: the tables: the quickstart's generated data\n")
    assert [r.getMessage() for r in caplog.records] == [
        "left out of the tables: smoke (Table 1: a smoke test (--max_steps 3))",
        "left out of the tables: other-task (the tables: the quickstart's generated data)"]
    empty = dict.fromkeys([*ROW_COLUMNS, "left_out"], "")
    assert list(csv.DictReader((out / "runs.csv").open())) == [
        {**empty, "run": "kept", "kind": "finetune", "task": "newsgroups", "model": "m", "variant": "base",
         "train_fraction": "0.1", "accuracy": "46.6"},
        {**empty, "run": "smoke", "kind": "finetune", "task": "newsgroups", "model": "m", "variant": "base",
         "train_fraction": "0.1", "accuracy": "1.0", "left_out": "Table 1: a smoke test (--max_steps 3)"},
        {**empty, "run": "other-task", "kind": "baseline", "task": "mytask", "model": "m", "variant": "zero-shot",
         "left_out": "the tables: the quickstart's generated data"}]
    plain = write_tables(rows[:1], tmp_path / "plain")["markdown"].read_text()
    assert plain.startswith("# Result tables\n\n## Table 1:") and "Runs left out" not in plain


def test_each_loss_plot_draws_its_tables_fine_tunes(tmp_path, monkeypatch):
    drawn = {}

    def plot_loss_curves(runs, title, path):
        drawn[path.name] = (title, [r["run"] for r in runs])
        return path.name != "table3_loss.png"  # as when no run of Table 3 has a training log

    monkeypatch.setattr(results, "plot_loss_curves", plot_loss_curves)
    rows = [_row("newsgroups", "base", "n-base", train_fraction=0.1),
            _row("newsgroups", "zero-shot", "n-zero"),
            _row("samsum", "base", "s-base"), _row("samsum", "NEFTune", "s-neft"),
            _row("samsum", "few-shot", "s-few")]
    written = write_tables(rows, tmp_path)
    assert drawn == {"table1_loss.png": ("Table 1: training loss of its runs", ["n-base"]),
                     "table2_loss.png": ("Table 2: training loss of its runs", ["s-base", "s-neft"]),
                     "table3_loss.png": ("Table 3: training loss of its runs", ["s-base"])}
    assert sorted(k for k in written if k.endswith("_plot")) == ["table1_loss_plot", "table2_loss_plot"]
    assert (written["table1_loss_plot"], written["table2_loss_plot"]) == (tmp_path / "table1_loss.png",
                                                                          tmp_path / "table2_loss.png")


def test_an_accuracy_or_rouge_plot_only_with_numbers_of_ours(tmp_path, monkeypatch):
    monkeypatch.setattr(results, "plot_loss_curves", lambda runs, title, path: False)
    monkeypatch.setattr(results, "plot_accuracy", lambda table, path: path.write_text("a"))
    monkeypatch.setattr(results, "plot_rouge", lambda table, path: path.write_text("r"))
    assert sorted(k for k in write_tables([], tmp_path / "none") if k.endswith("_plot")) == []
    only_rouge = write_tables([_row("samsum", "zero-shot", "z", rouge1=20.0, rouge2=5.0)], tmp_path / "rouge")
    assert sorted(k for k in only_rouge if k.endswith("_plot")) == ["rouge_plot"]
    only_accuracy = write_tables([_row("newsgroups", "base", "b", train_fraction=0.1, accuracy=40.0)], tmp_path / "acc")
    assert sorted(k for k in only_accuracy if k.endswith("_plot")) == ["accuracy_plot"]
    assert only_accuracy["accuracy_plot"].read_text() == "a"


# ---- zephyr.protocol ----

def _config(tmp_path, name, config: dict, metrics: dict | None = None):
    return _write(tmp_path / name, config, metrics or {})


def test_smoke_tests_from_one_step_and_no_arguments_at_all(tmp_path):
    def steps(n):
        return run_facts(_config(tmp_path, f"s{n}", {"kind": "baseline", "arguments": {
            "TrainArguments": {"max_steps": n}}}))["not_a_study_number"]

    assert (steps(0), steps(-1), steps(1)) == ([], [], ["a smoke test (--max_steps 1)"])
    assert run_facts(_config(tmp_path, "bare", {"kind": "baseline"})) == _facts()
    finetune = run_facts(_config(tmp_path, "no-data", {"kind": "finetune", "arguments": {}}))
    assert finetune == _facts(settings={name: None for name in suite_defaults("newsgroups")})


def test_the_tiny_model_by_its_name_or_by_its_marker(tmp_path):
    marked = tmp_path / "made-here"
    marked.mkdir()
    (marked / EMBEDDED_MARKER).write_text("tiny")
    (tmp_path / "inside-marked").mkdir()
    tiny = "the quickstart's tiny random model"

    def reasons(name, **config):
        return run_facts(_config(tmp_path, name, {"kind": "baseline", **config}))["not_a_study_number"]

    model = lambda path: {"ModelArguments": {"model_name_or_path": path}}  # noqa: E731
    assert reasons("by-base-name", base_model="/x/embedded-tiny-mistral", arguments=model("/x/other")) == [tiny]
    assert reasons("by-argument", arguments=model("/x/embedded-tiny-mistral")) == [tiny]
    assert reasons("base-model-first", base_model="/x/other", arguments=model("/x/embedded-tiny-mistral")) == []
    assert reasons("by-marker", arguments=model(str(marked))) == [tiny]
    assert reasons("by-model-path", model_path=str(marked), base_model="/x/other") == [tiny]
    assert reasons("marker-above", arguments=model(str(marked / "model.gguf"))) == []  # only beside the model


def test_generated_data_by_a_marker_beside_the_test_file_or_one_folder_up(tmp_path, monkeypatch):
    """write_synthetic_data puts the marker in its root, the test file in <root>/<task>/test.jsonl."""
    for depth in ("d0", "d1/t", "d2/t/u", "d3/t/u/v"):
        (tmp_path / depth).mkdir(parents=True)
    for marked in ("d0", "d1", "d2", "d3"):
        (tmp_path / marked / EMBEDDED_MARKER).write_text("made")

    def reasons(name, source):
        return run_facts(_config(tmp_path / "runs", name, {"kind": "baseline"},
                                 {"test_source": source}))["not_a_study_number"]

    generated = ["the quickstart's generated data"]
    assert [reasons(f"r{i}", str(tmp_path / depth / "test.jsonl")) for i, depth in enumerate(("d0", "d1/t", "d2/t/u"))] \
        == [generated, generated, []]
    assert reasons("three-up", str(tmp_path / "d3/t/u/v/test.jsonl")) == []
    # A hub dataset is never looked up on disk, even where a folder of that name holds a marker.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "hub:org" / "data").mkdir(parents=True)
    (tmp_path / "hub:org" / EMBEDDED_MARKER).write_text("made")
    assert reasons("hub", "hub:org/data/test.jsonl") == []


def test_a_protocol_is_the_defaults_of_its_task():
    common = {"lora_alpha": 16, "lora_dropout": 0.1, "learning_rate": 0.0002, "lr_scheduler_type": "constant_with_warmup",
              "warmup_ratio": 0.03, "per_device_train_batch_size": 8, "gradient_accumulation_steps": 1,
              "packing": False, "loss": "completion", "max_length": 512, "prompt_format": "original",
              "quantization": "4bit"}
    assert suite_defaults("samsum") == {**common, "num_train_epochs": 1.0, "lora_r": 64, "train_fraction": 1.0}
    assert suite_defaults("newsgroups") == {**common, "num_train_epochs": 5.0, "lora_r": 8}
    assert suite_defaults("mytask") == suite_defaults("newsgroups")  # no defaults of its own: the suite's


def test_samsums_own_defaults_are_its_protocol_even_when_most_runs_differ():
    defaults = suite_defaults("samsum")  # rank 64, one epoch, all training rows: not the suite's general defaults
    rows = [_row("samsum", "base", name, facts=_facts(settings=settings))
            for name, settings in (("study", defaults), ("r4-a", {**defaults, "lora_r": 4}),
                                   ("r4-b", {**defaults, "lora_r": 4}))]
    kept, reasons = select(rows)
    assert [r["run"] for r in kept] == ["study"]
    assert reasons[id(rows[1])] == "Tables 2 and 3: lora_r 4, where the table's protocol has lora_r 64"


def test_the_defaults_are_the_protocol_and_a_smoke_tests_reason_stays_its_own():
    defaults = suite_defaults("newsgroups")
    rows = [_row("newsgroups", "base", name, facts=_facts(settings=settings))
            for name, settings in (("study", defaults), ("r4-a", {**defaults, "lora_r": 4}),
                                   ("r4-b", {**defaults, "lora_r": 4}))]
    smoke = _row("newsgroups", "base", "smoke-r4", facts=_facts("a smoke test (--max_steps 3)",
                                                                settings={**defaults, "lora_r": 4}))
    kept, reasons = select([*rows, smoke])
    assert [r["run"] for r in kept] == ["study"]
    assert [reasons[id(r)] for r in (*rows[1:], smoke)] == [
        "Table 1: lora_r 4, where the table's protocol has lora_r 8",
        "Table 1: lora_r 4, where the table's protocol has lora_r 8",
        "Table 1: a smoke test (--max_steps 3)"]
