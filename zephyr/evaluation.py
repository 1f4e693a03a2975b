"""Evaluation of a fine-tuned run or of a base model (zero/few-shot): predictions.jsonl, then metrics.json.

Every test row gets a prediction row; rows whose generation failed carry an ``error`` and are scored as
wrong (classification) or as empty summaries (ROUGE), and counted in ``n_errors``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

from zephyr.config import DataArguments, EvalArguments, ModelArguments, to_dict
from zephyr.errors import UsageError
from zephyr.generation import greedy_generate, score_labels
from zephyr.io import atomic_write_json, atomic_write_jsonl, read_json
from zephyr.modeling import context_length, dense_for_inference, load_model, load_tokenizer, resolve_model_path
from zephyr.progress import Progress, phase_done
from zephyr.prompting import PromptBuilder
from zephyr.runinfo import model_short_name, write_config
from zephyr.tasks import Task, get_task
from zephyr.training import ADAPTER_DIR, peak_memory_gib

log = logging.getLogger(__name__)


def check_eval_method(task: Task, eval_args: EvalArguments) -> None:
    if eval_args.eval_method == "loglik" and not task.is_classification:
        raise UsageError(f"--eval_method: loglik needs a classification task, not {task.name}")


def load_test(task: Task, data_args: DataArguments, labels: list[str]):
    test = task.load_split("test", data_args.data_dir, data_args.test_file)
    examples = test.examples[: data_args.max_test_rows] if data_args.max_test_rows else test.examples
    if task.is_classification:
        unseen = sorted({e.target for e in examples} - set(labels))
        if unseen:
            raise UsageError(f"{test.source}: test label {unseen[0]!r} never appears in the training labels "
                             f"({len(unseen)} unseen label(s))")
    return test, examples


def evaluate(task: Task, model, tokenizer, builder: PromptBuilder, test, examples, eval_args: EvalArguments,
             out_dir: Path, trained_max_length: int | None = None) -> dict:
    """Score ``examples`` and write ``predictions.jsonl`` and ``metrics.json`` into ``out_dir``.

    Prompt budget: ``--max_prompt_tokens`` if given; otherwise the model's context minus the new tokens, and
    for a fine-tuned model at most its training ``max_length`` (it never saw longer inputs).
    """
    max_new_tokens = eval_args.max_new_tokens or task.max_new_tokens
    budget = eval_args.max_prompt_tokens or min(context_length(model) - max_new_tokens,
                                                trained_max_length or context_length(model))
    builder.fit_shots(budget)
    encoded = [builder.encode_prompt(e.text, budget) for e in examples]
    prompt_ids = [e.ids for e in encoded]
    if eval_args.merge_adapter:
        model = dense_for_inference(model)
    model.eval()
    start = time.perf_counter()
    progress = Progress("evaluating", len(examples), "examples").update
    if eval_args.eval_method == "loglik":
        picks, errors = score_labels(model, prompt_ids, builder.label_ids(examples[0].text),
                                     tokenizer.pad_token_id, eval_args.eval_batch_size, eval_args.eval_batch_tokens,
                                     progress)
        predictions = [builder.labels[p] if p is not None else None for p in picks]
    else:
        predictions, errors = greedy_generate(model, tokenizer, prompt_ids, max_new_tokens,
                                              eval_args.eval_batch_size, eval_args.eval_batch_tokens, progress)
    seconds = time.perf_counter() - start
    evaluated = phase_done("evaluating", start, f"{len(examples)} examples by {eval_args.eval_method}, "
                         f"{len(examples) / seconds if seconds else 0:.2f} examples/s")
    rows = [{"id": e.id, "reference": e.target, "prediction": p, "error": err, "prompt_tokens": len(enc.ids),
             "truncated": enc.truncated} for e, p, err, enc in zip(examples, predictions, errors, encoded)]
    metrics = task.score([e.target for e in examples], predictions, builder.labels)
    metrics.update(
        n_truncated=sum(e.truncated for e in encoded), prompt_token_budget=budget,
        eval_method=eval_args.eval_method, max_new_tokens=max_new_tokens, eval_batch_size=eval_args.eval_batch_size,
        eval_batch_tokens=eval_args.eval_batch_tokens,
        merge_adapter=eval_args.merge_adapter,
        test_source=test.source, test_rows_available=len(test.examples), test_rows_dropped_empty=test.dropped,
        eval_seconds=round(seconds, 3), examples_per_s=round(len(examples) / seconds, 3) if seconds else None,
        **peak_memory_gib())
    if metrics["n_errors"]:
        log.warning("%d of %d test rows failed and are scored as wrong", metrics["n_errors"], len(examples))
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_jsonl(out_dir / "predictions.jsonl", rows)
    atomic_write_json(out_dir / "metrics.json", metrics)
    phase_done("writing results", evaluated, f"predictions.jsonl and metrics.json in {out_dir}")
    return metrics


def _arguments_from(config: dict, cls, source: Path):
    try:
        return cls(**config["arguments"][cls.__name__])
    except (KeyError, TypeError) as err:
        raise UsageError(f"{source}: no usable {cls.__name__} ({err})") from None


def evaluate_run(data_args: DataArguments, eval_args: EvalArguments, task_name: str | None = None) -> dict:
    """Evaluate the adapter of a fine-tuning run on the test split, with the prompt format it was trained on."""
    from peft import PeftModel

    if not eval_args.run_dir:
        raise UsageError("--run_dir: required (a directory written by a fine-tuning script)")
    run_dir = Path(eval_args.run_dir)
    adapter = run_dir / ADAPTER_DIR
    if not (adapter / "adapter_config.json").is_file():
        raise UsageError(f"--run_dir: {run_dir}: no adapter ({ADAPTER_DIR}/adapter_config.json); "
                         "did training finish?")
    config = read_json(run_dir / "config.json")
    trained_data = _arguments_from(config, DataArguments, run_dir / "config.json")
    if task_name and trained_data.task != task_name:
        raise UsageError(f"--run_dir: {run_dir} is a {trained_data.task} run; use that task's inference script")
    model_args = _arguments_from(config, ModelArguments, run_dir / "config.json")
    # The prompt format and task come from training; where the test data lives comes from this command.
    data_args = replace(trained_data, data_dir=data_args.data_dir, test_file=data_args.test_file,
                        max_test_rows=data_args.max_test_rows)
    task = get_task(data_args.task)
    check_eval_method(task, eval_args)
    labels = config.get("data", {}).get("labels", [])
    test, examples = load_test(task, data_args, labels)
    started = time.perf_counter()
    tokenizer = load_tokenizer(str(adapter))
    model = PeftModel.from_pretrained(load_model(model_args, config.get("model_path")), adapter)
    phase_done("loading model", started, f"{config.get('model_path')} + {adapter}")
    builder = PromptBuilder(task, tokenizer, data_args.prompt_format, labels)
    out_dir = Path(eval_args.eval_output_dir or run_dir)
    return evaluate(task, model, tokenizer, builder, test, examples, eval_args, out_dir, data_args.max_length)


def baseline_name(data_args: DataArguments, model_args: ModelArguments, eval_args: EvalArguments) -> str:
    shots = f"{eval_args.num_shots}shot" if eval_args.num_shots else "zeroshot"
    parts = [data_args.task, model_short_name(model_args.model_name_or_path), shots, eval_args.eval_method]
    if model_args.quantization != "4bit":
        parts.append(f"q{model_args.quantization}")
    return "_".join(parts)


def run_baseline(data_args: DataArguments, model_args: ModelArguments, eval_args: EvalArguments,
                 output_root: str = "runs/baselines") -> tuple[Path, dict]:
    """Zero-shot (``--num_shots 0``) or few-shot evaluation of the base model, chat-formatted; returns the output
    directory and the metrics."""
    task = get_task(data_args.task)
    check_eval_method(task, eval_args)
    model_path = resolve_model_path(model_args.model_name_or_path, model_args.model_cache_dir)
    needs_train = task.is_classification or eval_args.num_shots > 0
    train = task.load_split("train", data_args.data_dir, data_args.train_file) if needs_train else None
    labels = task.labels(train.examples) if train else []
    shots = task.pick_shots(train.examples, eval_args.num_shots, data_args.data_seed) if train else []
    test, examples = load_test(task, data_args, labels)
    out_dir = Path(eval_args.eval_output_dir or Path(output_root) / baseline_name(data_args, model_args, eval_args))
    started = time.perf_counter()
    tokenizer = load_tokenizer(model_path)
    model = load_model(model_args, model_path)
    phase_done("loading model", started, f"{model_path} ({model_args.quantization})")
    write_config(out_dir / "config.json", to_dict(data_args, model_args, eval_args), kind="baseline",
                 model_path=model_path, data={"labels": labels, "shot_ids": [s.id for s in shots]})
    builder = PromptBuilder(task, tokenizer, "chat", labels, shots)
    return out_dir, evaluate(task, model, tokenizer, builder, test, examples, eval_args, out_dir)

