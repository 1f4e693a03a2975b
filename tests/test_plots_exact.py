"""The plots read back from the figures the suite saves: image size, axes, labels, which curve is whose (marker per
model, colour per variant, the study's dashed curve in its variant's colour), bar positions, and when a plot is
drawn at all (the mutation run of zephyr/plots.py: results/tests/mutation.md; the series themselves:
test_promises.py)."""

from __future__ import annotations

import json
import struct

import pytest
from matplotlib.colors import to_rgba

from zephyr import reference
from zephyr.plots import plot_accuracy, plot_loss_curves, plot_rouge, plot_training_log
from zephyr.results import table1

STUDY = f" (study, {reference.STUDY_MODEL})"


@pytest.fixture
def drawn(monkeypatch):
    """The figures the suite saves, kept for reading back."""
    from matplotlib.figure import Figure

    figures, save = [], Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: (figures.append(fig), save(fig, *a, **k))[1])
    return figures


def png_size(path) -> tuple[int, int]:
    return struct.unpack(">II", path.read_bytes()[16:24])


def _row(model, variant, fraction, rows, accuracy):
    return {"task": "newsgroups", "kind": "finetune", "variant": variant, "model": model, "train_fraction": fraction,
            "train_rows": rows, "accuracy": accuracy, "rouge1": None, "rouge2": None}


