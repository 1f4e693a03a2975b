"""The three tables print the study's published numbers beside ours; missing cells stay missing ("—")."""

from __future__ import annotations

import csv
import importlib.util
import json

from conftest import REPO
from zephyr import reference
from zephyr.results import VARIANTS, table1, table2, table3, to_markdown


def _row(task: str, variant: str, **fields) -> dict:
    kind = "baseline" if variant in ("zero-shot", "few-shot") else "finetune"
    return {"task": task, "kind": kind, "variant": variant, "model": "SmolLM2-135M-Instruct.Q4_1",
            "train_fraction": None, "train_rows": None, "accuracy": None, "rouge1": None, "rouge2": None, **fields}


def test_table1_puts_the_study_accuracy_beside_ours_for_every_fraction():
    rows = [_row("newsgroups", "base", train_fraction=0.1, train_rows=1101, accuracy=18.93),
            _row("newsgroups", "NEFTune", train_fraction=0.2, train_rows=2203, accuracy=30.0)]
    table = table1(rows)
    assert list(table[0]) == ["model", "train_fraction", "train_rows", *VARIANTS, "study train_rows",
                              *[f"study {v}" for v in VARIANTS]]
    by_fraction = {r["train_fraction"]: r for r in table}
    assert list(by_fraction) == ["0.025", "0.05", "0.1", "0.2", "0.25", "0.5", "1"]
    assert (by_fraction["0.1"]["base"], by_fraction["0.1"]["study base"]) == (18.93, 66.48)
    assert by_fraction["0.1"]["study train_rows"] == 1066 and by_fraction["1"]["study NEFTune + all-module"] == 77.86
    # A fraction the study did not run has no study cells; one we did not run has no cells of ours.
    assert by_fraction["0.2"]["study base"] is None and by_fraction["0.2"]["study train_rows"] is None
    assert by_fraction["0.025"]["base"] is None and by_fraction["0.025"]["study all-module"] == 65.36
    markdown = to_markdown(table, list(table[0]))
    assert "| SmolLM2-135M-Instruct.Q4_1 | 0.025 | — | — | — | — | — | 266 | 46.05 | 49.61 | 65.36 | 67.23 |" in markdown
    assert "| SmolLM2-135M-Instruct.Q4_1 | 0.2 | 2203 | — | 30.00 | — | — | — | — | — | — | — |" in markdown


def test_tables_1_and_2_keep_each_model_apart():
    rows = [_row("newsgroups", "base", train_fraction=0.1, train_rows=1101, accuracy=46.6),
            _row("newsgroups", "base", model="gemma", train_fraction=0.1, train_rows=1101, accuracy=40.0),
            _row("samsum", "zero-shot", rouge1=23.8, rouge2=6.9),
            _row("samsum", "zero-shot", model="gemma", rouge1=3.3, rouge2=0.5),
            _row("samsum", "NEFTune", rouge1=42.1, rouge2=17.1)]
    one = {(r["model"], r["train_fraction"]): r["base"] for r in table1(rows)}
    assert (one[("SmolLM2-135M-Instruct.Q4_1", "0.1")], one[("gemma", "0.1")]) == (46.6, 40.0)
    two = {(r["model"], r["setting"]): r["rouge1"] for r in table2(rows)}
    assert len(two) == 2 * (2 + len(VARIANTS))
    assert (two[("gemma", "zero-shot")], two[("SmolLM2-135M-Instruct.Q4_1", "zero-shot")]) == (3.3, 23.8)
    assert (two[("gemma", "NEFTune")], two[("SmolLM2-135M-Instruct.Q4_1", "NEFTune")]) == (None, 42.1)


