"""Auto-tuning with MetaSchedule and its XGBoost cost model; reusable records in a database.

``tune(model, target, trials, db)`` compiles the model as far as the fused kernels
(:func:`tbn_tvm.passes.pipeline.fuse`), extracts one MetaSchedule task per distinct kernel — the
project's tiled kernels in their *decoded* form (the distinct rows decoded to float once per
call, then a GEMM/convolution MetaSchedule knows how to tile and vectorise) and every other
kernel of the graph — and searches schedules, measuring candidates on this machine, on devices
behind TVM's RPC tracker, or (Cortex-M) on QEMU by exact instruction count.  Every measured
record goes into a JSON database in ``db`` as it is measured, so an interrupted run loses
nothing and a second run resumes (it only spends the trials not yet spent).

After the search each tiled layer keeps the fastest of three kernels: the hand-scheduled
bit-serial one, the hand-scheduled decoded one, or the tuned decoded one; the choice is written
to ``db/tbn_forms.json`` and ``compile(..., tuning_db=db)`` follows it.  The hand decoded
kernels' times go to ``db/tbn_baselines.json``: a compile applies a record only where it is
faster than the hand schedule (on Cortex-M the same file holds instruction counts).

Traps of apache-tvm 0.27 worked around here (see the project's research notes): the default
builder imports ``tvm.s_tir.tensor_intrin`` in every worker (18-25 s, past its timeout), so a
builder function without it is used; tasks are extracted from the fused module (what
``MetaScheduleApplyDatabase`` sees at compile time).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tbn_tvm.errors import TBNError

FORMS_FILE = "tbn_forms.json"
CURVE_FILE = "tbn_tuning_curve.json"
RECORDS_FILE = "database_tuning_record.json"
WORKLOADS_FILE = "database_workload.json"


def fast_build(mod, target, _params=None):
    """MetaSchedule's default build without the 18-25 s ``tensor_intrin`` import."""
    import tvm
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm.tirx.build(mod, target=target)


# ------------------------------------------------------------------------------ database
def _repair_jsonl(path: Path) -> int:
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
        _repair_jsonl(db / name)
    try:
        return ms.database.JSONDatabase(
            path_workload=str(db / WORKLOADS_FILE),
            path_tuning_record=str(db / RECORDS_FILE),
            allow_missing=True,
        )
    except Exception as e:  # noqa: BLE001 - a damaged database file
        raise TBNError(f"{db}: cannot read the tuning database ({' '.join(str(e).split())[:200]})") from None


def read_forms(db_dir: str | os.PathLike, target_key: str) -> dict[str, str]:
    """Layer name -> kernel form chosen by tuning for ``target_key`` (empty when none)."""
    path = Path(db_dir) / FORMS_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    forms = data.get(target_key, {}) if isinstance(data, dict) else {}
    return {str(k): str(v) for k, v in forms.items()} if isinstance(forms, dict) else {}


def target_key(target) -> str:
    """A stable key of a TVM target (kind, triple, CPU) for the forms file and notes."""
    attrs = target.attrs
    return "/".join(str(x) for x in (target.kind.name, attrs.get("mtriple", ""), attrs.get("mcpu", "")))


# ------------------------------------------------------------------------------ tasks
@dataclass
class Task:
    """One tuning task: a fused kernel, the layers it computes, its weight in the model."""

    name: str
    layers: list[str]
    weight: int
    extracted: object = field(repr=False)


def _layers_of(kernel_name: str, layers) -> list[str]:
    found, rest = [], kernel_name
    for layer in sorted((x for x in layers if x.kernel), key=lambda x: -len(x.kernel)):
        if layer.kernel in rest:
            rest = rest.replace(layer.kernel, "")
            found.append(layer.name)
    return found


def prepare_for_tuning(model, spec, input_shapes=None, forms: dict[str, str] | str = "decoded"):
    """The fused module of ``model`` for ``spec`` with the tiled layers in ``forms`` (a form for
    all, or per layer), and the prepared layers."""
    from tbn_tvm.frontend.onnx import load_onnx, to_relax
    from tbn_tvm.passes.pipeline import fuse, prepare
    from tbn_tvm.targets import backend_class

    loaded = load_onnx(model, input_shapes)
    mod = to_relax(loaded)
    prepared = prepare(mod, forms=forms, **backend_class(spec.family).pass_options)
    target = spec.tvm()
    with target:
        fused = fuse(vector_math=spec.family == "host")(prepared.mod)  # as the build fuses it
    return loaded, prepared, fused


