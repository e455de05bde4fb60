"""A tuning database as a build reads it: files, keys and the rule that decides whether a record
is applied.  Low level on purpose (TVM, numpy and :mod:`tbn_tvm.errors` only): the passes and
the back ends import it, the tuning driver (:mod:`tbn_tvm.schedules.tuning`) writes what it reads.

A database folder holds MetaSchedule's JSON database (``database_workload.json``,
``database_tuning_record.json``) and the project's files, each a JSON object keyed by
:func:`target_key`:

* ``tbn_forms.json``: layer -> kernel form chosen by tuning (``bitserial`` / ``decoded``);
* ``tbn_baselines.json``: :func:`workload_key` -> what the kernel's *default build schedule*
  (the schedule a build without a database gives it) measured, and the verdict on the best
  record: on the host ``{"default_s", "record_s", "spread", "apply", "record", "records"}``
  (the two timed alternately in one process after the search, see
  :func:`tbn_tvm.schedules.tuning.verify_records`); on Cortex-M the default schedule's
  instruction count (a number: QEMU's counts are exact);
* ``tbn_tuning_curve.json``: the tuning curve.

:func:`record_beats_default` is the one rule: a record is applied only where it was measured
faster than the default schedule of the same kernel, measured the same way; a kernel with
records but no verdict keeps its default schedule.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tbn_tvm.errors import TBNError

FORMS_FILE = "tbn_forms.json"
CURVE_FILE = "tbn_tuning_curve.json"
RECORDS_FILE = "database_tuning_record.json"
WORKLOADS_FILE = "database_workload.json"
BASELINES_FILE = "tbn_baselines.json"


# ------------------------------------------------------------------------------ files
def repair_jsonl(path: Path) -> int:
    """Drop a last line cut short by a kill (the file is appended one JSON line per record);
    returns the number of valid lines."""
    if not path.exists():
        return 0
    data = path.read_bytes()
    lines = data.split(b"\n")
    good, keep = [], True
    for line in lines:
        if not line.strip():
            continue
        try:
            json.loads(line)
        except ValueError:
            keep = False
            continue
        good.append(line)
    if not keep:
        path.write_bytes(b"\n".join(good) + (b"\n" if good else b""))
    return len(good)


def open_database(db_dir: str | os.PathLike, create: bool = True):
    """The JSON database in ``db_dir`` (created when ``create``), after repairing a record file
    an interrupted run cut short.  Raises TBNError for a folder that is not a tuning database."""
    from tvm.s_tir import meta_schedule as ms

    db = Path(db_dir)
    if db.exists() and not db.is_dir():
        raise TBNError(f"{db}: is not a directory", hint="give the tuning database a folder of its own")
    if not db.exists():
        if not create:
            raise TBNError(f"{db}: no such tuning database", hint="run 'tbn-tvm tune' first")
        db.mkdir(parents=True)
    elif not create and not (db / WORKLOADS_FILE).exists():
        raise TBNError(f"{db}: not a tuning database (no {WORKLOADS_FILE})", hint="run 'tbn-tvm tune' first")
    for name in (WORKLOADS_FILE, RECORDS_FILE):
        repair_jsonl(db / name)
    try:
        return ms.database.JSONDatabase(
            path_workload=str(db / WORKLOADS_FILE),
            path_tuning_record=str(db / RECORDS_FILE),
            allow_missing=True,
        )
    except Exception as e:  # noqa: BLE001 - a damaged database file
        raise TBNError(f"{db}: cannot read the tuning database ({' '.join(str(e).split())[:200]})") from None


def update_json(path: Path, update: Callable[[dict], object]) -> None:
    """Read the JSON object at ``path`` (empty when missing or damaged), ``update`` it in place,
    write it back (only when it changed: a re-run that decides nothing new leaves the file as
    it was)."""
    try:
        before = path.read_text() if path.exists() else ""
        data = json.loads(before) if before else {}
    except ValueError:
        before, data = "", {}
    if not isinstance(data, dict):
        data = {}
    update(data)
    text = json.dumps(data, indent=1, sort_keys=True) + "\n"
    if text != before:
        path.write_text(text)


def _read_keyed(path: Path, key: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    found = data.get(key, {}) if isinstance(data, dict) else {}
    return found if isinstance(found, dict) else {}


def read_forms(db_dir: str | os.PathLike, key: str) -> dict[str, str]:
    """Layer name -> kernel form chosen by tuning for ``key`` (empty when none)."""
    return {str(k): str(v) for k, v in _read_keyed(Path(db_dir) / FORMS_FILE, key).items()}


def write_forms(db_dir: str | os.PathLike, key: str, forms: dict[str, str]) -> None:
    update_json(Path(db_dir) / FORMS_FILE, lambda data: data.__setitem__(key, dict(sorted(forms.items()))))


def read_baselines(db_dir: str | os.PathLike, key: str) -> dict:
    """:func:`workload_key` -> the default schedule's figure or verdict for ``key`` (see the
    module docstring; empty when none)."""
    return _read_keyed(Path(db_dir) / BASELINES_FILE, key)


def write_baselines(db_dir: str | os.PathLike, key: str, entries: dict) -> None:
    """Add or replace the entries of ``key``'s baselines."""
    update_json(Path(db_dir) / BASELINES_FILE, lambda data: data.setdefault(key, {}).update(entries))


