"""Static memory planning: place intermediate tensors in one arena, reusing space between
tensors whose lifetimes do not overlap (greedy by size, first fit).

>>> offsets, total = plan([Interval("a", 400, 0, 1), Interval("b", 40, 1, 2), Interval("c", 400, 2, 3)])
>>> offsets["a"] == offsets["c"], total
(True, 448)
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Interval:
    """A tensor of ``size`` bytes, written at step ``first`` and last read at step ``last``."""

    name: str
    size: int
    first: int
    last: int

    def overlaps(self, other: Interval) -> bool:
        return self.first <= other.last and other.first <= self.last


def _align(v: int, a: int) -> int:
    return (v + a - 1) // a * a


def plan(intervals: list[Interval], align: int = 16) -> tuple[dict[str, int], int]:
    """Offsets (bytes, multiples of ``align``) for every interval, and the arena size."""
    placed: list[tuple[int, int, Interval]] = []  # (offset, end, interval)
    offsets: dict[str, int] = {}
    for iv in sorted(intervals, key=lambda i: (-i.size, i.first, i.name)):
        size = _align(max(iv.size, 1), align)
        busy = sorted((o, e) for o, e, other in placed if other.overlaps(iv))
        offset = 0
        for o, e in busy:
            if offset + size <= o:
                break
            offset = max(offset, _align(e, align))
        placed.append((offset, offset + size, iv))
        offsets[iv.name] = offset
    total = max((e for _, e, _ in placed), default=0)
    return offsets, total


def check(intervals: list[Interval], offsets: dict[str, int]) -> None:
    """Raise if two live-at-once tensors share bytes (used by tests and as a build-time guard)."""
    for i, a in enumerate(intervals):
        for b in intervals[i + 1 :]:
            if a.overlaps(b):
                ao, bo = offsets[a.name], offsets[b.name]
                if ao < bo + b.size and bo < ao + a.size:
                    raise AssertionError(f"memory plan overlaps {a.name} and {b.name}")
