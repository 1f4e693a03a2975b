"""Evaluate a fine-tuned SAMSum run: batched greedy decoding, ROUGE-1/2/L/Lsum (stemmed, x100).

    python scripts/zephyr_summarization_inference.py --run_dir runs/<name> --data_dir ../shared/data
    python scripts/zephyr_summarization_inference.py --run_dir runs/<name> --max_test_rows 200 --eval_batch_size 32

Writes predictions.jsonl and metrics.json into the run directory (or --eval_output_dir).
"""

from zephyr.cli import entry_point, inference


@entry_point
def main(argv=None):
    return inference("samsum", argv)


if __name__ == "__main__":
    main()