# ------------------------------------------------------------------------------ keys
def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def tuning_target(spec):
    """The TVM target candidates are generated for (Cortex-M kernels are emitted as C, but their
    schedules are searched as for a single-core CPU)."""
    import tvm

    if spec.family == "cortex-m":
        return tvm.target.Target({**spec.tvm_target, "num-cores": 1})
    t = dict(spec.tvm_target)
    t.setdefault("num-cores", cores())
    return tvm.target.Target(t)


def target_key(target) -> str:
    """A stable key of a TVM target (kind, triple, CPU) for the forms file and notes."""
    attrs = target.attrs
    return "/".join(str(x) for x in (target.kind.name, attrs.get("mtriple", ""), attrs.get("mcpu", "")))


def workload_key(mod) -> str:
    """A stable key of a task's module (its structural hash)."""
    import tvm_ffi

    return str(tvm_ffi.structural_hash(mod))


def workload_of(func):
    """The module MetaSchedule files an unscheduled kernel under, as its task extraction and
    ``MetaScheduleApplyDatabase`` normalise it (``main``, ``global_symbol`` when it has none,
    ``tirx.noalias``)."""
    import tvm

    if not (func.attrs and "global_symbol" in func.attrs):
        func = func.with_attr("global_symbol", "main")
    return tvm.IRModule({"main": func.with_attr("tirx.noalias", True)})


def kernel_workload_key(func) -> str:
    """:func:`workload_key` of an unscheduled fused kernel, as MetaSchedule's database sees it
    (:func:`workload_of`)."""
    return workload_key(workload_of(func))


def layers_of(kernel_name: str, layers) -> list[str]:
    """The layers (of a prepared module's rewritten ``layers``) a fused kernel computes, by the
    kernel names they gave their calls."""
    found, rest = [], kernel_name
    for layer in sorted((x for x in layers if x.kernel), key=lambda x: -len(x.kernel)):
        if layer.kernel in rest:
            rest = rest.replace(layer.kernel, "")
            found.append(layer.name)
    return found


def param_shapes(func) -> list[tuple[tuple[int, ...], str]]:
    """(shape, dtype) of each buffer parameter of a PrimFunc."""
    return [(tuple(int(d) for d in p.shape), str(p.dtype)) for p in func.params]


# ------------------------------------------------------------------------------ records
def best_record(database, mod):
    """The best record ``database`` holds for the workload ``mod`` (None: none)."""
    if not database.has_workload(mod):
        return None
    top = database.get_top_k(database.commit_workload(mod), 1)
    return top[0] if top and top[0].run_secs else None


def record_median(record) -> float:
    return float(np.median([float(s) for s in record.run_secs]))


def best_seconds(database, mod) -> float | None:
    """Median seconds of the best record ``database`` holds for the workload ``mod`` (None: none)."""
    record = best_record(database, mod)
    return None if record is None else record_median(record)


def record_seconds(database, func) -> float | None:
    """Median seconds of the best record ``database`` holds for the unscheduled kernel ``func``
    (None when it holds none)."""
    return best_seconds(database, workload_of(func))


def trace_key(trace) -> str:
    """The schedule ``trace`` as text that is the same in every process: its JSON form
    (``Trace.as_json``).  ``str(trace)`` is not: TVM prints a trace it cannot write as Python
    (a convolution's, with a string where a loop is expected) as ``Trace(<address>)``, which
    made every verdict on such a kernel look new to a re-run.  Integer constants are written
    as plain numbers: a trace made in this process writes a split factor ``T.int64(32)``, the
    same trace read back from the database ``32``."""
    import json
    import re

    text = json.dumps(trace.as_json(remove_postproc=False), default=str, separators=(",", ":"))
    return re.sub(r'"T\.u?int\d+\((-?\d+)\)"', r'"\1"', text)


def record_id(record) -> str:
    """A short key of a record's schedule (:func:`trace_key`): which record a verdict was made on."""
    return hashlib.sha1(trace_key(record.trace).encode()).hexdigest()[:16]


def record_beats_default(entry, record, scale: float = 1.0) -> bool:
    """Whether ``record`` (the best record of a kernel) is to be applied, given the kernel's
    baseline ``entry`` (:func:`read_baselines`): a verdict (host) applies only the very record
    it was made on; a number (Cortex-M: instructions, ``scale`` converts the record's figure)
    applies a record measured below it; no entry applies nothing (never measured against the
    default: the default stays)."""
    if record is None or entry is None:
        return False
    if isinstance(entry, dict):
        return bool(entry.get("apply")) and entry.get("record") == record_id(record)
    try:
        return record_median(record) * scale < float(entry)
    except (TypeError, ValueError):
        return False


def keep_records_that_beat_default(before, after, tuned: list[str], database, baselines: dict):
    """Undo the records MetaScheduleApplyDatabase applied to the ``tuned`` kernels of ``after``
    (``before``: the module before it) where :func:`record_beats_default` says no; returns the
    module, the kernels still tuned, and those that keep their default schedule."""
    kept = []
    for name in tuned:
        gv = before.get_global_var(name)
        mod = workload_of(before[gv])
        entry = baselines.get(workload_key(mod))
        if not record_beats_default(entry, best_record(database, mod)):
            after[gv] = before[gv]
            kept.append(name)
    return after, [t for t in tuned if t not in kept], kept
