"""Auto-tuning with MetaSchedule and its XGBoost cost model; reusable records in a database.

``tune(model, target, trials, db)`` compiles the model as far as the fused kernels
(:func:`tbn_tvm.passes.pipeline.fuse`), extracts one MetaSchedule task per distinct kernel — the
project's tiled kernels in their *decoded* form (the distinct rows decoded to float once per
call, then a GEMM/convolution MetaSchedule knows how to tile and vectorise) and every other
kernel of the graph — and searches schedules, measuring candidates on this machine, on devices
behind TVM's RPC tracker, or (Cortex-M) on QEMU by exact instruction count.  Every measured
record goes into a JSON database in ``db`` as it is measured, so an interrupted run loses
nothing and a second run resumes (it only spends the trials not yet spent).

The search starts from the build users get, and a record is kept only where it beats it:

1. **Default first.**  Each task's *default schedule* — what a build without a database gives
   the kernel (:func:`tbn_tvm.schedules.cpu.schedule_cpu`: the project's hand schedules and the
   generic default rules) — is measured through the same builder and runner as the candidates
   and committed to the database as the task's first record (its schedule trace, captured as
   the schedule is made), so the evolutionary search starts from it and the tuning curve starts
   at the default build.  Tasks go to the search largest first (weight × default time): the
   task scheduler gives each task its first round in that order, and ``tune`` warns when the
   trials cannot reach every task.
2. **Verdicts.**  After the search each task's best record is timed against the default
   schedule alternately in one process (host, ``--runner local``; over RPC the two runner
   measurements are compared with a 5 % margin) and applied only where it is faster by more
   than the measurement's spread (:func:`verify_records`); the verdict goes to
   ``db/tbn_baselines.json`` with the record it was made on, and a compile applies exactly that
   record (:func:`tbn_tvm.schedules.records.record_beats_default`).  On Cortex-M the default
   schedule's exact instruction count is the baseline.
3. **Forms.**  Each tiled layer that has both kernel forms keeps its default form (``auto``)
   unless the other form — bit-serial, or decoded with its verified record — is faster by more
   than the spread, both timed alternately (:func:`choose_forms`); the choice goes to
   ``db/tbn_forms.json``.  A re-run with no new record decides nothing again: no timing, the
   same forms, the same files, the same build.

The database files are read by builds through :mod:`tbn_tvm.schedules.records` (the passes
never import this driver).

Traps of apache-tvm 0.27 worked around here (see the project's research notes): the default
builder imports ``tvm.s_tir.tensor_intrin`` in every worker (18-25 s, past its timeout), so a
builder function without it is used; tasks are extracted from the fused module (what
``MetaScheduleApplyDatabase`` sees at compile time).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tbn_tvm.errors import TBNError
from tbn_tvm.schedules.records import (  # noqa: F401 - re-exported: the driver's older names
    BASELINES_FILE,
    CURVE_FILE,
    FORMS_FILE,
    RECORDS_FILE,
    WORKLOADS_FILE,
    best_record,
    best_seconds,
    kernel_workload_key,
    layers_of,
    open_database,
    param_shapes,
    read_baselines,
    read_forms,
    record_id,
    record_median,
    record_seconds,
    repair_jsonl,
    target_key,
    trace_key,
    tuning_target,
    update_json,
    workload_key,
    workload_of,
    write_baselines,
    write_forms,
)
from tbn_tvm.schedules.records import cores as _cores
from tbn_tvm.schedules.records import layers_of as _layers_of  # noqa: F401
from tbn_tvm.schedules.records import repair_jsonl as _repair_jsonl  # noqa: F401
from tbn_tvm.schedules.records import tuning_target as _tuning_target  # noqa: F401

#: Per layer of a target: the form chosen, what it was chosen on (the decoded kernel's applied
#: record, empty for none) and the times measured (``tbn_form_times.json``).
FORM_TIMES_FILE = "tbn_form_times.json"

#: Over RPC (no alternated timing here) a record must beat the default by this fraction of the
#: runner's own measurements.
RPC_MARGIN = 0.05

#: The smallest spread a timing comparison assumes (ties are never decided by noise).
MIN_SPREAD = 0.02


def fast_build(mod, target, _params=None):
    """MetaSchedule's default build without the 18-25 s ``tensor_intrin`` import."""
    import tvm
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm.tirx.build(mod, target=target)


# ------------------------------------------------------------------------------ tasks
@dataclass
class Task:
    """One tuning task: a fused kernel, the layers it computes, its weight in the model."""

    name: str
    layers: list[str]
    weight: int
    extracted: object = field(repr=False)

    @property
    def mod(self):
        """The workload module (``main``) as MetaSchedule files it."""
        return self.extracted.dispatched[0]

    @property
    def key(self) -> str:
        return workload_key(self.mod)


def prepare_for_tuning(model, spec, input_shapes=None, forms: dict[str, str] | str = "decoded"):
    """The fused module of ``model`` for ``spec`` with the tiled layers in ``forms`` (a form for
    all, or per layer), and the prepared layers."""
    from tbn_tvm.frontend.onnx import load_onnx, to_relax
    from tbn_tvm.passes.pipeline import fuse, prepare
    from tbn_tvm.quiet import captured
    from tbn_tvm.targets import backend_class

    loaded = load_onnx(model, input_shapes)
    with captured():  # TVM's warnings (a take's "fast mode") are not the user's business
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
        out.append(Task(t.task_name, layers_of(t.task_name, layers), int(t.weight), t))
    return out


# ------------------------------------------------------------------------------ default schedules
def default_schedule(func, target, knobs=None):
    """The schedule a build without a database gives the unscheduled kernel ``func`` on a host
    ``target`` (:func:`tbn_tvm.schedules.cpu.schedule_cpu`) and its trace: ``(scheduled PrimFunc,
    Trace or None)``; with ``knobs`` (:class:`tbn_tvm.schedules.knobs.Knobs`), the schedule the
    same rules make under them.  A kernel no rule schedules is its own default (TVM's loop nest, an empty
    trace).  The trace is that of the schedule the rules made (captured while they run, as
    :mod:`tbn_tvm.schedules.cpu_generic` builds its schedules inside); it is returned only
    where replaying it on ``func``'s workload gives exactly the scheduled function."""
    import tvm
    import tvm_ffi
    from tvm import s_tir

    from tbn_tvm.quiet import captured
    from tbn_tvm.schedules import knobs as schedule_knobs
    from tbn_tvm.schedules.cpu import schedule_cpu

    made: list = []
    original = s_tir.Schedule

    def recording(*args, **kwargs):
        sch = original(*args, **kwargs)
        made.append(sch)
        return sch

    s_tir.Schedule = recording
    try:
        with target, captured(), schedule_knobs.using(knobs or schedule_knobs.DEFAULT):
            out = schedule_cpu(tvm.IRModule({"main": func}), target)["main"]
    finally:
        s_tir.Schedule = original
    workload = workload_of(func)
    if not (out.attrs and out.attrs.get("tirx.is_scheduled")):
        return func, unscheduled_trace(workload)
    for sch in reversed(made):
        try:
            candidate = sch.mod["main"].with_attr("tirx.is_scheduled", True)
        except Exception:  # noqa: BLE001 - a schedule on another module
            continue
        if not tvm_ffi.structural_equal(candidate, out):
            continue
        replay = original(workload)
        try:
            sch.trace.apply_to_schedule(replay, remove_postproc=False)
        except Exception:  # noqa: BLE001 - a trace that does not replay: not seeded
            return out, None
        got = replay.mod["main"].with_attr("tirx.is_scheduled", True)
        if tvm_ffi.structural_equal(_strip(got), _strip(out)):
            return out, sch.trace
        return out, None
    return out, None