def test_make_tables_plots_several_models(tmp_path):
    from zephyr.results import write_tables

    rows = [_row("newsgroups", "base", train_fraction=0.1, train_rows=1101, accuracy=46.6),
            _row("newsgroups", "all-module", model="gemma", train_fraction=0.25, train_rows=2754, accuracy=60.0),
            _row("samsum", "zero-shot", rouge1=23.8, rouge2=6.9), _row("samsum", "base", model="gemma", rouge1=43.1, rouge2=18.4)]
    written = write_tables([{"run": "r", **row} for row in rows], tmp_path)
    assert written["accuracy_plot"].stat().st_size > 1000 and written["rouge_plot"].stat().st_size > 1000
    assert "| gemma | 0.25 | 2754 | — | — | 60.00 |" in written["markdown"].read_text()


def test_table2_has_the_study_rouge_for_every_setting_even_without_our_runs():
    table = table2([_row("samsum", "zero-shot", rouge1=17.8, rouge2=5.21)])
    assert [r["setting"] for r in table] == ["zero-shot", "few-shot", *VARIANTS]
    assert [(r["study rouge1"], r["study rouge2"]) for r in table] == list(reference.TABLE2_ROUGE.values())
    markdown = to_markdown(table, list(table[0]))
    assert "| SmolLM2-135M-Instruct.Q4_1 | zero-shot | 17.80 | 5.21 | 33.93 | 11.21 |" in markdown
    assert "| SmolLM2-135M-Instruct.Q4_1 | NEFTune + all-module | — | — | 53.05 | 29.23 |" in markdown
    assert to_markdown(table2([]), list(table[0])).count("| — | zero-shot | — | — | 33.93 | 11.21 |") == 1


def test_table3_lists_our_models_then_the_studys():
    rows = [_row("samsum", "base", model="SmolLM2-135M-Instruct.Q4_1", rouge1=34.81, rouge2=12.37),
            _row("samsum", "zero-shot", model="gemma-3-270m-q4_k_m", rouge1=10.0, rouge2=2.0),
            _row("samsum", "base", model="gemma-3-270m-q4_k_m", rouge1=36.0, rouge2=13.0)]
    table = table3(rows)
    assert [(r["model"], r["source"]) for r in table[:2]] == [("SmolLM2-135M-Instruct.Q4_1", "ours"),
                                                               ("gemma-3-270m-q4_k_m", "ours")]
    assert [r["model"] for r in table[2:]] == list(reference.TABLE3_ROUGE)
    assert all(r["source"] == "study" for r in table[2:])
    markdown = to_markdown(table, list(table[0]))
    assert "| gemma-3-270m-q4_k_m | ours | 10.00 | 2.00 | — | — | 36.00 | 13.00 |" in markdown
    assert "| SmolLM2-135M-Instruct.Q4_1 | ours | — | — | — | — | 34.81 | 12.37 |" in markdown
    assert "| Mistral-7B | study | — | — | — | — | 53.61 | 29.28 |" in markdown


def test_make_tables_writes_the_study_columns_and_says_whose_they_are(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("make_tables", REPO / "scripts" / "make_tables.py")
    make_tables = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_tables)
    run = tmp_path / "runs" / "s0"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"kind": "baseline", "arguments": {
        "DataArguments": {"task": "samsum"}, "ModelArguments": {"model_name_or_path": "m"},
        "EvalArguments": {"num_shots": 0}}}))
    (run / "metrics.json").write_text(json.dumps({"rouge1": 20.0, "rouge2": 6.0}))
    make_tables.main(["--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out")])
    assert "markdown:" in capsys.readouterr().out
    markdown = (tmp_path / "out" / "tables.md").read_text()
    assert markdown.count("Zephyr-7B-β with QLoRA on one NVIDIA A10G") == 2
    assert "rungalileo/20_Newsgroups_Fixed" in markdown
    table3_csv = list(csv.DictReader((tmp_path / "out" / "table3_samsum_rouge_by_model.csv").open()))
    assert table3_csv[0] == {"model": "m", "source": "ours", "zero-shot ROUGE-1": "20.0", "zero-shot ROUGE-2": "6.0",
                             "few-shot ROUGE-1": "", "few-shot ROUGE-2": "", "fine-tuned ROUGE-1": "",
                             "fine-tuned ROUGE-2": ""}
    assert len(table3_csv) == 1 + len(reference.TABLE3_ROUGE)


