"""Training-fraction selection: exact, stratified, deterministic and nested.

Every row gets a sort key ``(rank within its class + 0.5) / class size``, the within-class ranks shuffled by
the seed (ties between classes broken by the seed too). Sorting all rows by that key interleaves the classes
in proportion to their sizes, so any prefix is stratified to within one row per class, and a class whose
share is at least half a row gets one. A fraction f takes the first
``round(f * n)`` rows of that one ordering, which makes smaller fractions exact subsets of larger ones.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Sequence, TypeVar

from zephyr.errors import UsageError

Row = TypeVar("Row")


@dataclass(frozen=True)
class Example:
    id: str
    text: str
    target: str


def stratified_order(rows: Sequence[Row], seed: int, key: Callable[[Row], str] | None = None) -> list[int]:
    """Indices of ``rows`` in an order whose every prefix is a stratified sample (see module docstring)."""
    rng = random.Random(seed)
    groups: dict[str, list[int]] = {}
    for index, row in enumerate(rows):
        groups.setdefault(key(row) if key else "", []).append(index)
    keyed = []
    for label in sorted(groups):
        members = groups[label]
        rng.shuffle(members)
        for rank, index in enumerate(members):
            keyed.append(((rank + 0.5) / len(members), rng.random(), index))
    keyed.sort()
    return [index for *_, index in keyed]


def select_fraction(rows: Sequence[Row], fraction: float, seed: int,
                    key: Callable[[Row], str] | None = None) -> list[Row]:
    """The first ``round(fraction * len(rows))`` rows of ``stratified_order``, kept in that order."""
    if fraction >= 1.0:
        return list(rows)
    count = round(fraction * len(rows))
    chosen = [rows[i] for i in stratified_order(rows, seed, key)[:count]]
    if key is not None:
        missing = sorted({key(r) for r in rows} - {key(r) for r in chosen})
        if missing:
            raise UsageError(
                f"--train_fraction: {fraction} gives {count} rows, too few for one row per class "
                f"({len(missing)} of {len({key(r) for r in rows})} classes would be empty, e.g. {missing[0]!r})")
    elif count == 0:
        raise UsageError(f"--train_fraction: {fraction} of {len(rows)} rows selects no row")
    return chosen
