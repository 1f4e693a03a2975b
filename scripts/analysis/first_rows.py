"""ROUGE on the first N test rows of stored SAMSum predictions: the issue-2 acceptance rows are the first 200.

The quality benchmark evaluates on all 819 rows; this reads the same predictions back for the acceptance rows.

    python scripts/analysis/first_rows.py 200 results/quality/runs/examples_seed*
"""

import gzip
import json
from pathlib import Path

from zephyr.cli import entry_point
from zephyr.errors import UsageError
from zephyr.io import read_json
from zephyr.metrics import rouge_metrics


def predictions_file(run_dir: Path) -> Path | None:
    """A fresh run's predictions.jsonl, or the gzipped copy that committed runs keep; None if neither."""
    return next((path for path in (run_dir / "predictions.jsonl", run_dir / "predictions.jsonl.gz")
                 if path.is_file()), None)


def first_rows_rouge(run_dir: Path, rows: int) -> dict:
    path = predictions_file(run_dir)
    with (gzip.open(path, "rt") if path.suffix == ".gz" else path.open()) as stored:
        predictions = [json.loads(line) for line in stored][:rows]
    return rouge_metrics([p["reference"] for p in predictions], [p["prediction"] for p in predictions])


@entry_point
def main(argv: list[str]) -> None:
    if len(argv) < 2:
        raise UsageError("ROWS and at least one RUN_DIR are needed: first_rows.py ROWS RUN_DIR [RUN_DIR ...]")
    if not argv[0].isdigit() or int(argv[0]) < 1:
        raise UsageError(f"ROWS: {argv[0]}: must be a whole number of rows, at least 1")
    runs = list(map(Path, argv[1:]))
    for run in runs:
        if predictions_file(run) is None:
            raise UsageError(f"{run}: no predictions.jsonl or predictions.jsonl.gz in it")
    rows = int(argv[0])
    print("| run | commit | ROUGE-1 | ROUGE-2 | ROUGE-L |\n|---|---|---|---|---|")
    for run in runs:
        scores, commit = first_rows_rouge(run, rows), read_json(run / "config.json").get("git_commit", "?")[:7]
        print(f"| {run.name} | `{commit}` | {scores['rouge1']:.2f} | {scores['rouge2']:.2f} | {scores['rougeL']:.2f} |")


if __name__ == "__main__":
    main()
