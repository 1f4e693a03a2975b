"""The quality benchmark's report by its exact text and values: the Markdown table, the protocol rows, the commit and
GPU of the runs, the run order of a dry run, and its arguments."""

from __future__ import annotations

import io
import json

import pytest

from zephyr.errors import UsageError
from zephyr.quality import Plan, QualityArguments, _with, run, to_markdown


def test_the_markdown_report_is_exact():
    summary = {
        "commit": "abc1234", "gpu": "NVIDIA H100", "seeds": [1, 2],
        "levers": [
            {"name": "lever A", "task": "samsum", "metric": "rouge1", "seeds": [1, 2], "plain": [40.0, 41.0],
             "fast": [40.5, 41.5], "mean_delta": 0.5, "stderr": 0.0, "within_noise": False, "required": True},
            {"name": "lever B", "task": "newsgroups", "metric": "accuracy", "seeds": [1, 2, 3],
             "plain": [50.0, None, 52.0], "fast": [50.25, None, 52.5], "mean_delta": 0.375, "stderr": 0.125,
             "within_noise": True, "required": False},
            {"name": "lever C", "task": "samsum", "metric": "rouge1", "seeds": [1], "plain": [None], "fast": [None],
             "mean_delta": None, "stderr": None, "within_noise": None, "required": True}],
        "protocols": [{"task": "samsum",
                       "packed_rows": {"config": "packed_eager", "mean": 38.0, "stderr": 0.5,
                                       "optimizer_steps": [70, 70], "train_s": [31.4, 29.6], "eval_s": [12.0, 11.5]},
                       "examples": {"config": "examples", "mean": None, "stderr": None, "optimizer_steps": [],
                                    "train_s": [], "eval_s": []}}]}
    assert to_markdown(summary) == (
        "Commit `abc1234`, NVIDIA H100, seeds [1, 2] (more where a lever's seeds column says so).\n"
        "\n"
        "| lever | task | metric | seeds | plain | fast | Δ fast − plain | within noise |\n"
        "|---|---|---|---|---|---|---|---|\n"
        "| lever A | samsum | rouge1 | 2 | 40.50 ± 0.50 | 41.00 ± 0.50 | 0.50 ± 0.00 | **no** |\n"
        "| lever B | newsgroups | accuracy | 3 | 51.00 ± 1.00 | 51.38 ± 1.12 | 0.38 ± 0.12 | yes (a different method) |\n"
        "| lever C | samsum | rouge1 | 1 | — | — | — | — |\n"
        "\n"
        "| task | protocol | metric | optimizer steps | train s | eval s |\n"
        "|---|---|---|---|---|---|\n"
        "| samsum | packed rows (packed_eager) | 38.00 ± 0.50 | 70, 70 | 31, 30 | 12, 12 |\n"
        "| samsum | examples (examples) | — | — | — | — |\n")


def _run_dir(root, name, commit, gpu, metric=None, train=None):
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"git_commit": commit, "device": {"name": gpu}}))
    if metric is not None:
        (folder / "metrics.json").write_text(json.dumps({"rouge1": metric, "eval_seconds": train[2]}))
        (folder / "train_metrics.json").write_text(json.dumps({"train_runtime_s": train[0], "train_steps": train[1]}))
    return folder


def test_the_summary_names_the_runs_commit_and_gpu_and_their_protocol_rows(tmp_path):
    plan = Plan("m.gguf", "data", tmp_path, seeds=[1, 2, 3])
    _run_dir(tmp_path, "packed_eager_seed1", "c1", "H100", 38.0, (30.0, 70, 12.0))
    _run_dir(tmp_path, "packed_eager_seed3", "c1", "H100", 40.0, (32.0, 71, 13.0))  # seed 2 never finished
    summary = plan.summary()
    assert (summary["commit"], summary["gpu"]) == ("c1", "H100")
    packed = summary["protocols"][0]["packed_rows"]
    assert packed["values"] == [38.0, 40.0] and packed["mean"] == 39.0 and packed["stderr"] == pytest.approx(1.0)
    assert (packed["train_s"], packed["eval_s"], packed["optimizer_steps"]) == ([30.0, 32.0], [12.0, 13.0], [70, 71])
    assert summary["protocols"][0]["examples"]["values"] == [] and summary["protocols"][0]["metric"] == "rouge1"
    _run_dir(tmp_path, "examples_seed1", "c2", "H200")
    summary = plan.summary()
    assert (summary["commit"], summary["gpu"]) == ("c1, c2", "H100, H200")  # runs of two commits say so
    assert plan.summary(commit="given")["commit"] == "given"
    assert Plan("m.gguf", "data", tmp_path / "none").summary()["commit"] is None


