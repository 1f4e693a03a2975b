"""The tables' plots and each run's loss.png (PNG, drawn with matplotlib's Agg backend)."""

from __future__ import annotations

from pathlib import Path

from zephyr import reference, rundir
from zephyr.io import read_log_rows
from zephyr.rundir import TRAIN_LOG

VARIANTS = [variant.name for variant in rundir.VARIANTS]


def plot_accuracy(table: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    models = list(dict.fromkeys(r["model"] for r in table))
    markers = "os^vDP*X"  # one marker per model, one colour per variant (the study's curve in its variant's colour)
    for color, variant in zip(plt.rcParams["axes.prop_cycle"].by_key()["color"], VARIANTS):
        for marker, model in zip(markers, models):
            points = [(r["train_rows"], r[variant]) for r in table if r["model"] == model and r[variant] is not None]
            if points:
                ax.plot(*zip(*points), marker=marker, color=color,
                        label=variant if len(models) == 1 else f"{model}: {variant}")
        study = {(r["study train_rows"], r[f"study {variant}"]) for r in table if r[f"study {variant}"] is not None}
        if any(r[variant] is not None for r in table):  # the study's curve beside a variant we ran
            ax.plot(*zip(*sorted(study)), marker="x", linestyle="--", color=color, alpha=0.6,
                    label=f"{variant} (study, {reference.STUDY_MODEL})")
    ax.set_xscale("log")
    ax.set_xlabel("training rows")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("20 Newsgroups: accuracy by training rows")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_rouge(table: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    present = [r for r in table if r["rouge1"] is not None]
    several_models = len({r["model"] for r in present}) > 1
    fig, ax = plt.subplots(figsize=(max(7, 0.8 * len(present)), 5 if several_models else 4))
    x = range(len(present))
    ax.bar([i - 0.2 for i in x], [r["rouge1"] for r in present], width=0.4, label="ROUGE-1")
    ax.bar([i + 0.2 for i in x], [r["rouge2"] for r in present], width=0.4, label="ROUGE-2")
    ax.set_xticks(list(x), [f"{r['model']}\n{r['setting']}" if several_models else r["setting"] for r in present],
                  rotation=30, ha="right", fontsize=8 if several_models else None)
    ax.set_ylim(0, 1.2 * max((r["rouge1"] for r in present), default=1))  # room for the legend above the bars
    ax.set_ylabel("F-measure x100")
    ax.set_title("SAMSum: ROUGE by setting")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _read_log(path: Path) -> list[dict]:
    return [row for row in read_log_rows(path) if "loss" in row]


def plot_training_log(log_path: Path, path: Path) -> bool:
    """loss.png of one run: training loss against tokens seen (steps on the top axis), learning rate on the right.

    Returns False (and writes nothing) when the log holds no loss.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = _read_log(log_path)
    if not rows:
        return False
    tokens = np.array([r["tokens_seen"] for r in rows], dtype=float)
    steps = np.array([r["step"] for r in rows], dtype=float)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(tokens, [r["loss"] for r in rows], marker="." if len(rows) < 50 else None, label="training loss")
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    if len(rows) > 1 and np.all(np.diff(tokens) > 0):
        top = ax.secondary_xaxis("top", functions=(lambda t: np.interp(t, tokens, steps),
                                                   lambda s: np.interp(s, steps, tokens)))
        top.set_xlabel("optimizer step")
    if any("learning_rate" in r for r in rows):
        lr = ax.twinx()
        lr.plot(tokens, [r.get("learning_rate") for r in rows], color="gray", linestyle="--", label="learning rate")
        lr.set_ylabel("learning rate", color="gray")
    ax.set_title(log_path.parent.name, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_loss_curves(rows: list[dict], title: str, path: Path) -> bool:
    """One figure with the training-loss curve of each run in ``rows`` (their train_log.jsonl)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = [(r["run"], _read_log(Path(r["path"]) / TRAIN_LOG)) for r in rows if r.get("path")]
    curves = [(name, log) for name, log in curves if log]
    if not curves:
        return False
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, log in curves:
        ax.plot([r["tokens_seen"] for r in log], [r["loss"] for r in log], label=name, linewidth=1)
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("training loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2 if len(curves) > 12 else 1)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
