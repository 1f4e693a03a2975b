"""How many input shapes flat rows replayed as CUDA graphs need, and at which steps a CUDA graph tree meets a shape
the first time (it warms up, eager) and the second (it records each layer's graphs, the slow one): Newsgroups'
training rows in the order the benchmark's Trainer draws them (its seeded random sampler), laid by the suite's
collator into steps of 8 examples in 256-token buckets and split at ``--split_tokens``. A shape is a row's
(length, example boundaries). Runs on a CPU in seconds:

    python scripts/analysis/flat_graph_shapes.py --data_dir ../shared/data --tokenizer_dir zephyr-tokenizer \\
        --split_tokens 1536                         # each row holds the micro-batch's number of segments
    python scripts/analysis/flat_graph_shapes.py ... --split_tokens 1536 --fixed_segments False   # each part
                                                                                    # its own number of examples
"""
import argparse
from collections import Counter

from zephyr.cli import entry_point
from zephyr.errors import raise_usage_errors


def graph_shapes(tokenizer_dir: str, data_dir: str, steps: int, split_tokens: int, fixed_segments: bool,
                 seed: int = 42, rows: int = 8, max_length: int = 512) -> dict:
    import torch

    from zephyr.benchmark import benchmark_rows, training_data
    from zephyr.modeling import load_tokenizer
    from zephyr.speed.flat import SPLIT_PARTS, FlatBatchCollator
    from zephyr.speed.memory import flat_row_bucket

    tokenizer = load_tokenizer(tokenizer_dir)
    dataset, _, _ = training_data(tokenizer, data_dir, benchmark_rows(steps))
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed)).tolist()  # the sampler's
    collator = FlatBatchCollator(tokenizer.pad_token_id, flat_row_bucket(max_length), max_length, split_tokens,
                                 rows + 1 if fixed_segments else None)
    seen, marks, tokens, split_steps = Counter(), [], [], 0
    for start in range(0, rows * steps, rows):
        batch = collator([dataset[i] for i in order[start:start + rows]])
        parts = batch.get(SPLIT_PARTS, [batch])
        shapes = [(part["input_ids"].shape[1], part["cu_seq_lens_q"].numel()) for part in parts]
        marks.append("W" if any(seen[s] == 0 for s in shapes) else "R" if any(seen[s] == 1 for s in shapes) else ".")
        seen.update(shapes)
        tokens.append(batch["num_tokens"])
        split_steps += len(parts) > 1
    return {"steps": steps, "split_steps": split_steps, "distinct_shapes": len(seen), "shapes": sorted(seen),
            "steps_W_warm_up_R_record": "".join(marks), "tokens_per_step": tokens}


@entry_point
def main(argv=None):
    parser = raise_usage_errors(argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False))
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--tokenizer_dir", required=True)
    parser.add_argument("--steps", type=int, default=40, help="warm-up and timed steps of the benchmark")
    parser.add_argument("--split_tokens", type=int, default=1536)
    parser.add_argument("--fixed_segments", choices=("True", "False"), default="True")
    parser.add_argument("--seed", type=int, default=42, help="the benchmark's --seed (TrainArguments.seed)")
    args = parser.parse_args(argv)
    result = graph_shapes(args.tokenizer_dir, args.data_dir, args.steps, args.split_tokens,
                          args.fixed_segments == "True", args.seed)
    for key, value in result.items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    main()
