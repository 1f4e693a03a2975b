"""Regenerate the study's tables and plots from run directories (Markdown, CSV, PNG).

    python scripts/make_tables.py --runs runs/sweeps --out results/tables
    python scripts/make_tables.py --runs runs/ablate runs/baselines --out results/smollm2 \
        --protocol "SmolLM2-135M-Instruct, 2 epochs, all test rows"

Table 1: Newsgroups accuracy by training rows x {base, NEFTune, all-module, NEFTune + all-module}.
Table 2: SAMSum ROUGE-1/2 for zero-shot, few-shot and the four fine-tuned variants. Table 3: by model.
Missing cells are shown as missing, never as zero.
"""

import argparse

from zephyr import preflight
from zephyr.cli import entry_point
from zephyr.results import write_tables


@entry_point
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--runs", nargs="+", required=True, help="folders holding run directories")
    parser.add_argument("--out", required=True, help="output folder for tables and plots")
    parser.add_argument("--protocol", default="", help="one line stating how the runs were made")
    args = parser.parse_args(argv)
    rows = preflight.tables(args.runs, args.out)
    for name, path in write_tables(rows, args.out, args.protocol).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
