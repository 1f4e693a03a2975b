"""GPU-hours of the study's Table 1, Table 2 and LoRA grid at 7B, from a benchmark's measured tokens/s.

    python scripts/study_hours.py --benchmark results/benchmark/flat/h100-train-c253017.json --data_dir ../shared/data

Counts every training token of the grids with Zephyr's tokenizer, divides by the benchmark's training rate for
each path (the study's scripts, the suite's default, packed rows) and prints a Markdown table with an A10G
estimate (the same MFU at an A10G's bf16 peak: an estimate, see zephyr/study_hours.py).
"""

from zephyr.cli import entry_point
from zephyr.parsing import parse_args
from zephyr.study_hours import StudyHoursArguments, main_hours


@entry_point
def main(argv=None):
    (args,) = parse_args((StudyHoursArguments,), argv)
    print(main_hours(args))


if __name__ == "__main__":
    raise SystemExit(main())
