r"""Regenerate the study's tables and plots from run directories (Markdown, CSV, PNG).

    python scripts/make_tables.py --runs runs/sweeps --out results/tables
    python scripts/make_tables.py --runs runs/ablate runs/baselines --out results/smollm2 \
        --protocol "SmolLM2-135M-Instruct, 2 epochs, all test rows"

Table 1: Newsgroups accuracy by training rows x {base, NEFTune, all-module, NEFTune + all-module}.
Table 2: SAMSum ROUGE-1/2 for zero-shot, few-shot and the four fine-tuned variants. Table 3: by model.
Missing cells are shown as missing, never as zero. Smoke tests, runs scored on part of the test
split, quickstart runs and runs off a table's protocol fill no cell: each is named with its reason.
"""

from zephyr.commands import tables as main

if __name__ == "__main__":
    main()