def test_the_accuracy_plot_marks_each_model_and_colours_each_variant(tmp_path, drawn):
    table = table1([_row("m1", "base", 0.1, 1101, 18.5), _row("m2", "base", 0.1, 1101, 30.0),
                    _row("m2", "all-module", 0.25, 2754, 40.0)])
    plot_accuracy(table, tmp_path / "accuracy.png")
    [figure] = drawn
    ax = figure.axes[0]
    lines = {line.get_label(): line for line in ax.lines}
    assert list(lines) == ["m1: base", "m2: base", f"base{STUDY}", "m2: all-module", f"all-module{STUDY}"]
    assert [(lines[k].get_marker(), lines[k].get_linestyle()) for k in lines] == [
        ("o", "-"), ("s", "-"), ("x", "--"), ("s", "-"), ("x", "--")]
    colour = {k: line.get_color() for k, line in lines.items()}
    assert colour["m1: base"] == colour["m2: base"] == colour[f"base{STUDY}"] != colour["m2: all-module"]
    assert colour["m2: all-module"] == colour[f"all-module{STUDY}"]
    assert (list(lines["m2: all-module"].get_xdata()), list(lines["m2: all-module"].get_ydata())) == ([2754], [40.0])
    assert [t.get_text() for t in ax.get_legend().get_texts()] == list(lines)
    assert (ax.get_xscale(), ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == (
        "log", "training rows", "accuracy (%)", "20 Newsgroups: accuracy by training rows")
    assert png_size(tmp_path / "accuracy.png") == (720, 480)
    plot_accuracy(table1([_row("m1", "base", 0.1, 1101, 18.5)]), tmp_path / "one.png")
    assert [line.get_label() for line in drawn[1].axes[0].lines] == ["base", f"base{STUDY}"]  # one model: no name


def test_the_rouge_plot_puts_two_bars_at_each_setting(tmp_path, drawn):
    table = [{"model": "m", "setting": "zero-shot", "rouge1": 23.5, "rouge2": 6.25},
             {"model": "m", "setting": "base", "rouge1": None, "rouge2": None},
             {"model": "m", "setting": "NEFTune", "rouge1": 40.0, "rouge2": 17.5}]
    plot_rouge(table, tmp_path / "rouge.png")
    ax = drawn[0].axes[0]
    one, two = ax.containers
    def bars(container):  # (centre, width, height), rounded off float noise
        return [(round(p.get_x() + p.get_width() / 2, 9) + 0.0, round(p.get_width(), 9), p.get_height()) for p in container]

    assert (bars(one), bars(two)) == ([(-0.2, 0.4, 23.5), (0.8, 0.4, 40.0)], [(0.2, 0.4, 6.25), (1.2, 0.4, 17.5)])
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["ROUGE-1", "ROUGE-2"]
    assert ax.get_legend()._loc == 2  # upper left, above the bars' room
    assert ax.get_ylim() == (0.0, 48.0)
    ticks = ax.get_xticklabels()
    assert [(t.get_text(), t.get_rotation(), t.get_ha()) for t in ticks] == [("zero-shot", 30.0, "right"),
                                                                              ("NEFTune", 30.0, "right")]
    assert (ax.get_ylabel(), ax.get_title()) == ("F-measure x100", "SAMSum: ROUGE by setting")
    assert png_size(tmp_path / "rouge.png") == (840, 480)
    several = [{"model": f"m{i % 2}", "setting": f"s{i}", "rouge1": 10.0 + i, "rouge2": 1.0} for i in range(11)]
    plot_rouge(several, tmp_path / "several.png")
    ticks = drawn[1].axes[0].get_xticklabels()
    assert [t.get_text() for t in ticks[:2]] == ["m0\ns0", "m1\ns1"] and ticks[0].get_fontsize() == 8
    assert png_size(tmp_path / "several.png") == (1056, 600)  # 0.8 in a bar pair, taller for two-line labels
    plot_rouge([{"model": "m", "setting": "base", "rouge1": None, "rouge2": None}], tmp_path / "empty.png")
    assert drawn[2].axes[0].get_ylim() == (0.0, 1.2) and not drawn[2].axes[0].patches


def _log(folder, rows) -> object:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder / "train_log.jsonl"


def test_the_loss_curves_of_a_tables_runs(tmp_path, drawn):
    _log(tmp_path / "a", [{"step": s, "loss": 3.0 / s, "tokens_seen": 100 * s} for s in (1, 2)])
    _log(tmp_path / "b", [{"step": 1, "loss": 2.5, "tokens_seen": 80}, {"step": 1, "eval_loss": 2.0}])
    _log(tmp_path / "c", [{"step": 1, "train_runtime": 3.0}])  # no loss: no curve
    runs = [{"run": name, "path": str(tmp_path / name)} for name in "abc"] + [{"run": "no-path"}]
    assert plot_loss_curves(runs, "Table 2: training loss of its runs", tmp_path / "loss.png")
    ax = drawn[0].axes[0]
    assert [(line.get_label(), list(line.get_xdata()), list(line.get_ydata())) for line in ax.lines] == [
        ("a", [100, 200], [3.0, 1.5]), ("b", [80], [2.5])]
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == ("tokens seen", "training loss",
                                                                  "Table 2: training loss of its runs")
    assert png_size(tmp_path / "loss.png") == (960, 600)
    assert not plot_loss_curves(runs[2:], "t", tmp_path / "none.png") and not (tmp_path / "none.png").exists()


def test_a_runs_loss_png_has_steps_on_top_only_when_tokens_grow(tmp_path, drawn):
    rows = [{"step": s, "loss": 2.0 / s, "learning_rate": 1e-4 * s, "tokens_seen": 50 * s} for s in (1, 2, 3)]
    assert plot_training_log(_log(tmp_path / "run", rows), tmp_path / "loss.png")
    ax, lr = drawn[0].axes
    [top] = ax.child_axes
    assert top.get_xlabel() == "optimizer step" and list(top._functions[0]([100, 125])) == [2.0, 2.5]
    assert list(top._functions[1]([2.0])) == [100.0]
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title(), lr.get_ylabel()) == (
        "tokens seen", "training loss", "run", "learning rate")
    assert (lr.lines[0].get_color(), lr.lines[0].get_linestyle()) == ("gray", "--")
    assert list(lr.lines[0].get_xdata()) == [50, 100, 150] and list(lr.lines[0].get_ydata()) == [r["learning_rate"] for r in rows]
    assert to_rgba(lr.yaxis.label.get_color()) == to_rgba("gray") and ax.lines[0].get_marker() == "."
    assert png_size(tmp_path / "loss.png") == (720, 480)
    flat = [{"step": s, "loss": 1.0, "tokens_seen": 100} for s in (1, 2)]  # tokens not counted: no step axis
    assert plot_training_log(_log(tmp_path / "flat", flat), tmp_path / "flat.png")
    assert drawn[1].axes[0].child_axes == [] and len(drawn[1].axes) == 1  # and no learning rate logged: no lr axis
    assert plot_training_log(_log(tmp_path / "one", rows[:1]), tmp_path / "one.png")
    assert drawn[2].axes[0].child_axes == []
    two = [{"step": s, "loss": 1.0, "tokens_seen": 10 + s} for s in (1, 2)]  # two rows, one token apart
    assert plot_training_log(_log(tmp_path / "two", two), tmp_path / "two.png")
    assert len(drawn[3].axes[0].child_axes) == 1
    for count, marker in ((49, "."), (50, "None")):  # points marked only while they are few
        many = [{"step": s, "loss": 1.0, "tokens_seen": s} for s in range(1, count + 1)]
        assert plot_training_log(_log(tmp_path / f"n{count}", many), tmp_path / f"n{count}.png")
        assert drawn[-1].axes[0].lines[0].get_marker() == marker
    assert not plot_training_log(_log(tmp_path / "empty", [{"step": 1, "train_runtime": 2.0}]), tmp_path / "e.png")
    assert not (tmp_path / "e.png").exists()