def unscheduled_trace(mod):
    """A trace that leaves the workload ``mod`` as it is (TVM's loop nest), but is not empty: a
    MetaSchedule database does not return records of an empty trace."""
    from tvm import s_tir

    sch = s_tir.Schedule(mod)
    with contextlib.suppress(Exception):  # a function without a root block: empty after all
        sch.get_child_blocks(sch.get_sblock("root", func_name="main"))
    return sch.trace


def tunable_trace(trace, mod):
    """``trace`` (a default schedule's, on the workload ``mod``) with each split into constant
    factors that tile its loop exactly made a *sampled* split: a ``SamplePerfectTile`` whose
    decision is the default's factors, feeding the split.  Replayed it gives the same schedule;
    to MetaSchedule's evolutionary search it is a point it can mutate (its tile-size mutator
    moves factors between the levels), so the search explores around the default schedule.
    The innermost factor may shrink, not grow (``max_innermost_factor``: vector widths stay
    within the default's).  Returns ``trace`` itself when nothing is to be sampled or the
    rewritten trace does not replay to the same function."""
    import tvm
    import tvm_ffi
    from tvm import s_tir, tirx
    from tvm.s_tir.schedule import Instruction, InstructionKind, Trace

    insts = list(trace.insts)
    extents: dict[int, int] = {}

    def observe(inst, inputs, attrs, decision):
        if inst.kind.name == "Split":
            for i, known in enumerate(insts):
                if known.same_as(inst):
                    with contextlib.suppress(Exception):
                        extents[i] = int(sch.get(inputs[0]).extent)
                    break
        return decision

    sch = s_tir.Schedule(mod)
    trace.apply_to_schedule(sch, remove_postproc=False, decision_provider=observe)
    expected = sch.mod["main"]
    sample = InstructionKind.get("SamplePerfectTile")
    new_insts, decisions = [], {}
    for i, inst in enumerate(insts):
        decision = trace.get_decision(inst)
        if inst.kind.name != "Split" or i not in extents:
            new_insts.append(inst)
            if decision is not None:
                decisions[inst] = decision
            continue
        loop, *factors = inst.inputs
        known = [int(f.value) if isinstance(f, tvm.tirx.IntImm) else None for f in factors]
        missing = [k for k, f in enumerate(factors) if f is None]
        extent = extents[i]
        product = int(np.prod([f for f in known if f is not None] or [1]))
        bad = any(f is not None and not isinstance(f, tvm.tirx.IntImm) for f in factors)
        if bad or len(missing) > 1 or product <= 0 or extent % product or (not missing and product != extent):
            new_insts.append(inst)
            continue
        if missing:
            known[missing[0]] = extent // product
        rvs = [tirx.Var(f"v_tile{i}_{k}", "int64") for k in range(len(known))]
        attrs = [tvm.tirx.IntImm("int32", len(known)), tvm.tirx.IntImm("int32", max(1, known[-1]))]
        tile = Instruction(sample, [loop], attrs, rvs)
        new_insts.append(tile)
        decisions[tile] = [int(f) for f in known]
        new_insts.append(Instruction(inst.kind, [loop, *rvs], list(inst.attrs), list(inst.outputs)))
    if len(new_insts) == len(insts):
        return trace
    tunable = Trace(new_insts, decisions)
    try:
        check = s_tir.Schedule(mod)
        tunable.apply_to_schedule(check, remove_postproc=False)
    except Exception:  # noqa: BLE001 - kept as it was
        return trace
    return tunable if tvm_ffi.structural_equal(check.mod["main"], expected) else trace


def fixed_trace(trace):
    """``trace`` with every sampled tiling (``SamplePerfectTile``) replaced by its decision:
    the splits it fed take the factors as constants.  Records of the neighbourhood search are
    committed so: MetaSchedule's mutators then leave them alone (a tile move can change how
    many loops a later ``compute_at`` leaves, which MetaSchedule's replay checks in C++ and
    does not survive; this driver's own moves are replayed under a guard)."""
    import tvm
    from tvm.s_tir.schedule import Instruction, Trace

    values: list[tuple] = []

    def value_of(x):
        for var, v in values:
            if x.same_as(var):
                return tvm.tirx.IntImm("int64", v)
        return x

    insts, decisions = [], {}
    for inst in trace.insts:
        decision = trace.get_decision(inst)
        if inst.kind.name == "SamplePerfectTile" and decision is not None:
            values.extend(zip(inst.outputs, (int(d) for d in decision)))
            continue
        inputs = [value_of(x) if isinstance(x, tvm.tirx.Var) else x for x in inst.inputs]
        new = Instruction(inst.kind, inputs, list(inst.attrs), list(inst.outputs))
        insts.append(new)
        if decision is not None:
            decisions[new] = decision
    return Trace(insts, decisions)


def _strip(func):
    """``func`` without the attributes normalisation adds (compared by body)."""
    for attr in ("global_symbol", "tirx.noalias"):
        if func.attrs and attr in func.attrs:
            func = func.without_attr(attr)
    return func


def measure_candidates(builder, runner, target, funcs: Sequence) -> list[list[float] | None]:
    """Seconds of each scheduled PrimFunc of ``funcs`` measured through MetaSchedule's
    ``builder`` and ``runner`` (as the search measures its candidates); None where it failed."""
    import tvm
    from tvm.s_tir import meta_schedule as ms

    if not funcs:
        return []
    inputs = [ms.builder.BuilderInput(tvm.IRModule({"main": f}), target) for f in funcs]
    built = builder.build(inputs)
    out: list[list[float] | None] = [None] * len(funcs)
    runs, where = [], []
    for i, (f, b) in enumerate(zip(funcs, built)):
        if b.error_msg or not b.artifact_path:
            continue
        device = "cuda" if target.kind.name == "cuda" else "cpu"
        runs.append(ms.runner.RunnerInput(b.artifact_path, device, ms.arg_info.ArgInfo.from_prim_func(f)))
        where.append(i)
    if not runs:
        return out
    for i, future in zip(where, runner.run(runs)):
        res = future.result()
        if not res.error_msg and res.run_secs:
            out[i] = [float(s) for s in res.run_secs]
    return out


