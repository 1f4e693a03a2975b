"""Evaluate a fine-tuned 20 Newsgroups run: batched greedy decoding (or label log-likelihood).

    python scripts/zephyr_classification_inference.py --run_dir runs/<name> --data_dir ../shared/data
    # always a valid label: pick the label with the highest log-likelihood
    python scripts/zephyr_classification_inference.py --run_dir runs/<name> --eval_method loglik

Writes predictions.jsonl and metrics.json (accuracy, micro/macro F1, precision, recall, invalid rate).
"""

from zephyr.cli import entry_point, inference


@entry_point
def main(argv=None):
    return inference("newsgroups", argv)


if __name__ == "__main__":
    main()