def test_a_second_evaluation_kept_inside_a_run_is_not_a_run(tmp_path):
    """``--eval_output_dir runs/<name>/eval-loglik`` keeps another evaluation inside the run directory; the tables
    read the run once, from its own metrics.json."""
    from zephyr.results import collect

    run = tmp_path / "runs" / "newsgroups_tiny_frac0.1_base"
    (run / "eval-loglik").mkdir(parents=True)
    arguments = {"DataArguments": {"task": "newsgroups", "train_fraction": 0.1},
                 "ModelArguments": {"model_name_or_path": "tiny", "lora_targets": "attention"}, "TrainArguments": {}}
    (run / "config.json").write_text(json.dumps({"kind": "finetune", "arguments": arguments}))
    (run / "metrics.json").write_text(json.dumps({"accuracy": 41.0}))
    (run / "eval-loglik" / "metrics.json").write_text(json.dumps({"accuracy": 44.0}))
    rows = collect([tmp_path / "runs"])
    assert [(row["run"], row["accuracy"], row["variant"]) for row in rows] == [(run.name, 41.0, "base")]


def _run_dir(root, name, task, metrics, *, fraction=1.0, model="/m/SmolLM2-135M-Instruct.Q4_1.gguf", kind="finetune",
             data_root=None, **settings):
    """A finished run as the suite writes it: config.json with every argument group, and metrics.json."""
    from dataclasses import MISSING, fields

    from zephyr.config import DataArguments, EvalArguments, ModelArguments, TrainArguments
    from zephyr.tasks import get_task

    values = {**get_task(task).defaults, "task": task, "train_fraction": fraction, "model_name_or_path": model,
              **settings}
    groups = {}
    for cls in (DataArguments, ModelArguments, TrainArguments, EvalArguments):
        defaults = {f.name: None if f.default is MISSING else f.default for f in fields(cls)}
        groups[cls.__name__] = {**defaults, **{k: v for k, v in values.items() if k in defaults}}
    run = root / name
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"kind": kind, "arguments": groups, "base_model": model,
                                                 "data": {"train_rows_used": 100}}))
    rows = 819 if task == "samsum" else 7317
    source = f"{data_root or '/data'}/{task}/test.jsonl"
    (run / "metrics.json").write_text(json.dumps({"n_examples": rows, "test_rows_available": rows,
                                                  "test_source": source, **metrics}))
    return run


def test_tables_leave_out_smoke_tests_and_quickstart_runs_and_say_which(tmp_path, caplog):
    from zephyr.embedded import write_synthetic_data
    from zephyr.protocol import EMBEDDED_MARKER
    from zephyr.results import collect, write_tables

    root = tmp_path / "runs"
    _run_dir(root, "study", "newsgroups", {"accuracy": 46.6}, fraction=0.1)
    _run_dir(root, "zz-smoke", "newsgroups", {"accuracy": 0.0, "n_examples": 4}, fraction=0.1, max_steps=3)
    generated = write_synthetic_data(tmp_path / "generated", train_rows=8, test_rows=4)
    tiny = tmp_path / "embedded-tiny-mistral"
    tiny.mkdir()
    (tiny / EMBEDDED_MARKER).write_text("tiny")
    _run_dir(root, "quick", "samsum", {"rouge1": 12.0, "rouge2": 1.0}, model=str(tiny), data_root=generated)
    _run_dir(root, "quick-real-model", "samsum", {"rouge1": 30.0, "rouge2": 9.0}, data_root=generated)
    written = write_tables(collect([root]), tmp_path / "out")
    table1 = {r["train_fraction"]: r for r in csv.DictReader(written["table1_newsgroups_accuracy"].open())}
    assert table1["0.1"]["base"] == "46.6"
    table3 = list(csv.DictReader(written["table3_samsum_rouge_by_model"].open()))
    assert all(row["source"] == "study" for row in table3)  # no empty row of ours
    assert {r["model"] for r in csv.DictReader(written["table2_samsum_rouge"].open())} == {""}
    markdown = written["markdown"].read_text()
    assert "- `zz-smoke`: Table 1: a smoke test (--max_steps 3); scored on 4 of 7,317 test rows (--max_test_rows)" \
        in markdown
    assert "- `quick`: Tables 2 and 3: the quickstart's tiny random model; the quickstart's generated data" in markdown
    assert "- `quick-real-model`: Tables 2 and 3: the quickstart's generated data" in markdown
    assert f"left out of the tables: {root}/zz-smoke (Table 1: a smoke test" in caplog.text
    left_out = {r["run"]: r["left_out"] for r in csv.DictReader((tmp_path / "out" / "runs.csv").open())}
    assert left_out["study"] == "" and left_out["quick"].startswith("Tables 2 and 3: the quickstart's")


