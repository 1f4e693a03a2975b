"""A run directory's lifecycle and names: what it is called, its config.json, lock, checkpoints and resume.

Layout of ``<output_root>/<run_name>/``:
  config.json         resolved arguments, the study variant, data report, library versions, git commit, device
  train_log.jsonl     one row per logging step: loss, learning rate, tokens/s, peak memory
  train_metrics.json  runtime, tokens/s, peak memory, final loss (written last: the run is complete)
  loss.png            training loss against tokens and steps, with the learning rate
  tensorboard/ ...    what --report_to writes (tensorboard/, wandb/, mlruns/, trackio/)
  adapter/            LoRA adapter and tokenizer (PeftModel.from_pretrained loads it)
  predictions.jsonl, metrics.json   after evaluation
  sweep.log           the run's output when a sweep started it

Run names also come from here, for the shell sweeps too (``python -m zephyr.rundir name SWEEP FLAGS``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import shutil
import sys
from dataclasses import dataclass, fields
from pathlib import Path

from zephyr.config import DataArguments, EvalArguments, ModelArguments, TrainArguments
from zephyr.errors import UsageError, raise_usage_errors
from zephyr.io import atomic_write_json, atomic_write_text, folder_lock, read_json, read_log_rows
from zephyr.runinfo import device_info, git_commit, versions

log = logging.getLogger(__name__)
CONFIG = "config.json"
METRICS = "metrics.json"  # written last by an evaluation: its presence marks a finished run
PREDICTIONS = "predictions.jsonl"
TRAIN_LOG = "train_log.jsonl"
SWEEP_LOG = "sweep.log"  # a run's stdout/stderr, written into its run directory before the run starts
ADAPTER_DIR = "adapter"
TRAIN_METRICS = "train_metrics.json"
LOSS_SUM = "loss_sum.json"  # in a checkpoint: the training loss summed over its steps, for the resumed run's mean
DEFAULT_SAVE_STEPS = 200


def default_save_steps(total_steps: int) -> int:
    """Every 200 steps, or a tenth of the run if that is shorter: a killed run of any length can resume."""
    return max(1, min(DEFAULT_SAVE_STEPS, math.ceil(total_steps / 10)))

# Arguments that may change between an interrupted run and its resumption without changing its result.
_RESUMABLE_DIFFERENCES = {"overwrite", "do_eval", "logging_steps", "save_steps", "gradient_checkpointing",
                          "train_memory_gib", "compile_layers", "cuda_graphs", "flat_cuda_graphs", "fused_nf4",
                          "pad_to_max_length", "batch_layout", "sync_free_metrics", "merge_adapter", "eval_batch_size",
                          "eval_batch_tokens", "eval_memory_gib", "report_to"}


@contextlib.contextmanager
def run_lock(run_dir: Path):
    """Exclusive lock on a run, held on the run directory itself (``folder_lock``)."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(folder_lock(run_dir, wait=False))
        except BlockingIOError:
            raise UsageError(f"{run_dir}: another process is writing this run") from None
        yield


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint (trainer_state.json is written last)."""
    complete = [p for p in (run_dir / "checkpoints").glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    return max(complete, key=lambda p: int(p.name.split("-")[1]), default=None)


def _flatten(arguments: dict) -> dict:
    return {k: v for group in arguments.values() for k, v in group.items() if k not in _RESUMABLE_DIFFERENCES}


def prepare_run_dir(run_dir: Path, arguments: dict, overwrite: bool, dry_run: bool = False) -> Path | None:
    """Create, replace or resume ``run_dir``; returns the checkpoint to resume from, if any.

    With ``dry_run`` it only raises on what would be refused, touching nothing.
    """
    if (run_dir / TRAIN_METRICS).is_file():
        if not overwrite:
            raise UsageError(f"{run_dir}: a finished run is already there; pass --overwrite True to replace it")
        if not dry_run:
            _empty_run_dir(run_dir)
    elif (run_dir / CONFIG).is_file() and overwrite:
        if not dry_run:
            _empty_run_dir(run_dir)
    elif (run_dir / CONFIG).is_file():
        previous = _flatten(read_json(run_dir / CONFIG).get("arguments", {}))
        current = _flatten(arguments)
        changed = sorted(k for k in current if previous.get(k, current[k]) != current[k])
        if changed:
            raise UsageError(f"{run_dir}: holds an unfinished run with other settings (--{changed[0]} "
                             f"{previous[changed[0]]!r}, now {current[changed[0]]!r}); pass --overwrite True "
                             "to start over")
        checkpoint = latest_checkpoint(run_dir)
        if checkpoint is not None and not dry_run:
            _trim_log(run_dir / TRAIN_LOG, int(checkpoint.name.split("-")[1]))
            return checkpoint
        if not dry_run:
            log.warning("%s: an unfinished run with no checkpoint to resume from: starting over", run_dir)
    elif run_dir.is_dir() and any(path.name != SWEEP_LOG for path in run_dir.iterdir()):
        raise UsageError(f"{run_dir}: exists and is not a run directory of this suite; "
                         "choose another --run_name or --output_root")
    if dry_run:
        return None
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / TRAIN_LOG).unlink(missing_ok=True)
    return None


def _empty_run_dir(run_dir: Path) -> None:
    """Remove a run's files but keep the directory (it holds the run lock) and the sweep's open log."""
    for child in run_dir.iterdir():
        if child.name == SWEEP_LOG:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def run_directory(data_args: DataArguments, model_args: ModelArguments, train_args: TrainArguments) -> Path:
    return Path(train_args.output_root) / (train_args.run_name or run_name(data_args, model_args, train_args))


def finished_with_same_settings(run_dir: Path, arguments: dict) -> bool:
    """True when ``run_dir`` holds a finished training run of exactly these settings (so a rerun that was killed
    during evaluation only needs to evaluate)."""
    needed = (TRAIN_METRICS, CONFIG, f"{ADAPTER_DIR}/adapter_config.json")
    if not all((run_dir / name).is_file() for name in needed):
        return False
    previous = _flatten(read_json(run_dir / CONFIG).get("arguments", {}))
    current = _flatten(arguments)
    return all(previous.get(k, v) == v for k, v in current.items())


def _trim_log(path: Path, last_step: int) -> None:
    """Drop log rows written after the checkpoint being resumed: they are logged again."""
    if path.is_file():
        rows = [row for row in read_log_rows(path) if row["step"] <= last_step]
        atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in rows))


def loss_sum(checkpoint: Path) -> float | None:
    """The training loss summed up to ``checkpoint``; None for a checkpoint without it (then the mean is
    unknown, not wrong)."""
    path = checkpoint / LOSS_SUM
    return read_json(path)["loss_sum"] if path.is_file() else None


def _fmt(value: float) -> str:
    return f"{value:g}"


def model_short_name(model_name_or_path: str) -> str:
    stem = Path(model_name_or_path.rstrip("/")).name
    return stem.removesuffix(".gguf") or "model"


def run_name(data: DataArguments, model: ModelArguments, train: TrainArguments) -> str:
    """A directory name that spells out the settings a sweep varies."""
    parts = [data.task, model_short_name(model.model_name_or_path), f"frac{_fmt(data.train_fraction)}",
             f"r{model.lora_r}", f"a{model.lora_alpha}", f"d{_fmt(model.lora_dropout)}",
             f"ep{_fmt(train.num_train_epochs)}", model.lora_targets.replace(",", "+")]
    if model.lora_lm_head:
        parts.append("lmhead")
    if train.neftune_alpha:
        parts.append(f"neft{_fmt(train.neftune_alpha)}")
    if model.quantization != "4bit":
        parts.append(f"q{model.quantization}")
    if data.prompt_format != "original":
        parts.append(data.prompt_format)
    if train.loss != "completion":
        parts.append(f"loss{train.loss}")
    if train.max_steps > 0:
        parts.append(f"steps{train.max_steps}")
    parts.append(f"seed{train.seed}")
    return "_".join(parts)


def baseline_name(data_args: DataArguments, model_args: ModelArguments, eval_args: EvalArguments) -> str:
    """The directory name of a zero- or few-shot evaluation of the base model (under runs/baselines)."""
    shots = f"{eval_args.num_shots}shot" if eval_args.num_shots else "zeroshot"
    parts = [data_args.task, model_short_name(model_args.model_name_or_path), shots, eval_args.eval_method]
    if model_args.quantization != "4bit":
        parts.append(f"q{model_args.quantization}")
    return "_".join(parts)


NEFTUNE_ALPHA = 5.0  # the study's NEFTune noise


@dataclass(frozen=True)
class Variant:
    """One of the study's four fine-tuning variants: a column of Tables 1 and 2."""

    name: str  # as the tables print it
    key: str  # sample_ablate.sh's word for it (VARIANTS=...) and the end of its run names
    lora_targets: str = "attention"
    lora_lm_head: bool = False
    neftune_alpha: float | None = None

    def flags(self) -> list[str]:
        """The flags that turn the suite's defaults into this variant."""
        flags = [] if self.lora_targets == "attention" else ["--lora_targets", self.lora_targets]
        flags += ["--lora_lm_head", "True"] if self.lora_lm_head else []
        return flags + (["--neftune_alpha", f"{self.neftune_alpha:g}"] if self.neftune_alpha else [])

    def matches(self, model_args: dict, train_args: dict) -> bool:
        """Exactly this variant: the same adapted modules (a preset or its module list) and the same NEFTune."""
        modules = ModelArguments(lora_targets=model_args.get("lora_targets", "attention"),
                                 lora_lm_head=bool(model_args.get("lora_lm_head"))).target_modules()
        ours = ModelArguments(lora_targets=self.lora_targets, lora_lm_head=self.lora_lm_head).target_modules()
        return set(modules) == set(ours) and (train_args.get("neftune_alpha") or None) == self.neftune_alpha


