"""Run directories -> one summary row each -> the study's tables (Markdown, CSV) and plots (PNG).

A missing cell is shown as "—" in Markdown and left empty in CSV, never as 0. Each table also carries the study's
published numbers (zephyr.reference) in columns or rows marked "study".
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

from zephyr import reference, rundir
from zephyr.errors import UsageError
from zephyr.io import atomic_write_text, read_json
from zephyr.protocol import run_facts
from zephyr.plots import plot_accuracy, plot_loss_curves, plot_rouge
from zephyr.rundir import CONFIG, METRICS, TRAIN_METRICS, model_short_name, variant_of

VARIANTS = [variant.name for variant in rundir.VARIANTS]
METRIC_COLUMNS = ["accuracy", "macro_f1", "invalid_rate", "rouge1", "rouge2", "rougeL", "rougeLsum", "n_examples",
                  "n_errors", "examples_per_s"]
ROW_COLUMNS = ["run", "kind", "task", "model", "variant", "train_fraction", "train_rows", "lora_r", "lora_dropout",
               "epochs", "lora_targets", "lora_lm_head", "neftune_alpha", "num_shots", "tokens_per_s",
               "peak_gpu_memory_gib", *METRIC_COLUMNS]
MISSING = "—"
log = logging.getLogger(__name__)


def summarize_run(run_dir: str | Path) -> dict | None:
    """One row for a finished run (fine-tune or baseline); None if it has no metrics.json yet."""
    run_dir = Path(run_dir)
    if not (run_dir / METRICS).is_file():
        return None
    metrics = read_json(run_dir / METRICS)
    config = read_json(run_dir / CONFIG)
    if not isinstance(metrics, dict) or "arguments" not in config:
        raise UsageError(f"{run_dir}: metrics.json or config.json is not from this suite")
    args = config["arguments"]
    data, model = args.get("DataArguments", {}), args.get("ModelArguments", {})
    train, evaluation = args.get("TrainArguments", {}), args.get("EvalArguments", {})
    row = {"run": run_dir.name, "kind": config.get("kind"), "task": data.get("task"),
           "model": model_short_name(model.get("model_name_or_path", "")), "num_shots": evaluation.get("num_shots")}
    if config.get("kind") == "finetune":
        train_metrics = read_json(run_dir / TRAIN_METRICS) if (run_dir / TRAIN_METRICS).is_file() else {}
        # Recorded when the run was created; a run directory from before then gets it from its arguments.
        row.update(variant=config.get("variant") or variant_of(args), train_fraction=data.get("train_fraction"),
                   train_rows=config.get("data", {}).get("train_rows_used"), lora_r=model.get("lora_r"),
                   lora_dropout=model.get("lora_dropout"), epochs=train.get("num_train_epochs"),
                   lora_targets=model.get("lora_targets"), lora_lm_head=model.get("lora_lm_head"),
                   neftune_alpha=train.get("neftune_alpha"), tokens_per_s=train_metrics.get("tokens_per_s"),
                   peak_gpu_memory_gib=train_metrics.get("peak_gpu_memory_gib"))
    else:
        row["variant"] = "few-shot" if evaluation.get("num_shots") else "zero-shot"
    row.update({k: metrics.get(k) for k in METRIC_COLUMNS})
    return {k: row.get(k) for k in ROW_COLUMNS}


def _second_evaluation(folder: Path, root: Path) -> bool:
    """A folder inside a run directory that holds another evaluation of that run (``--eval_output_dir
    runs/<name>/eval-loglik``): it has no config.json of its own. The tables use the run's own evaluation."""
    if (folder / CONFIG).is_file():
        return False
    return any((parent / CONFIG).is_file() for parent in folder.parents if parent == root or root in parent.parents)


def collect(roots: list[str | Path]) -> list[dict]:
    """Summaries of every finished run below ``roots`` (a run directory holds metrics.json)."""
    rows = []
    for root in map(Path, roots):
        if not root.is_dir():
            raise UsageError(f"--runs: {root}: directory not found")
        found = [m for m in sorted(root.rglob(METRICS)) if not _second_evaluation(m.parent, root)]
        if not found:
            raise UsageError(f"--runs: {root}: no finished run in it (no metrics.json below it)")
        # path: for the plots; facts: whether the run belongs in a table (zephyr.protocol)
        rows += [{**summarize_run(metrics.parent), "path": str(metrics.parent), "facts": run_facts(metrics.parent)}
                 for metrics in found]
    return rows


