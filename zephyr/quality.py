"""The quality benchmark: every speed lever against its plain twin, on real data, over several seeds.

A speed lever is only a feature if it leaves quality where it was. Each lever is measured as a pair of runs that
differ in that lever alone (same data, rows per optimizer step, steps and seed), fine-tuned and evaluated on the
real test set. Each training lever is measured where a user meets it: the levers of the default path (trainer
metrics, optimizer) on batches of whole examples with eager layers; packed rows and checkpointing on the study's
packed rows with eager layers; the compiled path's levers on packed rows, and compiled layers replayed as CUDA
graphs on batches of examples padded to one shape. The
evaluation levers evaluate the same adapter twice. The two training protocols (the study's packed rows, and
batches of whole examples) are compared on both tasks, for quality and wall time.

Phase 1 fine-tunes and evaluates every configuration and seed; phase 2 re-evaluates finished adapters (4-bit
model, label log-likelihood); then ``quality.json`` and ``quality.md`` are written. Runs go through the sweep
runner, several at a time on one GPU, and finished runs are skipped, so an interrupted benchmark resumes.
"""

from __future__ import annotations

import math
import os
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from zephyr.errors import UsageError
from zephyr.io import atomic_write_json, atomic_write_text, read_json
from zephyr.rundir import CONFIG, METRICS, TRAIN_METRICS
from zephyr.sweep import COMPILE_CACHE, Job, check_jobs, run_sweep
from zephyr.quality_levers import (  # noqa: F401  (the benchmark's public names)
    COMMON, CONFIGS, EVALS, LEVERS, PROTOCOLS, TASK_SETTINGS, Lever, Side, _with)
from zephyr.tasks import get_task

REPO = Path(__file__).resolve().parents[1]


@dataclass
class QualityArguments:
    model_name_or_path: str = field(
        default="../shared/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf",
        metadata={"help": "The small real model the levers are measured on (.gguf, checkpoint directory or hub id)"})
    data_dir: str = field(default="../shared/data", metadata={"help": "Data root holding samsum/ and newsgroups/"})
    output_root: str = field(default="runs/quality", metadata={"help": "Where the runs go (resumable)"})
    results_dir: str = field(default="results/quality", metadata={"help": "Where quality.json and quality.md go"})
    seeds: str = field(default="1,2,3", metadata={"help": "Comma-separated training seeds"})
    runs_per_gpu: int = field(default=8, metadata={"help": "Runs at a time on the one GPU"})
    gpu: str = field(default="0", metadata={"help": "The GPU the runs share"})
    summary_only: bool = field(default=False, metadata={"help": "Only write the summary from the runs there are"})
    configs: Optional[str] = field(
        default=None, metadata={"help": "Run only these configurations (comma-separated names; default: all)"})
    dry_run: bool = field(default=False, metadata={"help": "Print the commands, run nothing"})

    def __post_init__(self):
        try:
            self.seed_list = [int(s) for s in self.seeds.split(",") if s.strip()]
        except ValueError:
            raise UsageError(f"--seeds: expected comma-separated integers, got {self.seeds!r}") from None
        if not self.seed_list:
            raise UsageError("--seeds: give at least one seed")
        if self.runs_per_gpu < 1:
            raise UsageError(f"--runs_per_gpu: must be positive, got {self.runs_per_gpu}")
        self.config_list = None if self.configs is None else [c.strip() for c in self.configs.split(",") if c.strip()]
        if self.config_list == []:
            raise UsageError("--configs: give at least one configuration name")
        for name in self.config_list or []:
            if name not in CONFIGS:
                raise UsageError(f"--configs: unknown configuration {name!r} (choose from {', '.join(CONFIGS)})")
        from zephyr.preflight_checks import writable_dir

        writable_dir(self.output_root, "--output_root")
        writable_dir(self.results_dir, "--results_dir")




