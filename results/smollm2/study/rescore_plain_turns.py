"""Re-score committed baseline predictions with the rule that a plain-conversation answer ends at its turn's end.

The Gemma 3 270M baselines in runs/table3 were made at 1571ee7, before `PromptBuilder.answer_from` cut a
continuation at the blank line that ends an answer turn in a prompt without a chat template. Generation is the
same either way (the cut follows decoding), so cutting the stored predictions gives what a run with the rule
writes, until these runs are made again. Only for baselines of a model without a chat template (the Gemma GGUF
carries none); with a template, nothing is cut:

    python results/smollm2/study/rescore_plain_turns.py results/smollm2/study/runs/table3/*baseline*
"""

import gzip
import json
import sys

from zephyr.prompting import PromptBuilder
from zephyr.tasks import get_task


class _NoChatTemplate:
    chat_template = None


def main(run_dirs: list[str]) -> None:
    builder = PromptBuilder(get_task("samsum"), _NoChatTemplate(), "chat")
    for run_dir in run_dirs:
        with open(f"{run_dir}/config.json", encoding="utf-8") as config:
            config = json.load(config)
        if (config["kind"], config["arguments"]["DataArguments"]["task"]) != ("baseline", "samsum"):
            print(f"error: {run_dir}: not a SAMSum baseline (baselines prompt in the chat format)", file=sys.stderr)
            sys.exit(2)
        with gzip.open(f"{run_dir}/predictions.jsonl.gz", "rt", encoding="utf-8") as rows:
            rows = [json.loads(line) for line in rows]
        answers = [builder.answer_from(row["prediction"]) for row in rows]
        metrics = builder.task.score([row["reference"] for row in rows], answers, [])
        cut = sum(answer != row["prediction"] for answer, row in zip(answers, rows))
        print(f"{run_dir}: ROUGE-1 {metrics['rouge1']:.2f}, ROUGE-2 {metrics['rouge2']:.2f} "
              f"({cut} of {len(rows)} predictions cut at their turn's end)")


if __name__ == "__main__":
    main(sys.argv[1:])
