"""The quality benchmark: each speed lever against its plain twin, SmolLM2-135M on the real data, 3 seeds.

    # on one GPU (about N minutes on one H200 with 8 runs at a time); resumable
    python scripts/quality.py --model_name_or_path ../shared/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf \\
        --data_dir ../shared/data --output_root runs/quality --results_dir results/quality
    # the commands only
    python scripts/quality.py --dry_run True
    # some configurations only (the summary still reads every run under --output_root)
    python scripts/quality.py --configs examples_flat,ng_examples_flat ...
    # the summary of the runs there are (after a partial run, or on another machine)
    python scripts/quality.py --summary_only True

Writes results/quality/quality.json ({"commit", "gpu", "levers": [{"name", "task", "metric", "plain", "fast",
"mean_delta", "stderr", ...}], "protocols": [...]}) and quality.md, the README's table.
"""

from pathlib import Path

from zephyr.cli import entry_point
from zephyr.modeling import resolve_model_path
from zephyr.parsing import parse_args
from zephyr.quality import Plan, QualityArguments, run, to_markdown, write_summary


@entry_point
def main(argv=None):
    (args,) = parse_args((QualityArguments,), argv)
    model = args.model_name_or_path if args.dry_run else resolve_model_path(args.model_name_or_path)
    plan = Plan(model, args.data_dir, Path(args.output_root), args.seed_list, configs=args.config_list)
    status = 0
    if not args.summary_only:
        status = run(plan, args.runs_per_gpu, args.gpu, args.dry_run)
    if not args.dry_run:
        print(to_markdown(write_summary(plan, Path(args.results_dir))))
    return status


if __name__ == "__main__":
    raise SystemExit(main())