def seed_defaults(
    database, tasks: Sequence[Task], target, builder, runner, entries: dict, update=None
) -> int:
    """Measure each task's default schedule (:func:`default_schedule`) through ``builder`` and
    ``runner`` where ``entries`` (the target's baselines, by workload key) has no figure yet, and
    commit it to ``database`` as the task's first record; returns how many were measured.
    ``entries[key]`` gets ``default_s`` (median seconds) and ``seed`` (the record's
    :func:`~tbn_tvm.schedules.records.record_id`; absent when the default's schedule cannot be
    replayed as a trace, then it is measured but not seeded); ``unmeasured`` says why where it
    could not be measured (a kernel that reads indices from its inputs crashes on the runner's
    random arguments)."""
    from tvm.s_tir import meta_schedule as ms

    todo = [t for t in tasks if not {"default_s", "unmeasured"} & set(entries.get(t.key, {}))]
    if not todo:
        return 0
    funcs, traces = [], []
    for t in todo:
        func, trace = default_schedule(t.mod["main"], target)
        funcs.append(func)
        traces.append(trace)
    done = 0
    step = max(1, 2 * _cores())
    for start in range(0, len(todo), step):
        chunk = slice(start, start + step)
        measured = measure_candidates(builder, runner, target, funcs[chunk])
        for t, trace, secs in zip(todo[chunk], traces[chunk], measured):
            entry = entries.setdefault(t.key, {})
            if secs is None:  # not tried again by a re-run (its result would be the same)
                entry["unmeasured"] = "the default schedule could not be built or run by the runner"
                continue
            entry["default_s"] = float(np.median(secs))
            if trace is not None:
                record = ms.database.TuningRecord(
                    trace,
                    database.commit_workload(t.mod),
                    secs,
                    target,
                    ms.arg_info.ArgInfo.from_prim_func(t.mod["main"]),
                )
                database.commit_tuning_record(record)
                entry["seed"] = record_id(record)
            done += 1
        if update is not None:
            update(min(len(todo), start + step))
    return done


# ------------------------------------------------------------------------------ around the default
def _primes(n: int) -> list[int]:
    out, d = [], 2
    while d * d <= n:
        while n % d == 0:
            out.append(d)
            n //= d
        d += 1
    return out + ([n] if n > 1 else [])


def neighbour_traces(trace) -> list:
    """The schedules one tile move away from ``trace``: for each sampled tiling
    (``SamplePerfectTile``, as :func:`tunable_trace` makes them and MetaSchedule's design spaces
    have them) a prime factor moved to the neighbouring level (MetaSchedule's tile-size
    mutation, enumerated), the innermost factor within its bound.  Postprocessing steps of the
    trace are dropped (the builder's schedule is the trace itself)."""
    out, seen = [], set()
    for inst in trace.insts:
        if inst.kind.name != "SamplePerfectTile":
            continue
        decision = trace.get_decision(inst)
        if decision is None:
            continue
        tiles = [int(x) for x in decision]
        inner_max = int(inst.attrs[1]) if len(inst.attrs) > 1 else 0
        for a in range(len(tiles)):
            for b in (a - 1, a + 1):
                if not 0 <= b < len(tiles):
                    continue
                for prime in sorted(set(_primes(tiles[a]))):
                    new = list(tiles)
                    new[a] //= prime
                    new[b] *= prime
                    if inner_max > 0 and new[-1] > inner_max:
                        continue
                    key = (str(inst.outputs[0]), tuple(new))
                    if key in seen:
                        continue
                    seen.add(key)
                    out.append(trace.with_decision(inst, new, remove_postproc=True))
    return out


def _replayed(trace, mod):
    """The PrimFunc ``trace`` makes of the workload ``mod`` (None: it does not apply)."""
    from tvm import s_tir

    sch = s_tir.Schedule(mod)
    try:
        trace.apply_to_schedule(sch, remove_postproc=False)
    except Exception:  # noqa: BLE001 - a tile move the schedule's later steps refuse
        return None
    return sch.mod["main"]


#: The smallest share of the largest task's cost :func:`plan_visits` weighs a task by.
VISIT_FLOOR = 0.01


