"""Evaluation of a fine-tuned run or of a base model (zero/few-shot): predictions.jsonl, then metrics.json.

Every test row gets a prediction row; rows whose generation failed carry an ``error`` and are scored as
wrong (classification) or as empty summaries (ROUGE), and counted in ``n_errors``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

from zephyr import preflight
from zephyr.config import DataArguments, EvalArguments, ModelArguments, to_dict
from zephyr.generation import greedy_generate, score_labels
from zephyr.io import atomic_write_json, atomic_write_jsonl
from zephyr.metrics import echoes_prompt
from zephyr.modeling import context_length, load_model, load_tokenizer, resolve_model_path
from zephyr.progress import Progress, phase_done
from zephyr.prompting import PromptBuilder
from zephyr.rundir import CONFIG, METRICS, PREDICTIONS, baseline_name, write_config
from zephyr.runinfo import peak_memory_gib
from zephyr.speed.dense import dense_for_inference
from zephyr.tasks import Task, get_task

log = logging.getLogger(__name__)
BASELINE_ROOT = "runs/baselines"


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
    memory = dict(memory_budget=eval_args.eval_memory_gib * 2**30 * 0.9, stats={})
    predictions, continuations, errors = _predict(model, tokenizer, builder, prompt_ids, examples, eval_args,
                                                  max_new_tokens, progress, memory)
    seconds = time.perf_counter() - start
    evaluated = phase_done("evaluating", start, f"{len(examples)} examples by {eval_args.eval_method}, "
                         f"{len(examples) / seconds if seconds else 0:.2f} examples/s")
    rows = [{"id": e.id, "reference": e.target, "prediction": p, "error": err, "prompt_tokens": len(enc.ids),
             "truncated": enc.truncated} for e, p, err, enc in zip(examples, predictions, errors, encoded)]
    cut = [_was_cut(p, text) for p, text in zip(predictions, continuations)]
    for row, was_cut, text in zip(rows, cut, continuations):
        if was_cut:  # kept, so that what the answer rule removed can be read
            row["continuation"] = text
    metrics = task.score([e.target for e in examples], predictions, builder.labels)
    metrics.update(
        n_empty=sum(not (p or "").strip() for p in predictions),
        # A label copied from the prompt's list of labels is an answer, not an echo: counted for free text only.
        n_echo=None if task.is_classification else sum(echoes_prompt(p, tokenizer.decode(enc.ids))
                                                       for p, enc in zip(predictions, encoded)),
        n_cut_at_turn_end=sum(cut), n_truncated=sum(e.truncated for e in encoded), prompt_token_budget=budget,
        eval_method=eval_args.eval_method, max_new_tokens=max_new_tokens, eval_batch_size=eval_args.eval_batch_size,
        eval_batch_tokens=eval_args.eval_batch_tokens, eval_memory_gib=eval_args.eval_memory_gib,
        planned_batch_tokens=memory["stats"].get("planned_batch_tokens"),
        oom_retries=memory["stats"].get("oom_retries"), merge_adapter=eval_args.merge_adapter,
        compute_dtype=str(model.get_input_embeddings().weight.dtype).removeprefix("torch."),  # the activations' dtype
        test_source=test.source, test_rows_available=len(test.examples), test_rows_dropped_empty=test.dropped,
        eval_seconds=round(seconds, 3), examples_per_s=round(len(examples) / seconds, 3) if seconds else None,
        **peak_memory_gib())
    if metrics["n_errors"]:
        log.warning("%d of %d test rows failed and are scored as wrong", metrics["n_errors"], len(examples))
    out_dir.mkdir(parents=True, exist_ok=True)
    _say_what_is_replaced(out_dir / METRICS, metrics)
    atomic_write_jsonl(out_dir / PREDICTIONS, rows)
    atomic_write_json(out_dir / METRICS, metrics)
    phase_done("writing results", evaluated, f"predictions.jsonl and metrics.json in {out_dir}")
    return metrics


def _predict(model, tokenizer, builder: PromptBuilder, prompt_ids: list, examples, eval_args: EvalArguments,
             max_new_tokens: int, progress, memory: dict) -> tuple[list, list, list]:
    """(predictions, continuations, errors), one each per prompt, by ``--eval_method``: loglik picks the likeliest
    label (its continuation is the label), generate decodes greedily and cuts the answer from the continuation."""
    if eval_args.eval_method == "loglik":
        picks, errors = score_labels(model, prompt_ids, builder.label_ids(examples[0].text),
                                     tokenizer.pad_token_id, eval_args.eval_batch_size, eval_args.eval_batch_tokens,
                                     progress, **memory)
        predictions = [builder.labels[p] if p is not None else None for p in picks]
        return predictions, predictions, errors
    continuations, errors = greedy_generate(model, tokenizer, prompt_ids, max_new_tokens, eval_args.eval_batch_size,
                                            eval_args.eval_batch_tokens, progress, **memory)
    return [builder.answer_from(text) for text in continuations], continuations, errors


def _say_what_is_replaced(path: Path, metrics: dict) -> None:
    """A re-evaluation replaces the earlier predictions.jsonl and metrics.json: say so, with the earlier score
    (--eval_output_dir keeps both)."""
    if not path.is_file():
        return
    from zephyr.io import read_json

    try:
        before = read_json(path)
    except Exception:  # an unreadable earlier file is replaced all the same
        before = {}
    key = next((k for k in ("accuracy", "rouge1") if k in metrics), None)
    earlier = f" (its {key} was {before[key]:.2f}, now {metrics[key]:.2f})" if key and isinstance(
        before.get(key), (int, float)) else ""
    log.warning("replacing the earlier evaluation in %s%s; --eval_output_dir keeps both", path.parent, earlier)


def _was_cut(prediction: str | None, continuation: str | None) -> bool:
    """Whether ``PromptBuilder.answer_from`` ended the answer before the continuation did (a plain-conversation
    model that went on with the next turn)."""
    return len((prediction or "").strip()) < len((continuation or "").strip())


def evaluate_run(data_args: DataArguments, eval_args: EvalArguments, task_name: str | None = None) -> dict:
    """Evaluate the adapter of a fine-tuning run on the test split, with the prompt format it was trained on."""
    from peft import PeftModel

    plan = preflight.inference(data_args, eval_args, task_name)
    started = time.perf_counter()
    tokenizer = load_tokenizer(str(plan.adapter))
    base = load_model(plan.model_args, resolve_model_path(plan.base_model, plan.model_args.model_cache_dir,
                                                          plan.base_flag), plan.base_flag)
    model = PeftModel.from_pretrained(base, plan.adapter)
    phase_done("loading model", started, f"{plan.base_model} + {plan.adapter}")
    builder = PromptBuilder(plan.task, tokenizer, plan.data_args.prompt_format, plan.labels)
    return evaluate(plan.task, model, tokenizer, builder, plan.test, plan.examples, eval_args, plan.out_dir,
                    plan.data_args.max_length)


def baseline_output_dir(data_args: DataArguments, model_args: ModelArguments, eval_args: EvalArguments) -> Path:
    return Path(eval_args.eval_output_dir or Path(BASELINE_ROOT) / baseline_name(data_args, model_args, eval_args))


def run_baseline(data_args: DataArguments, model_args: ModelArguments, eval_args: EvalArguments) -> tuple[Path, dict]:
    """Zero-shot (``--num_shots 0``) or few-shot evaluation of the base model, chat-formatted; returns the output
    directory and the metrics."""
    task = get_task(data_args.task)
    out_dir = baseline_output_dir(data_args, model_args, eval_args)
    plan = preflight.baseline(task, data_args, model_args, eval_args, out_dir)
    model_path = resolve_model_path(model_args.model_name_or_path, model_args.model_cache_dir)
    started = time.perf_counter()
    tokenizer = load_tokenizer(model_path)
    model = load_model(model_args, model_path)
    phase_done("loading model", started, f"{model_path} ({model_args.quantization})")
    data_args = replace(data_args, prompt_format="chat")  # what baselines prompt with (not a flag of theirs)
    write_config(out_dir / CONFIG, to_dict(data_args, model_args, eval_args), kind="baseline",
                 model_path=model_path, base_model=model_args.model_name_or_path,
                 data={"labels": plan.labels, "shot_ids": [s.id for s in plan.shots]})
    builder = PromptBuilder(task, tokenizer, data_args.prompt_format, plan.labels, plan.shots)
    return out_dir, evaluate(task, model, tokenizer, builder, plan.test, plan.examples, eval_args, out_dir)
