"""What a person watching a run sees: progress with ETA, one log line per phase, and no third-party noise.

Progress is tqdm's. On a terminal its bar is redrawn in place; in a log file (a sweep's per-run log, CI) the same
numbers come as a plain line when a phase starts, every ``PLAIN_INTERVAL_S`` seconds and at the end, so the file
holds no carriage returns (which tqdm writes to any file).
"""

from __future__ import annotations

import logging
import sys
import time
import warnings

from tqdm import tqdm

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


class _LogLines:
    """A log file as tqdm's output: each redraw becomes one whole line. tqdm redraws in place with a carriage
    return even when its output is not a terminal, which leaves a log file one ever-longer line."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        for line in text.split("\r"):
            if line.strip():
                self.stream.write(line.rstrip() + "\n")

    def flush(self) -> None:
        self.stream.flush()


class _Bar(tqdm):
    """tqdm with the suite's line: the named values (loss, tokens/s), the rate and ETA of this process's items
    (a resumed run's earlier steps excluded), and durations as the sweep writes them (3m12s)."""

    monitor_interval = 0  # no monitor thread: every update is checked against mininterval anyway

    def __init__(self, *args, named: dict, **kwargs):
        self.named = named
        super().__init__(*args, **kwargs)

    @property
    def format_dict(self):
        values = super().format_dict
        elapsed, done = values["elapsed"], values["n"] - values["initial"]
        left = eta(elapsed, done, (values["total"] or 0) - values["initial"])
        shown = []
        for name, value in sorted(self.named.items(), key=lambda item: item[0] == "tokens"):  # tokens/s last
            if name == "tokens":
                shown.append(f"{value / elapsed:,.0f} tokens/s" if elapsed else "")
            elif value is not None:
                shown.append(f"{name} {value:.4g}" if isinstance(value, float) else f"{name} {value}")
        if elapsed and done:
            shown.append(f"{done / elapsed:.3g} {values['unit']}/s")
        values.update(named="".join(f"  {part}" for part in shown if part), elapsed_h=format_duration(elapsed),
                      eta_h=f", ETA {format_duration(left)}" if left else "")
        return values


TERMINAL_LINE = "{desc} |{bar:20}| {n}/{total} {unit}{named}  elapsed {elapsed_h}{eta_h}"
PLAIN_LINE = "{desc} {n}/{total} {unit} {percentage:3.0f}%{named}  elapsed {elapsed_h}{eta_h}"


class Progress:
    """Progress of ``total`` items (steps, examples) on ``stream`` (stderr by default), drawn by tqdm.

    ``update(done, **values)`` takes the count done so far and named values to show (``loss=1.23``; ``tokens``, a
    running count, is shown per second). On a terminal the bar is redrawn in place at most every
    ``REDRAW_INTERVAL_S``; in a log file it is a plain line when it starts, every ``plain_interval_s`` and at the end.
    """

    def __init__(self, label: str, total: int, unit: str, stream=None, plain_interval_s: float = PLAIN_INTERVAL_S,
                 initial: int = 0):
        stream = stream or sys.stderr
        terminal = bool(getattr(stream, "isatty", lambda: False)())
        self.fields: dict = {}  # the named values shown, kept between updates (the training callback sets loss)
        self.bar = _Bar(total=max(0, total), initial=initial, desc=label, unit=unit, named=self.fields,
                        file=stream if terminal else _LogLines(stream), miniters=1, smoothing=0, disable=False,
                        position=0,  # one bar at a time: never a cursor move for a bar left open
                        mininterval=REDRAW_INTERVAL_S if terminal else plain_interval_s, leave=True,
                        bar_format=TERMINAL_LINE if terminal else PLAIN_LINE, dynamic_ncols=terminal)

    def update(self, done: int, **values) -> None:
        self.fields.update(values)
        if done >= self.bar.total:
            self.bar.n = done
            self.bar.close()  # draws the last line
        else:
            self.bar.update(done - self.bar.n)


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
    if not everything:
        for name, value in _QUIET_ENV.items():  # before huggingface_hub is imported: it reads them then
            os.environ.setdefault(name, value)
    _one_hub_handler(everything)
    if everything:
        return
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
