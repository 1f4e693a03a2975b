"""How many input shapes flat rows replayed as CUDA graphs need: Newsgroups' training rows, laid by the suite's
collator into steps of 8 examples in file order, in 256-token buckets and split at ``--split_tokens``, counted as
(row length, example boundaries) pairs, each a graph that CUDA graph trees record for every layer. Runs on a CPU
in seconds:

    python scripts/analysis/flat_graph_shapes.py --data_dir ../shared/data --tokenizer_dir zephyr-tokenizer \\
        --split_tokens 1536                         # each row holds the micro-batch's number of segments
    python scripts/analysis/flat_graph_shapes.py ... --split_tokens 1536 --fixed_segments False   # as parts were
"""
import argparse

from zephyr.cli import entry_point
from zephyr.errors import raise_usage_errors


def count_shapes(tokenizer_dir: str, data_dir: str, steps: int, split_tokens: int, fixed_segments: bool,
                 rows: int = 8, max_length: int = 512) -> dict:
    from zephyr.benchmark import _training_data
    from zephyr.modeling import load_tokenizer
    from zephyr.speed.flat import SPLIT_PARTS, FlatBatchCollator
    from zephyr.speed.memory import flat_row_bucket

    tokenizer = load_tokenizer(tokenizer_dir)
    dataset, _, mean_tokens = _training_data(tokenizer, data_dir, rows * steps)
    collator = FlatBatchCollator(tokenizer.pad_token_id, flat_row_bucket(max_length), max_length, split_tokens,
                                 rows + 1 if fixed_segments else None)
    seen, new_by_step, split_steps = set(), [], 0
    for start in range(0, rows * steps, rows):
        batch = collator([dataset[i] for i in range(start, start + rows)])
        parts = batch.get(SPLIT_PARTS, [batch])
        split_steps += len(parts) > 1
        shapes = {(part["input_ids"].shape[1], part["cu_seq_lens_q"].numel()) for part in parts}
        new_by_step.append(len(shapes - seen))
        seen |= shapes
    return {"steps": steps, "split_steps": split_steps, "mean_tokens": round(mean_tokens, 1),
            "shapes": sorted(seen), "distinct": len(seen),
            "last_step_with_a_new_shape": max(i for i, n in enumerate(new_by_step) if n)}


@entry_point
def main(argv=None):
    parser = raise_usage_errors(argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False))
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--tokenizer_dir", required=True)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--split_tokens", type=int, default=1536)
    parser.add_argument("--fixed_segments", choices=("True", "False"), default="True")
    args = parser.parse_args(argv)
    result = count_shapes(args.tokenizer_dir, args.data_dir, args.steps, args.split_tokens,
                          args.fixed_segments == "True")
    for key, value in result.items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    main()