@dataclass
class Plan:
    model: str
    data_dir: str
    out_root: Path
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3])
    python: str = sys.executable
    configs: list[str] | None = None  # only these configurations run (the summary reads every run there is)

    def run_dir(self, config: str, seed: int) -> Path:
        return self.out_root / f"{config}_seed{seed}"

    def metrics_dir(self, side: Side, seed: int) -> Path:
        run = self.run_dir(side.config, seed)
        return run if side.evaluation is None else run / f"eval-{side.evaluation}"

    def _seeds(self, lever: Lever) -> list[int]:
        extra = max(0, lever.min_seeds - len(self.seeds))
        return list(self.seeds) + [max(self.seeds) + n for n in range(1, extra + 1)]

    def _planned_seeds(self, lever: Lever) -> list[int]:
        """The seeds this plan runs ``lever``'s sides on: its further seeds only when both its sides run."""
        both = self.configs is None or {lever.fast.config, lever.plain.config} <= set(self.configs)
        return self._seeds(lever) if both else list(self.seeds)

    def _config_seeds(self) -> dict[str, list[int]]:
        """Every configuration on the benchmark's seeds, and on the further seeds of the levers that use it when
        both of their sides run."""
        seeds = {config: set(self.seeds) for config in CONFIGS}
        for lever in LEVERS:
            for side in (lever.fast, lever.plain):
                seeds[side.config].update(self._planned_seeds(lever))
        return {config: sorted(values) for config, values in seeds.items()
                if self.configs is None or config in self.configs}

    def training_jobs(self) -> list[Job]:
        """Seed by seed, so that an interrupted benchmark has whole seeds of every configuration."""
        jobs, config_seeds = [], self._config_seeds()
        for seed in sorted(set().union(*config_seeds.values())):
            for config, (task, flags) in CONFIGS.items():
                if seed not in config_seeds.get(config, ()):
                    continue
                script = str(REPO / "scripts" / get_task(task).finetune_script)
                jobs.append(Job(self.run_dir(config, seed), [
                    self.python, script, "--model_name_or_path", self.model, "--data_dir", self.data_dir,
                    "--output_root", str(self.out_root), "--run_name", f"{config}_seed{seed}", "--seed", str(seed),
                    *TASK_SETTINGS[task], *COMMON, *flags]))
        return jobs

    def evaluation_jobs(self) -> list[Job]:
        wanted = {(side, seed) for lever in LEVERS for side in (lever.fast, lever.plain) if side.evaluation
                  and (self.configs is None or side.config in self.configs) for seed in self._planned_seeds(lever)}
        jobs = []
        for side, seed in sorted(wanted, key=lambda item: (item[1], item[0].config, item[0].evaluation)):
            task = CONFIGS[side.config][0]
            script = str(REPO / "scripts" / get_task(task).inference_script)
            jobs.append(Job(self.metrics_dir(side, seed), [
                self.python, script, "--run_dir", str(self.run_dir(side.config, seed)), "--data_dir", self.data_dir,
                "--eval_output_dir", str(self.metrics_dir(side, seed)), "--eval_batch_size", "64",
                *EVALS[side.evaluation]]))
        return jobs

    def _value(self, side: Side, seed: int) -> float | None:
        path = self.metrics_dir(side, seed) / METRICS
        return read_json(path)[get_task(CONFIGS[side.config][0]).metric] if path.is_file() else None

    def summary(self, commit: str | None = None) -> dict:
        levers = []
        for lever in LEVERS:
            seeds = self._seeds(lever)
            fast = [self._value(lever.fast, s) for s in seeds]
            plain = [self._value(lever.plain, s) for s in seeds]
            levers.append({"name": lever.name, "task": lever.task, "metric": get_task(lever.task).metric,
                           "fast_config": lever.fast.config, "fast_evaluation": lever.fast.evaluation or "dense",
                           "plain_config": lever.plain.config, "plain_evaluation": lever.plain.evaluation or "dense",
                           "seeds": seeds, "fast": fast, "plain": plain, "required": lever.required,
                           **paired_delta(fast, plain)})
        return {"commit": commit or _commit_of_runs(self), "gpu": _gpu_of_runs(self), "seeds": self.seeds,
                "protocol": {"model": self.model, "settings": {t: TASK_SETTINGS[t] + COMMON for t in TASK_SETTINGS},
                             "configs": {name: flags for name, (_, flags) in CONFIGS.items()}},
                "levers": levers, "protocols": [self._protocol(*p) for p in PROTOCOLS]}

    def _protocol(self, task: str, packed: str, examples: str) -> dict:
        out = {"task": task, "metric": get_task(task).metric}
        for label, config in (("packed_rows", packed), ("examples", examples)):
            values, train_s, eval_s, steps = [], [], [], []
            for seed in self.seeds:
                run = self.run_dir(config, seed)
                if not (run / METRICS).is_file():
                    continue
                values.append(read_json(run / METRICS)[get_task(task).metric])
                eval_s.append(read_json(run / METRICS)["eval_seconds"])
                trained = read_json(run / TRAIN_METRICS)
                train_s.append(trained["train_runtime_s"])
                steps.append(trained["train_steps"])
            out[label] = {"config": config, "values": values, **mean_and_stderr(values),
                          "train_s": train_s, "eval_s": eval_s, "optimizer_steps": steps}
        return out


