"""Progress bars for long steps: tqdm on stderr, only when someone is watching.

Library code marks its long steps: :func:`bar` for a count (samples through QEMU or a board),
:func:`stage` for the named stages of a compile (``import``, ``passes``, ``build``, ...).
Nothing is shown unless the caller asked for progress with :func:`shown` (the command line
does) *and* stderr is a terminal; a bar then appears only once its step has run for
:data:`DELAY_S` seconds, so short steps and logs stay clean.  ``TBN_TVM_PROGRESS=1`` shows every
bar at once, terminal or not (for logs and tests); ``TBN_TVM_PROGRESS=0`` shows none.

>>> with shown(), bar(3, "QEMU") as update:   # no terminal here: nothing is printed
...     update(3)
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar

#: Seconds a step runs before its bar appears (on a terminal).
DELAY_S = 2.0

_ENABLED: ContextVar[bool] = ContextVar("tbn_tvm_progress", default=False)
_STAGES: ContextVar[Callable[[str], None] | None] = ContextVar("tbn_tvm_stages", default=None)
_TIMES: ContextVar[list | None] = ContextVar("tbn_tvm_stage_times", default=None)


@contextlib.contextmanager
def shown(enable: bool = True) -> Iterator[None]:
    """Within this block, long steps show a progress bar on stderr (when it is a terminal)."""
    token = _ENABLED.set(enable)
    try:
        yield
    finally:
        _ENABLED.reset(token)


def _delay() -> float | None:
    """None: no bar; else seconds before the bar appears."""
    try:
        import tqdm  # noqa: F401 - a dependency, but a bar is never worth a failure
    except ImportError:
        return None
    forced = os.environ.get("TBN_TVM_PROGRESS")
    if forced is not None and forced.strip():
        return 0.0 if forced.strip() != "0" else None
    if not _ENABLED.get():
        return None
    try:
        return DELAY_S if sys.stderr.isatty() else None
    except (AttributeError, ValueError):  # a closed or replaced stderr
        return None


@contextlib.contextmanager
def bar(total: int, desc: str, unit: str = "sample") -> Iterator[Callable[[int], None]]:
    """A bar over ``total`` items; yields ``update(done)``, which sets the number done so far."""
    delay = _delay()
    if delay is None:
        yield lambda done: None
        return
    from tqdm import tqdm

    with tqdm(
        total=total, desc=desc, unit=unit, delay=delay, file=sys.stderr, dynamic_ncols=True, leave=False
    ) as t:

        def update(done: int) -> None:
            if done > t.n:
                t.update(done - t.n)

        yield update


@contextlib.contextmanager
def stages(desc: str) -> Iterator[None]:
    """Show the stage that :func:`stage` last announced (``compile: build [00:12]``)."""
    delay = _delay()
    if delay is None:
        yield
        return
    from tqdm import tqdm

    with tqdm(
        total=None, desc=desc, bar_format="{desc} [{elapsed}]", delay=delay, file=sys.stderr, leave=False
    ) as t:
        start = time.monotonic()

        def announce(name: str) -> None:  # shown at once, unless the bar is still in its delay
            t.update(1)
            t.set_description_str(f"{desc}: {name}", refresh=time.monotonic() - start >= delay)

        token = _STAGES.set(announce)
        try:
            yield
        finally:
            _STAGES.reset(token)


def stage(name: str) -> None:
    """Announce that the step ``name`` starts (shown inside a :func:`stages` block, timed inside a
    :func:`timed` block; nothing otherwise)."""
    times = _TIMES.get()
    if times is not None:
        now = time.perf_counter()
        if times and times[-1][2] is None:
            times[-1][2] = now
        times.append([name, now, None])
    announce = _STAGES.get()
    if announce is not None:
        announce(name)


@contextlib.contextmanager
def timed() -> Iterator[list[tuple[str, float]]]:
    """Time the stages :func:`stage` announces within this block: yields a list that holds
    ``(name, seconds)`` per stage, in order, once the block ends (a stage announced twice
    counts twice; time before the first stage is ``start``)."""
    times: list = [["start", time.perf_counter(), None]]
    result: list[tuple[str, float]] = []
    token = _TIMES.set(times)
    try:
        yield result
    finally:
        _TIMES.reset(token)
        end = time.perf_counter()
        for entry in times:
            if entry[2] is None:
                entry[2] = end
        result.extend(
            (name, stop - begin) for name, begin, stop in times if name != "start" or stop - begin > 0.05
        )
