"""A small pool of persistent worker processes, each running one case at a time.

A worker that dies while running a case (a segfault or an abort in TVM, or the memory limit) is
replaced and its case is a ``crash``; one that runs past the per-case timeout is killed,
replaced, and its case is a ``hang``.  Each worker writes its output to a log file that is
truncated at every case, so a crash is reported with TVM's last words.
"""

from __future__ import annotations

import multiprocessing as mp
import re
import signal
import tempfile
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path

from conformance.cases import Case
from conformance.worker import NOT_CONVERTIBLE, first_line, job_payload, scrub, worker_main

#: Lines of a crashed worker's log that name the cause better than the last line.
_TELLING = re.compile(
    r"(Error|error:|Check failed|terminate called|Segmentation|Aborted|what\(\)|Fatal|InternalError)"
)


@dataclass
class _Slot:
    """One worker process and the case it is running."""

    proc: BaseProcess
    conn: Connection
    log: Path
    spawned: float
    ready: bool = False
    case: Case | None = None
    started: float = 0.0
    phase: str = ""
    done: int = 0
    messages: list = field(default_factory=list)


def describe_exit(exitcode: int | None) -> str:
    """``SIGSEGV``, ``SIGABRT``, ``exit status 3`` ..."""
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        try:
            return signal.Signals(-exitcode).name
        except ValueError:
            return f"signal {-exitcode}"
    return f"exit status {exitcode}"


def log_tail(path: Path, lines: int = 6) -> list[str]:
    """The last non-empty lines a worker wrote (its case markers left out)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    out = [scrub(" ".join(line.split()))[:300] for line in text.splitlines()]
    out = [line for line in out if line and not line.startswith("--- ")]
    return out[-lines:]


def crash_reason(tail: list[str]) -> str:
    """The most telling line of a crashed worker's log (or its last line)."""
    for line in reversed(tail):
        if _TELLING.search(line):
            return line
    return tail[-1] if tail else ""


