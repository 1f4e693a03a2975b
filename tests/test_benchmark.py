"""What the 7B benchmark measures, decided without a GPU."""

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