def to_csv(rows: list[dict], columns: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in columns})
    return buffer.getvalue()


def _fmt(value) -> str:
    return MISSING if value is None else f"{value:.2f}" if isinstance(value, float) else str(value)


def to_markdown(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _latest(rows: list[dict]) -> dict:
    """One row per cell: if several runs fill a cell, the last one listed (sorted by path) wins."""
    return rows[-1] if rows else {}


def _warn_shared_cells(rows: list[dict]) -> None:
    """Once per cell that several runs fill (runs of one cell made two ways, e.g. a fast-path check beside the
    table's own runs, would otherwise mix silently)."""
    cells: dict[tuple, list[str]] = {}
    for r in rows:
        cell = (r["task"], r["model"], r["variant"], r["train_fraction"])
        cells.setdefault(cell, []).append(r.get("path") or r["run"])
    for paths in cells.values():
        if len(paths) > 1:
            log.warning("%d runs fill one cell (%s); the table shows the last", len(paths), ", ".join(paths))


# The study's training fractions: Table 1 always lists them, with missing runs shown as missing.
STUDY_FRACTIONS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


def _models(runs: list[dict]) -> list:
    """Our models in name order; [None] when there are none, so that a table still lists the study's cells."""
    return sorted({r["model"] for r in runs}) or [None]


def table1(rows: list[dict]) -> list[dict]:
    """Newsgroups accuracy: per model, one row per training-row count, one column per variant, then the study's."""
    runs = [r for r in rows if r["task"] == "newsgroups" and r["kind"] == "finetune"]
    out = []
    for model in _models(runs):
        mine = [r for r in runs if r["model"] == model]
        for fraction in sorted({r["train_fraction"] for r in mine} | set(STUDY_FRACTIONS)):
            at = [r for r in mine if r["train_fraction"] == fraction]
            row = {"model": model, "train_fraction": f"{fraction:g}",
                   "train_rows": max((r["train_rows"] for r in at if r["train_rows"] is not None), default=None)}
            for variant in VARIANTS:
                row[variant] = _latest([r for r in at if r["variant"] == variant]).get("accuracy")
            study_rows, study_accuracy = reference.TABLE1_ACCURACY.get(fraction, (None, {}))
            row["study train_rows"] = study_rows
            row.update({f"study {variant}": study_accuracy.get(variant) for variant in VARIANTS})
            out.append(row)
    return out


def table2(rows: list[dict]) -> list[dict]:
    """SAMSum ROUGE-1/2 per model for zero-shot, few-shot and the four fine-tuned variants, then the study's."""
    runs = [r for r in rows if r["task"] == "samsum"]
    out = []
    for model in _models(runs):
        for setting in ["zero-shot", "few-shot", *VARIANTS]:
            cell = _latest([r for r in runs if r["model"] == model and r["variant"] == setting])
            study_rouge1, study_rouge2 = reference.TABLE2_ROUGE[setting]
            out.append({"model": model, "setting": setting, "rouge1": cell.get("rouge1"),
                        "rouge2": cell.get("rouge2"), "study rouge1": study_rouge1, "study rouge2": study_rouge2})
    return out


def table3(rows: list[dict]) -> list[dict]:
    """SAMSum ROUGE-1/2 by model: ours (zero-shot, few-shot, base fine-tuned variant), then the study's models
    (fine-tuned only; it reports no zero- or few-shot score per model)."""
    runs = [r for r in rows if r["task"] == "samsum"]
    out = []
    for model in sorted({r["model"] for r in runs}):
        row = {"model": model, "source": "ours"}
        for setting in ("zero-shot", "few-shot", "base"):
            cell = _latest([r for r in runs if r["model"] == model and r["variant"] == setting])
            label = "fine-tuned" if setting == "base" else setting
            row[f"{label} ROUGE-1"], row[f"{label} ROUGE-2"] = cell.get("rouge1"), cell.get("rouge2")
        if any(value is not None for key, value in row.items() if "ROUGE" in key):  # no empty row of ours
            out.append(row)
    for model, (rouge1, rouge2) in reference.TABLE3_ROUGE.items():
        out.append({"model": model, "source": "study", "zero-shot ROUGE-1": None, "zero-shot ROUGE-2": None,
                    "few-shot ROUGE-1": None, "few-shot ROUGE-2": None, "fine-tuned ROUGE-1": rouge1,
                    "fine-tuned ROUGE-2": rouge2})
    return out


TITLES = {"table1_newsgroups_accuracy": "Table 1: 20 Newsgroups accuracy (%) by training rows",
          "table2_samsum_rouge": "Table 2: SAMSum ROUGE-1/ROUGE-2 (x100) by setting",
          "table3_samsum_rouge_by_model": "Table 3: SAMSum ROUGE-1/ROUGE-2 (x100) by model"}
STUDY_NOTES = {"table1_newsgroups_accuracy": f"Columns \"study …\": {reference.STUDY} (published, not rerun).",
               "table2_samsum_rouge": f"Columns \"study …\": {reference.STUDY} (published, not rerun).",
               "table3_samsum_rouge_by_model": "Rows \"study\": the study's published fine-tuned SAMSum scores "
                                               "(Flan-T5-Base fully fine-tuned; no zero- or few-shot score per "
                                               "model); not rerun."}


def write_tables(rows: list[dict], out_dir: str | Path, protocol: str = "") -> dict[str, Path]:
    """Write tables 1-3 (Markdown + CSV), runs.csv, and the plots into ``out_dir``; returns the paths.

    Runs that are no study number (smoke tests, part of the test split, the quickstart's model or data, settings
    off their table's protocol: zephyr.protocol) are left out of the tables, each named with its reason in a
    warning, in tables.md and in runs.csv's ``left_out`` column.
    """
    from zephyr.protocol import select

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    kept, reasons = select(rows)
    left_out = [{**row, "left_out": reasons[id(row)]} for row in rows if id(row) in reasons]
    for row in left_out:
        log.warning("left out of the tables: %s (%s)", row.get("path") or row["run"], row["left_out"])
    _warn_shared_cells(kept)
    tables = {"table1_newsgroups_accuracy": table1(kept), "table2_samsum_rouge": table2(kept),
              "table3_samsum_rouge_by_model": table3(kept)}
    written, markdown = {}, [f"# Result tables\n\n{protocol}\n" if protocol else "# Result tables\n"]
    for name, table in tables.items():
        columns = list(table[0])  # never empty: every table lists the study's rows
        atomic_write_text(out / f"{name}.csv", to_csv(table, columns))
        markdown.append(f"\n## {TITLES[name]}\n\n{to_markdown(table, columns)}\n{STUDY_NOTES[name]}\n")
        written[name] = out / f"{name}.csv"
    if left_out:
        markdown.append(_left_out_section(left_out))
    every_run = [{**row, "left_out": reasons.get(id(row), "")} for row in rows]
    atomic_write_text(out / "runs.csv", to_csv(every_run, [*ROW_COLUMNS, "left_out"]))
    atomic_write_text(out / "tables.md", "".join(markdown))
    written["markdown"] = out / "tables.md"
    return {**written, **_write_plots(tables, kept, out)}


def _left_out_section(left_out: list[dict]) -> str:
    lines = [f"\n## Runs left out\n\n{len(left_out)} finished run(s) are no study number and fill no cell above:\n"]
    lines += [f"- `{row['run']}`: {row['left_out']}" for row in left_out]
    return "\n".join(lines) + "\n"


def _write_plots(tables: dict[str, list[dict]], rows: list[dict], out: Path) -> dict[str, Path]:
    written = {}
    if any(r[v] is not None for r in tables["table1_newsgroups_accuracy"] for v in VARIANTS):
        plot_accuracy(tables["table1_newsgroups_accuracy"], out / "table1_accuracy.png")
        written["accuracy_plot"] = out / "table1_accuracy.png"
    if any(r["rouge1"] is not None for r in tables["table2_samsum_rouge"]):
        plot_rouge(tables["table2_samsum_rouge"], out / "table2_rouge.png")
        written["rouge_plot"] = out / "table2_rouge.png"
    # The fine-tuning runs behind each table, as in table1-3 above.
    finetuned = [r for r in rows if r["kind"] == "finetune"]
    runs_of = {"table1": [r for r in finetuned if r["task"] == "newsgroups"],
               "table2": [r for r in finetuned if r["task"] == "samsum"],
               "table3": [r for r in finetuned if r["task"] == "samsum" and r["variant"] == "base"]}
    for name, runs in runs_of.items():
        title = TITLES[next(t for t in TITLES if t.startswith(name))].split(":")[0] + ": training loss of its runs"
        if plot_loss_curves(runs, title, out / f"{name}_loss.png"):
            written[f"{name}_loss_plot"] = out / f"{name}_loss.png"
    return written
