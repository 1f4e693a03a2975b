"""The study's protocol, written once: its four fine-tuning variants, the settings of Tables 1 and 2, the LoRA grid,
and the expansion of each sweep's variables into the list of runs it makes (name, settings, command).

The three shell sweeps (sample_ablate.sh, run_lora.sh, baseline_inference.sh) are entry points over ``expand``;
the shipped configs/table*.yaml and configs/lora_grid.yaml are checked against ``config_settings`` by a test.
A sweep's run name spells only what that sweep varies, each value as the sweep was given it (frac1.0, ep2), so a
sweep started again finds the runs it finished.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from zephyr.config import ModelArguments
from zephyr.errors import UsageError

NEFTUNE_ALPHA = 5.0  # the study's NEFTune noise


@dataclass(frozen=True)
class Variant:
    """One of the study's four fine-tuning variants: a column of Tables 1 and 2."""

    name: str  # as the tables print it
    key: str  # sample_ablate.sh's word for it (VARIANTS=...) and the end of its run names
    lora_targets: str = "attention"
    lora_lm_head: bool = False
    neftune_alpha: float | None = None

    def lora_settings(self) -> dict:
        """The variant's LoRA settings as ModelArguments fields (the benchmark's presets)."""
        return {"lora_targets": self.lora_targets, "lora_lm_head": self.lora_lm_head}

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


def variant(key: str) -> Variant:
    keys = {v.key: v for v in VARIANTS}
    if key not in keys:
        raise UsageError(f"VARIANTS: unknown variant {key!r} (choose {', '.join(keys)})")
    return keys[key]


@dataclass(frozen=True)
class Table:
    """A table's fine-tuning protocol: its task with the task's own defaults (rank, epochs), the study's length."""

    number: int
    task: str
    max_length: int = 512
    baselines: tuple[int, ...] = ()  # shots of the table's base-model rows (0: zero-shot)

    def settings(self) -> dict:
        from zephyr.tasks import get_task

        return {"task": self.task, **get_task(self.task).defaults, "max_length": self.max_length}


TABLES = (Table(1, "newsgroups"), Table(2, "samsum", baselines=(0, 3)))
STUDY_FRACTIONS = ("0.025", "0.05", "0.1", "0.25", "0.5", "1.0")  # Table 1's rows
BASELINE_NAMES = {0: "zero_shot", 3: "few_shot"}  # configs/table2_<name>.yaml


@dataclass(frozen=True)
class LoraGrid:
    """The study's LoRA grid on SAMSum: epochs x rank x dropout x NEFTune (0: off), LoRA on q_proj,v_proj."""

    epochs: tuple[str, ...] = ("2", "5", "10", "20", "30", "50")
    ranks: tuple[str, ...] = ("2", "4", "8", "16")
    dropouts: tuple[str, ...] = ("0.1", "0.2", "0.5")
    neftune: tuple[str, ...] = ("0", f"{NEFTUNE_ALPHA:g}")
    fixed: dict = field(default_factory=lambda: {"task": "samsum", "lora_targets": "attention",
                                                 "lora_lm_head": False, "lora_alpha": 16, "max_length": 512})


LORA_GRID = LoraGrid()


def config_settings(name: str) -> dict:
    """The settings a shipped config file (configs/<name>.yaml) must hold: the one definition above."""
    for table in TABLES:
        for v in VARIANTS:
            if name == f"table{table.number}_{v.key}" or (name == f"table{table.number}_qlora" and v.key == "base"):
                return {**table.settings(), "lora_targets": v.lora_targets, "lora_lm_head": v.lora_lm_head,
                        **({"neftune_alpha": v.neftune_alpha} if v.neftune_alpha else {}), "do_eval": True}
        for shots in table.baselines:
            if name == f"table{table.number}_{BASELINE_NAMES[shots]}":
                return {"task": table.task, "num_shots": shots, "eval_method": "generate"}
    if name == "lora_grid":
        return {**LORA_GRID.fixed, "do_eval": True}
    raise KeyError(name)


# -- the sweeps' defaults and their expansion into runs --------------------------------------------------------
SWEEP_DEFAULTS = {
    "ablation": {"TASK": "newsgroups", "FRACTIONS": " ".join(STUDY_FRACTIONS),
                 "VARIANTS": " ".join(v.key for v in VARIANTS), "EPOCHS": ""},
    "lora_grid": {"TASK": "samsum", "EPOCHS_LIST": " ".join(LORA_GRID.epochs), "RANKS": " ".join(LORA_GRID.ranks),
                  "DROPOUTS": " ".join(LORA_GRID.dropouts), "NEFTUNE": " ".join(LORA_GRID.neftune),
                  "TRAIN_FRACTION": "1.0"},
    "baseline": {"TASKS": "newsgroups samsum", "SHOTS": "0 3", "METHOD": "generate"},
}
COMMON_DEFAULTS = {"MODEL": "HuggingFaceH4/zephyr-7b-beta", "DATA_DIR": "", "OUT_ROOT": "runs/sweeps", "GPUS": "",
                   "RUNS_PER_GPU": "1", "DRY_RUN": "0", "PYTHON": "python", "MAX_TEST_ROWS": "", "EXTRA_ARGS": "",
                   "BACKEND": ""}
BASELINE_SCRIPT = "zephyr_baseline_inference.py"


