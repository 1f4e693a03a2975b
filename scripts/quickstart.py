"""The embedded default: train and evaluate offline in a few minutes on two CPU cores (README: measured times).

    # tiny random Mistral + Zephyr's real tokenizer + generated data, 4-bit QLoRA, then metrics
    python scripts/quickstart.py
    python scripts/quickstart.py --task samsum
    # the same on a real small model (converted once from GGUF) or on the real data
    python scripts/quickstart.py --model_name_or_path ../shared/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf
    python scripts/quickstart.py --data_dir ../shared/data --train_fraction 0.02 --max_test_rows 100
    # (the tiny random model on real data checks the plumbing: it answers no label, accuracy 0 %)

Writes runs/quickstart/<name>/ with metrics.json, predictions.jsonl, config.json and the adapter.
"""

from zephyr.cli import entry_point, quickstart


@entry_point
def main(argv=None):
    return quickstart(argv)


if __name__ == "__main__":
    main()
