"""Table 1's fast path against eager on Table 1's own protocol (20 Newsgroups, 25 % of the rows, 5 epochs), per seed.

The tables' 50 % and 100 % runs train with FAST_ARGS (run_study_tables.sh); this compares the same flags against
eager training at 25 %, where both fit a lease. Seed 42's eager run is Table 1's own (runs/table1); every other
run is in fast-check/seed<N>-{eager,fast}/. The statistics are the quality benchmark's (zephyr.quality).

    python results/smollm2/study/fast_check.py results/smollm2/study
"""

import re
import sys
from pathlib import Path

from zephyr.io import read_json
from zephyr.quality import mean_and_stderr, paired_delta, plus_minus

RUN = "newsgroups_SmolLM2-135M-Instruct.Q4_1_frac0.25_{variant}"
VARIANTS = {"base": "base (q,v)", "all": "all-module"}


def accuracy(run_dir: Path) -> float | None:
    metrics = run_dir / "metrics.json"
    return read_json(metrics)["accuracy"] if metrics.is_file() else None


def pairs(study: Path, variant: str) -> dict[int, tuple[float, float]]:
    """seed -> (eager accuracy, fast accuracy), for the seeds where both runs finished."""
    found = {}
    for fast_dir in sorted((study / "fast-check").glob("seed*-fast")):
        match = re.fullmatch(r"seed(\d+)-fast", fast_dir.name)
        if not match:
            continue
        seed = int(match[1])
        eager_root = study / "runs" / "table1" if seed == 42 else study / "fast-check" / f"seed{seed}-eager"
        run = RUN.format(variant=variant)
        eager, fast = accuracy(eager_root / run), accuracy(fast_dir / run)
        if eager is not None and fast is not None:
            found[seed] = (eager, fast)
    return found


def to_markdown(study: Path) -> str:
    lines = ["| LoRA | seeds | eager | fast | Δ fast − eager | within noise |", "|---|---|---|---|---|---|"]
    for variant, label in VARIANTS.items():
        found = pairs(study, variant)
        if not found:
            continue
        eager, fast = [found[s][0] for s in found], [found[s][1] for s in found]
        delta = paired_delta(fast, eager)
        cells = [plus_minus(**mean_and_stderr(values)) + f" ({', '.join(f'{v:.2f}' for v in values)})"
                 for values in (eager, fast)]
        lines.append(f"| {label} | {', '.join(map(str, found))} | {cells[0]} | {cells[1]} | "
                     f"{plus_minus(delta['mean_delta'], delta['stderr'])} | "
                     f"{verdict(delta, len(found))} |")
    return "\n".join(lines)


def verdict(delta: dict, seeds: int) -> str:
    """The quality benchmark's rule (within 0.3 points or 2 standard errors) needs a standard error: one seed
    decides nothing, as Table 1's own runs differ by up to 1.6 points with nothing but NEFTune's noise changed."""
    if seeds < 2:
        return "— (one seed)"
    return "yes" if delta["within_noise"] else "**no**"


if __name__ == "__main__":
    print(to_markdown(Path(sys.argv[1] if len(sys.argv) > 1 else "results/smollm2/study")))