@dataclass
class Run:
    """One run of a sweep: its directory (name), the values the sweep varied, and the command that makes it."""

    run_dir: Path
    command: list[str]
    settings: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.run_dir.name

    def done(self) -> bool:
        """Finished with these very settings (zephyr/sweeps/identity.py); a finished run of others is an error."""
        from zephyr.sweeps.identity import is_done

        return is_done(self.run_dir, self.command)


def model_short_name(model_name_or_path: str) -> str:
    stem = Path(model_name_or_path.rstrip("/")).name
    return stem.removesuffix(".gguf") or "model"


def _finetune_script(task: str, scripts: Path, variable: str = "TASK") -> list[str]:
    """The script (and its --task flag, for the generic one) that fine-tunes a registered task."""
    from zephyr.cli import GENERIC_FINETUNE_SCRIPT, finetune_script
    from zephyr.tasks import TASKS

    if task not in TASKS:
        raise UsageError(f"{variable}: unknown task {task!r} (choose {' or '.join(TASKS)})")
    script = finetune_script(task)
    return [str(scripts / script), *(["--task", task] if script == GENERIC_FINETUNE_SCRIPT else [])]


def _common(values: dict) -> tuple[list[str], list[str], list[str]]:
    """The flags every run of a sweep gets: model, data; test rows; EXTRA_ARGS (split on spaces, as the shell)."""
    head = ["--model_name_or_path", values["MODEL"]] + (["--data_dir", values["DATA_DIR"]] if values["DATA_DIR"] else [])
    rows = ["--max_test_rows", values["MAX_TEST_ROWS"]] if values["MAX_TEST_ROWS"] else []
    return head, rows, values["EXTRA_ARGS"].split()


def ablation(values: dict, scripts: Path) -> list[Run]:
    """sample_ablate.sh: each training fraction x each variant, fine-tuned then evaluated."""
    task, out = values["TASK"], Path(values["OUT_ROOT"])
    script, variants = _finetune_script(task, scripts), [variant(k) for k in values["VARIANTS"].split()]
    head, rows, extra = _common(values)
    epochs = ["--num_train_epochs", values["EPOCHS"]] if values["EPOCHS"] else []
    runs = []
    for fraction in values["FRACTIONS"].split():
        for v in variants:
            name = f"{task}_{model_short_name(values['MODEL'])}_frac{fraction}_{v.key}"
            runs.append(Run(out / name, [values["PYTHON"], *script, *head, "--output_root", str(out), "--run_name",
                                         name, "--train_fraction", fraction, *v.flags(), *epochs, *rows,
                                         "--do_eval", "True", *extra],
                            {"task": task, "train_fraction": fraction, "variant": v.key}))
    return runs


def lora_grid(values: dict, scripts: Path) -> list[Run]:
    """run_lora.sh: epochs x rank x dropout x NEFTune (0: off)."""
    task, out, fraction = values["TASK"], Path(values["OUT_ROOT"]), values["TRAIN_FRACTION"]
    script = _finetune_script(task, scripts)
    head, rows, extra = _common(values)
    runs = []
    for epochs in values["EPOCHS_LIST"].split():
        for rank in values["RANKS"].split():
            for dropout in values["DROPOUTS"].split():
                for alpha in values["NEFTUNE"].split():
                    name = (f"{task}_{model_short_name(values['MODEL'])}_frac{fraction}_r{rank}_d{dropout}"
                            f"_ep{epochs}_neft{alpha}")
                    neftune = [] if alpha == "0" else ["--neftune_alpha", alpha]
                    runs.append(Run(out / name, [
                        values["PYTHON"], *script, *head, "--output_root", str(out), "--run_name", name,
                        "--train_fraction", fraction, "--num_train_epochs", epochs, "--lora_r", rank,
                        "--lora_dropout", dropout, *neftune, *rows, "--do_eval", "True", *extra],
                        {"task": task, "num_train_epochs": epochs, "lora_r": rank, "lora_dropout": dropout,
                         "neftune_alpha": alpha}))
    return runs


def baselines(values: dict, scripts: Path) -> list[Run]:
    """baseline_inference.sh: each task x each number of shots, the base model evaluated."""
    out = Path(values["OUT_ROOT"])
    head, rows, extra = _common(values)
    runs = []
    for task in values["TASKS"].split():
        _finetune_script(task, scripts, "TASKS")  # a known task
        for shots in values["SHOTS"].split():
            name = f"{task}_{model_short_name(values['MODEL'])}_baseline_{shots}shot_{values['METHOD']}"
            runs.append(Run(out / name, [values["PYTHON"], str(scripts / BASELINE_SCRIPT), "--task", task, *head,
                                         "--num_shots", shots, "--eval_method", values["METHOD"],
                                         "--eval_output_dir", str(out / name), *rows, *extra],
                            {"task": task, "num_shots": shots, "eval_method": values["METHOD"]}))
    return runs


SWEEPS = {"ablation": ablation, "lora_grid": lora_grid, "baseline": baselines}


def expand(sweep: str, values: dict, scripts: Path) -> list[Run]:
    """The runs of ``sweep`` (a key of SWEEPS) for its variables ``values`` (defaults filled in where missing)."""
    return SWEEPS[sweep]({**COMMON_DEFAULTS, **SWEEP_DEFAULTS[sweep], **values}, Path(scripts))
