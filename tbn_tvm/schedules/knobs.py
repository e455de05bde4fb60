"""Knobs of the host default schedules (:mod:`tbn_tvm.schedules.cpu`, ``cpu_generic``,
``cpu_decoded``, ``cpu_lut``): the few decisions those schedules make by a rule of thumb that
a measurement on the user's machine can decide better.  A build uses :data:`DEFAULT`; tuning
(:func:`tbn_tvm.schedules.tuning.search_neighbourhood`) measures each kernel's default schedule
made under every one of :data:`VARIANTS` as the first candidates around the default (the
schedule *is* the default's, with that one decision changed), and keeps one only where it
beats the default timed alternately (:func:`tbn_tvm.schedules.tuning.verify_records`).

* ``parallel_scale``: multiplies the work thresholds from which a kernel goes over the cores
  (:data:`tbn_tvm.schedules.cpu_generic.PARALLEL_MIN_MACS` and ``PARALLEL_MIN_ELEMENTS``); 0
  spreads every kernel whose outer loop allows it.  The thresholds are set for kernels
  within a model on a 2-core machine; a layout kernel of 8 x 65 x 384 floats (a ViT's head
  split, batch 8) took 187 us on one core and 94 us on two although below them.
* ``gemm_rows``: the decoded GEMM (:func:`tbn_tvm.schedules.cpu_decoded.schedule_gemm`) spreads
  its blocks of input rows over the cores instead of its blocks of distinct rows (3 blocks of
  distinct rows over 2 cores leave one core idle a third of the time).

Knobs are read while a schedule is made (:func:`current`), set for a block of code with
:func:`using` (a context variable: a schedule made elsewhere at the same time is not affected).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(frozen=True)
class Knobs:
    """One setting of the host schedules' knobs (see the module docstring)."""

    parallel_scale: float = 1.0
    gemm_rows: bool = False

    @property
    def name(self) -> str:
        parts = []
        if self.parallel_scale != 1.0:
            parts.append(f"parallel x{self.parallel_scale:g}")
        if self.gemm_rows:
            parts.append("GEMM rows over the cores")
        return ", ".join(parts) or "default"


DEFAULT = Knobs()
#: The settings tuning tries around each kernel's default schedule (in this order).
VARIANTS = (Knobs(parallel_scale=0.0), Knobs(gemm_rows=True), Knobs(parallel_scale=0.0, gemm_rows=True))

_CURRENT: ContextVar[Knobs] = ContextVar("tbn_tvm_schedule_knobs", default=DEFAULT)


def current() -> Knobs:
    """The knobs schedules made now follow."""
    return _CURRENT.get()


@contextlib.contextmanager
def using(knobs: Knobs) -> Iterator[Knobs]:
    """Make schedules inside the ``with`` block under ``knobs``."""
    token = _CURRENT.set(knobs)
    try:
        yield knobs
    finally:
        _CURRENT.reset(token)


def parallel_min(threshold: int) -> int:
    """``threshold`` (work from which a kernel goes over the cores) under the current knobs."""
    return int(threshold * current().parallel_scale)