VARIANTS = (Variant("base", "base"), Variant("NEFTune", "neftune", neftune_alpha=NEFTUNE_ALPHA),
            Variant("all-module", "all", "all", True),
            Variant("NEFTune + all-module", "neftune_all", "all", True, NEFTUNE_ALPHA))
CUSTOM = "custom"  # any other adapter or NEFTune setting (rank, dropout, epochs and data do not count)


def variant_of(arguments: dict) -> str:
    """The variant of a fine-tuning run's arguments (grouped as in config.json), or "custom"."""
    model_args, train_args = arguments.get("ModelArguments", {}), arguments.get("TrainArguments", {})
    return next((v.name for v in VARIANTS if v.matches(model_args, train_args)), CUSTOM)


# The shell sweeps' run names: only what each sweep varies, every value spelled as the sweep wrote it (frac1.0,
# ep2), so a sweep started again finds the runs it finished. {variant} is the variant's key, from its flags.
SWEEP_NAMES = {
    "ablation": "{task}_{model}_frac{train_fraction}_{variant}",  # sample_ablate.sh
    "lora_grid": "{task}_{model}_frac{train_fraction}_r{lora_r}_d{lora_dropout}_ep{num_train_epochs}"
                 "_neft{neftune_alpha}",  # run_lora.sh; neft0: NEFTune off
    "baseline": "{task}_{model}_baseline_{num_shots}shot_{eval_method}",  # baseline_inference.sh
}


