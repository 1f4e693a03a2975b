"""What the 7B benchmark measures, decided without a GPU."""

import gzip
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from zephyr.benchmark import BenchmarkArguments, summary_table, training_settings


def test_training_settings_pair_each_preset_with_the_original_unless_evaluation_only():
    full = training_settings(BenchmarkArguments(extra_settings='{"bs8": {"per_device_train_batch_size": 8}}'))
    assert set(full) == {f"{path} {preset}" for path in ("original", "suite", "padded", "fast")
                         for preset in ("q,v", "all+lm_head")} | {"bs8"}
    assert full["bs8"] == ("q,v", {"per_device_train_batch_size": 8})
    assert training_settings(BenchmarkArguments(train=False)) == {}


def test_the_suite_rows_are_the_defaults_and_the_padded_rows_their_plain_twin():
    """The suite rows change nothing but what a long run's --compile_layers auto decides; the padded rows differ
    from them in the batch layout alone (and eager layers, which auto picks for padded batches)."""
    from dataclasses import replace

    from zephyr.config import TrainArguments

    settings = training_settings(BenchmarkArguments())
    defaults = TrainArguments()
    suite = replace(defaults, **settings["suite q,v"][1])
    assert suite.batch_layout == "flat" and not suite.packing and suite.per_device_train_batch_size == 8
    assert suite.gradient_accumulation_steps == 1 and suite.gradient_checkpointing == "auto"
    assert {k for k in settings["suite q,v"][1]} <= {"compile_layers"}
    padded = replace(defaults, **settings["padded q,v"][1])
    assert padded.batch_layout == "padded" and padded.compile_layers == "false"


def test_a_run_of_extra_settings_alone_gets_a_summary_table():
    row = {"tokens_per_s": 1.0, "peak_gpu_memory_gib": 1.0}
    assert "training" not in summary_table({"training": {"mine": row}, "evaluation": {}})


def test_bad_benchmark_settings_are_refused_before_any_work():
    import pytest

    from zephyr.errors import UsageError

    for kwargs, message in [({"shape": "mistral-8b"}, "--shape: unknown shape 'mistral-8b'"),
                            ({"eval_preset": "all"}, "--eval_preset: unknown preset 'all'"),
                            ({"extra_settings": "{bad"}, "--extra_settings: not JSON"),
                            ({"extra_settings": '{"x": {"lora_rank": 4}}'}, "--extra_settings: x: unknown setting "
                                                                             "'lora_rank'"),
                            ({"extra_settings": '{"x": {"preset": "qv"}}'}, "--extra_settings: x: unknown preset"),
                            ({"memory_cap_gib": 0}, "--memory_cap_gib: must be positive")]:
        with pytest.raises(UsageError) as err:
            BenchmarkArguments(**kwargs)
        assert str(err.value).startswith(message), err.value


def test_summary_table_of_an_evaluation_only_run_lists_the_evaluation_paths():
    row = {"examples_per_s": 40.0, "original_examples_per_s": 0.7, "speedup": 57.1, "peak_gpu_memory_gib": 17.2}
    table = summary_table({"training": {}, "evaluation": {"newsgroups_generate": row, "eval_batch_size": 64}})
    assert "training" not in table
    assert "| newsgroups_generate examples/s | 0.7 | 40.0 | 57.1x | 17.2 |" in table


def test_study_hours_divide_each_presets_tokens_by_its_measured_rate():
    from zephyr.study_hours import study_hours, to_markdown

    training = {f"{path} {preset}": {"tokens_per_s": rate, "mfu_percent": 20.0}
                for path, rates in (("original", (1000.0, 500.0)), ("suite", (2000.0, 1000.0)),
                                    ("fast", (4000.0, 2000.0)))
                for preset, rate in zip(("q,v", "all+lm_head"), rates)}
    tokens = {"Table 1": {"q,v": 3_600_000, "all+lm_head": 1_800_000}, "grid": {"q,v": 7_200_000}}
    rows = study_hours({"training": training, "peak_bf16_tflops": 700.0}, tokens)
    hours = {(r["table"], r["path"]): r["gpu_hours"] for r in rows}
    assert hours[("Table 1", "original")] == 1.0 + 1.0  # 3.6 M / 1000 + 1.8 M / 500 tokens/s, in hours
    assert hours[("Table 1", "suite")] == 1.0 and hours[("grid", "fast")] == 0.5
    a10g = {(r["table"], r["path"]): r["a10g_hours_estimate"] for r in rows}
    assert a10g[("grid", "suite")] == 10 * hours[("grid", "suite")]  # 70 of 700 TFLOP/s at the same MFU
    assert "| Table 1 | 5.4 M | suite default | 1.0 | 10.0 |" in to_markdown(rows, {"device": {"name": "X"}})