def extract_tasks(fused, target, layers) -> list[Task]:
    """MetaSchedule tasks of a fused module, each labelled with the layers it computes."""
    from tvm.s_tir import meta_schedule as ms

    from tbn_tvm.quiet import captured

    with captured():
        extracted = ms.relax_integration.extract_tasks(fused, target)
    out = []
    for t in extracted:
        if t.mod.attrs and t.mod.attrs.get("tirx.is_scheduled", False):
            continue
        out.append(Task(t.task_name, _layers_of(t.task_name, layers), int(t.weight), t))
    return out


# ------------------------------------------------------------------------------ progress
def _progress_callback(bar, tasks: list[Task], history: list[dict], t0: float):
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

    best: dict[int, float] = {}

    @derived_object
    class Progress(PyMeasureCallback):
        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
            for res in runner_results:
                secs = [float(s) for s in (res.run_secs or [])]
                if secs and not res.error_msg:
                    m = float(np.median(secs))
                    best[task_id] = min(best.get(task_id, float("inf")), m)
            total = sum(best.get(i, float("nan")) * tasks[i].weight for i in range(len(tasks)))
            history.append(
                {
                    "seconds": round(time.perf_counter() - t0, 2),
                    "trials": (history[-1]["trials"] if history else 0) + len(measure_candidates),
                    "task": tasks[task_id].name,
                    "best_s": best.get(task_id),
                    "model_estimate_s": None if np.isnan(total) else total,
                }
            )
            if bar is not None:
                bar.update(len(measure_candidates))
                shown = ", ".join(
                    f"{tasks[i].name[:18]} {best[i] * 1e6:.0f}us"
                    for i in sorted(best, key=lambda i: -tasks[i].weight)[:3]
                )
                bar.set_postfix_str(shown)

    return Progress()


# ------------------------------------------------------------------------------ tuning
@dataclass
class TuneResult:
    """What a tuning run did: the database folder, per-task figures, the curve, the choices."""

    db: Path
    target: str
    tasks: list[dict]
    curve: list[dict]
    trials_run: int
    trials_before: int
    seconds: float
    forms: dict[str, str]

    def table(self) -> str:
        from tbn_tvm.schedules.qemu_runner import INSTRUCTIONS_PER_SECOND

        # the QEMU runner reports instructions as seconds at INSTRUCTIONS_PER_SECOND
        qemu = self.target.startswith(("cortex-m", "thumbv"))
        head = ["task", "layers", "weight", "records", "best (instructions)" if qemu else "best (us)"]
        rows = [
            [
                t["name"][:40],
                ",".join(t["layers"]) or "-",
                str(t["weight"]),
                str(t["records"]),
                (f"{t['best_s'] * INSTRUCTIONS_PER_SECOND:,.0f}" if qemu else f"{t['best_s'] * 1e6:.1f}")
                if t.get("best_s")
                else "-",
            ]
            for t in self.tasks
        ]
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]

        def fmt(r):
            return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))

        lines = [fmt(head), "-" * len(fmt(head)), *map(fmt, rows)]
        if self.forms:
            lines.append("kernel forms: " + ", ".join(f"{k}={v}" for k, v in sorted(self.forms.items())))
        return "\n".join(lines)


def _records_per_workload(db, tasks: list[Task]) -> list[int]:
    counts = []
    for t in tasks:
        mod = t.extracted.dispatched[0]
        if db.has_workload(mod):
            counts.append(len(db.get_top_k(db.commit_workload(mod), 10_000)))
        else:
            counts.append(0)
    return counts


def _best(db, task: Task) -> float | None:
    return _best_seconds(db, task.extracted.dispatched[0])


def _best_seconds(db, mod) -> float | None:
    """Median seconds of the best record ``db`` holds for the workload ``mod`` (None: none)."""
    if not db.has_workload(mod):
        return None
    top = db.get_top_k(db.commit_workload(mod), 1)
    if not top or not top[0].run_secs:
        return None
    return float(np.median([float(s) for s in top[0].run_secs]))


