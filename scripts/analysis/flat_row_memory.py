"""Peak CPU memory (RSS) of one training forward and backward pass of SmolLM2-135M-Instruct in fp32 on the CPU, on
one flat row of 8 examples of 512 tokens (every weight trainable; no optimizer step).

    PYTHONPATH=. python scripts/analysis/flat_row_memory.py each|mask|each-checkpointed CHECKPOINT_DIR

each: the suite's flat attention off a GPU (each example attended on its own); mask: the row-wide block-diagonal
mask; each-checkpointed: each, with every decoder layer checkpointed. CHECKPOINT_DIR: the GGUF file converted by the
suite (``zephyr.modeling.convert_gguf``).
"""

import resource
import sys
import time

import torch
from transformers import AutoModelForCausalLM

import zephyr.speed.flat as flat

mode, path = sys.argv[1], sys.argv[2]
if mode == "mask":
    flat.attends_each_example = lambda query: False
flat.register_attention()
model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation=flat.ATTENTION)
model.train()
if mode == "each-checkpointed":
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
lengths = [512] * 8
ids = torch.randint(0, 49152, (1, sum(lengths)))
positions = torch.cat([torch.arange(n) for n in lengths])[None]
cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
start = time.perf_counter()
hidden = model.model(input_ids=ids, position_ids=positions, cu_seq_lens_q=cu, cu_seq_lens_k=cu,
                     max_length_q=512, max_length_k=512).last_hidden_state
hidden.float().pow(2).mean().backward()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
print(f"{mode}: peak RSS {peak:.2f} GiB (model loaded: {before:.2f} GiB), {time.perf_counter() - start:.1f} s")
