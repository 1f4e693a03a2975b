"""Progress and logging, value by value: the durations at their edges, a log file's lines, a terminal's redraws and
width, a resumed training run's counts, the phase lines, --log_level and what configure_logging switches off (the
mutation run of zephyr/progress.py: results/tests/mutation.md). Every clock is a controlled one."""

from __future__ import annotations

import argparse
import io
import logging
import os
import warnings
from types import SimpleNamespace

import pytest
import tqdm.std

from zephyr import progress as progress_module
from zephyr.errors import UsageError
from zephyr.progress import (_NOISY_LOGGERS, _QUIET_ENV, Progress, _LogLines, add_log_level_flag, check_log_level,
                             configure_logging, format_duration, phase_done, train_progress_callback)


class Terminal(io.StringIO):
    def isatty(self):
        return True


class WriteOnly:
    """A stream with nothing but write and flush (no isatty): a log file, never a terminal."""

    def __init__(self):
        self.text, self.flushes = "", 0

    def write(self, text):
        self.text += text

    def flush(self):
        self.flushes += 1


@pytest.fixture
def clock(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(tqdm.std, "time", lambda: now[0])  # tqdm's clock
    return now


def test_durations_at_the_edges_of_each_unit():
    assert [format_duration(s) for s in (-5, 0, 0.4, 59, 59.6, 60, 3599, 3600, 7199, 7200, 36000)] == \
        ["0s", "0s", "0s", "59s", "1m00s", "1m00s", "59m59s", "1h00m", "1h59m", "2h00m", "10h00m"]


def test_a_log_file_gets_whole_lines_without_carriage_returns():
    out = WriteOnly()
    lines = _LogLines(out)
    lines.write("\r  first  \r\r \rsecond\n")
    lines.flush()
    assert (out.text, out.flushes) == ("  first\nsecond\n", 1)


def test_a_stream_without_isatty_gets_plain_lines_and_any_jump_is_drawn(clock):
    out = WriteOnly()
    bar = Progress("evaluating", 20, "examples", out, plain_interval_s=0)
    for done in (5, 6, 7, 20):  # after a jump of 5, each single step is still drawn
        clock[0] += 1.0
        bar.update(done)
    assert out.text.splitlines() == [
        "evaluating 0/20 examples   0%  elapsed 0s",
        "evaluating 5/20 examples  25%  5 examples/s  elapsed 1s, ETA 3s",
        "evaluating 6/20 examples  30%  3 examples/s  elapsed 2s, ETA 5s",
        "evaluating 7/20 examples  35%  2.33 examples/s  elapsed 3s, ETA 6s",
        "evaluating 20/20 examples 100%  5 examples/s  elapsed 4s"]


def test_no_items_is_zero_of_zero(clock):
    out = io.StringIO()
    empty = Progress("evaluating", 0, "examples", out, plain_interval_s=0)
    empty.update(0)  # its start and its end
    negative = Progress("evaluating", -1, "examples", out, plain_interval_s=0)  # its start
    assert out.getvalue().splitlines() == ["evaluating 0/0 examples   0%  elapsed 0s"] * 3
    negative.update(0)


def test_a_terminal_is_redrawn_every_fifth_of_a_second_within_its_width(clock, monkeypatch):
    width = [200]
    monkeypatch.setattr(tqdm.std, "_screen_shape_wrapper", lambda: lambda stream: (width[0], 20))
    terminal = Terminal()
    bar = Progress("training", 10, "steps", terminal)
    clock[0] += 0.1
    bar.update(1, loss=2.0)  # too soon after the start: not drawn
    clock[0] += 0.2
    bar.update(2)
    width[0] = 40  # the window was made narrower: the next redraw fits it
    clock[0] += 0.3
    bar.update(3)
    assert [line.rstrip() for line in terminal.getvalue().split("\r")] == [  # rstrip: the spaces that clear a longer line
        "",
        "training |                    | 0/10 steps  elapsed 0s",
        "training |####                | 2/10 steps  loss 2  6.67 steps/s  elapsed 0s, ETA 1s",
        "training |######              | 3/10 ste"]


def test_the_phase_line_names_the_phase_its_detail_and_its_seconds(monkeypatch, caplog):
    monkeypatch.setattr(progress_module.time, "perf_counter", lambda: 22.34)
    with caplog.at_level(logging.INFO, logger="zephyr"):
        assert phase_done("loading model", 10.0, "m.gguf") == 22.34
        assert phase_done("evaluating", 20.0) == 22.34
    assert caplog.messages == ["loading model: m.gguf (12.3 s)", "evaluating (2.3 s)"]


def test_log_level_flag_and_its_check():
    assert (check_log_level("debug"), check_log_level("Warning")) == ("DEBUG", "WARNING")
    with pytest.raises(UsageError) as error:
        check_log_level("loud")
    assert str(error.value) == "--log_level: unknown level 'loud' (choose DEBUG, INFO, WARNING or ERROR)"
    parser = argparse.ArgumentParser(prog="x")
    add_log_level_flag(parser)
    assert parser.parse_args([]).log_level == "INFO" and parser.parse_args(["--log_level", "ERROR"]).log_level == "ERROR"
    assert ("--log_level LOG_LEVEL DEBUG, INFO, WARNING, ERROR (default: env LOGLEVEL, else INFO); DEBUG also shows "
            "the libraries' own messages, warnings and progress bars") in " ".join(parser.format_help().split())


@pytest.fixture
def fresh_logging(monkeypatch):
    """configure_logging on a process without handlers, quiet settings, filters or switched-off bars (as a script
    starts); everything put back after. Its environment is read by datasets once, when imported: here its switches."""
    import importlib

    import datasets
    import transformers

    datasets_bars = importlib.import_module("datasets.utils.tqdm")
    root, hub = logging.getLogger(), logging.getLogger("huggingface_hub")
    saved_hub_handlers = hub.handlers[:]
    levels = {name: logging.getLogger(name).level for name in ("", *_NOISY_LOGGERS)}
    verbosity = (transformers.utils.logging.get_verbosity(), datasets.utils.logging.get_verbosity())
    for name in _QUIET_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(datasets_bars, "HF_DATASETS_DISABLE_PROGRESS_BARS", None)  # as if no variable was set
    monkeypatch.setattr(datasets_bars, "_hf_datasets_progress_bars_disabled", False)
    monkeypatch.setattr(transformers.utils.logging, "_tqdm_active", True)
    transformers.utils.logging.set_verbosity_warning()
    datasets.utils.logging.set_verbosity_warning()

    def configure(*level) -> list:
        """configure_logging on a root logger without handlers (pytest's are put back): the handlers it added."""
        during_test = root.handlers[:]
        root.handlers = []
        try:
            configure_logging(*level)
            return root.handlers[:]
        finally:
            root.handlers = during_test

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield SimpleNamespace(configure=configure, transformers=transformers, datasets=datasets, caught=caught)
    finally:
        hub.handlers = saved_hub_handlers
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        transformers.utils.logging.set_verbosity(verbosity[0])
        datasets.utils.logging.set_verbosity(verbosity[1])


class OwnHandler(logging.StreamHandler):
    """A handler someone chose (a subclass): the hub's duplicate is a plain StreamHandler."""


def _hub_handlers() -> list:
    hub = logging.getLogger("huggingface_hub")
    hub.handlers = [logging.StreamHandler(io.StringIO()), OwnHandler(io.StringIO())]
    return hub.handlers


def test_configure_logging_keeps_the_suites_lines_and_silences_the_libraries(fresh_logging):
    _hub_handlers()
    os.environ["TRANSFORMERS_VERBOSITY"] = "info"  # set by the user: kept
    [handler] = fresh_logging.configure()
    record = logging.LogRecord("zephyr", logging.INFO, "f.py", 1, "loading model (1.0 s)", None, None)
    assert handler.format(record) == "INFO zephyr: loading model (1.0 s)"
    assert logging.getLogger().level == logging.INFO
    assert {name: logging.getLogger(name).level for name in _NOISY_LOGGERS} == dict.fromkeys(_NOISY_LOGGERS,
                                                                                             logging.ERROR)
    assert {name: os.environ.get(name) for name in _QUIET_ENV} == {**_QUIET_ENV, "TRANSFORMERS_VERBOSITY": "info"}
    assert [type(h) for h in logging.getLogger("huggingface_hub").handlers] == [OwnHandler]
    transformers, datasets = fresh_logging.transformers, fresh_logging.datasets
    assert (transformers.utils.logging.get_verbosity(), datasets.utils.logging.get_verbosity()) == \
        (logging.ERROR, logging.ERROR)
    assert (transformers.utils.logging.is_progress_bar_enabled(), datasets.is_progress_bar_enabled()) == (False, False)
    for module in ("transformers.trainer", "peft.tuners", "zephyr.training", "torchvision.io"):
        warnings.warn_explicit("notice", UserWarning, "f.py", 1, module=module)
    assert [w.filename for w in fresh_logging.caught] == ["f.py", "f.py"]  # zephyr's and torchvision's only
    assert [w.lineno for w in fresh_logging.caught] == [1, 1]


def test_configure_logging_at_debug_shows_everything(fresh_logging):
    _hub_handlers()
    assert len(fresh_logging.configure("debug")) == 1
    assert logging.getLogger().level == logging.DEBUG
    assert {name: logging.getLogger(name).level for name in _NOISY_LOGGERS} == dict.fromkeys(_NOISY_LOGGERS,
                                                                                             logging.DEBUG)
    assert all(name not in os.environ for name in _QUIET_ENV)
    assert [type(h) for h in logging.getLogger("huggingface_hub").handlers] == [OwnHandler]
    transformers, datasets = fresh_logging.transformers, fresh_logging.datasets
    assert (transformers.utils.logging.get_verbosity(), datasets.utils.logging.get_verbosity()) == \
        (logging.DEBUG, logging.DEBUG)  # the levels of their loggers, set above: not set back to ERROR
    assert (transformers.utils.logging.is_progress_bar_enabled(), datasets.is_progress_bar_enabled()) == (True, True)
    warnings.warn_explicit("notice", UserWarning, "f.py", 1, module="transformers.trainer")
    assert len(fresh_logging.caught) == 1


def _state(**values) -> SimpleNamespace:
    return SimpleNamespace(**{"is_world_process_zero": True, "max_steps": 10, "global_step": 0,
                              "num_input_tokens_seen": 0, **values})


def test_a_resumed_training_counts_its_own_steps_and_tokens(clock):
    out = io.StringIO()
    callback = train_progress_callback(out)
    state = _state(global_step=4, num_input_tokens_seen=4000)
    callback.on_train_begin(None, state, None)
    callback.progress.bar.mininterval = 0
    callback.on_log(None, state, None, logs={"learning_rate": 1e-4})  # no loss logged: nothing to show
    clock[0] += 10.0
    state.global_step, state.num_input_tokens_seen = 6, 6000
    callback.on_log(None, state, None, logs={"loss": 1.25, "learning_rate": 1e-4})
    callback.on_step_end(None, state, None)
    assert out.getvalue().splitlines() == [
        "training 4/10 steps  40%  elapsed 0s",
        "training 6/10 steps  60%  loss 1.25  200 tokens/s  0.2 steps/s  elapsed 10s, ETA 20s"]


def test_other_processes_of_a_training_show_nothing():
    out = io.StringIO()
    callback = train_progress_callback(out)
    state = _state(is_world_process_zero=False)
    callback.on_train_begin(None, state, None)
    callback.on_log(None, state, None, logs={"loss": 1.0})
    state.global_step = 1
    callback.on_step_end(None, state, None)
    assert (callback.progress, out.getvalue()) == (None, "")