class WorkerPool:
    """Run cases in ``jobs`` worker processes with a per-case ``timeout`` (seconds) and an address
    space limit of ``mem_limit`` bytes per worker (None: unlimited).  A worker is replaced after
    ``max_cases`` cases so that memory TVM keeps between builds does not accumulate.  ``relabel``:
    see :func:`conformance.worker.convert`.  ``worker`` is the process's entry point (a picklable
    top-level function speaking the protocol of :mod:`conformance.worker`; tests use a fake)."""

    def __init__(
        self,
        jobs: int,
        timeout: float,
        mem_limit: int | None,
        target: str,
        *,
        max_cases: int = 150,
        startup_timeout: float = 300.0,
        relabel: bool = True,
        worker: Callable[[Connection, int | None, str], None] = worker_main,
    ) -> None:
        self.jobs = max(1, jobs)
        self.timeout = timeout
        self.mem_limit = mem_limit
        self.target = target
        self.max_cases = max_cases
        self.startup_timeout = startup_timeout
        self.relabel = relabel
        self.worker = worker
        self._ctx = mp.get_context("spawn")  # never fork a process that may hold TVM's threads
        self._generation = 0
        self._startup_failures = 0

    # ------------------------------------------------------------------ process management
    def _spawn(self, tmp: Path) -> _Slot:
        self._generation += 1
        log = tmp / f"worker-{self._generation}.log"
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(
            target=self.worker,
            args=(child, self.mem_limit, str(log)),
            daemon=True,
            name=f"conformance-{self._generation}",
        )
        proc.start()
        child.close()
        return _Slot(proc=proc, conn=parent, log=log, spawned=time.monotonic())

    @staticmethod
    def _stop(slot: _Slot, kill: bool) -> None:
        if kill:
            slot.proc.kill()
        else:
            try:
                slot.conn.send(None)
            except OSError:
                slot.proc.kill()
        slot.proc.join(10)
        if slot.proc.is_alive():
            slot.proc.kill()
            slot.proc.join(10)
        slot.conn.close()

    # ------------------------------------------------------------------ the loop
    def run(self, cases: Sequence[Case], on_result: Callable[[Case, dict], None]) -> None:
        """Run every case; ``on_result(case, verdict)`` is called once per case, in completion order."""
        if not cases:
            return
        with tempfile.TemporaryDirectory(prefix="tbn-conformance-") as tmp_name:
            tmp = Path(tmp_name)
            pending = deque(cases)
            slots = [self._spawn(tmp) for _ in range(min(self.jobs, len(cases)))]
            try:
                while pending or any(s.case is not None for s in slots):
                    for i, slot in enumerate(slots):
                        if slot.ready and slot.case is None:
                            if slot.done >= self.max_cases and pending:
                                self._stop(slot, kill=False)
                                slots[i] = self._spawn(tmp)
                            elif pending:
                                case = pending.popleft()
                                slot.case, slot.started, slot.phase = case, time.monotonic(), "send"
                                slot.conn.send(job_payload(case, self.target, self.relabel))
                    wait(
                        [s.conn for s in slots] + [s.proc.sentinel for s in slots],
                        timeout=self._wait_time(slots),
                    )
                    for i, slot in enumerate(slots):
                        replacement = self._service(slot, on_result, tmp)
                        if replacement is not None:
                            slots[i] = replacement
            finally:
                for slot in slots:
                    self._stop(slot, kill=True)

    def _wait_time(self, slots: list[_Slot]) -> float:
        now = time.monotonic()
        deadlines = [s.started + self.timeout for s in slots if s.case is not None]
        deadlines += [s.spawned + self.startup_timeout for s in slots if not s.ready]
        return max(0.0, min([now + 1.0, *deadlines]) - now)

    def _service(self, slot: _Slot, on_result: Callable[[Case, dict], None], tmp: Path) -> _Slot | None:
        """Read the slot's messages; returns a fresh slot when its worker had to be replaced."""
        dead = False
        try:
            while slot.conn.poll():
                msg = slot.conn.recv()
                if msg[0] == "ready":
                    slot.ready = True
                    self._startup_failures = 0
                elif msg[0] == "phase" and slot.case is not None and msg[1] == slot.case.name:
                    slot.phase = msg[2]
                elif msg[0] == "result" and slot.case is not None and msg[1] == slot.case.name:
                    case, slot.case = slot.case, None
                    slot.done += 1
                    on_result(case, msg[2])
        except (EOFError, OSError):
            dead = True
        if dead or not slot.proc.is_alive():
            slot.proc.join(5)
            how = describe_exit(slot.proc.exitcode)
            tail = log_tail(slot.log)
            if slot.case is not None:
                on_result(slot.case, self._lost(slot, "crash", f"worker died ({how})", tail))
            elif not slot.ready:
                self._startup_failures += 1
                if self._startup_failures >= 3:
                    raise RuntimeError(f"conformance workers fail to start ({how}): {crash_reason(tail)}")
            self._stop(slot, kill=True)
            return self._spawn(tmp)
        now = time.monotonic()
        if slot.case is not None and now - slot.started > self.timeout:
            self._stop(slot, kill=True)
            tail = log_tail(slot.log)
            on_result(slot.case, self._lost(slot, "hang", f"no result after {self.timeout:g} s", tail))
            return self._spawn(tmp)
        if not slot.ready and now - slot.spawned > self.startup_timeout:
            raise RuntimeError(f"a conformance worker did not start within {self.startup_timeout:g} s")
        return None

    @staticmethod
    def _lost(slot: _Slot, status: str, what: str, tail: list[str]) -> dict:
        """The verdict for a case whose worker crashed or hung."""
        reason = crash_reason(tail)
        phase = slot.phase if slot.phase != "send" else "start"
        message = f"{what} during {phase}" + (f": {first_line(reason)}" if reason else "")
        if phase == "convert":  # the version converter, not the compiler: no case at that opset
            status, message = NOT_CONVERTIBLE, f"version converter: {message}"
        verdict = {
            "status": status,
            "phase": phase,
            "message": message,
            "seconds": round(time.monotonic() - slot.started, 3),
        }
        if tail:
            verdict["log_tail"] = tail
        return verdict
