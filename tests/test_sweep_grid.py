"""The study's protocol and the sweeps' grids, expanded in Python once: runs, names, flags, and the shipped configs
checked against the one definition. No model needed."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from conftest import REPO
from zephyr.errors import UsageError
from zephyr.rundir import variant_of
from zephyr.sweeps.entry import main, usage
from zephyr.sweeps.grid import LORA_GRID, STUDY_FRACTIONS, VARIANTS, config_settings, expand

SCRIPTS = REPO / "scripts"
SMOLLM = "../shared/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"


def test_table1_is_24_runs_named_by_fraction_and_variant():
    runs = expand("ablation", {"MODEL": "HuggingFaceH4/zephyr-7b-beta"}, SCRIPTS)
    assert len(runs) == 24 and len({r.name for r in runs}) == 24
    assert [r.name for r in runs[:4]] == [f"newsgroups_zephyr-7b-beta_frac0.025_{k}"
                                          for k in ("base", "neftune", "all", "neftune_all")]
    assert runs[-1].name == "newsgroups_zephyr-7b-beta_frac1.0_neftune_all"
    assert {r.settings["train_fraction"] for r in runs} == set(STUDY_FRACTIONS)
    assert all(str(r.run_dir) == f"runs/sweeps/{r.name}" for r in runs)
    assert runs[-1].command == ["python", str(SCRIPTS / "zephyr_classification.py"), "--model_name_or_path",
                                "HuggingFaceH4/zephyr-7b-beta", "--output_root", "runs/sweeps", "--run_name",
                                runs[-1].name, "--train_fraction", "1.0", "--lora_targets", "all", "--lora_lm_head",
                                "True", "--neftune_alpha", "5", "--do_eval", "True"]


def test_the_lora_grid_is_144_runs_and_the_baselines_4():
    grid = expand("lora_grid", {}, SCRIPTS)
    assert len(grid) == len(LORA_GRID.epochs) * len(LORA_GRID.ranks) * len(LORA_GRID.dropouts) * 2 == 144
    assert grid[0].name == "samsum_zephyr-7b-beta_frac1.0_r2_d0.1_ep2_neft0"
    assert "--neftune_alpha" not in grid[0].command and grid[1].command[-4:-2] == ["--neftune_alpha", "5"]
    baselines = expand("baseline", {"MAX_TEST_ROWS": "9", "EXTRA_ARGS": "--eval_batch_size  64"}, SCRIPTS)
    assert [r.name for r in baselines] == [f"{t}_zephyr-7b-beta_baseline_{s}shot_generate"
                                           for t in ("newsgroups", "samsum") for s in (0, 3)]
    assert baselines[0].command[-6:] == ["--eval_output_dir", f"runs/sweeps/{baselines[0].name}", "--max_test_rows",
                                         "9", "--eval_batch_size", "64"]  # EXTRA_ARGS split on spaces, as the shell


# Names that runs already on disk carry (the first three are committed under results/smollm2/grids/runs/): a
# restarted sweep must find them.
@pytest.mark.parametrize("sweep, values, name", [
    ("ablation", {"MODEL": SMOLLM, "FRACTIONS": "1.0", "VARIANTS": "neftune_all"},
     "newsgroups_SmolLM2-135M-Instruct.Q4_1_frac1.0_neftune_all"),
    ("ablation", {"TASK": "samsum", "MODEL": SMOLLM, "FRACTIONS": "0.1", "VARIANTS": "base"},
     "samsum_SmolLM2-135M-Instruct.Q4_1_frac0.1_base"),
    ("baseline", {"TASKS": "samsum", "MODEL": SMOLLM, "SHOTS": "3"},
     "samsum_SmolLM2-135M-Instruct.Q4_1_baseline_3shot_generate"),
    ("ablation", {"MODEL": "org/model/", "FRACTIONS": "1", "VARIANTS": "all"}, "newsgroups_model_frac1_all"),
    ("lora_grid", {"EPOCHS_LIST": "2.0", "RANKS": "4", "DROPOUTS": "0.1", "NEFTUNE": "5", "MODEL": "tiny",
                   "TRAIN_FRACTION": "0.5"}, "samsum_tiny_frac0.5_r4_d0.1_ep2.0_neft5"),
    ("baseline", {"TASKS": "newsgroups", "MODEL": "tiny", "SHOTS": "0", "METHOD": "loglik"},
     "newsgroups_tiny_baseline_0shot_loglik"),
])
def test_run_names_spell_what_the_sweep_varies_as_given(sweep, values, name):
    assert [r.name for r in expand(sweep, values, SCRIPTS)] == [name]


def test_the_committed_sweep_runs_are_named_as_the_grid_names_them():
    """results/smollm2/grids/runs was made by sample_ablate.sh and baseline_inference.sh: each directory's recorded
    arguments, expanded as a one-run grid, give back its name."""
    runs = sorted(p.parent for p in (REPO / "results" / "smollm2" / "grids" / "runs").glob("*/config.json"))
    assert len(runs) == 30
    for run in runs:
        args = json.loads((run / "config.json").read_text())["arguments"]
        data, model = args["DataArguments"], args["ModelArguments"]
        if "TrainArguments" not in args:
            values = {"TASKS": data["task"], "SHOTS": str(args["EvalArguments"]["num_shots"]),
                      "METHOD": args["EvalArguments"]["eval_method"]}
            sweep = "baseline"
        else:
            key = next(v.key for v in VARIANTS if v.name == variant_of(args))
            values, sweep = {"TASK": data["task"], "FRACTIONS": str(data["train_fraction"]), "VARIANTS": key}, "ablation"
        assert [r.name for r in expand(sweep, {**values, "MODEL": model["model_name_or_path"]}, SCRIPTS)] == [run.name]


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("table*.yaml")) + [REPO / "configs" / "lora_grid.yaml"],
                         ids=lambda p: p.stem)
def test_each_shipped_study_config_holds_the_protocol_of_the_one_definition(path):
    assert yaml.safe_load(path.read_text()) == config_settings(path.stem)


@pytest.mark.parametrize("table, task", [(1, "newsgroups"), (2, "samsum")])
def test_a_tables_sweep_runs_resolve_to_its_shipped_configs(table, task):
    """The run sample_ablate.sh makes for a cell and the command its config file documents resolve to the same
    settings (the study's rank, epochs, length, modules and NEFTune)."""
    from zephyr.sweeps.identity import _comparable, planned

    script = "zephyr_classification.py" if task == "newsgroups" else "zephyr_summarization.py"
    for variant in VARIANTS:
        [run] = expand("ablation", {"TASK": task, "FRACTIONS": "1.0", "VARIANTS": variant.key}, SCRIPTS)
        name = f"table{table}_{variant.key}" if (table, variant.key) != (2, "base") else "table2_qlora"
        from_config = ["python", script, "--config", str(REPO / "configs" / f"{name}.yaml")]
        assert _comparable(*planned(run.command)) == _comparable(*planned(from_config)), name


def test_help_documents_the_defaults_of_the_one_definition():
    text = usage(REPO / "run_lora.sh")
    assert f'EPOCHS_LIST="{" ".join(LORA_GRID.epochs)}"' in text and f'RANKS="{" ".join(LORA_GRID.ranks)}"' in text
    ablation = usage(REPO / "sample_ablate.sh")
    assert f'FRACTIONS="{" ".join(STUDY_FRACTIONS)}"' in ablation
    assert f'VARIANTS="{" ".join(v.key for v in VARIANTS)}"' in ablation
    assert "Variables of every sweep" in ablation and "BACKEND=" in ablation


@pytest.mark.parametrize("argv, env, message", [
    (["--variants", "base both"], {}, "VARIANTS: unknown variant 'both' (choose base, neftune, all, neftune_all)"),
    (["--task", "mnist"], {}, "TASK: unknown task 'mnist' (choose newsgroups or samsum)"),
    (["--gpus", "0,0"], {}, "GPUS: '0,0' names a GPU twice"),
    ([], {"RUNS_PER_GPU": "two"}, "RUNS_PER_GPU: must be a positive whole number, got 'two'"),
    ([], {"DRY_RUN": "yes"}, "DRY_RUN: must be 0 or 1, got 'yes'"),
    (["--backend", "slurm", "--dry_run"], {}, "BACKEND: unknown backend 'slurm' (choose local or ray)"),
    (["--out_root"], {}, "flag --out_root needs a value"),
    (["samsum"], {}, "unexpected argument 'samsum' (flags look like --name value)"),
])
def test_bad_sweep_input_is_one_error_line_before_any_work(tmp_path, capsys, argv, env, message):
    code = main(["ablation", "--script", str(REPO / "sample_ablate.sh"), "--out_root", str(tmp_path / "out"), *argv],
                environ={"MODEL": "tiny", **env})
    assert code == 2 and capsys.readouterr().err == f"error: {message}\n"
    assert not (tmp_path / "out").exists()


def test_a_local_sweep_does_not_import_ray(tmp_path):
    code = ("import sys; from zephyr.sweeps.entry import main; "
            f"assert main(['baseline', '--script', {str(REPO / 'baseline_inference.sh')!r}, '--dry_run', "
            f"'--out_root', {str(tmp_path)!r}], environ={{'MODEL': 'tiny'}}) == 0; "
            "assert 'ray' not in sys.modules, 'ray was imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={k: v for k, v in __import__("os").environ.items() if k != "RAY_ADDRESS"})
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 4


def test_unknown_variant_names_the_variable():
    with pytest.raises(UsageError, match="VARIANTS: unknown variant 'none'"):
        expand("ablation", {"VARIANTS": "none"}, SCRIPTS)