def sweep_run_name(sweep: str, flags: list[str]) -> str:
    """The name ``sweep`` gives the run of these flags (any flag of the suite's commands; values as text)."""
    if sweep not in SWEEP_NAMES:
        raise UsageError(f"name: unknown sweep {sweep!r} (choose {', '.join(SWEEP_NAMES)})")
    parser = argparse.ArgumentParser(prog=f"zephyr.rundir name {sweep}", allow_abbrev=False, add_help=False)
    for cls in (DataArguments, ModelArguments, TrainArguments, EvalArguments):
        for field in fields(cls):
            parser.add_argument(f"--{field.name}")
    raise_usage_errors(parser, prefix="name: ")
    given = {k: v for k, v in vars(parser.parse_args(flags)).items() if v is not None}
    lm_head = given.get("lora_lm_head", "false").lower() in ("true", "yes", "t", "y", "1")  # as HfArgumentParser
    try:
        alpha = float(given.get("neftune_alpha", 0)) or None
    except ValueError:
        raise UsageError(f"--neftune_alpha: not a number: {given['neftune_alpha']!r}") from None
    variant = variant_of({"ModelArguments": {"lora_targets": given.get("lora_targets", "attention"),
                                             "lora_lm_head": lm_head}, "TrainArguments": {"neftune_alpha": alpha}})
    values = {"neftune_alpha": "0", **given, "variant": next((v.key for v in VARIANTS if v.name == variant), CUSTOM)}
    if "model_name_or_path" in given:
        values["model"] = model_short_name(given["model_name_or_path"])
    try:
        return SWEEP_NAMES[sweep].format(**values)
    except KeyError as err:
        flag = "model_name_or_path" if err.args[0] == "model" else err.args[0]
        raise UsageError(f"--{flag}: needed for the {sweep} sweep's run names") from None