def plan_visits(costs: Sequence[float], budget: int, per_visit: int) -> list[int]:
    """The order in which :func:`search_neighbourhood` visits tasks (by index) with ``budget``
    trials, ``per_visit`` a visit: always the task of the largest ``cost / (1 + visits so
    far)²``, so the largest kernels get their visits first and the most (a kernel of 40 % of the
    model's time gets a second visit before one of 9 % its first) and every task gets one once
    the budget allows.  A task counts as at least :data:`VISIT_FLOOR` of the largest (a kernel
    of 0.1 % of the model gets its first visit after the largest one's tenth, not its
    thousandth); tasks without a cost are visited last, in order."""
    known = [c if c > 0 else 0.0 for c in costs]
    floor = max(known, default=0.0) * VISIT_FLOOR or 1.0
    weights = [
        max(c, floor) if c > 0 else floor * (1 - (i + 1) / (len(known) + 2)) for i, c in enumerate(known)
    ]
    visits = [0] * len(weights)
    order: list[int] = []
    for _ in range(-(-budget // max(1, per_visit))):
        if not weights:
            break
        i = max(range(len(weights)), key=lambda k: (weights[k] / (1 + visits[k]) ** 2, -k))
        visits[i] += 1
        order.append(i)
    return order


def variant_traces(mod, target) -> list:
    """The default schedule of the workload ``mod`` made under each of
    :data:`tbn_tvm.schedules.knobs.VARIANTS`, as tunable traces (:func:`tunable_trace`), those
    that replay and make a function other than the default's and each other's: the first
    candidates :func:`search_neighbourhood` measures for a task."""
    import tvm_ffi

    from tbn_tvm.schedules import knobs

    func = mod["main"]
    base, _ = default_schedule(func, target)
    seen = {tvm_ffi.structural_hash(_strip(base))}
    out = []
    for k in knobs.VARIANTS:
        try:
            made, trace = default_schedule(func, target, k)
        except Exception:  # noqa: BLE001 - no variant
            continue
        h = tvm_ffi.structural_hash(_strip(made))
        if trace is None or h in seen:
            continue
        seen.add(h)
        out.append(tunable_trace(trace, mod))
    return out


def search_neighbourhood(
    database,
    tasks: Sequence[Task],
    target,
    builder,
    runner,
    budget: int,
    per_visit: int,
    costs: Sequence[float],
    seed: int = 0,
    on_measured: Callable[[int, int, list], None] | None = None,
) -> int:
    """Hill-climb from each task's best record (its seeded default schedule to begin with) by
    :func:`variant_traces` (first, on a task's first visits) and :func:`neighbour_traces`, the
    largest tasks most (:func:`plan_visits` on ``costs``: calls x
    default time): each visit measures up to ``per_visit`` neighbours not measured before (and
    not the same function as one measured), through ``builder`` and ``runner``, together with
    the current schedule (not a trial: the comparison is made within one batch), commits them
    as records, and moves to the best neighbour where it beat the current one by more than
    :data:`MIN_SPREAD`.  A task without a neighbour left gives its visits to the next.
    ``on_measured(task_index, trials, seconds)`` follows each batch.  Returns the trials spent."""
    import tvm_ffi
    from tvm.s_tir import meta_schedule as ms

    rng = np.random.default_rng(seed)
    spent = 0
    current: dict[int, object] = {}
    tried: dict[int, set] = {}
    seen: dict[int, set] = {}
    variants: dict[int, list] = {}
    exhausted: set[int] = set()
    plan = plan_visits(costs, budget, per_visit)
    while spent < budget and len(exhausted) < len(tasks):
        if not plan:
            live = [k for k in range(len(tasks)) if k not in exhausted]
            plan = plan_visits([costs[k] for k in live], budget - spent, per_visit)
            plan = [live[k] for k in plan]
            if not plan:
                break
        i = plan.pop(0)
        if i in exhausted:
            continue
        t = tasks[i]
        if i not in current:
            record = best_record(database, t.mod)
            if record is None:
                exhausted.add(i)
                continue
            current[i] = tunable_trace(record.trace, t.mod)
            tried[i] = {
                trace_key(r.trace) for r in database.get_top_k(database.commit_workload(t.mod), 100_000)
            }
            base = _replayed(current[i], t.mod)
            seen[i] = {tvm_ffi.structural_hash(base)} if base is not None else set()
            variants[i] = variant_traces(t.mod, target)
        found = [c for c in neighbour_traces(current[i]) if trace_key(fixed_trace(c)) not in tried[i]]
        # the knob variants first (in order), then the tile moves in a random order
        order = [v for v in variants.pop(i, []) if trace_key(fixed_trace(v)) not in tried[i]]
        order += [found[int(j)] for j in rng.permutation(len(found))]
        batch, funcs = [], []
        for cand in order:
            tried[i].add(trace_key(fixed_trace(cand)))
            func = _replayed(cand, t.mod)
            if func is None or tvm_ffi.structural_hash(func) in seen[i]:
                continue
            seen[i].add(tvm_ffi.structural_hash(func))
            batch.append(cand)
            funcs.append(func)
            if len(batch) >= min(per_visit, budget - spent):
                break
        if not batch:
            exhausted.add(i)
            continue
        base = _replayed(current[i], t.mod)
        measured = measure_candidates(builder, runner, target, [base, *funcs] if base is not None else funcs)
        base_secs = measured.pop(0) if base is not None else None
        spent += len(batch)
        args = ms.arg_info.ArgInfo.from_prim_func(t.mod["main"])
        best, best_s = None, float(np.median(base_secs)) if base_secs else float("inf")
        for cand, secs in zip(batch, measured):
            if secs is None:
                continue
            database.commit_tuning_record(
                ms.database.TuningRecord(
                    fixed_trace(cand), database.commit_workload(t.mod), secs, target, args
                )
            )
            if float(np.median(secs)) < best_s * (1 - MIN_SPREAD):
                best, best_s = cand, float(np.median(secs))
        if best is not None:
            current[i] = best
        if on_measured is not None:
            on_measured(i, len(batch), [m for m in measured if m])
    return spent


# ------------------------------------------------------------------------------ timing
def _args_for(func, dev):
    """Arguments to time ``func`` on: normal floats, zero integers (an index buffer of zeros is
    always in bounds; a tile's bits do not change the time)."""
    import tvm

    rng = np.random.default_rng(0)
    args = []
    for shape, dtype in param_shapes(func):
        if dtype.startswith(("float", "bfloat")):
            a = rng.standard_normal(shape).astype(dtype)
        else:
            a = np.zeros(shape, dtype)
        args.append(tvm.runtime.tensor(a, dev))
    return args


def _compile_func(func, target):
    import tvm

    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=target)
    return getattr(lib, "mod", lib)  # tvm.compile returns an Executable in apache-tvm 0.27


def time_alternated(funcs: Sequence, target, rounds: int = 9, min_repeat_ms: int = 15) -> list[list[float]]:
    """Seconds per call of each scheduled PrimFunc of ``funcs`` (same parameters), timed in
    this process on the same arguments, alternately: each of ``rounds`` rounds times every
    function once (at least ``min_repeat_ms``, TVM's time evaluator), in a rotating order, after
    a warm-up; the machine's load then weighs on all of them alike."""
    import tvm

    from tbn_tvm.quiet import captured

    dev = tvm.cpu()
    with captured():
        modules = [_compile_func(f, target) for f in funcs]
    args = _args_for(funcs[0], dev)
    evaluators = []
    for m in modules:
        m["main"](*args)  # warm-up: first-call allocations, the thread pool
        evaluators.append(m.time_evaluator("main", dev, number=1, repeat=1, min_repeat_ms=min_repeat_ms))
    times: list[list[float]] = [[] for _ in funcs]
    for r in range(rounds):
        order = list(range(len(funcs)))
        order = order[r % len(order) :] + order[: r % len(order)]
        for i in order:
            times[i].append(float(evaluators[i](*args).results[0]))
    return times


def paired_ratio(new: Sequence[float], old: Sequence[float]) -> tuple[float, float]:
    """Median of the per-round ratios ``new / old`` and their relative spread (half their
    interquartile range over the median, at least :data:`MIN_SPREAD`): ``new`` is faster by
    more than the spread when the median ratio is below ``1 - spread``."""
    ratios = np.asarray(new, float) / np.asarray(old, float)
    q25, q50, q75 = np.percentile(ratios, [25, 50, 75])
    return float(q50), max(MIN_SPREAD, float(q75 - q25) / 2 / float(q50))


# ------------------------------------------------------------------------------ verdicts
def verify_records(
    database, tasks: Sequence[Task], target, entries: dict, local: bool, update=None
) -> list[str]:
    """Decide for each task whether its best record is applied (see the module docstring) and
    write the verdict into ``entries`` (by workload key): ``record`` (the record decided on),
    ``apply``, ``record_s`` and, when timed here, ``ratio`` and ``spread``.  A verdict already
    made on the same record is kept as it is (no timing: a re-run decides nothing new); the
    seeded default is never "applied" (it is the default).  Returns the tasks decided now."""
    from tvm import s_tir

    decided = []
    for n, t in enumerate(tasks):
        if update is not None:
            update(n)
        entry = entries.setdefault(t.key, {})
        record = best_record(database, t.mod)
        if record is None:
            continue
        rid = record_id(record)
        if entry.get("record") == rid and "apply" in entry:
            continue
        decided.append(t.name)
        entry.update(record=rid, record_s=record_median(record))
        for stale in ("ratio", "spread", "timed_default_s", "timed_record_s"):
            entry.pop(stale, None)
        if rid == entry.get("seed"):
            entry["apply"] = False
            continue
        if not local:
            default = entry.get("default_s")
            entry["apply"] = default is not None and record_median(record) < default * (1 - RPC_MARGIN)
            continue
        sch = s_tir.Schedule(t.mod)
        try:
            record.trace.apply_to_schedule(sch, remove_postproc=False)
            default, _ = default_schedule(t.mod["main"], target)
            d_times, r_times = time_alternated([default, sch.mod["main"]], target)
        except Exception:  # noqa: BLE001 - a record that cannot be replayed or timed here
            entry["apply"] = False
            continue
        ratio, spread = paired_ratio(r_times, d_times)
        entry.update(
            timed_default_s=float(np.median(d_times)),
            timed_record_s=float(np.median(r_times)),
            ratio=ratio,
            spread=spread,
            apply=ratio < 1 - spread,
        )
    if update is not None:
        update(len(tasks))
    return decided


# ------------------------------------------------------------------------------ forms
def _layer_kernels(fused, layers) -> dict[str, object]:
    """Layer -> the unscheduled fused kernel that computes it (layers computed by one kernel
    alone)."""
    import tvm

    out = {}
    for gv, func in fused.functions_items():
        if isinstance(func, tvm.tirx.PrimFunc):
            names = layers_of(gv.name_hint, layers)
            if len(names) == 1:
                out[names[0]] = func
    return out


_GEMM_KINDS = ("rows_gemm", "rows_conv_gemm")


def choose_forms(
    model,
    spec,
    input_shapes,
    database,
    entries: dict,
    previous: dict[str, dict],
    update=None,
) -> dict[str, dict]:
    """The kernel form of each tiled layer that has both (bit-serial and decoded), host only.

    The layer keeps its current form — the one chosen before (``previous``: layer -> ``{"form",
    "basis", ...}`` of :data:`FORM_TIMES_FILE`) or else the default build's (``auto``) — unless
    the other form is faster by more than the spread, both timed alternately in this process:
    the bit-serial kernel with its default schedule, the decoded one with its record where the
    verdict (``entries``) applies it, else its default schedule.  A layer whose decoded kernel's
    applied record (its *basis*) is the one it was chosen on keeps its choice untimed.  Returns
    layer -> ``{"form", "basis", "seconds": {form: median}, "ratio", "spread"}``."""
    from tvm import s_tir

    target = tuning_target(spec)
    preps = {}
    for form in ("auto", "bitserial", "decoded"):
        _, prepared, fused = prepare_for_tuning(model, spec, input_shapes, form)
        preps[form] = (prepared, fused)
    kinds = {f: {x.name: x.kernel_kind for x in p.layers if x.kernel} for f, (p, _) in preps.items()}
    kernels = {f: _layer_kernels(fz, p.layers) for f, (p, fz) in preps.items()}
    both = [
        name
        for name, kind in kinds["decoded"].items()
        if kind in _GEMM_KINDS
        and kinds["bitserial"].get(name) not in (None, *_GEMM_KINDS)
        and name in kernels["decoded"]
        and name in kernels["bitserial"]
    ]
    chosen: dict[str, dict] = {}
    for n, name in enumerate(both):
        if update is not None:
            update(n)
        decoded = kernels["decoded"][name]
        entry = entries.get(kernel_workload_key(decoded), {})
        record = best_record(database, workload_of(decoded)) if entry.get("apply") else None
        basis = record_id(record) if record is not None and entry.get("record") == record_id(record) else ""
        before = previous.get(name)
        if before and before.get("basis") == basis and before.get("form") in ("bitserial", "decoded"):
            chosen[name] = before
            continue
        auto = "decoded" if kinds["auto"].get(name) in _GEMM_KINDS else "bitserial"
        current = before.get("form") if before and before.get("form") in ("bitserial", "decoded") else auto
        try:
            if basis:
                sch = s_tir.Schedule(workload_of(decoded))
                record.trace.apply_to_schedule(sch, remove_postproc=False)
                decoded_func = sch.mod["main"]
            else:
                decoded_func, _ = default_schedule(decoded, target)
            bits_func, _ = default_schedule(kernels["bitserial"][name], target)
            bits_t, dec_t = time_alternated([bits_func, decoded_func], target)
        except Exception:  # noqa: BLE001 - a kernel that cannot be timed alone keeps its form
            chosen[name] = {"form": current, "default": auto, "basis": basis, "seconds": {}}
            continue
        seconds = {"bitserial": float(np.median(bits_t)), "decoded": float(np.median(dec_t))}
        other = "decoded" if current == "bitserial" else "bitserial"
        new, old = (dec_t, bits_t) if other == "decoded" else (bits_t, dec_t)
        ratio, spread = paired_ratio(new, old)
        form = other if ratio < 1 - spread else current
        chosen[name] = {
            "form": form,
            "default": auto,
            "basis": basis,
            "seconds": seconds,
            "ratio": ratio,
            "spread": spread,
        }
    if update is not None:
        update(len(both))
    return chosen


# ------------------------------------------------------------------------------ progress
class _Curve:
    """The tuning curve as it is measured (per batch of candidates: the model's estimate, each
    task's best of its default schedule and its records so far times its weight, over the tasks
    whose default was measured) and the progress bar, whose total grows when MetaSchedule
    measures past it (tqdm drops a total it has passed)."""

    def __init__(self, bar, tasks: list[Task], t0: float, start: dict[int, float]) -> None:
        self.bar, self.tasks, self.t0 = bar, tasks, t0
        self.start = dict(start)
        self.best = dict(start)
        self.history: list[dict] = []

    def measured(self, task_id: int, count: int, secs: list) -> None:
        for s in secs:
            if s:
                m = float(np.median([float(x) for x in s]))
                if task_id in self.start:
                    self.best[task_id] = min(self.best.get(task_id, float("inf")), m)
        total = sum(b * self.tasks[i].weight for i, b in self.best.items())
        self.history.append(
            {
                "seconds": round(time.perf_counter() - self.t0, 2),
                "trials": (self.history[-1]["trials"] if self.history else 0) + count,
                "task": self.tasks[task_id].name,
                "best_s": self.best.get(task_id),
                "model_estimate_s": total if self.best else None,
            }
        )
        bar = self.bar
        if bar is not None:
            if bar.total is not None and bar.n + count > bar.total:
                bar.total = bar.n + count
            bar.update(count)
            shown = ", ".join(
                f"{self.tasks[i].name[:18]} {self.best[i] * 1e6:.0f}us"
                for i in sorted(self.best, key=lambda i: -self.tasks[i].weight * self.best[i])[:3]
            )
            bar.set_postfix_str(shown)

    def callback(self, task_ids: Sequence[int]):
        """The same as a MetaSchedule measure callback (its task ``k`` is ``task_ids[k]``)."""
        from tvm.ir.utils import derived_object
        from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

        curve, ids = self, list(task_ids)

        @derived_object
        class Progress(PyMeasureCallback):
            def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
                secs = [
                    [float(x) for x in res.run_secs] if res.run_secs and not res.error_msg else None
                    for res in runner_results
                ]
                curve.measured(ids[task_id], len(measure_candidates), secs)

        return Progress()


def _bar(enabled: bool, total: int, desc: str, unit: str):
    """A tqdm bar (None when not ``enabled``) on a copy of file descriptor 2 taken now: it stays
    visible while :func:`tbn_tvm.quiet.captured` hides TVM's own output; closing the bar closes
    the copy."""
    if not enabled or total <= 0:
        return None
    import sys

    from tqdm import tqdm

    with contextlib.suppress(Exception):
        sys.stderr.flush()
    stream = os.fdopen(os.dup(2), "w", encoding="utf-8", errors="replace")
    bar = tqdm(total=total, unit=unit, desc=desc, dynamic_ncols=True, file=stream, leave=False)
    close = bar.close

    def close_both() -> None:
        close()
        with contextlib.suppress(Exception):
            stream.close()

    bar.close = close_both
    return bar


def _step(bar):
    """``update(done)`` for a bar (a no-op without one)."""
    if bar is None:
        return None

    def update(done: int) -> None:
        if done > bar.n:
            bar.update(done - bar.n)

    return update


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
    warnings: list[str] = field(default_factory=list)
    gain: dict = field(default_factory=dict)

    def table(self) -> str:
        from tbn_tvm.schedules.qemu_runner import INSTRUCTIONS_PER_SECOND

        # the QEMU runner reports instructions as seconds at INSTRUCTIONS_PER_SECOND
        qemu = self.target.startswith(("cortex-m", "thumbv"))

        def fig(secs):
            if not secs:
                return "-"
            return f"{secs * INSTRUCTIONS_PER_SECOND:,.0f}" if qemu else f"{secs * 1e6:.1f}"

        unit = "instructions" if qemu else "us"
        head = ["task", "layers", "weight", "records", f"default ({unit})", f"best ({unit})", "applied"]
        rows = []
        for t in self.tasks:
            applied = t.get("applied")
            verdict = "-" if applied is None else ("yes" if applied else "no")
            if applied is not None and t.get("ratio") is not None:
                verdict += f" ({1 / t['ratio']:.2f}x)"
            rows.append(
                [
                    t["name"][:40],
                    ",".join(t["layers"]) or "-",
                    str(t["weight"]),
                    str(t["records"]),
                    fig(t.get("default_s")),
                    fig(t.get("best_s")),
                    verdict,
                ]
            )
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]

        def fmt(r):
            return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))

        lines = [fmt(head), "-" * len(fmt(head)), *map(fmt, rows)]
        if self.forms:
            lines.append("kernel forms: " + ", ".join(f"{k}={v}" for k, v in sorted(self.forms.items())))
        g = self.gain
        if g and not qemu:
            if g.get("applied"):
                lines.append(
                    f"against the default build: records beat the default schedule of {g['applied']} of "
                    f"{g['tasks']} kernels, {g['default_s'] * 1e6:.1f} -> {g['tuned_s'] * 1e6:.1f} us per "
                    f"inference ({g['speedup']:.2f}x, timed alternately); the model's kernels "
                    f"{g['model_default_s'] * 1e6:.1f} -> {g['model_tuned_s'] * 1e6:.1f} us "
                    f"({g['model_speedup']:.2f}x, estimated)"
                )
            else:
                lines.append(
                    f"against the default build: no record beat its kernel's default schedule by more than "
                    f"the measurement's spread ({g.get('tasks', 0)} kernels): they keep the default schedule"
                )
        for change in g.get("forms_changed", []) if g else []:
            lines.append(f"form: {change}")
        return "\n".join(lines)


