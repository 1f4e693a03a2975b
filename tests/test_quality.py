"""The quality benchmark's plan and statistics (the runs themselves need a GPU: results/quality/)."""

import json

import pytest

from zephyr.quality import CONFIGS, LEVERS, Plan, paired_delta, to_markdown, write_summary


def _flags(config: str) -> dict:
    flags = CONFIGS[config][1]
    return dict(zip(flags[::2], flags[1::2]))


def test_each_training_lever_changes_only_its_own_flags():
    expected = {
        "packed rows": {"--packed_rows"}, "compiled": {"--compile_layers"}, "CUDA graphs": {"--cuda_graphs"},
        "NF4": {"--fused_nf4"}, "partial checkpointing": {"--gradient_checkpointing"},
        "sync-free": {"--sync_free_metrics"}, "fused AdamW": {"--optim"},
        # --cuda_graphs, --fused_nf4 and --flat_row_multiple are spelled out on the fast side only; they act on
        # compiled layers alone
        "examples padded": {"--pad_to_max_length", "--compile_layers", "--cuda_graphs", "--fused_nf4"},
        "flat batches (": {"--batch_layout"},
        "flat batches, compiled": {"--batch_layout", "--compile_layers", "--fused_nf4", "--cuda_graphs",
                                   "--flat_row_multiple"},
        "flat batches, CUDA graphs over": {"--batch_layout", "--compile_layers", "--fused_nf4", "--cuda_graphs",
                                        "--flat_row_multiple", "--flat_cuda_graphs"},
        "flat batches, CUDA graphs, steps split": {"--batch_layout", "--compile_layers", "--fused_nf4",
                                                   "--cuda_graphs", "--flat_row_multiple", "--flat_cuda_graphs",
                                                   "--flat_split_tokens"},
        "flat rows padded to a multiple": {"--batch_layout", "--compile_layers", "--fused_nf4", "--cuda_graphs",
                                           "--flat_row_multiple"},
        "matrix products on cuBLASLt": {"--matmul_library"}}
    for lever in LEVERS:
        if lever.fast.config == lever.plain.config:
            assert lever.fast.evaluation != lever.plain.evaluation  # the same adapter, evaluated two ways
            continue
        fast, plain = _flags(lever.fast.config), _flags(lever.plain.config)
        changed = {k for k in fast.keys() | plain.keys() if fast.get(k) != plain.get(k)}
        [key] = [k for k in expected if lever.name.startswith(k)]
        assert changed == expected[key], (lever.name, changed)


def test_paired_delta_and_the_noise_rule():
    result = paired_delta([40.0, 41.0, 39.0], [39.0, 40.5, 38.0])
    assert result["mean_delta"] == pytest.approx(5 / 6) and result["stderr"] == pytest.approx(0.1666667, rel=1e-4)
    assert result["within_noise"] is False  # 0.83 > 0.3 and > 2 standard errors
    assert paired_delta([40.0, 42.0], [39.5, 40.5])["within_noise"] is True  # 1.0 ± 0.5: within 2 standard errors
    assert paired_delta([40.2], [40.0])["within_noise"] is True  # within 0.3 points
    assert paired_delta([None], [40.0]) == {"mean_delta": None, "stderr": None, "within_noise": None}


