"""The Trainer callbacks a training run adds: its ``train_log.jsonl`` rows and the default checkpoint interval.

Each is built by a function that imports transformers when called (the progress line's callback is
zephyr.progress.train_progress_callback).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from zephyr.rundir import default_save_steps
from zephyr.runinfo import peak_memory_gib


def checkpoint_interval_callback():
    """A callback that sets the checkpoint interval of a run without --save_steps (rundir.default_save_steps)."""
    from transformers import TrainerCallback

    class CheckpointInterval(TrainerCallback):
        """Sets the default checkpoint interval once the Trainer knows the run's length."""

        def on_train_begin(self, args, state, control, **kwargs):
            state.save_steps = default_save_steps(state.max_steps)

    return CheckpointInterval()


def train_log_callback():
    """The class of the callback that writes ``train_log.jsonl``; an instance takes the file's path."""
    from transformers import TrainerCallback

    class TrainLogCallback(TrainerCallback):
        """Appends loss, tokens/s and peak memory to ``train_log.jsonl`` at every logging step."""

        def __init__(self, path: Path):
            self.path, self.start = path, None

        def on_train_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()
            self.tokens_at_start = state.num_input_tokens_seen
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero:
                return
            elapsed = time.perf_counter() - self.start
            tokens = state.num_input_tokens_seen - self.tokens_at_start
            row = {"step": state.global_step, "epoch": state.epoch, **(logs or {}),
                   "tokens_seen": state.num_input_tokens_seen, "elapsed_s": round(elapsed, 3),
                   "tokens_per_s": round(tokens / elapsed, 1) if elapsed else None, **peak_memory_gib()}
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(row) + "\n")

    return TrainLogCallback
