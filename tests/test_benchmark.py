"""What the 7B benchmark measures, decided without a GPU."""

from zephyr.benchmark import BenchmarkArguments, summary_table, training_settings


def test_training_settings_pair_each_preset_with_the_original_unless_evaluation_only():
    full = training_settings(BenchmarkArguments(extra_settings='{"bs8": {"per_device_train_batch_size": 8}}'))
    assert set(full) == {"original q,v", "suite q,v", "fast q,v", "original all+lm_head", "suite all+lm_head",
                         "fast all+lm_head", "bs8"}
    assert full["bs8"] == ("q,v", {"per_device_train_batch_size": 8})
    assert training_settings(BenchmarkArguments(train=False)) == {}


def test_summary_table_of_an_evaluation_only_run_lists_the_evaluation_paths():
    row = {"examples_per_s": 40.0, "original_examples_per_s": 0.7, "speedup": 57.1, "peak_gpu_memory_gib": 17.2}
    table = summary_table({"training": {}, "evaluation": {"newsgroups_generate": row, "eval_batch_size": 64}})
    assert "training" not in table
    assert "| newsgroups_generate examples/s | 0.7 | 40.0 | 57.1x | 17.2 |" in table