def test_a_run_off_its_tables_protocol_fills_no_cell(tmp_path):
    """A LoRA-grid run (another rank and epochs) is the base variant too; it must not replace the Table 2 cell of
    the run made at the table's protocol, even when it sorts last."""
    from zephyr.results import collect, write_tables

    root = tmp_path / "runs"
    _run_dir(root, "samsum_base", "samsum", {"rouge1": 41.9, "rouge2": 17.1})
    _run_dir(root, "samsum_neftune", "samsum", {"rouge1": 42.1, "rouge2": 17.1}, neftune_alpha=5.0)
    _run_dir(root, "samsum_r4_ep2", "samsum", {"rouge1": 38.0, "rouge2": 14.0}, lora_r=4, num_train_epochs=2.0)
    _run_dir(root, "samsum_frac0.1", "samsum", {"rouge1": 39.3, "rouge2": 15.4}, fraction=0.1)
    written = write_tables(collect([root]), tmp_path / "out")
    table2 = {r["setting"]: r for r in csv.DictReader(written["table2_samsum_rouge"].open())}
    assert (table2["base"]["rouge1"], table2["NEFTune"]["rouge1"]) == ("41.9", "42.1")
    markdown = written["markdown"].read_text()
    assert ("- `samsum_r4_ep2`: Tables 2 and 3: lora_r 4, num_train_epochs 2.0, where the table's protocol has "
            "lora_r 64, num_train_epochs 1.0") in markdown
    assert "- `samsum_frac0.1`: Tables 2 and 3: train_fraction 0.1, where the table's protocol has train_fraction 1.0" \
        in markdown


def test_runs_that_share_settings_other_than_the_defaults_make_a_table(tmp_path):
    """A deliberate protocol (here 1 epoch and 128 tokens, stated with --protocol) is the table's when no run has
    the defaults: its runs are all kept, and one run off it is left out."""
    from zephyr.results import collect, write_tables

    root = tmp_path / "runs"
    for name, fraction in (("a", 0.025), ("b", 0.05), ("c", 0.1)):
        _run_dir(root, name, "newsgroups", {"accuracy": 20.0}, fraction=fraction, num_train_epochs=1.0, max_length=128)
    _run_dir(root, "d", "newsgroups", {"accuracy": 99.0}, fraction=0.25, num_train_epochs=1.0, max_length=512)
    written = write_tables(collect([root]), tmp_path / "out")
    table1 = {r["train_fraction"]: r["base"] for r in csv.DictReader(written["table1_newsgroups_accuracy"].open())}
    assert (table1["0.025"], table1["0.05"], table1["0.1"], table1["0.25"]) == ("20.0", "20.0", "20.0", "")
    assert "- `d`: Table 1: max_length 512, where the table's protocol has max_length 128" in written["markdown"].read_text()