def test_a_dry_run_prints_every_training_command_before_any_evaluation(tmp_path, monkeypatch, tiny_model_dir):
    from zephyr.embedded import write_synthetic_data

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    data = write_synthetic_data(tmp_path / "data", train_rows=80, test_rows=8)
    plan = Plan(str(tiny_model_dir), str(data), tmp_path / "runs", seeds=[1], python="py",
                configs=["examples", "ng_examples"])
    out = io.StringIO()
    assert run(plan, runs_per_gpu=3, gpu="1", dry_run=True, out=out) == 0
    import os

    assert os.environ["OMP_NUM_THREADS"] == "2"  # several runs share the machine's cores
    lines = [line for line in out.getvalue().splitlines() if line.startswith("CUDA_VISIBLE_DEVICES=1 py ")]
    training = [job.run_dir.name for job in plan.training_jobs()]
    evaluation = [str(job.run_dir) for job in plan.evaluation_jobs()]
    assert training == ["examples_seed1", "ng_examples_seed1"] and len(evaluation) >= 2
    assert len(lines) == len(training) + len(evaluation)
    assert all(f"--run_name {name}" in line for name, line in zip(training, lines))
    assert all(f"--eval_output_dir {path}" in line for path, line in zip(evaluation, lines[len(training):]))
    assert not (tmp_path / "runs").exists()  # a dry run makes nothing


def test_with_replaces_a_flags_value_and_appends_a_new_flag():
    base = ["--packing", "False", "--optim", "adamw"]
    assert _with(base, optim="sgd", seed="3") == ["--packing", "False", "--optim", "sgd", "--seed", "3"]
    assert base == ["--packing", "False", "--optim", "adamw"]  # the base list is left as it was


def test_quality_arguments_parse_seeds_and_configurations():
    args = QualityArguments(seeds=" 4, 5 ,", configs=" examples , ng_examples ,")
    assert args.seed_list == [4, 5] and args.config_list == ["examples", "ng_examples"]
    assert QualityArguments().seed_list == [1, 2, 3] and QualityArguments().config_list is None
    for kwargs, message in (({"seeds": "1,x"}, "--seeds: expected comma-separated integers, got '1,x'"),
                            ({"seeds": " , "}, "--seeds: give at least one seed"),
                            ({"runs_per_gpu": 0}, "--runs_per_gpu: must be positive, got 0")):
        with pytest.raises(UsageError) as err:
            QualityArguments(**kwargs)
        assert str(err.value) == message


def test_the_summary_records_the_protocol_it_was_run_with(tmp_path):
    from zephyr.quality import COMMON, CONFIGS, TASK_SETTINGS, write_summary

    plan = Plan("m.gguf", "data", tmp_path / "runs", seeds=[1])
    (tmp_path / "runs" / "examples_seed1").mkdir(parents=True)
    (tmp_path / "runs" / "examples_seed1" / "config.json").write_text(json.dumps({"git_commit": "c9"}))  # no device
    summary = write_summary(plan, tmp_path, commit="given")
    assert summary["protocol"] == {"model": "m.gguf",
                                   "settings": {t: TASK_SETTINGS[t] + COMMON for t in TASK_SETTINGS},
                                   "configs": {name: flags for name, (_, flags) in CONFIGS.items()}}
    assert summary["commit"] == "given" and summary["gpu"] == "None"  # a run that recorded no device
    assert json.loads((tmp_path / "quality.json").read_text())["commit"] == "given"
    assert (tmp_path / "quality.md").read_text().startswith("Commit `given`, None, seeds [1]")
    assert plan.summary()["commit"] == "c9"


def test_the_noise_rule_at_its_edges():
    """Within noise: at most 0.3 points, or at most 2 standard errors of the per-seed differences."""
    from zephyr.quality import paired_delta

    assert paired_delta([0.3], [0.0])["within_noise"] is True  # exactly 0.3 points
    outside = paired_delta([1.0, 0.4], [0.0, 0.0])  # 0.7 ± 0.3: beyond 2 standard errors, within 3
    assert outside["mean_delta"] == pytest.approx(0.7) and outside["stderr"] == pytest.approx(0.3)
    assert outside["within_noise"] is False
    assert paired_delta([1.0, -0.2], [0.0, 0.0])["within_noise"] is True  # 0.4 ± 0.6


def test_one_run_per_gpu_is_allowed_and_config_errors_are_exact():
    assert QualityArguments(runs_per_gpu=1).runs_per_gpu == 1
    from zephyr.quality import CONFIGS

    with pytest.raises(UsageError) as err:
        QualityArguments(configs=",")
    assert str(err.value) == "--configs: give at least one configuration name"
    with pytest.raises(UsageError) as err:
        QualityArguments(configs="flat")
    assert str(err.value) == f"--configs: unknown configuration 'flat' (choose from {', '.join(CONFIGS)})"