def test_training_tokens_are_the_encoded_examples_of_the_selected_fraction(synthetic_data, tokenizer):
    from zephyr.prompting import PromptBuilder
    from zephyr.study_hours import training_tokens
    from zephyr.tasks import get_task

    task = get_task("newsgroups")
    loaded = task.load_split("train", str(synthetic_data))
    half = task.select_train(loaded.examples, 0.5, 42)
    builder = PromptBuilder(task, tokenizer, "original", task.labels(loaded.examples))
    expected = sum(len(builder.encode_training(e, 64)["input_ids"]) for e in half)
    assert training_tokens("newsgroups", tokenizer, str(synthetic_data), 0.5, 64) == expected
    assert 0 < expected < training_tokens("newsgroups", tokenizer, str(synthetic_data), 1.0, 64)


def test_a_setting_that_pads_examples_gets_padded_batches_and_a_bad_one_is_refused_first():
    import pytest

    from zephyr.benchmark import setting_arguments
    from zephyr.config import TrainArguments
    from zephyr.errors import UsageError

    graphs = BenchmarkArguments(extra_settings='{"graphs": {"pad_to_max_length": true}}')
    overrides = training_settings(graphs)["graphs"][1]
    assert setting_arguments(TrainArguments(), overrides).batch_layout == "padded"
    assert setting_arguments(TrainArguments(), {}).batch_layout == "flat"
    with pytest.raises(UsageError, match="--extra_settings: x: --pad_to_max_length: pads each example"):
        BenchmarkArguments(extra_settings='{"x": {"pad_to_max_length": true, "batch_layout": "flat"}}')


def test_study_hours_leave_out_a_path_the_benchmark_did_not_time():
    from zephyr.study_hours import study_hours

    training = {f"{path} {preset}": {"tokens_per_s": 1000.0} for path in ("original", "suite")
                for preset in ("q,v", "all+lm_head")}
    rows = study_hours({"training": training}, {"grid": {"q,v": 3_600_000}})
    assert [(r["path"], r["gpu_hours"]) for r in rows] == [("original", 1.0), ("suite", 1.0)]


def test_named_settings_are_each_compared_with_the_original_of_their_preset():
    rows = {"original q,v": {"tokens_per_s": 100.0, "peak_gpu_memory_gib": 5.0, "preset": "q,v"},
            "suite q,v, rows of 64": {"tokens_per_s": 250.0, "peak_gpu_memory_gib": 16.2, "preset": "q,v",
                                      "speedup": 2.5},
            "suite all+lm_head": {"tokens_per_s": 80.0, "peak_gpu_memory_gib": 17.0, "preset": "all+lm_head"}}
    table = summary_table({"training": rows, "evaluation": {}})
    assert "| training tokens/s, LoRA q,v (suite q,v, rows of 64) | 100.0 | 250.0 | 2.5x | 16.2 |" in table
    assert "all+lm_head" not in table  # no original of that preset was timed: nothing to compare with


def _tiny_benchmark(tiny_model_dir, synthetic_data, out: Path, profile_dir: Path | None = None) -> BenchmarkArguments:
    settings = {"original q,v": {"batch_layout": "padded"}, "suite q,v": {}}
    return BenchmarkArguments(model_name_or_path=str(tiny_model_dir), data_dir=str(synthetic_data), output=str(out),
                              train=False, evaluate=False, warmup_steps=2, train_steps=3,
                              extra_settings=json.dumps(settings), profile_dir=profile_dir and str(profile_dir))


def test_the_benchmark_json_says_where_each_settings_time_went(tiny_model_dir, synthetic_data, tmp_path):
    import torch

    from zephyr.benchmark import run_benchmark

    profiles = tmp_path / "profiles"
    result = run_benchmark(_tiny_benchmark(tiny_model_dir, synthetic_data, tmp_path / "bench.json", profiles))
    assert result["complete"] is True and json.loads((tmp_path / "bench.json").read_text()) == result
    original, suite = result["training"]["original q,v"], result["training"]["suite q,v"]
    # one more step under the profiler: its tables headed by its wall and GPU busy time, and its trace
    step = suite["profiled_step"]
    assert step["tokens"] > 0 and step["wall_ms"] > 0 and (step["gpu_busy_ms"] > 0) == torch.cuda.is_available()
    table = (profiles / "train-suite_qv.txt").read_text()
    assert table.startswith(f"One training step of {step['tokens']} real tokens: wall {step['wall_ms']} ms")
    with gzip.open(profiles / "train-suite_qv.trace.json.gz") as trace:
        assert json.load(trace)["traceEvents"]
    for row in (original, suite):
        assert len(row["warmup_step_seconds"]) == 2 and len(row["step_seconds"]) == 3
        assert row["setup_s"] > 0
        assert len(row["host_cpu_probe_ms"]) == 2 and min(row["host_cpu_probe_ms"]) > 0
        assert row["settings"]["matmul_library"] == "default"
        assert (row["peak_gpu_reserved_gib"] is None) == (row["peak_gpu_memory_gib"] is None)  # None: no GPU
        assert row["wall_s"] >= row["setup_s"] + sum(row["warmup_step_seconds"]) + sum(row["step_seconds"])
    assert suite["speedup"] == round(suite["tokens_per_s"] / original["tokens_per_s"], 2)
    assert (original["batch_layout"], suite["batch_layout"]) == ("padded", "flat")
    assert suite["flat_row_bucket"] is None  # rows are padded to a multiple only for compiled layers on a GPU
    assert suite["flat_split_tokens"] is None and suite["settings"]["flat_cuda_graphs"] is False


