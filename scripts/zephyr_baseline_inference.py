"""Zero-shot and few-shot baselines of the base model (Zephyr's chat template), on either task.

    python scripts/zephyr_baseline_inference.py --task newsgroups --data_dir ../shared/data
    python scripts/zephyr_baseline_inference.py --task samsum --num_shots 3 --data_dir ../shared/data
    python scripts/zephyr_baseline_inference.py --task newsgroups --eval_method loglik --quantization none

Writes runs/baselines/<task>_<model>_<shots>_<method>/ (or --eval_output_dir) with config.json,
predictions.jsonl and metrics.json.
"""

from zephyr.cli import baseline, entry_point


@entry_point
def main(argv=None):
    return baseline(argv)


if __name__ == "__main__":
    main()
