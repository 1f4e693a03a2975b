"""ROUGE on the first N test rows of stored SAMSum predictions: the issue-2 acceptance rows are the first 200.

The quality benchmark evaluates on all 819 rows; this reads the same predictions back for the acceptance rows.

    python results/quality/first_rows.py 200 results/quality/runs/examples_seed*
"""

import gzip
import json
import sys
from pathlib import Path

from zephyr.io import read_json
from zephyr.metrics import rouge_metrics


def first_rows_rouge(run_dir: Path, rows: int) -> dict:
    plain = run_dir / "predictions.jsonl"  # a fresh run; committed runs keep it gzipped
    with (plain.open() if plain.is_file() else gzip.open(run_dir / "predictions.jsonl.gz", "rt")) as stored:
        predictions = [json.loads(line) for line in stored][:rows]
    return rouge_metrics([p["reference"] for p in predictions], [p["prediction"] for p in predictions])


if __name__ == "__main__":
    rows = int(sys.argv[1])
    print("| run | commit | ROUGE-1 | ROUGE-2 | ROUGE-L |\n|---|---|---|---|---|")
    for run in map(Path, sys.argv[2:]):
        scores, commit = first_rows_rouge(run, rows), read_json(run / "config.json").get("git_commit", "?")[:7]
        print(f"| {run.name} | `{commit}` | {scores['rouge1']:.2f} | {scores['rouge2']:.2f} | {scores['rougeL']:.2f} |")
