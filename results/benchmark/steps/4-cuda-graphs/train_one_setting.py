"""Tokens/s of one training setting on a random SmolLM2-135M-shaped checkpoint: the scratch measurement behind
step 4 of ../README.md (the full benchmark runs every setting and evaluation; this times one in about a minute).

    PYTHONPATH=$PWD python results/benchmark/steps/4-cuda-graphs/train_one_setting.py MAX_LENGTH qv|all graphs|nographs

Reads .gpu-bench/data (2,000 Newsgroups training rows) and .gpu-bench/zephyr-tokenizer; 5 warm-up and 10 timed
steps at the suite's defaults. The runs at commit ad5708d predate the third argument (the code had no
--cuda_graphs yet; graphs came from TORCHINDUCTOR_CUDAGRAPHS=1).
"""
import json, os, sys, time
from dataclasses import replace
from pathlib import Path
import torch
from zephyr.benchmark import build_random_checkpoint, measure_training
from zephyr.config import DataArguments, ModelArguments, TrainArguments
from zephyr.modeling import load_model, load_tokenizer
from zephyr.prompting import PromptBuilder
from zephyr.tasks import get_task
from zephyr.training import build_training_dataset

max_length, preset = int(sys.argv[1]), sys.argv[2]
t0 = time.perf_counter()
path = str(build_random_checkpoint(Path("/tmp/zb/smollm2"), "smollm2-135m", ".gpu-bench/zephyr-tokenizer"))
tok = load_tokenizer(path)
model_args = ModelArguments(model_name_or_path=path, lora_r=8)
if preset == "all":
    model_args = replace(model_args, lora_targets="all", lora_lm_head=True)
base = load_model(model_args, path)
task = get_task("newsgroups")
loaded = task.load_split("train", ".gpu-bench/data")
builder = PromptBuilder(task, tok, "original", task.labels(loaded.examples))
ds, _ = build_training_dataset(builder, loaded.examples[:1200], max_length)
data_args = DataArguments(task="newsgroups", data_dir=".gpu-bench/data", max_length=max_length)
train_args = replace(TrainArguments(), save_steps=0, logging_steps=1, num_train_epochs=1.0, cuda_graphs=sys.argv[3] == "graphs")
import logging; logging.basicConfig(level=logging.INFO)
t1 = time.perf_counter()
prof = Path(sys.argv[4]) if len(sys.argv) > 4 else None
res, _ = measure_training(base, tok, ds, data_args, model_args, train_args, 5, 10, 200.0, prof)
print(json.dumps({"env": {k: v for k, v in os.environ.items() if k.startswith("TORCHINDUCTOR")}, "max_length": max_length,
                  "preset": preset, "tokens_per_s": res["tokens_per_s"], "steps": res["step_seconds"],
                  "peak": res["peak_gpu_memory_gib"], "loss": res["final_loss"], "setup_s": round(t1 - t0, 1),
                  "train_s": round(time.perf_counter() - t1, 1)}), flush=True)
