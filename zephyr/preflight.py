"""The pre-flight of every entry point: everything a run will read or write is checked before it loads a model or
writes a file.

Fine-tuning takes hours on a rented GPU, so a mistake must cost seconds and leave nothing behind: output locations
must be creatable, run directories stay inside their output root, data and config files must be readable text
in their format, the model's config must be a causal LM's with every LoRA target in it, a GGUF file must be whole,
and numbers that depend on the data or the model (rows, shots, prompt budget, context) must be ones the run can
honour. Each check raises UsageError, which the entry points print as one ``error:`` line with exit status 2.
Flags that need no data or model are checked when they are parsed (zephyr/config.py); the single checks are in
zephyr/preflight_checks.py, their combination per entry point here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from zephyr.config import DataArguments, EvalArguments, ModelArguments, TrainArguments, to_dict
from zephyr.errors import UsageError
from zephyr.preflight_checks import (adapter_fits, check_eval_method, flat_batches, flat_split, is_hub_source,
                                     load_split, lora_targets, model_config, model_runtime, prompt_budget,
                                     run_dir_inside, test_rows, writable_dir)
from zephyr.rundir import CONFIG, finished_adapter, finished_with_same_settings, prepare_run_dir, run_directory
from zephyr.tasks import LoadedSplit, Task

log = logging.getLogger(__name__)


# -- entry points -----------------------------------------------------------------------------------------
@dataclass
class FinetunePlan:
    run_dir: Path
    evaluate_only: bool = False  # training finished earlier with these settings; only evaluation is missing
    test: LoadedSplit | None = None
    examples: list | None = None
    train: LoadedSplit | None = None  # the training split as read; None where it comes from the hub (hub=False)
    train_examples: list | None = None  # the rows --train_fraction selects, in training order
    labels: list[str] = field(default_factory=list)


def finetune(task: Task, data_args: DataArguments, model_args: ModelArguments, train_args: TrainArguments,
             eval_args: EvalArguments, hub: bool = True) -> FinetunePlan:
    """Everything a fine-tuning run (with ``--do_eval``, and its evaluation) will read or write. ``hub=False``
    skips what needs the network (a hub model's config, hub datasets)."""

    writable_dir(train_args.output_root, "--output_root")
    run_dir_inside(train_args.output_root, train_args.run_name)
    run_dir = run_directory(data_args, model_args, train_args)
    arguments = to_dict(data_args, model_args, train_args)
    plan = FinetunePlan(run_dir)
    if train_args.do_eval:
        check_eval_method(task, eval_args)
        if eval_args.eval_output_dir:
            writable_dir(eval_args.eval_output_dir, "--eval_output_dir")
        plan.evaluate_only = not train_args.overwrite and finished_with_same_settings(run_dir, arguments)
    if not plan.evaluate_only:
        prepare_run_dir(run_dir, arguments, train_args.overwrite, dry_run=True)
    from zephyr.modeling import check_model_path

    if train_args.flat_split_tokens:
        flat_split(train_args.flat_split_tokens, data_args.max_length, train_args.per_device_train_batch_size)
    check_model_path(model_args.model_name_or_path)  # a mistyped path fails before the data is read
    if hub or not is_hub_source(task, "train", data_args):
        plan.train = load_split(task, "train", data_args)
        plan.train_examples = task.select_train(plan.train.examples, data_args.train_fraction, data_args.data_seed)
        plan.labels = task.labels(plan.train.examples)
    if train_args.do_eval and (hub or not is_hub_source(task, "test", data_args)):
        plan.test, plan.examples = test_rows(task, data_args, plan.labels)
    model_runtime(model_args)
    config = model_config(model_args.model_name_or_path, model_args.model_cache_dir,
                          "--model_name_or_path", hub)
    if config is not None:
        from zephyr.modeling import config_context_length

        lora_targets(config, model_args)
        if not train_args.packing and train_args.batch_layout == "flat":
            flat_batches(config, data_args.max_length)
        context = config_context_length(config)
        if data_args.max_length > context:
            raise UsageError(f"--max_length: {data_args.max_length} exceeds the model's context of {context} tokens")
        if train_args.do_eval:
            prompt_budget(config, eval_args, eval_args.max_new_tokens or task.max_new_tokens, data_args.max_length)
    return plan


@dataclass
class BaselinePlan:
    out_dir: Path
    train: LoadedSplit | None
    labels: list[str]
    shots: list
    test: LoadedSplit | None
    examples: list | None


def baseline(task: Task, data_args: DataArguments, model_args: ModelArguments, eval_args: EvalArguments,
             out_dir: Path, hub: bool = True) -> BaselinePlan:
    """Everything a zero- or few-shot baseline will read or write; ``--num_shots`` must be honoured in full."""

    check_eval_method(task, eval_args)
    writable_dir(out_dir, "--eval_output_dir" if eval_args.eval_output_dir else "output directory")
    from zephyr.modeling import check_model_path

    check_model_path(model_args.model_name_or_path)
    needs_train = task.is_classification or eval_args.num_shots > 0
    plan = BaselinePlan(out_dir, None, [], [], None, None)
    if needs_train and (hub or not is_hub_source(task, "train", data_args)):
        plan.train = load_split(task, "train", data_args)
        plan.labels = task.labels(plan.train.examples)
        plan.shots = task.pick_shots(plan.train.examples, eval_args.num_shots, data_args.data_seed)
        if len(plan.shots) < eval_args.num_shots:
            what = "distinct labels" if task.is_classification else "training rows"
            raise UsageError(f"--num_shots: {eval_args.num_shots} asked, but {plan.train.source} gives only "
                             f"{len(plan.shots)} (one per shot, from its {what})")
    if hub or not is_hub_source(task, "test", data_args):
        plan.test, plan.examples = test_rows(task, data_args, plan.labels)
    model_runtime(model_args)
    config = model_config(model_args.model_name_or_path, model_args.model_cache_dir, "--model_name_or_path", hub)
    if config is not None:
        budget = prompt_budget(config, eval_args, eval_args.max_new_tokens or task.max_new_tokens)
        if plan.shots:
            shots_fit(task, model_args, plan, budget)
    return plan


def shots_fit(task: Task, model_args: ModelArguments, plan: BaselinePlan, budget: int) -> None:
    """The few-shot examples fit half the prompt budget, as evaluation requires; none is dropped silently."""
    from zephyr.modeling import gguf_cache_target, is_gguf, load_tokenizer
    from zephyr.prompting import PromptBuilder

    name = model_args.model_name_or_path
    if is_gguf(name):
        target = gguf_cache_target(Path(name).expanduser(), model_args.model_cache_dir)
        if not (target / "config.json").is_file():
            return  # its tokenizer exists only after conversion; evaluation then refuses to drop shots
        name = str(target)
    PromptBuilder(task, load_tokenizer(name), "chat", plan.labels, plan.shots).fit_shots(budget)


def tables(runs: list[str], out: str) -> list[dict]:
    """make_tables.py: the summaries of the finished runs below every --runs folder (each must hold one), and an
    --out that can be written."""
    from zephyr.results import collect

    rows = collect(runs)
    writable_dir(out, "--out")
    return rows


@dataclass
class InferencePlan:
    run_dir: Path
    adapter: Path
    task: Task
    data_args: DataArguments  # the run's, with where the test data lives from this command
    model_args: ModelArguments  # the run's
    base_model: str
    base_flag: str  # the flag to name in errors about the base model
    labels: list[str]
    test: LoadedSplit | None
    examples: list | None
    out_dir: Path


def _arguments_from(config: dict, cls, source: Path):
    try:
        return cls(**config["arguments"][cls.__name__])
    except (KeyError, TypeError) as err:
        raise UsageError(f"{source}: no usable {cls.__name__} ({err})") from None


def base_model(run_dir: Path, config: dict, eval_args: EvalArguments) -> tuple[str, str]:
    """(model, flag naming it): ``--base_model``, else the checkpoint config.json records, else the model it was
    made from (a GGUF file converts again). A copied run directory whose base model is elsewhere needs the flag."""
    from zephyr.modeling import check_model_path

    if eval_args.base_model:
        return eval_args.base_model, "--base_model"
    recorded = [name for name in (config.get("model_path"), config.get("base_model")) if name]
    for name in recorded:
        if Path(name).expanduser().exists():
            return name, "--run_dir"
    for name in recorded:
        try:
            check_model_path(name)
            return name, "--run_dir"  # a hub id
        except UsageError:
            continue
    raise UsageError(f"--run_dir: {run_dir}: its base model {recorded[0] if recorded else '(none recorded)'} is "
                     "not on this machine; pass --base_model")


def inference(data_args: DataArguments, eval_args: EvalArguments, task_name: str | None = None,
              hub: bool = True) -> InferencePlan:
    """Everything evaluating a fine-tuned run will read or write."""
    from dataclasses import replace

    from zephyr.io import read_json
    from zephyr.modeling import compute_dtype
    from zephyr.tasks import get_task

    if not eval_args.run_dir:
        raise UsageError("--run_dir: required (a directory written by a fine-tuning script)")
    run_dir = Path(eval_args.run_dir)
    adapter = finished_adapter(run_dir)
    config = read_json(run_dir / CONFIG)
    trained_data = _arguments_from(config, DataArguments, run_dir / CONFIG)
    if task_name and trained_data.task != task_name:
        raise UsageError(f"--run_dir: {run_dir} is a {trained_data.task} run; use that task's inference script")
    model_args = _arguments_from(config, ModelArguments, run_dir / CONFIG)
    if eval_args.eval_dtype:
        model_args = replace(model_args, dtype=eval_args.eval_dtype)
    # The prompt format and task come from training; where the test data lives comes from this command, or, when
    # it names none, from the data directory the run trained from (if it is still there).
    data_dir = data_args.data_dir
    if data_dir is None and data_args.test_file is None and trained_data.data_dir \
            and Path(trained_data.data_dir).is_dir():
        data_dir = trained_data.data_dir
        log.info("test data from %s, the run's --data_dir (pass --data_dir or --test_file for other data)", data_dir)
    data_args = replace(trained_data, data_dir=data_dir, test_file=data_args.test_file,
                        max_test_rows=data_args.max_test_rows)
    task = get_task(data_args.task)
    check_eval_method(task, eval_args)
    out_dir = Path(eval_args.eval_output_dir or run_dir)
    writable_dir(out_dir, "--eval_output_dir" if eval_args.eval_output_dir else "--run_dir")
    labels = config.get("data", {}).get("labels", [])
    test, examples = test_rows(task, data_args, labels) if hub or not is_hub_source(task, "test", data_args) \
        else (None, None)
    name, flag = base_model(run_dir, config, eval_args)
    if eval_args.eval_dtype:
        compute_dtype(eval_args.eval_dtype, flag="--eval_dtype")  # this script's flag, checked as such
    try:
        model_runtime(model_args)
    except UsageError as err:  # the settings are the run's, not flags of this script
        raise UsageError(f"--run_dir: {run_dir} was trained with {err}") from None
    model = model_config(name, model_args.model_cache_dir, flag, hub)
    if model is not None:
        adapter_fits(model, adapter, name, flag)
        prompt_budget(model, eval_args, eval_args.max_new_tokens or task.max_new_tokens, data_args.max_length)
    return InferencePlan(run_dir, adapter, task, data_args, model_args, name, flag, labels, test, examples, out_dir)
