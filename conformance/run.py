"""Select cases and run them through the worker pool: :func:`select_cases` and :func:`run_suite`.

>>> cases = select_cases(sample_size=20, seed=0)                     # doctest: +SKIP
>>> suite = run_suite(cases, target="llvm", jobs=2)                  # doctest: +SKIP
>>> suite.totals()["pass"]                                           # doctest: +SKIP
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from conformance.cases import Case, collect, sample, select_ops, with_const_variants, with_versions
from conformance.worker import CLASSES, NOT_CONVERTIBLE

#: Per-case wall-clock limit (seconds) and per-worker address-space limit (bytes) by default.
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_MEM_LIMIT = 4 << 30
TARGETS = ("llvm", "cortex-m4")


def default_jobs() -> int:
    """The CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass
class Suite:
    """The outcome of a run: one record per case (its description and verdict) plus the setting."""

    records: list[dict]
    meta: dict = field(default_factory=dict)

    def totals(self) -> dict[str, int]:
        """Cases per class (``not_convertible`` version cases counted apart)."""
        counts = Counter(r["status"] for r in self.records)
        return {k: counts.get(k, 0) for k in (*CLASSES, NOT_CONVERTIBLE)}

    def by_status(self, *statuses: str) -> list[dict]:
        """The records of the given classes, by case name."""
        return [r for r in self.records if r["status"] in statuses]

    def to_dict(self) -> dict:
        return {"meta": self.meta, "totals": self.totals(), "cases": self.records}


def select_cases(
    *,
    sample_size: int | None = None,
    seed: int = 0,
    ops: Iterable[str] | None = None,
    versions: bool = False,
    expanded: bool = True,
    single_float32: bool = False,
    names: Iterable[str] | None = None,
    const_inputs: bool = True,
) -> list[Case]:
    """The cases of a run, sorted by name: all, those of ``ops``, the named ones, or a sample of
    ``sample_size``; with ``const_inputs`` the ``@const`` variants join the pool (see
    :func:`conformance.cases.const_variant`); with ``versions`` each is followed by its
    down-converted variants."""
    cases: Sequence[Case] = list(collect().values())
    if const_inputs:
        cases = with_const_variants(cases)
    if not expanded:
        cases = [c for c in cases if not c.expanded]
    if single_float32:
        cases = [c for c in cases if c.single_float32_io]
    if names is not None:
        wanted = set(names)
        cases = [c for c in cases if c.name in wanted or c.base in wanted]
    if ops is not None:
        cases = select_ops(cases, ops)
    if sample_size is not None:
        cases = sample(cases, sample_size, seed)
    return with_versions(cases) if versions else list(cases)


def _git_describe(path: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(path), "describe", "--always", "--dirty", "--abbrev=12"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def environment() -> dict:
    """Versions of what was tested (without importing TVM into this process)."""
    from importlib import metadata

    import onnx

    import tbn_tvm

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    return {
        "onnx_version": onnx.__version__,
        "tvm_version": version("apache-tvm"),
        "tbn_tvm_version": tbn_tvm.__version__,
        "tbn_tvm_git": _git_describe(Path(tbn_tvm.__file__).resolve().parent),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": default_jobs(),
    }


def run_suite(
    cases: Sequence[Case],
    *,
    target: str = "llvm",
    jobs: int | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    mem_limit: int | None = DEFAULT_MEM_LIMIT,
    progress: bool = False,
    command: str | None = None,
    relabel: bool = True,
    all_ops: bool = False,
) -> Suite:
    """Run ``cases`` on ``target`` in isolated workers; returns the :class:`Suite` (records by name).

    ``relabel``: a version case the converter cannot make is made by re-stamping the opset when
    onnxruntime confirms the data still hold (see :func:`conformance.worker.convert`).
    ``all_ops``: compile with tbn-tvm's supported-operator table switched off
    (``TBN_TVM_ALL_OPS=1``), so the run measures every operator TVM's importer knows — how the
    table itself is derived; without it, cases of operators outside the table are refused as a
    user's model would be."""
    from conformance.pool import WorkerPool

    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r} (choose from {', '.join(TARGETS)})")
    jobs = jobs or default_jobs()
    verdicts: dict[str, dict] = {}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(cases), unit="case", dynamic_ncols=True, file=sys.stderr)
    counts: Counter[str] = Counter()

    def on_result(case: Case, verdict: dict) -> None:
        verdicts[case.name] = verdict
        counts[verdict["status"]] += 1
        if bar is not None:
            bar.set_postfix_str(
                " ".join(f"{k}={counts[k]}" for k in (*CLASSES, NOT_CONVERTIBLE) if counts[k])
            )
            bar.update(1)

    started = dt.datetime.now(dt.UTC)
    t0 = time.perf_counter()
    try:
        saved = os.environ.get("TBN_TVM_ALL_OPS")
        if all_ops:
            os.environ["TBN_TVM_ALL_OPS"] = "1"  # the spawned workers inherit it
        else:
            os.environ.pop("TBN_TVM_ALL_OPS", None)
        try:
            WorkerPool(jobs, timeout, mem_limit, target, relabel=relabel).run(cases, on_result)
        finally:
            if saved is None:
                os.environ.pop("TBN_TVM_ALL_OPS", None)
            else:
                os.environ["TBN_TVM_ALL_OPS"] = saved
    finally:
        if bar is not None:
            bar.close()
    wall = time.perf_counter() - t0
    records = []
    for case in sorted(cases, key=lambda c: c.name):
        records.append({**case.describe(), **verdicts[case.name]})
    meta = {
        "command": command,
        "target": target,
        "date": started.isoformat(timespec="seconds"),
        "wall_s": round(wall, 1),
        "jobs": jobs,
        "timeout_s": timeout,
        "mem_limit_bytes": mem_limit,
        "relabel": relabel,
        "cases": len(cases),
        **environment(),
    }
    return Suite(records, meta)