def _records_per_workload(db, tasks: list[Task], entries: dict) -> list[int]:
    """Records of each task, the seeded default not counted (it is not a trial)."""
    counts = []
    for t in tasks:
        mod = t.mod
        found = db.get_top_k(db.commit_workload(mod), 100_000) if db.has_workload(mod) else []
        entry = entries.get(t.key)
        seed = entry.get("seed") if isinstance(entry, dict) else None
        counts.append(sum(1 for r in found if seed is None or record_id(r) != seed))
    return counts


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


def trials_per_round(remaining: int, tasks: int) -> int:
    """Candidates MetaSchedule measures per round of a task (its ``num_trials_per_iter``)."""
    return min(32, max(4, remaining // max(1, tasks)))


def reach_warning(reached: int, tasks: Sequence[Task], needed: int, remaining: int) -> str | None:
    """The warning ``tune`` gives when the ``remaining`` trials reach only the ``reached``
    largest ``tasks`` (in order), else None; ``needed``: the ``--trials`` that reach every one."""
    if reached >= len(tasks):
        return None
    left = [t.name for t in tasks[reached:]]
    shown = ", ".join(left[:4]) + (f" and {len(left) - 4} more" if len(left) > 4 else "")
    return (
        f"{remaining} trials reach only the {reached} largest of {len(tasks)} kernels (the largest get "
        f"the most); {len(left)} keep their default schedule ({shown}); --trials {needed} or more "
        f"reaches every kernel"
    )


def trials_to_reach_all(costs: Sequence[float], per_visit: int = 4) -> int:
    """The fewest trials for which :func:`plan_visits` visits every task (the neighbourhood
    phase's half of ``--trials``, doubled)."""
    budget = per_visit * len(costs)
    while len(set(plan_visits(costs, budget, per_visit))) < len(costs) and budget < 10_000:
        budget += per_visit
    return 2 * budget


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
    already in ``db`` count; the measured default schedules do not), recording into ``db``.
    Returns a :class:`TuneResult`.

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
    db_path = Path(db)
    tvm_target = tuning_target(spec)
    key = target_key(tvm_target)
    host = spec.family == "host"
    loaded, prepared, fused = prepare_for_tuning(
        model, spec, input_shapes, "decoded" if host else "bitserial"
    )
    tasks = extract_tasks(fused, tvm_target, prepared.layers)
    if not tasks:
        raise TBNError("the model has no kernel to tune")
    entries = read_baselines(db_path, key)
    entries = {k: dict(v) if isinstance(v, dict) else v for k, v in entries.items()}
    cores = _cores()
    measure_runner = make_runner(runner, rpc, device_key)
    if runner == "qemu":
        from tbn_tvm.schedules.qemu_runner import qemu_builder

        builder = qemu_builder(cores)
    else:
        builder = ms.builder.LocalBuilder(f_build=fast_build, max_workers=cores, timeout_sec=120)
    t0 = time.perf_counter()
    if host:  # the default schedules measured as the candidates will be, and seeded
        todo = sum(1 for t in tasks if not {"default_s", "unmeasured"} & set(entries.get(t.key, {})))
        bar = _bar(progress, todo, "default schedules", "kernel")
        try:
            with captured():
                seed_defaults(database, tasks, tvm_target, builder, measure_runner, entries, _step(bar))
        finally:
            if bar is not None:
                bar.close()
        write_baselines(db_path, key, {t.key: entries[t.key] for t in tasks if t.key in entries})
    else:  # Cortex-M: the default schedule's exact instruction count
        _write_baselines(db_path, key, tasks, spec)
        entries = read_baselines(db_path, key)

    def default_s(t: Task) -> float:
        e = entries.get(t.key)
        return float(e.get("default_s", 0.0)) if isinstance(e, dict) else 0.0

    # the largest kernels first: the task scheduler gives each task its first round in order
    tasks.sort(key=lambda t: (-(t.weight * default_s(t)), -t.weight, t.name))
    before = _records_per_workload(database, tasks, entries)
    remaining = max(0, trials - sum(before))
    say(
        f"{len(tasks)} tasks ({', '.join(t.name for t in tasks[:6])}{' ...' if len(tasks) > 6 else ''}); "
        f"{sum(before)} records already in {db}; {remaining} trials to run"
    )
    warnings: list[str] = []
    # half the trials (rounded up) go to the default schedules' neighbourhoods, the rest to
    # MetaSchedule's evolutionary search, which starts from the best records so far
    local = (remaining + 1) // 2 if host else 0
    searched = remaining - local
    per_round = 4
    costs = [t.weight * default_s(t) for t in tasks]
    if remaining:
        reached = len(set(plan_visits(costs, local, per_round)))
        reached = max(reached, min(len(tasks), -(-searched // trials_per_round(searched, len(tasks)))))
        needed = sum(before) + (trials_to_reach_all(costs, per_round) if host else 4 * len(tasks))
        w = reach_warning(reached, tasks, needed, remaining)
        if w:
            warnings.append(w)
            say(f"warning: {w}")
    start = {i: default_s(t) for i, t in enumerate(tasks) if default_s(t) > 0}
    bar = _bar(progress, remaining, "tuning", "trial")
    curve_now = _Curve(bar, tasks, t0, start)
    try:
        if local:
            with captured():
                spent = search_neighbourhood(
                    database,
                    tasks,
                    tvm_target,
                    builder,
                    measure_runner,
                    local,
                    per_round,
                    costs,
                    seed,
                    curve_now.measured,
                )
            searched = remaining - spent
        # MetaSchedule's cost model cannot read a kernel with a Let (the vector-math GELU,
        # softmax ...: "Do not have a default for prim.Let" ended its whole search): those are
        # tuned around their default only
        searchable = [i for i, t in enumerate(tasks) if not _has_let(t.mod["main"])]
        if searched > 0 and searchable:
            _clean_ms_loggers()
            arm = str(tvm_target.attrs.get("mtriple", "")).startswith(("arm", "aarch64", "thumb"))
            with _cpu_tensor_intrinsics(arm), captured():
                contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
                    [tasks[i].extracted for i in searchable], work_dir=str(db), num_threads=cores, seed=seed
                )
            callbacks = [
                *ms.measure_callback.MeasureCallback.create("default"),
                curve_now.callback(searchable),
            ]
            stopped = None
            with captured():
                try:
                    ms.tune.tune_tasks(
                        tasks=contexts,
                        task_weights=weights,
                        work_dir=str(db),
                        max_trials_global=searched,
                        num_trials_per_iter=trials_per_round(searched, len(searchable)),
                        builder=builder,
                        runner=measure_runner,
                        database=database,
                        cost_model=ms.cost_model.XGBModel(num_tuning_cores=cores),
                        measure_callbacks=callbacks,
                    )
                except Exception as e:  # noqa: BLE001 - the records measured so far are kept
                    stopped = " ".join(f"{type(e).__name__}: {e}".split())[:300]
            if stopped:
                w = f"MetaSchedule's search stopped early ({stopped}); the records measured so far are kept"
                warnings.append(w)
                say(f"warning: {w}")
    finally:
        if bar is not None:
            bar.close()
    history = curve_now.history
    after = _records_per_workload(database, tasks, entries)
    forms: dict[str, str] = {}
    gain: dict = {}
    if host:
        bar = _bar(progress, len(tasks), "verdicts", "kernel")
        try:
            verify_records(database, tasks, tvm_target, entries, runner == "local", _step(bar))
        finally:
            if bar is not None:
                bar.close()
        write_baselines(db_path, key, {t.key: entries[t.key] for t in tasks if t.key in entries})
        gain = _gain(tasks, entries)
        if runner == "local":  # the forms are timed here
            previous = _read_form_times(db_path, key)
            bar = _bar(progress, len(previous) or 1, "kernel forms", "layer")
            try:
                chosen = choose_forms(model, spec, input_shapes, database, entries, previous, _step(bar))
            finally:
                if bar is not None:
                    bar.close()
            forms = {name: c["form"] for name, c in chosen.items()}
            gain["forms_changed"] = [
                f"{name} {c['default']} -> {c['form']} ({c['seconds'][c['default']] * 1e6:.1f} -> "
                f"{c['seconds'][c['form']] * 1e6:.1f} us, timed alternately)"
                for name, c in sorted(chosen.items())
                if c.get("default") and c["form"] != c["default"] and len(c.get("seconds", {})) == 2
            ]
            write_forms(db_path, key, forms)
            update_json(db_path / FORM_TIMES_FILE, lambda data: data.__setitem__(key, chosen))
    seconds = time.perf_counter() - t0
    rows = []
    for t, n in zip(tasks, after):
        e = entries.get(t.key) if isinstance(entries.get(t.key), dict) else {}
        record = best_record(database, t.mod)
        rows.append(
            {
                "name": t.name,
                "layers": t.layers,
                "weight": t.weight,
                "records": n,
                "default_s": e.get("default_s"),
                "best_s": None if record is None else record_median(record),
                "applied": e.get("apply") if "apply" in e else None,
                "ratio": e.get("ratio"),
            }
        )
    curve_path = db_path / CURVE_FILE
    try:
        old = json.loads(curve_path.read_text()) if curve_path.exists() else []
    except ValueError:
        old = []
    offset = old[-1]["trials"] if old else 0
    first = []
    if not old and start:  # the curve starts at the default build
        first = [
            {
                "seconds": 0.0,
                "trials": 0,
                "task": None,
                "best_s": None,
                "model_estimate_s": sum(start[i] * tasks[i].weight for i in start),
            }
        ]
    curve = old + first + [{**h, "trials": h["trials"] + offset} for h in history]
    if curve != old or not curve_path.exists():
        curve_path.write_text(json.dumps(curve, indent=1) + "\n")
    return TuneResult(
        db_path, spec.name, rows, curve, sum(after) - sum(before), sum(before), seconds, forms, warnings, gain
    )


def _gain(tasks: Sequence[Task], entries: dict) -> dict:
    """Against the default build: the kernels whose record is applied, their default and
    tuned seconds per inference (weights counted; the alternated timings), and the model's
    estimate (every task's default time, the applied ones scaled by their measured ratio)."""
    applied = [t for t in tasks if isinstance(entries.get(t.key), dict) and entries[t.key].get("apply")]
    d = sum(
        t.weight * entries[t.key].get("timed_default_s", entries[t.key].get("default_s", 0.0))
        for t in applied
    )
    r = sum(
        t.weight * entries[t.key].get("timed_record_s", entries[t.key].get("record_s", 0.0)) for t in applied
    )
    model_d = sum(
        t.weight * entries[t.key].get("default_s", 0.0) for t in tasks if isinstance(entries.get(t.key), dict)
    )
    saved = sum(
        t.weight * entries[t.key].get("default_s", 0.0) * (1 - entries[t.key].get("ratio", 1.0))
        for t in applied
    )
    return {
        "tasks": len(tasks),
        "applied": len(applied),
        "default_s": d,
        "tuned_s": r,
        "speedup": d / r if r else 1.0,
        "model_default_s": model_d,
        "model_tuned_s": model_d - saved,
        "model_speedup": model_d / (model_d - saved) if model_d - saved > 0 else 1.0,
    }


def _read_form_times(db: Path, key: str) -> dict[str, dict]:
    try:
        data = json.loads((db / FORM_TIMES_FILE).read_text())
    except (OSError, ValueError):
        return {}
    found = data.get(key, {}) if isinstance(data, dict) else {}
    return {k: v for k, v in found.items() if isinstance(v, dict)} if isinstance(found, dict) else {}


@contextlib.contextmanager
def _cpu_tensor_intrinsics(arm: bool):
    """Within this block ``import tvm.s_tir.tensor_intrin`` (which every MetaSchedule
    TuneContext does) registers the CPU intrinsics only (x86: under a second; Arm's too for an
    ``arm`` target) instead of every back end's (the CUDA ones alone took 34-58 s on the 2-core
    machine).  The stand-in
    package is removed afterwards unless something else imported it in the meantime; its
    submodules stay importable as usual."""
    import importlib
    import sys
    import types

    name = "tvm.s_tir.tensor_intrin"
    if name in sys.modules:
        yield
        return
    import tvm.s_tir

    stub = types.ModuleType(name)
    stub.__path__ = [str(Path(tvm.s_tir.__file__).parent / "tensor_intrin")]
    sys.modules[name] = stub
    try:
        for sub in ("x86", "arm_cpu") if arm else ("x86",):
            with contextlib.suppress(Exception):
                importlib.import_module(f"{name}.{sub}")
        yield
    finally:
        if sys.modules.get(name) is stub:
            del sys.modules[name]
            if getattr(tvm.s_tir, "tensor_intrin", None) is stub:
                delattr(tvm.s_tir, "tensor_intrin")


def _has_let(func) -> bool:
    """Whether a PrimFunc's body binds a value with a ``Let`` expression (the vector-math
    kernels, :mod:`tbn_tvm.kernels.vmath`): MetaSchedule's feature extraction does not take
    one.  Read from the printed TVMScript (TVM 0.27's ``tirx`` has no Python visitor)."""
    return "T.Let(" in func.script()


def _clean_ms_loggers() -> None:
    """MetaSchedule re-reads its logger's handlers by name each run and fails on one without a
    name (test runners and embedding applications add such handlers): drop those."""
    import logging

    logger = logging.getLogger("tvm.s_tir.meta_schedule")
    for handler in list(logger.handlers):
        if handler.get_name() is None:
            logger.removeHandler(handler)


def _write_baselines(db: Path, key: str, tasks: Sequence[Task], spec) -> None:
    """Instructions per call of each task's kernel under its default (Cortex-M) schedule, on
    QEMU: a record is applied only where it takes fewer."""
    import tvm

    from tbn_tvm.schedules.cortex_m import schedule_prim_mcu
    from tbn_tvm.schedules.qemu_runner import build_c, count_instructions

    def fill(data: dict) -> None:
        known = data.setdefault(key, {})
        for t in tasks:
            wk = t.key
            if wk in known:
                continue
            func = next(f for _, f in t.mod.functions_items())
            try:
                scheduled = schedule_prim_mcu(func)
                src = build_c(tvm.IRModule({"main": scheduled}), None).inspect_source()
                known[wk] = count_instructions(src, param_shapes(func), spec.cpu or "cortex-m4")
            except Exception:  # noqa: BLE001 - no baseline: the kernel keeps its default schedule
                continue

    update_json(db / BASELINES_FILE, fill)


def plot_curve(curve: list[dict], path: Path) -> str | None:
    """The tuning curve (the model's estimate — each task's best of its default schedule and
    its records, times its weight — against trials) as a PNG at ``path``; returns None when
    written, else why not (matplotlib missing, nothing to draw)."""
    points = [(c["trials"], c["model_estimate_s"]) for c in curve if c.get("model_estimate_s")]
    if not points:
        return "no measurement of every task yet (nothing to draw)"
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install matplotlib); the curve is in the JSON file"
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
    return None