def absolute_if_local(name: str) -> str:
    """A model path that exists here as an absolute path (so it works from any directory); a hub id unchanged."""
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name


def write_config(path: Path, arguments: dict, model_path: str | None = None, base_model: str | None = None,
                 **extra) -> dict:
    """config.json; ``model_path`` (the checkpoint loaded) and ``base_model`` (as given: a .gguf file, a directory
    or a hub id) are recorded absolute, so evaluation finds the base model from any working directory."""
    models = {} if model_path is None else {"model_path": absolute_if_local(model_path),
                                              "base_model": absolute_if_local(base_model or model_path)}
    if extra.get("kind") == "finetune":
        extra = {**extra, "variant": variant_of(arguments)}  # the tables' column, decided once, here
    config = {"arguments": arguments, **models, **extra, "versions": versions(), "git_commit": git_commit(),
              "device": device_info(), "command": [Path(sys.argv[0]).name, *sys.argv[1:]]}
    atomic_write_json(path, config)
    return config


USAGE = ("python -m zephyr.rundir name ablation|lora_grid|baseline FLAG... (prints the run name), "
         "python -m zephyr.rundir variant_flags base|neftune|all|neftune_all (prints the variant's flags), or "
         "python -m zephyr.rundir serve (answers such questions, one shell-quoted command line each, on stdin)")


def _answer(argv: list[str]) -> str:
    if argv[:1] == ["name"] and len(argv) >= 2:
        return sweep_run_name(argv[1], argv[2:])
    if argv[:1] == ["variant_flags"] and len(argv) == 2:
        keys = {v.key: v for v in VARIANTS}
        if argv[1] not in keys:
            raise UsageError(f"variant: unknown variant {argv[1]!r} (choose {', '.join(keys)})")
        return " ".join(keys[argv[1]].flags())
    raise UsageError(f"usage: {USAGE}")


def main(argv: list[str] | None = None) -> int:
    """The shell sweeps ask here for their run names and for the flags of the study's variants: ``serve`` answers
    a whole sweep's questions from one process (a Python start per run would cost more than the naming)."""
    import shlex

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        questions = (shlex.split(line) for line in sys.stdin) if argv == ["serve"] else [argv]
        for question in questions:
            print(_answer(question), flush=True)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
