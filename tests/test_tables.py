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
