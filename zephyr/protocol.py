"""Which runs a table takes: the study's kind of numbers only, never a smoke test beside them.

A run is left out of the tables, and named with its reason, when
- it stopped at ``--max_steps`` (a smoke test),
- it was scored on part of the test split (``--max_test_rows``),
- it ran the quickstart's tiny random model or its generated data, or
- it is a fine-tune whose settings differ from its table's protocol.

A table's protocol, per task and model, is the settings a table holds fixed (``PROTOCOL_SETTINGS``; Tables 2 and 3
also all training rows). It is the suite's defaults (the study's settings) when any of the table's runs has them,
else the settings most of its runs share: a LoRA-grid run with another rank never fills a Table 2 cell silently.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from zephyr import rundir
from zephyr.io import read_json
from zephyr.rundir import CONFIG, METRICS

# Made by zephyr.embedded beside the tiny random model and the generated data, so a run on them can be told apart.
EMBEDDED_MARKER = "MADE_BY_ZEPHYR_EMBEDDED.txt"
EMBEDDED_MODEL_NAME = "embedded-tiny-mistral"  # the quickstart's folder for its tiny model
# (argument group, name) of the settings a table holds fixed for its fine-tunes.
PROTOCOL_SETTINGS = (("TrainArguments", "num_train_epochs"), ("ModelArguments", "lora_r"),
                     ("ModelArguments", "lora_alpha"), ("ModelArguments", "lora_dropout"),
                     ("TrainArguments", "learning_rate"), ("TrainArguments", "lr_scheduler_type"),
                     ("TrainArguments", "warmup_ratio"), ("TrainArguments", "per_device_train_batch_size"),
                     ("TrainArguments", "gradient_accumulation_steps"), ("TrainArguments", "packing"),
                     ("TrainArguments", "loss"), ("DataArguments", "max_length"), ("DataArguments", "prompt_format"),
                     ("ModelArguments", "quantization"))
TABLES_OF_TASK = {"newsgroups": "Table 1", "samsum": "Tables 2 and 3"}


def _has_marker(path: str | None, levels: int) -> bool:
    if not path or path.startswith("hub:"):
        return False
    folder = Path(path)
    return any((parent / EMBEDDED_MARKER).is_file() for parent in [folder, *folder.parents][:levels + 1])


def run_facts(run_dir: Path) -> dict:
    """What decides whether a run belongs in a table: its protocol settings and what makes it no study number."""
    config, metrics = read_json(run_dir / CONFIG), read_json(run_dir / METRICS)
    args = config.get("arguments", {})
    reasons = []
    max_steps = args.get("TrainArguments", {}).get("max_steps")
    if isinstance(max_steps, int) and max_steps > 0:
        reasons.append(f"a smoke test (--max_steps {max_steps})")
    scored, available = metrics.get("n_examples"), metrics.get("test_rows_available")
    if isinstance(scored, int) and isinstance(available, int) and scored < available:
        reasons.append(f"scored on {scored:,} of {available:,} test rows (--max_test_rows)")
    model = config.get("base_model") or args.get("ModelArguments", {}).get("model_name_or_path", "")
    if rundir.model_short_name(model) == EMBEDDED_MODEL_NAME or _has_marker(config.get("model_path") or model, 0):
        reasons.append("the quickstart's tiny random model")
    if _has_marker(metrics.get("test_source"), 2):
        reasons.append("the quickstart's generated data")
    settings = {name: args.get(group, {}).get(name) for group, name in PROTOCOL_SETTINGS}
    if config.get("kind") == "finetune" and args.get("DataArguments", {}).get("task") == "samsum":
        settings["train_fraction"] = args["DataArguments"].get("train_fraction")
    return {"not_a_study_number": reasons, "settings": settings if config.get("kind") == "finetune" else None}


def suite_defaults(task: str) -> dict:
    """The protocol settings a run of ``task`` gets by default: the study's (README: one exception, packing)."""
    from dataclasses import fields

    from zephyr.config import DataArguments, ModelArguments, TrainArguments
    from zephyr.tasks import TASKS

    defaults = {f.name: f.default for cls in (DataArguments, ModelArguments, TrainArguments) for f in fields(cls)}
    defaults.update(TASKS[task].defaults if task in TASKS else {})
    settings = {name: defaults.get(name) for _, name in PROTOCOL_SETTINGS}
    if task == "samsum":
        settings["train_fraction"] = 1.0
    return settings


def _describe(settings: dict, protocol: dict) -> str:
    differ = [name for name in protocol if settings.get(name) != protocol[name]]
    mine = ", ".join(f"{name} {settings.get(name)}" for name in differ)
    theirs = ", ".join(f"{name} {protocol[name]}" for name in differ)
    return f"{mine}, where the table's protocol has {theirs}"


def _off_protocol(runs: list[dict]) -> dict[int, str]:
    """id(row) -> reason, for the fine-tunes of one task and model whose settings are not their table's protocol."""
    counts = Counter(_key(r["facts"]["settings"]) for r in runs)
    defaults = _key(suite_defaults(runs[0]["task"]))
    protocol = dict(defaults if defaults in counts else counts.most_common(1)[0][0])
    return {id(r): _describe(r["facts"]["settings"], protocol) for r in runs if r["facts"]["settings"] != protocol}


def _key(settings: dict) -> tuple:
    return tuple(sorted(settings.items(), key=lambda item: item[0]))


def select(rows: list[dict]) -> tuple[list[dict], dict[int, str]]:
    """(the rows the tables take, id(row) -> why, for the rows left out). Rows without ``facts`` (built by hand,
    not read from a run directory) are all taken."""
    reasons = {id(r): "; ".join(r["facts"]["not_a_study_number"]) for r in rows
               if r.get("facts") and r["facts"]["not_a_study_number"]}
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if id(r) not in reasons and r.get("facts") and r["facts"]["settings"] is not None \
                and r["variant"] in _table_variants():
            groups.setdefault((r["task"], r["model"]), []).append(r)
    for runs in groups.values():
        reasons.update(_off_protocol(runs))
    tables = {id(r): TABLES_OF_TASK.get(r["task"], "the tables") for r in rows}
    return [r for r in rows if id(r) not in reasons], {key: f"{tables[key]}: {why}" for key, why in reasons.items()}


def _table_variants() -> set[str]:
    return {variant.name for variant in rundir.VARIANTS}