def test_summary_reads_every_run_and_writes_the_schema(tmp_path):
    plan = Plan("model.gguf", "data", tmp_path / "runs", seeds=[1, 2])
    jobs = plan.training_jobs() + plan.evaluation_jobs()
    assert len({job.run_dir for job in jobs}) == len(jobs)
    for number, job in enumerate(jobs):
        run = job.run_dir
        run.mkdir(parents=True, exist_ok=True)
        (run / "metrics.json").write_text(json.dumps({"rouge1": 30.0 + number % 3, "accuracy": 50.0,
                                                       "eval_seconds": 10.0}))
        if "eval-" not in run.name:
            (run / "train_metrics.json").write_text(json.dumps({"train_runtime_s": 60.0, "train_steps": 70}))
            (run / "config.json").write_text(json.dumps({"git_commit": "abc", "device": {"name": "NVIDIA H200"}}))
    summary = write_summary(plan, tmp_path / "results")
    saved = json.loads((tmp_path / "results" / "quality.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    assert {"commit", "gpu", "levers"} <= set(saved) and saved["commit"] == "abc" and saved["gpu"] == "NVIDIA H200"
    for lever in saved["levers"]:
        assert {"name", "task", "metric", "plain", "fast", "mean_delta", "stderr"} <= set(lever)
        assert None not in lever["fast"] + lever["plain"]
    assert saved["protocols"][0]["examples"]["optimizer_steps"] == [70, 70]
    assert "| CUDA graphs" in to_markdown(summary)


def test_more_seeds_train_only_the_configurations_of_their_lever(tmp_path):
    plan = Plan("model.gguf", "data", tmp_path / "runs", seeds=[1, 2, 3])
    nf4 = next(lever for lever in LEVERS if lever.name.startswith("NF4"))
    assert plan._seeds(nf4) == [1, 2, 3, 4, 5]
    split = next(lever for lever in LEVERS if lever.fast.config == "ng_examples_flat_graphs_split")
    assert plan._seeds(split) == [1, 2, 3, 4, 5, 6]
    trained = {job.run_dir.name for job in plan.training_jobs()}
    assert {"packed_no_graphs_seed5", "bnb_nf4_seed5", "packed_no_graphs_seed4", "bnb_nf4_seed4"} <= trained
    further = {f"{config}_seed{seed}" for config in (nf4.fast.config, nf4.plain.config) for seed in (4, 5)} | {
        f"{config}_seed{seed}" for config in (split.fast.config, split.plain.config) for seed in (4, 5, 6)}
    assert {name for name in trained if name.endswith(("seed4", "seed5", "seed6"))} == further
    assert Plan("model.gguf", "data", tmp_path, seeds=[1, 2, 3, 4, 5, 6])._seeds(nf4) == [1, 2, 3, 4, 5, 6]
    # a lever's further seeds run only with both its sides: its plain side alone keeps the benchmark's seeds
    alone = Plan("model.gguf", "data", tmp_path, seeds=[1, 2, 3], configs=["ng_examples"])
    assert {job.run_dir.name for job in alone.training_jobs()} == {f"ng_examples_seed{s}" for s in (1, 2, 3)}
    both = Plan("model.gguf", "data", tmp_path, seeds=[1, 2, 3], configs=["ng_examples", split.fast.config])
    assert len(both.training_jobs()) == 12


def _load_script(path: str):
    import importlib.util

    from conftest import REPO

    spec = importlib.util.spec_from_file_location(path.replace("/", "_").removesuffix(".py"), REPO / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fast_check_pairs_each_seed_with_its_eager_twin(tmp_path):
    fast_check = _load_script("scripts/analysis/fast_check.py")

    def finished(folder, accuracy, fraction="0.25", variant="all"):
        run = tmp_path / folder / fast_check.RUN.format(fraction=fraction, variant=variant)
        run.mkdir(parents=True)
        (run / "metrics.json").write_text(json.dumps({"accuracy": accuracy}))

    finished("runs/table1", 64.0)  # seed 42's eager run is Table 1's own
    finished("fast-check/seed42-fast", 65.0)
    assert fast_check.pairs(tmp_path, "all") == {42: (64.0, 65.0)}
    one_seed = "| all-module, 25 %, FAST_ARGS | 42 | 64.00 (64.00) | 65.00 (65.00) | 1.00 | — (one seed) |"
    assert one_seed in fast_check.to_markdown(tmp_path)
    for seed, eager, fast in ((1, 64.5, 64.7), (2, 63.5, 63.3)):
        finished(f"fast-check/seed{seed}-eager", eager)
        finished(f"fast-check/seed{seed}-fast", fast)
    (tmp_path / "fast-check" / "seedX-fast").mkdir()  # not a seed folder: ignored
    assert sorted(fast_check.pairs(tmp_path, "all")) == [1, 2, 42]
    row = next(line for line in fast_check.to_markdown(tmp_path).splitlines() if line.startswith("| all-module"))
    # deltas 0.2, -0.2, 1.0: mean 0.33 ± 0.35, within two standard errors
    assert row.endswith("| 0.33 ± 0.35 | yes |"), row
    assert fast_check.pairs(tmp_path, "base") == {}  # a variant without runs gets no row
    assert "padding alone" not in fast_check.to_markdown(tmp_path)
    for seed, padded in ((1, 65.5), (2, 64.5)):  # the bisect's half of FAST_ARGS, against the same eager runs
        finished(f"fast-check/padded-seed{seed}", padded)
    assert fast_check.pairs(tmp_path, "all", "padded") == {1: (64.5, 65.5), 2: (63.5, 64.5)}
    rows = fast_check.to_markdown(tmp_path).splitlines()
    assert rows[-1] == "| all-module, 25 %, padding alone | 1, 2 | 64.00 ± 0.50 (64.50, 63.50) | 65.00 ± 0.50 (65.50, 64.50) | 1.00 ± 0.00 | **no** |", rows[-1]
    finished("fast-check/seed1-eager-repeat", 64.9)  # the null: seed 1's eager run again, not a fast run
    assert fast_check.pairs(tmp_path, "all", "repeat") == {1: (64.5, 64.9)}
    assert sorted(fast_check.pairs(tmp_path, "all")) == [1, 2, 42]
    finished("runs/table1", 67.0, fraction="0.5", variant="neftune_all")  # another fraction's Table 1 cell
    finished("fast-check/seed42-fast", 66.5, fraction="0.5", variant="neftune_all")
    assert fast_check.pairs(tmp_path, "neftune_all", fraction="0.5") == {42: (67.0, 66.5)}
    rows = fast_check.to_markdown(tmp_path).splitlines()
    assert rows[-2:] == ["| all-module, 25 %, eager again | 1 | 64.50 (64.50) | 64.90 (64.90) | 0.40 | — (one seed) |",
                         "| NEFTune + all-module, 50 %, FAST_ARGS | 42 | 67.00 (67.00) | 66.50 (66.50) | -0.50 | — (one seed) |"], rows


def test_dropout_masks_of_compiled_layers_are_measured_against_independence():
    """The dropout probe compiles its layers with the suite's settings and reads masks that, on the CPU, keep
    1 - p and are independent between neighbouring channels, aligned groups and steps, like eager ones."""
    from torch._dynamo.utils import counters

    dropout_masks = _load_script("scripts/analysis/dropout_masks.py")
    counters.clear()
    results = dropout_masks.measure("cpu", batch=2, tokens=64, heads=4, head_dim=16, steps=3)
    assert counters["stats"]["unique_graphs"] >= 2  # each probe's layer ran compiled
    independent = {"kept": 0.9, "neighbours alike": 0.82, "groups of 4 alike": 0.9**4 + 0.1**4,
                   "alike at the next step": 0.82}
    for probe in ("o_proj input (transposed)", "hidden states"):
        for side in ("eager", "compiled"):
            for name, expected in independent.items():
                assert abs(results[probe][side][name] - expected) < 0.03, (probe, side, name, results[probe][side])
    table = dropout_masks.to_markdown(results).splitlines()
    assert table[0] == "| dropout input | layers | kept | neighbours alike | groups of 4 alike | alike at the next step |"
    assert len(table) == 6


@pytest.mark.parametrize("script, argv, culprit", [
    ("scripts/analysis/fast_check.py", ["{tmp}"], "{tmp}: no fast-check/ folder"),
    ("scripts/analysis/fast_check.py", ["{tmp}", "extra"], "unknown argument(s): extra"),
    ("scripts/analysis/dropout_masks.py", ["--steps", "1"], "--steps: 1: must be at least 2"),
    ("scripts/analysis/dropout_masks.py", ["--device", "gpu"], "--device: invalid choice"),
    ("scripts/analysis/dropout_masks.py", ["--tokns", "8"], "unrecognized arguments: --tokns"),
    ("scripts/analysis/first_rows.py", ["x", "{tmp}"], "ROWS: x: must be a whole number"),
    ("scripts/analysis/first_rows.py", ["200", "{tmp}"], "{tmp}: no predictions.jsonl"),
    ("scripts/analysis/mm_shapes.py", ["--multiples", "1,0"], "--multiples: 1,0: expected positive integers"),
    ("scripts/analysis/mm_shapes.py", ["--multiples", "8,x"], "--multiples: 8,x: expected positive integers"),
    ("scripts/analysis/mm_shapes.py", ["--blas", "cublaslt,hipblas"], "--blas: hipblas: expected default"),
    ("scripts/analysis/mm_shapes.py", ["--low", "3000", "--high", "1000"], "--low/--high: 3000/1000"),
    ("scripts/analysis/mm_shapes.py", ["--output", "{tmp}"], "--output: {tmp} is a directory"),
    ("scripts/analysis/mm_shapes.py", ["--step", "4"], "unrecognized arguments: --step"),
])
def test_result_scripts_refuse_bad_input_in_one_line(script, argv, culprit, tmp_path, capsys):
    module = _load_script(script)
    with pytest.raises(SystemExit) as exit_info:
        module.main([arg.format(tmp=tmp_path) for arg in argv])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and err.startswith("error: "), err
    assert culprit.format(tmp=tmp_path) in err
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_configs_filter_runs_only_the_named_configurations_and_refuses_none(tmp_path):
    from zephyr.errors import UsageError
    from zephyr.quality import QualityArguments

    plan = Plan("model.gguf", "data", tmp_path, seeds=[1, 2], configs=["examples_flat", "ng_examples"])
    assert {job.run_dir.name for job in plan.training_jobs()} == {
        "examples_flat_seed1", "examples_flat_seed2", "ng_examples_seed1", "ng_examples_seed2"}
    assert sorted(str(job.run_dir.relative_to(tmp_path)) for job in plan.evaluation_jobs()) == [
        f"ng_examples_seed{seed}/eval-{kind}" for seed in (1, 2) for kind in ("4bit", "loglik")]
    for configs, message in ((",", "--configs: give at least one configuration name"),
                             ("flat", "--configs: unknown configuration 'flat'")):
        with pytest.raises(UsageError, match=message):
            QualityArguments(configs=configs)


def test_each_lever_reads_its_fast_side_and_its_plain_side_from_their_own_runs(tmp_path):
    """The wiring: which run feeds which side of each lever, and the exact commands that make those runs."""
    from conftest import REPO
    from zephyr.quality import COMMON, TASK_SETTINGS

    plan = Plan("model.gguf", "data", tmp_path, seeds=[1], python="py")
    names = sorted(CONFIGS)
    value = {name: 10.0 + index for index, name in enumerate(names)}  # every configuration its own score
    for job in plan.training_jobs() + plan.evaluation_jobs():
        job.run_dir.mkdir(parents=True, exist_ok=True)
        config = job.run_dir.name.rsplit("_seed", 1)[0] if "eval-" not in job.run_dir.name else \
            job.run_dir.parent.name.rsplit("_seed", 1)[0]
        bonus = {"eval-4bit": 0.5, "eval-loglik": 0.25}.get(job.run_dir.name, 0.0)
        (job.run_dir / "metrics.json").write_text(json.dumps({"rouge1": value[config] + bonus,
                                                              "accuracy": value[config] + bonus, "eval_seconds": 1.0}))
        (job.run_dir / "train_metrics.json").write_text(json.dumps({"train_runtime_s": 2.0, "train_steps": 3}))
    summary = plan.summary(commit="abc")
    for lever, row in zip(LEVERS, summary["levers"]):
        expected_fast = value[lever.fast.config] + {"4bit": 0.5, "loglik": 0.25}.get(lever.fast.evaluation, 0.0)
        expected_plain = value[lever.plain.config] + {"4bit": 0.5, "loglik": 0.25}.get(lever.plain.evaluation, 0.0)
        assert row["fast"][0] == expected_fast and row["plain"][0] == expected_plain, lever.name
        assert row["mean_delta"] == pytest.approx(expected_fast - expected_plain)
        assert (row["fast_config"], row["plain_config"]) == (lever.fast.config, lever.plain.config)
        assert (row["fast_evaluation"], row["plain_evaluation"]) == (lever.fast.evaluation or "dense",
                                                                    lever.plain.evaluation or "dense")
    [job] = [j for j in plan.training_jobs() if j.run_dir.name == "examples_flat_seed1"]
    assert job.command == ["py", str(REPO / "scripts" / "zephyr_summarization.py"), "--model_name_or_path",
                           "model.gguf", "--data_dir", "data", "--output_root", str(tmp_path), "--run_name",
                           "examples_flat_seed1", "--seed", "1", *TASK_SETTINGS["samsum"], *COMMON,
                           *CONFIGS["examples_flat"][1]]
    [loglik] = [j for j in plan.evaluation_jobs() if j.run_dir.name == "eval-loglik"]
    assert loglik.command == ["py", str(REPO / "scripts" / "zephyr_classification_inference.py"), "--run_dir",
                              str(tmp_path / "ng_examples_seed1"), "--data_dir", "data", "--eval_output_dir",
                              str(tmp_path / "ng_examples_seed1" / "eval-loglik"), "--eval_batch_size", "64",
                              "--eval_method", "loglik"]
