"""What a person watching a run sees: progress with ETA, one log line per phase, and no third-party noise.

On a terminal a progress bar is redrawn in place; in a log file (a sweep's per-run log, CI) the same numbers
come as a plain line every ``PLAIN_INTERVAL_S`` seconds and at the end, so the file holds no carriage returns.
"""

from __future__ import annotations

import logging
import sys
import time
import warnings

log = logging.getLogger("zephyr")

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
PLAIN_INTERVAL_S = 30.0  # a line every half minute keeps a log readable and still shows a run is alive
REDRAW_INTERVAL_S = 0.2


def format_duration(seconds: float) -> str:
    """``12s``, ``3m12s``, ``1h05m``: the shape of the sweep's ``done in 3m12s, ETA 41m`` lines."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def eta(elapsed: float, done: int, total: int) -> float | None:
    """Seconds left at the rate so far; None before the first item is done."""
    return elapsed / done * (total - done) if done else None


class Progress:
    """Progress of ``total`` items (steps, examples) on ``stream`` (stderr by default).

    ``update(done, **fields)`` takes the count done so far and named values to show (``loss=1.23``); the rate
    of items and, with ``tokens``, of tokens per second are computed from the time since the start.
    """

    def __init__(self, label: str, total: int, unit: str, stream=None, plain_interval_s: float = PLAIN_INTERVAL_S,
                 initial: int = 0):
        self.label, self.total, self.unit, self.initial = label, max(0, total), unit, initial  # initial: resumed at
        self.stream = stream or sys.stderr
        self.terminal = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = REDRAW_INTERVAL_S if self.terminal else plain_interval_s
        self.start = time.perf_counter()
        self.last_shown = None
        self.done, self.fields = initial, {}

    def line(self) -> str:
        elapsed = time.perf_counter() - self.start
        share = f"{100 * self.done / self.total:3.0f}%" if self.total else ""
        parts = [f"{self.label} {self.done}/{self.total} {self.unit} {share}"]
        if self.terminal and self.total:
            filled = int(20 * self.done / self.total)
            parts[0] = f"{self.label} [{'#' * filled}{'.' * (20 - filled)}] {self.done}/{self.total} {self.unit}"
        for name, value in sorted(self.fields.items(), key=lambda item: item[0] == "tokens"):  # tokens/s last
            if name == "tokens":
                parts.append(f"{value / elapsed:,.0f} tokens/s" if elapsed else "")
            elif value is not None:
                parts.append(f"{name} {value:.4g}" if isinstance(value, float) else f"{name} {value}")
        done_here = self.done - self.initial
        if elapsed and done_here:
            parts.append(f"{done_here / elapsed:.3g} {self.unit}/s")
        left = eta(elapsed, done_here, self.total - self.initial)
        parts.append(f"elapsed {format_duration(elapsed)}" + (f", ETA {format_duration(left)}" if left else ""))
        return "  ".join(p for p in parts if p)

    def update(self, done: int, **fields) -> None:
        self.done = done
        self.fields.update(fields)
        now = time.perf_counter()
        finished = done >= self.total
        if self.last_shown is not None and now - self.last_shown < self.interval and not finished:
            return
        self.last_shown = now
        if self.terminal:
            self.stream.write("\r\033[K" + self.line() + ("\n" if finished else ""))
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()


def phase_done(name: str, started: float, detail: str = "") -> float:
    """Log one line for a finished phase (``loading model: <detail> (12.3 s)``); returns the time now."""
    now = time.perf_counter()
    log.info("%s%s (%.1f s)", name, f": {detail}" if detail else "", now - started)
    return now


# Third-party loggers that narrate internals a user cannot act on; --log_level DEBUG shows them again.
_NOISY_LOGGERS = ("absl", "transformers", "datasets", "accelerate", "peft", "trl", "bitsandbytes", "torch",
                  "httpx", "urllib3", "filelock", "huggingface_hub")
# The libraries read these when imported: their verbosity, and progress bars that redraw with "\r".
_QUIET_ENV = {"TRANSFORMERS_VERBOSITY": "error", "DATASETS_VERBOSITY": "error", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
              "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}


def check_log_level(level: str) -> str:
    from zephyr.errors import UsageError

    if level.upper() not in LOG_LEVELS:
        raise UsageError(f"--log_level: unknown level {level!r} (choose {', '.join(LOG_LEVELS[:-1])} or ERROR)")
    return level.upper()


def add_log_level_flag(parser) -> None:
    """Show ``--log_level`` in a script's --help (entry_point takes it out of argv before the parser runs)."""
    parser.add_argument("--log_level", default="INFO",
                        help=f"{', '.join(LOG_LEVELS)} (default: env LOGLEVEL, else INFO); DEBUG also shows the "
                        "libraries' own messages, warnings and progress bars")


def configure_logging(level: str = "INFO") -> None:
    """The suite's own lines at ``level``; third-party messages only when they are errors, unless DEBUG."""
    import os

    level = check_log_level(level)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")  # keeps handlers already there (pytest's)
    logging.getLogger().setLevel(level)
    everything = level == "DEBUG"
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if everything else logging.ERROR)
    _one_hub_handler(everything)
    if everything:
        return
    for name, value in _QUIET_ENV.items():
        os.environ.setdefault(name, value)
    if "transformers" in sys.modules:  # imported before this call (tests): its switches, not its environment
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    if "datasets" in sys.modules:
        import datasets

        datasets.utils.logging.set_verbosity_error()
        datasets.disable_progress_bars()
    # Deprecation and "this argument is ignored" notices from the libraries, one per run, none actionable.
    warnings.filterwarnings("ignore", module=r"(transformers|trl|peft|accelerate|bitsandbytes|torch|datasets)\b")


def _one_hub_handler(everything: bool) -> None:
    """huggingface_hub, when imported, gives its logger a handler of its own and its default level: its messages
    (the hub's retry warnings) came twice, through that handler and the root's, and past the ERROR level set here.
    Imported now, its level stays the one set here and the root's handler prints each message once."""
    import huggingface_hub.utils.logging  # noqa: F401  (configures its logger when first imported)

    root = logging.getLogger("huggingface_hub")
    for handler in list(root.handlers):
        if type(handler) is logging.StreamHandler:
            root.removeHandler(handler)
    root.setLevel(logging.DEBUG if everything else logging.ERROR)


def train_progress_callback(stream=None):
    """A TrainerCallback showing step/total, loss, tokens/s and ETA (main process only)."""
    from transformers import TrainerCallback

    class TrainProgress(TrainerCallback):
        progress = None
        tokens_at_start = 0

        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                self.progress = Progress("training", state.max_steps, "steps", stream, initial=state.global_step)
                self.tokens_at_start = state.num_input_tokens_seen

        def on_log(self, args, state, control, logs=None, **kwargs):
            if self.progress and logs and "loss" in logs:
                self.progress.fields["loss"] = float(logs["loss"])

        def on_step_end(self, args, state, control, **kwargs):
            if self.progress:
                self.progress.update(state.global_step,
                                     tokens=state.num_input_tokens_seen - self.tokens_at_start)

    return TrainProgress()