def make_runner(
    kind: str, rpc: str | None = None, device_key: str | None = None, *, number: int = 3, repeat: int = 1
):
    """A MetaSchedule runner: ``local`` (this machine), ``rpc`` (TVM's tracker at ``rpc``
    ``HOST:PORT``, devices registered under ``device_key``), or ``qemu`` (Cortex-M
    instruction counts; see :mod:`tbn_tvm.schedules.qemu_runner`)."""
    from tvm.s_tir import meta_schedule as ms

    evaluator = ms.runner.EvaluatorConfig(
        number=number, repeat=repeat, min_repeat_ms=20, enable_cpu_cache_flush=False
    )
    if kind == "local":
        return ms.runner.LocalRunner(evaluator_config=evaluator, timeout_sec=30)
    if kind == "rpc":
        host, port = check_runner_args(kind, rpc, device_key)
        _check_tracker(host, int(port), device_key)
        config = ms.runner.RPCConfig(
            tracker_host=host, tracker_port=int(port), tracker_key=device_key, session_timeout_sec=60
        )
        return ms.runner.RPCRunner(rpc_config=config, evaluator_config=evaluator, max_workers=1)
    if kind == "qemu":
        from tbn_tvm.schedules.qemu_runner import QemuRunner

        return QemuRunner()
    raise TBNError(f"unknown runner '{kind}'", hint="use local, rpc or qemu")


def check_runner_args(kind: str, rpc: str | None, device_key: str | None) -> tuple[str, str]:
    """Refuse a runner and its arguments that cannot work, before any other work; returns the
    tracker's host and port for ``rpc``."""
    if kind not in ("local", "rpc", "qemu"):
        raise TBNError(f"unknown runner '{kind}'", hint="use local, rpc or qemu")
    if kind != "rpc":
        return "", ""
    if not rpc or not device_key:
        raise TBNError("the RPC runner needs --rpc HOST:PORT and --device-key KEY")
    host, _, port = rpc.rpartition(":")
    if not host or not port.isdigit():
        raise TBNError(f"bad --rpc '{rpc}'", hint="write HOST:PORT of a TVM RPC tracker, e.g. 127.0.0.1:9190")
    return host, port


def _check_tracker(host: str, port: int, key: str) -> None:
    """Refuse to tune through a tracker that is not there or has no device under ``key``
    (MetaSchedule would otherwise retry for minutes and record no measurement)."""
    import socket

    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as e:
        raise TBNError(
            f"no RPC tracker answers at {host}:{port} ({e.strerror or e})",
            hint="start one with: python -m tvm.exec.rpc_tracker --host 0.0.0.0 --port PORT "
            "(needs tornado: pip install 'tbn-tvm[tune]')",
        ) from None
    from tvm import rpc

    try:
        queues = rpc.connect_tracker(host, port).summary().get("queue_info", {})
    except Exception as e:  # noqa: BLE001 - anything but a tracker on that port
        raise TBNError(f"{host}:{port} does not answer as a TVM RPC tracker ({e})") from None
    queue = queues.get(key)
    if not queue or not (queue.get("free", 0) or queue.get("pending", 0)):
        known = ", ".join(sorted(queues)) or "none"
        raise TBNError(
            f"the tracker at {host}:{port} has no device under key '{key}' (keys: {known})",
            hint=f"on each device: python -m tvm.exec.rpc_server --tracker {host}:{port} --key {key}",
        )


