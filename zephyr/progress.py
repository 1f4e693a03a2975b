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

    def __init__(self, label: str, total: int, unit: str, stream=None, plain_interval_s: float = PLAIN_INTERVAL_S):
        self.label, self.total, self.unit = label, max(0, total), unit
        self.stream = stream or sys.stderr
        self.terminal = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = REDRAW_INTERVAL_S if self.terminal else plain_interval_s
        self.start = time.perf_counter()
        self.last_shown = None
        self.done, self.fields = 0, {}

    def line(self) -> str:
        elapsed = time.perf_counter() - self.start
        share = f"{100 * self.done / self.total:3.0f}%" if self.total else ""
        parts = [f"{self.label} {self.done}/{self.total} {self.unit} {share}"]
        if self.terminal and self.total:
            filled = int(20 * self.done / self.total)
            parts[0] = f"{self.label} [{'#' * filled}{'.' * (20 - filled)}] {self.done}/{self.total} {self.unit}"
        for name, value in self.fields.items():
            if name == "tokens":
                parts.append(f"{value / elapsed:,.0f} tokens/s" if elapsed else "")
            elif value is not None:
                parts.append(f"{name} {value:.4g}" if isinstance(value, float) else f"{name} {value}")
        if elapsed and self.done:
            parts.append(f"{self.done / elapsed:.3g} {self.unit}/s")
        left = eta(elapsed, self.done, self.total)
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


def configure_logging(level: str = "INFO") -> None:
    """The suite's own lines at ``level``; third-party messages only when they are errors, unless DEBUG."""
    level = level.upper()
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", force=True)
    everything = level == "DEBUG"
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if everything else logging.ERROR)
    if everything:
        return
    # The libraries' own switches: their verbosity is set on import, their progress bars redraw with "\r".
    import datasets
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.utils.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    warnings.filterwarnings("ignore", module=r"(transformers|trl|peft|accelerate|bitsandbytes|torch)\b")