def mean_and_stderr(values: list) -> dict:
    values = [v for v in values if v is not None]
    if not values:
        return {"mean": None, "stderr": None}
    stderr = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else None
    return {"mean": statistics.fmean(values), "stderr": stderr}


def paired_delta(fast: list, plain: list) -> dict:
    """Mean of the per-seed differences fast - plain and its standard error; ``within_noise`` applies the rule
    that a lever is a bug (or off by default) when it moves the metric by more than 2 standard errors and more
    than 0.3 points."""
    deltas = [f - p for f, p in zip(fast, plain) if f is not None and p is not None]
    stats = mean_and_stderr(deltas)
    mean, stderr = stats["mean"], stats["stderr"]
    within = None if mean is None else (abs(mean) <= 0.3 or (stderr is not None and abs(mean) <= 2 * stderr))
    return {"mean_delta": mean, "stderr": stderr, "within_noise": within}


def _runs(plan: Plan) -> list[Path]:
    return [p for p in sorted(plan.out_root.glob("*_seed*")) if (p / CONFIG).is_file()]


def _commit_of_runs(plan: Plan) -> str | None:
    commits = {read_json(p / CONFIG).get("git_commit") for p in _runs(plan)}
    return commits.pop() if len(commits) == 1 else (", ".join(sorted(map(str, commits))) or None)


def _gpu_of_runs(plan: Plan) -> str | None:
    names = {read_json(p / CONFIG).get("device", {}).get("name") for p in _runs(plan)}
    return ", ".join(sorted(map(str, names))) or None


def plus_minus(mean, stderr, digits=2) -> str:
    if mean is None:
        return "—"
    return f"{mean:.{digits}f}" + (f" ± {stderr:.{digits}f}" if stderr is not None else "")


def to_markdown(summary: dict) -> str:
    lines = [f"Commit `{summary['commit']}`, {summary['gpu']}, seeds {summary['seeds']} (more where a lever's seeds "
             "column says so).", "",
             "| lever | task | metric | seeds | plain | fast | Δ fast − plain | within noise |",
             "|---|---|---|---|---|---|---|---|"]
    for lever in summary["levers"]:
        plain, fast = mean_and_stderr(lever["plain"]), mean_and_stderr(lever["fast"])
        verdict = {True: "yes", False: "**no**", None: "—"}[lever["within_noise"]]
        if not lever["required"]:
            verdict += " (a different method)"
        lines.append(f"| {lever['name']} | {lever['task']} | {lever['metric']} | {len(lever['seeds'])} | "
                     f"{plus_minus(**plain)} | {plus_minus(**fast)} | "
                     f"{plus_minus(lever['mean_delta'], lever['stderr'])} | {verdict} |")
    lines += ["", "| task | protocol | metric | optimizer steps | train s | eval s |", "|---|---|---|---|---|---|"]
    for protocol in summary["protocols"]:
        for label in ("packed_rows", "examples"):
            row = protocol[label]
            lines.append(f"| {protocol['task']} | {label.replace('_', ' ')} ({row['config']}) | "
                         f"{plus_minus(row['mean'], row['stderr'])} | {_fmt_list(row['optimizer_steps'])} | "
                         f"{_fmt_list(row['train_s'])} | {_fmt_list(row['eval_s'])} |")
    return "\n".join(lines) + "\n"


def _fmt_list(values: list) -> str:
    return ", ".join(f"{v:.0f}" for v in values) or "—"


def run(plan: Plan, runs_per_gpu: int, gpu: str = "0", dry_run: bool = False, out=None) -> int:
    """Both phases, then the summary (written even when some runs failed: their cells stay empty)."""
    # Several runs share the GPU machine's cores: each gets two threads, and compiles with one worker.
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
    training = plan.training_jobs()
    check_jobs([job for job in training if not job.done()])  # the re-evaluations need the adapters first
    sweep = dict(runs_per_gpu=runs_per_gpu, cache_dir=plan.out_root / COMPILE_CACHE)
    status = run_sweep(training, [gpu], plan.out_root / "sweep.csv", dry_run, out, **sweep)
    status |= run_sweep(plan.evaluation_jobs(), [gpu], plan.out_root / "sweep.csv", dry_run, out, **sweep)
    return status


def write_summary(plan: Plan, out_dir: Path, commit: str | None = None) -> dict:
    summary = plan.summary(commit)
    atomic_write_json(out_dir / "quality.json", summary)
    atomic_write_text(out_dir / "quality.md", to_markdown(summary))
    return summary