def test_a_benchmark_stopped_after_one_setting_keeps_what_it_measured(tiny_model_dir, synthetic_data, tmp_path,
                                                                      monkeypatch):
    import zephyr.benchmark as benchmark

    measured = benchmark.measure_training

    def stop_at_the_second_setting(*args, **kwargs):
        if stop_at_the_second_setting.calls:
            raise KeyboardInterrupt  # as a time limit stops it
        stop_at_the_second_setting.calls += 1
        return measured(*args, **kwargs)

    stop_at_the_second_setting.calls = 0
    monkeypatch.setattr(benchmark, "measure_training", stop_at_the_second_setting)
    out = tmp_path / "bench.json"
    with pytest.raises(KeyboardInterrupt):
        benchmark.run_benchmark(_tiny_benchmark(tiny_model_dir, synthetic_data, out))
    result = json.loads(out.read_text())
    assert result["complete"] is False and list(result["training"]) == ["original q,v"]
    assert result["training"]["original q,v"]["tokens_per_s"] > 0 and result["git_commit"]


def test_a_setting_that_fails_is_recorded_and_the_next_still_runs(tiny_model_dir, synthetic_data, tmp_path,
                                                                   monkeypatch, capsys):
    """A setting that fails (out of memory, a compiler's error) leaves its error and peak memory in the JSON and
    gives the base model back without its adapter; the next setting is measured; the command exits with 1."""
    import zephyr.benchmark as benchmark
    from zephyr.commands import bench
    from zephyr.suite_trainer import SuiteSFTTrainer

    train, measured, bases = SuiteSFTTrainer.train, benchmark.measure_training, []

    def fails_first(self, *args, **kwargs):
        if not bases:
            raise RuntimeError("Error: accessing tensor output of CUDAGraphs\nthat has been overwritten")
        return train(self, *args, **kwargs)

    def recording(*args, **kwargs):
        result, base = measured(*args, **kwargs)
        bases.append([name for name, _ in base.named_modules() if "lora" in name])  # the adapter it was given
        return result, base

    monkeypatch.setattr(SuiteSFTTrainer, "train", fails_first)
    monkeypatch.setattr(benchmark, "measure_training", recording)
    args = _tiny_benchmark(tiny_model_dir, synthetic_data, tmp_path / "bench.json")
    with pytest.raises(SystemExit) as exit_:
        bench(["--model_name_or_path", args.model_name_or_path, "--data_dir", args.data_dir, "--output", args.output,
               "--train", "False", "--evaluate", "False", "--warmup_steps", "2", "--train_steps", "3",
               "--extra_settings", args.extra_settings])
    assert exit_.value.code == 1
    result = json.loads((tmp_path / "bench.json").read_text())
    failed, suite = result["training"]["original q,v"], result["training"]["suite q,v"]
    assert result["complete"] is True
    assert failed["error"] == "RuntimeError: Error: accessing tensor output of CUDAGraphs"
    assert failed["tokens_per_s"] is None and "speedup" not in suite
    assert suite["tokens_per_s"] > 0 and len(suite["step_seconds"]) == 3
    assert bases == [[], []]
    captured = capsys.readouterr()
    assert "failed: RuntimeError" in captured.out
    assert "benchmark: setting failed, original q,v: RuntimeError" in captured.err


def test_gpu_busy_time_counts_overlapping_kernels_once_and_ignores_the_cpu():
    import torch

    from zephyr.measure import gpu_busy_ms

    def event(device, start, end, annotation=False):
        return SimpleNamespace(device_type=device, time_range=SimpleNamespace(start=start, end=end),
                               is_user_annotation=annotation)

    gpu, cpu = torch.autograd.DeviceType.CUDA, torch.autograd.DeviceType.CPU
    events = [event(cpu, 0, 10_000), event(gpu, 1_000, 2_000), event(gpu, 1_500, 2_500),  # overlap: 1.5 ms busy
              event(gpu, 2_200, 2_300), event(gpu, 4_000, 5_000), event(gpu, 6_000, 6_000),  # inside; 1 ms; empty
              event(gpu, 500, 9_000, annotation=True)]  # a record_function range's GPU span, its gaps included
    assert gpu_busy_ms(events) == (2.5, 4.0)  # busy 2.5 ms between the first kernel's start and the last's end
    assert gpu_busy_ms([event(cpu, 0, 10)]) == (0.0, 0.0)