def tune(
    model,
    target="llvm",
    *,
    trials: int = 64,
    db: str | os.PathLike = "tuning-db",
    mcpu: str | None = None,
    input_shapes=None,
    runner: str = "local",
    rpc: str | None = None,
    device_key: str | None = None,
    progress: bool = True,
    seed: int = 0,
    on_message: Callable[[str], None] | None = None,
) -> TuneResult:
    """Tune every kernel of ``model`` for ``target`` with ``trials`` candidates in all (those
    already in ``db`` count), recording into ``db``.  Returns a :class:`TuneResult`.

    Raises TBNError for a bad model, target, runner or database folder."""
    from tvm.s_tir import meta_schedule as ms

    from tbn_tvm.quiet import captured
    from tbn_tvm.targets import resolve_target

    say = on_message or (lambda _m: None)
    if trials < 1:
        raise TBNError(f"--trials must be at least 1, got {trials}")
    check_runner_args(runner, rpc, device_key)  # before the ~30 s of task extraction
    spec = resolve_target(target, mcpu)
    if spec.family == "cortex-m" and runner == "local":
        runner = "qemu"
    if spec.family == "host" and runner == "qemu":
        raise TBNError(
            "the QEMU runner measures Cortex-M builds; use --runner local or rpc for a host target"
        )
    database = open_database(db)
    tvm_target = _tuning_target(spec)
    loaded, prepared, fused = prepare_for_tuning(
        model, spec, input_shapes, "decoded" if spec.family == "host" else "bitserial"
    )
    tasks = extract_tasks(fused, tvm_target, prepared.layers)
    if not tasks:
        raise TBNError("the model has no kernel to tune")
    before = _records_per_workload(database, tasks)
    remaining = max(0, trials - sum(before))
    say(
        f"{len(tasks)} tasks ({', '.join(t.name for t in tasks[:6])}{' ...' if len(tasks) > 6 else ''}); "
        f"{sum(before)} records already in {db}; {remaining} trials to run"
    )
    history: list[dict] = []
    t0 = time.perf_counter()
    cores = _cores()
    if remaining:
        _clean_ms_loggers()
        contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
            [t.extracted for t in tasks], work_dir=str(db), num_threads=cores, seed=seed
        )
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=remaining, unit="trial", desc="tuning", dynamic_ncols=True)
        callbacks = [
            *ms.measure_callback.MeasureCallback.create("default"),
            _progress_callback(bar, tasks, history, t0),
        ]
        if runner == "qemu":
            from tbn_tvm.schedules.qemu_runner import qemu_builder

            builder = qemu_builder(cores)
        else:
            builder = ms.builder.LocalBuilder(f_build=fast_build, max_workers=cores, timeout_sec=120)
        try:
            with captured():
                ms.tune.tune_tasks(
                    tasks=contexts,
                    task_weights=weights,
                    work_dir=str(db),
                    max_trials_global=remaining,
                    num_trials_per_iter=min(32, max(4, remaining // max(1, len(tasks)))),
                    builder=builder,
                    runner=make_runner(runner, rpc, device_key),
                    database=database,
                    cost_model=ms.cost_model.XGBModel(num_tuning_cores=cores),
                    measure_callbacks=callbacks,
                )
        finally:
            if bar is not None:
                bar.close()
    seconds = time.perf_counter() - t0
    after = _records_per_workload(database, tasks)
    rows = [
        {"name": t.name, "layers": t.layers, "weight": t.weight, "records": n, "best_s": _best(database, t)}
        for t, n in zip(tasks, after)
    ]
    forms = {}
    if spec.family == "host":
        forms, baselines = choose_forms(model, spec, input_shapes, database, tasks, runner, rpc, device_key)
        _write_forms(Path(db), target_key(tvm_target), forms)
        _write_host_baselines(Path(db), target_key(tvm_target), baselines)
    else:  # the hand schedule's instructions, so that a record is applied only where it is better
        _write_baselines(Path(db), target_key(tvm_target), tasks, spec)
    curve_path = Path(db) / CURVE_FILE
    old = json.loads(curve_path.read_text()) if curve_path.exists() else []
    offset = old[-1]["trials"] if old else 0
    curve = old + [{**h, "trials": h["trials"] + offset} for h in history]
    curve_path.write_text(json.dumps(curve, indent=1) + "\n")
    return TuneResult(Path(db), spec.name, rows, curve, sum(after) - sum(before), sum(before), seconds, forms)


def _clean_ms_loggers() -> None:
    """MetaSchedule re-reads its logger's handlers by name each run and fails on one without a
    name (test runners and embedding applications add such handlers): drop those."""
    import logging

    logger = logging.getLogger("tvm.s_tir.meta_schedule")
    for handler in list(logger.handlers):
        if handler.get_name() is None:
            logger.removeHandler(handler)


def _tuning_target(spec):
    """The TVM target candidates are generated for (Cortex-M kernels are emitted as C, but their
    schedules are searched as for a single-core CPU)."""
    import tvm

    if spec.family == "cortex-m":
        return tvm.target.Target({**spec.tvm_target, "num-cores": 1})
    t = dict(spec.tvm_target)
    t.setdefault("num-cores", _cores())
    return tvm.target.Target(t)


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


BASELINES_FILE = "tbn_baselines.json"


def workload_key(mod) -> str:
    """A stable key of a task's module (its structural hash)."""
    import tvm_ffi

    return str(tvm_ffi.structural_hash(mod))


def _write_baselines(db: Path, key: str, tasks: Sequence[Task], spec) -> None:
    """Instructions per call of each task's kernel under the hand schedule (QEMU)."""
    import tvm

    from tbn_tvm.schedules.cortex_m import schedule_prim_mcu
    from tbn_tvm.schedules.qemu_runner import build_c, count_instructions

    def fill(data: dict) -> None:
        known = data.setdefault(key, {})
        for t in tasks:
            mod = t.extracted.dispatched[0]
            wk = workload_key(mod)
            if wk in known:
                continue
            func = next(f for _, f in mod.functions_items())
            try:
                scheduled = schedule_prim_mcu(func)
                src = build_c(tvm.IRModule({"main": scheduled}), None).inspect_source()
                known[wk] = count_instructions(src, param_shapes(func), spec.cpu or "cortex-m4")
            except Exception:  # noqa: BLE001 - no baseline: a record then always applies
                continue

    _update_json(db / BASELINES_FILE, fill)


def _write_host_baselines(db: Path, key: str, baselines: dict[str, float]) -> None:
    """Seconds per call of each hand-scheduled decoded kernel (host), by workload."""
    _update_json(db / BASELINES_FILE, lambda data: data.setdefault(key, {}).update(baselines))


def _update_json(path: Path, update: Callable[[dict], object]) -> None:
    """Read the JSON object at ``path`` (empty when missing or damaged), ``update`` it in place,
    write it back."""
    try:
        data = json.loads(path.read_text()) if path.exists() else {}
    except ValueError:
        data = {}
    if not isinstance(data, dict):
        data = {}
    update(data)
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


def read_baselines(db_dir, key: str) -> dict[str, float]:
    try:
        data = json.loads((Path(db_dir) / BASELINES_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data.get(key, {}) if isinstance(data, dict) else {}


def _write_forms(db: Path, key: str, forms: dict[str, str]) -> None:
    _update_json(db / FORMS_FILE, lambda data: data.__setitem__(key, forms))


def choose_forms(
    model, spec, input_shapes, database, tasks: Sequence[Task], runner, rpc, device_key
) -> tuple[dict[str, str], dict[str, float]]:
    """For each tiled layer, the fastest of three kernels: the hand-scheduled bit-serial one,
    the hand-scheduled decoded one (:mod:`tbn_tvm.schedules.cpu_decoded`) and the tuned decoded
    one (its best record), the hand kernels timed here on random inputs with TVM's evaluator.
    Returns the forms (layer -> ``bitserial`` / ``decoded``) and the baselines: seconds of each
    hand-scheduled decoded kernel by workload, so that a compile applies a record only where it
    beats the hand schedule."""
    tuned: dict[str, float] = {}
    for t in tasks:
        best = _best(database, t)
        if best is not None:
            for layer in t.layers:
                tuned[layer] = best
    bits, _ = time_hand_kernels(model, spec, input_shapes, "bitserial")
    decoded, baselines = time_hand_kernels(model, spec, input_shapes, "decoded")
    forms = {}
    for layer in sorted(set(bits) | set(decoded) | set(tuned)):
        candidates = {
            "bitserial": bits.get(layer),
            "decoded": min(
                (x for x in (decoded.get(layer), tuned.get(layer)) if x is not None), default=None
            ),
        }
        timed = {k: v for k, v in candidates.items() if v is not None}
        # a layer whose bit-serial kernel could not be timed keeps the default choice unless its
        # decoded form was timed by hand: a tuned record alone must be shown faster than a timed
        # hand kernel
        if candidates["bitserial"] is None and decoded.get(layer) is None:
            continue
        forms[layer] = min(timed, key=timed.get)
    return forms, baselines


def time_bitserial_kernels(model, spec, input_shapes=None) -> dict[str, float]:
    """Seconds per call of each tiled layer's hand-scheduled bit-serial fused kernel (host)."""
    return time_hand_kernels(model, spec, input_shapes, "bitserial")[0]


def time_hand_kernels(model, spec, input_shapes=None, form: str = "bitserial") -> tuple[dict, dict]:
    """Seconds per call of each tiled layer's hand-scheduled fused kernel in ``form`` (host), by
    layer name, and by :func:`workload_key` of the unscheduled kernel (what a compile looks
    records up by).  A kernel the hand schedule does not apply to, or that cannot be timed
    alone, is left out."""
    import tvm

    from tbn_tvm.quiet import captured
    from tbn_tvm.schedules.cpu import schedule_cpu

    _, prepared, fused = prepare_for_tuning(model, spec, input_shapes, form)
    target = spec.tvm()
    by_layer, by_workload = {}, {}
    unscheduled = dict(fused.functions_items())  # schedule_cpu replaces functions in place
    with target, captured():
        scheduled = schedule_cpu(fused, target)
    for gv, func in scheduled.functions_items():
        if not isinstance(func, tvm.tirx.PrimFunc) or not (
            func.attrs and func.attrs.get("tirx.is_scheduled")
        ):
            continue
        layers = _layers_of(gv.name_hint, prepared.layers)
        if not layers:
            continue
        try:
            secs = _time_primfunc(func, target)
        except Exception:  # noqa: BLE001 - a kernel that cannot be timed alone keeps its default
            continue
        for layer in layers:
            by_layer[layer] = secs
        by_workload[kernel_workload_key(unscheduled[gv])] = secs
    return by_layer, by_workload


def kernel_workload_key(func) -> str:
    """:func:`workload_key` of an unscheduled fused kernel, as MetaSchedule's database sees it
    (the function as it is, under ``main``)."""
    import tvm

    return workload_key(tvm.IRModule({"main": func}))


def record_seconds(database, func) -> float | None:
    """Median seconds of the best record ``database`` holds for the unscheduled kernel ``func``
    (None when it holds none)."""
    import tvm

    return _best_seconds(database, tvm.IRModule({"main": func}))


def param_shapes(func) -> list[tuple[tuple[int, ...], str]]:
    """(shape, dtype) of each buffer parameter of a PrimFunc."""
    return [(tuple(int(d) for d in p.shape), str(p.dtype)) for p in func.params]


def _time_primfunc(func, target, number: int = 20, repeat: int = 5, min_repeat_ms: int = 20) -> float:
    """Median seconds per call of ``func`` on random inputs: a warm-up call, then ``repeat``
    rounds of at least ``min_repeat_ms`` each (as MetaSchedule's runner measures its
    candidates: a short first round on a cold thread pool read 2x slow)."""
    import tvm

    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=target)
    dev = tvm.cpu()
    rng = np.random.default_rng(0)
    args = []
    for shape, dtype in param_shapes(func):
        if dtype.startswith("float"):
            a = rng.standard_normal(shape).astype(dtype)
        else:
            a = rng.integers(0, 2**31 - 1, size=shape).astype(dtype)
        args.append(tvm.runtime.tensor(a, dev))
    module = getattr(lib, "mod", lib)  # tvm.compile returns an Executable in apache-tvm 0.27
    module["main"](*args)
    res = module.time_evaluator("main", dev, number=number, repeat=repeat, min_repeat_ms=min_repeat_ms)(*args)
    return float(np.median(res.results))


def plot_curve(curve: list[dict], path: Path) -> bool:
    """The tuning curve (best estimate of the model's tuned kernels against trials) as a PNG;
    False when matplotlib is missing or there is nothing to draw."""
    points = [(c["trials"], c["model_estimate_s"]) for c in curve if c.get("model_estimate_s")]
    if not points:
        return False
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6, 3.5))
    xs, ys = zip(*points)
    best = np.minimum.accumulate(np.array(ys))
    ax.plot(xs, best * 1e3, marker=".", drawstyle="steps-post")
    ax.set_xlabel("trials measured")
    ax.set_ylabel("sum of best kernel times (ms)")
    ax.set_title("tbn-tvm tuning curve (MetaSchedule + XGBoost)")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
