r"""Throughput at 7B scale: the study's original settings against the suite's defaults, in one process on one GPU.

    # Mistral-7B shape, random weights (built on the GPU, saved once, loaded through the suite's 4-bit path),
    # prompts from the real test sets; about 6 minutes on an H100
    python scripts/benchmark.py --data_dir ../shared/data --output results/benchmark/h100-mistral7b.json
    # the same measurements for a real small model
    python scripts/benchmark.py --model_name_or_path ../shared/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf \
        --data_dir ../shared/data --output results/benchmark/h100-smollm2.json
    # try your own training settings beside the defaults
    python scripts/benchmark.py --extra_settings '{"bs8": {"per_device_train_batch_size": 8, "gradient_accumulation_steps": 1}}'

Prints one JSON line per training setting, then a Markdown table of the ratios; writes everything to --output,
after each setting. A setting that fails (out of memory, a compiler's error) is recorded with its error and peak
memory, the next settings still run, and the command exits with 1.
"""

from zephyr.commands import bench as main

if __name__ == "__main__":
    main()
