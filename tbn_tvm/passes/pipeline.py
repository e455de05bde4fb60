"""Every pass the compiler runs, in order, in one place.

Phase 0, import (:func:`tbn_tvm.frontend.onnx.to_relax`)
    ONNX -> Relax (TVM's importer, the project's converters in front) -> :func:`fold_constants`
    (FoldConstant, DeadCodeElimination: exporter chains become one constant per weight) ->
    outputs checked against ONNX shape inference.

Phase 1, the project's passes, every target (:func:`prepare`)
    FoldAffine: per-output-channel scales after a layer (BatchNorm, Mul) folded into its weight.
    CompressWeights: each matmul/conv whose weight has a compact exact form becomes a kernel
    reading the format's buffers (options from the back end: ``simd``; from the user:
    ``reuse_rows``).

Phase 2, lowering, per target family
    host (:func:`lower_host`): :func:`fuse` (Legalize with NaN-keeping lowerings and
    vectorisable float32 exp/erf/tanh/sigmoid/softmax, :mod:`tbn_tvm.passes.vector_math`;
    AnnotateTIROpPattern, FoldConstant, FuseOps, FuseTIR) -> MetaScheduleApplyDatabase (tuning
    records, when a database is given; a record not measured faster than the kernel's default
    schedule is dropped, :func:`tbn_tvm.schedules.records.keep_records_that_beat_default`) ->
    default schedules of every kernel not tuned (:func:`tbn_tvm.schedules.cpu.schedule_cpu`:
    the project's bit-serial and decoded forms, :mod:`tbn_tvm.schedules.cpu_generic` for the
    rest) -> TVM's CPU library dispatch, dataflow lowering and finalisation (memory planning,
    VM code) -> LLVM.  The pipeline reads a tuning database through the low-level
    :mod:`tbn_tvm.schedules.records` only, never the tuning driver.

    cortex-m (:func:`lower_mcu`): :func:`fuse` -> RewriteDataflowReshape (reshapes become views
    of their input, no copy kernel) -> DeadCodeElimination; then the C back end
    extracts the kernel sequence, schedules each kernel with the schedule the back end passes in
    (tuning records first, else :mod:`tbn_tvm.schedules.cortex_m`) and emits C plus a static
    driver (:mod:`tbn_tvm.targets.clib`).

    cuda (:func:`lower_cuda`): :func:`fuse` -> DeadCodeElimination and unused kernels dropped ->
    hand schedules of the project's kernels (:mod:`tbn_tvm.schedules.cuda`: a warp per distinct
    row, tile words in shared memory) -> dlight for the rest -> TVM's CUDA library dispatch,
    dataflow lowering and finalisation -> nvcc (PTX and cubin).

Phase 1 also takes the per-layer kernel forms a tuning database chose
(:func:`tbn_tvm.schedules.records.read_forms`; ``auto`` for the others: decoded where its host schedule pays,
:func:`tbn_tvm.kernels.rows.auto_form`); the Cortex-M build then runs one inference on QEMU to size the
stack and count instructions per layer (:mod:`tbn_tvm.targets.cortex_m.backend`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import tvm
from tvm import relax

from tbn_tvm.passes.compress_weights import CompressWeights, RewrittenLayer
from tbn_tvm.passes.fold_affine import FoldAffine
from tbn_tvm.passes.legalize import Legalize


@dataclass
class Prepared:
    """A Relax module ready for a target build, with what the passes did."""

    mod: tvm.IRModule
    layers: list[RewrittenLayer]
    const_names: dict[int, str] = field(default_factory=dict)  # constant (hash) -> C-safe name

    def constant_bytes(self) -> int:
        """Bytes of every constant left in the module (compact weights, biases, dense weights)."""
        return constant_bytes(self.mod)


# ----------------------------------------------------------------------------- phase 0
def fold_constants() -> tvm.transform.Pass:
    """Phase 0's passes after the import."""
    return tvm.transform.Sequential(
        [relax.transform.FoldConstant(), relax.transform.DeadCodeElimination()], name="tbn_fold_constants"
    )


# ----------------------------------------------------------------------------- phase 1
def prepare(
    mod: tvm.IRModule,
    compress: bool = True,
    reuse_rows: bool = True,
    simd: bool = True,
    forms: dict[str, str] | str = "auto",
    default_form: str = "auto",
) -> Prepared:
    """Run the project's passes on an imported module (weights already folded to constants).

    ``compress=False`` leaves every weight dense (the plain TVM build).  Layers are named by
    the spans the importer gave their calls (:mod:`tbn_tvm.frontend.identity`)."""
    mod = FoldAffine()(mod)
    if not compress:
        return Prepared(mod, [])
    compress_pass = CompressWeights(reuse_rows=reuse_rows, simd=simd, forms=forms, default_form=default_form)
    mod = compress_pass(mod)
    return Prepared(mod, list(compress_pass.layers), dict(compress_pass.const_names))


# ----------------------------------------------------------------------------- phase 2
def fuse(legalize: bool = True, vector_math: bool = False) -> tvm.transform.Pass:
    """Legalize (NaN-keeping lowerings; ``vector_math``: exp/erf/tanh/sigmoid/softmax in
    vectorisable float32 polynomials, :mod:`tbn_tvm.passes.vector_math`, for SIMD CPUs) and
    fuse: what the kernels look like when they are scheduled, tuned and looked up in a tuning
    database.  Every call of a kernel that computes a layer names it
    (:mod:`tbn_tvm.frontend.identity`, :func:`fuse_tir_keeping_layers`)."""
    return tvm.transform.Sequential(
        [
            Legalize(vector_math=vector_math),
            relax.transform.AnnotateTIROpPattern(),
            relax.transform.FoldConstant(),
            relax.transform.FuseOps(),
            fuse_tir_keeping_layers(),
            relax.transform.DeadCodeElimination(),  # the shared kernels the layers' own replaced
        ],
        name="tbn_fuse",
    )


def _call_layers(func) -> list[str]:
    """The layers the calls inside a Relax function name, in order, each once."""
    from tbn_tvm.frontend.identity import layers_of

    found: list[str] = []

    def visit(expr) -> None:
        if isinstance(expr, tvm.ir.Call):
            found.extend(n for n in layers_of(expr) if n not in found)

    relax.analysis.post_order_visit(func.body, visit)
    return found


@relax.expr_functor.mutator
class _NameCallSites(relax.PyExprMutator):
    """Gives each ``call_tir`` of a kernel in ``table`` (kernel name -> layers) the span that
    names its layers."""

    def __init__(self, mod: tvm.IRModule, table: dict[str, list[str]]) -> None:
        super().__init__(mod)
        self.mod_ = mod
        self.table = table

    def transform(self) -> tvm.IRModule:
        for gv, func in self.mod_.functions_items():
            if isinstance(func, relax.Function):
                self.builder_.update_func(gv, self.visit_expr(func))
        return self.builder_.get()

    def visit_call_(self, call):  # noqa: D102 - mutator hook
        from tbn_tvm.frontend.identity import layers_of, with_layers

        call = self.visit_expr_post_order(call)
        if (
            isinstance(call.op, tvm.ir.Op)
            and call.op.name == "relax.call_tir"
            and isinstance(call.args[0], tvm.ir.GlobalVar)
            and call.args[0].name_hint in self.table
            and not layers_of(call)
        ):
            return with_layers(call, self.table[call.args[0].name_hint])
        return call


def fuse_tir_keeping_layers() -> tvm.transform.Pass:
    """TVM's FuseTIR, after which the call of each fused kernel names the layers whose calls
    FuseOps put into it (FuseTIR builds new calls, without the spans of the calls it merged).
    A fused kernel computes one call site: every layer calls a kernel of its own
    (CompressWeights' kernels, and Legalize's for a dense layer), so FuseOps never gives two
    layers one fused function."""

    @tvm.transform.module_pass(opt_level=0, name="tbn.FuseTIRKeepingLayers")
    def run(mod, _ctx):
        table = {}
        for gv, func in mod.functions_items():
            if isinstance(func, relax.Function) and func.attrs and func.attrs.get("Primitive"):
                names = _call_layers(func)
                if names:
                    table[gv.name_hint] = names
        mod = relax.transform.FuseTIR()(mod)
        return _NameCallSites(mod, table).transform() if table else mod

    return run


def scheduled_kernels(mod: tvm.IRModule) -> set[str]:
    """Names of the PrimFuncs already scheduled (``tirx.is_scheduled``)."""
    return {
        gv.name_hint
        for gv, f in mod.functions_items()
        if isinstance(f, tvm.tirx.PrimFunc) and f.attrs and f.attrs.get("tirx.is_scheduled")
    }


def apply_database(mod: tvm.IRModule, target, database) -> tuple[tvm.IRModule, list[str]]:
    """Apply MetaSchedule records to a fused module; returns it and the kernels that got one
    (a record for another target or shape never matches)."""
    before = scheduled_kernels(mod)
    with target, database:
        mod = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(mod)
    return mod, sorted(scheduled_kernels(mod) - before)


def lower_host(
    mod: tvm.IRModule, target, database=None, baselines: dict | None = None, hand_schedules: bool = True
) -> tuple[tvm.IRModule, tvm.transform.Pass, list[str], list[str]]:
    """Host lowering: returns the fused, scheduled module, the rest of the Relax pipeline
    ``tvm.compile`` runs on it, the kernels tuning records were applied to, and the kernels
    that keep their default schedule although the database has records for them (a record is
    applied only where it was measured faster than the kernel's default schedule:
    :func:`tbn_tvm.schedules.records.record_beats_default` on ``baselines``, written by tuning).
    Records from ``database`` (a MetaSchedule database) come first; the kernels they do not
    cover get the default schedules (:func:`tbn_tvm.schedules.cpu.schedule_cpu`; with
    ``hand_schedules=False`` TVM's default loop nests, a baseline for tuning figures).  Each
    step is a :func:`tbn_tvm.progress.stage` (``compile -v`` times them)."""
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    from tbn_tvm import progress
    from tbn_tvm.schedules.cpu import schedule_cpu
    from tbn_tvm.schedules.records import keep_records_that_beat_default

    tuned: list[str] = []
    kept: list[str] = []
    with target:
        progress.stage("fuse")
        mod = fuse(vector_math=True)(mod)
        if database is not None:
            progress.stage("tuning records")
            before = mod
            mod, tuned = apply_database(mod, target, database)
            mod, tuned, kept = keep_records_that_beat_default(before, mod, tuned, database, baselines or {})
        if hand_schedules:
            progress.stage("schedules")
            mod = schedule_cpu(mod, target)
    rest = (
        cpu.library_dispatch_passes(target) + cpu.dataflow_lower_passes(target) + cpu.finalize_passes(target)
    )

    @tvm.transform.module_pass(opt_level=0, name="tbn_host_finish")
    def finish(m, _ctx):
        progress.stage("Relax lowering")
        with target:
            m = tvm.transform.Sequential(rest)(m)
        progress.stage("TIR + LLVM")  # what tvm.compile does after the Relax pipeline
        return m

    return mod, finish, tuned, kept


def lower_mcu(mod: tvm.IRModule) -> tvm.IRModule:
    """Cortex-M lowering up to the fused graph the C back end reads."""
    # reshape-like kernels (reshape, flatten, squeeze) become views of their input's bytes:
    # no copy, no arena of their own
    return tvm.transform.Sequential(
        [fuse(), relax.transform.RewriteDataflowReshape(), relax.transform.DeadCodeElimination()],
        name="tbn_lower_mcu",
    )(mod)


def lower_cuda(mod: tvm.IRModule, target) -> tuple[tvm.IRModule, tvm.transform.Pass]:
    """CUDA lowering: :func:`fuse` -> kernels no Relax function calls dropped -> hand schedules
    of the project's kernels (:mod:`tbn_tvm.schedules.cuda`) -> dlight's Matmul, Reduction,
    GeneralReduction and Fallback rules for the rest of the graph (not GEMV: it asserts on
    tile-decoding kernels).  Returns the scheduled module (what
    :mod:`tbn_tvm.targets.gpu_check` runs on OpenCL) and the rest of TVM's CUDA pipeline
    (library dispatch, dataflow lowering, finalisation) for ``tvm.compile``."""
    from tvm.relax.backend.cuda import pipeline as cuda

    from tbn_tvm.schedules.cuda import apply_dlight, schedule_cuda

    with target:
        mod = fuse()(mod)
        mod = relax.transform.DeadCodeElimination()(mod)
        called: set[str] = set()

        def visit(expr) -> None:
            if isinstance(expr, tvm.ir.GlobalVar):
                called.add(expr.name_hint)

        for _, func in mod.functions_items():
            if isinstance(func, relax.Function):
                relax.analysis.post_order_visit(func, visit)
        mod = tvm.IRModule(
            {
                gv: func
                for gv, func in mod.functions_items()
                if not isinstance(func, tvm.tirx.PrimFunc) or gv.name_hint in called
            },
            attrs=mod.attrs,
            global_infos=mod.global_infos,
        )
        mod = schedule_cuda(mod, target)
        mod = apply_dlight(mod, target)
    rest = (
        cuda.library_dispatch_passes(target)
        + cuda.dataflow_lower_passes(target)
        + cuda.finalize_passes(target)
    )

    @tvm.transform.module_pass(opt_level=0, name="tbn_cuda_finish")
    def finish(m, _ctx):
        with target:
            return tvm.transform.Sequential(rest)(m)

    return mod, finish


def call_sites(mod: tvm.IRModule) -> list[dict]:
    """The kernel calls of a fused module's ``main`` in order, each with the layers it computes
    (:mod:`tbn_tvm.frontend.identity`): ``[{"kernel", "layers"}]``."""
    from tbn_tvm.frontend.identity import layers_of

    sites = []
    for block in mod["main"].body.blocks:
        for binding in block.bindings:
            value = binding.value
            if (
                isinstance(value, tvm.ir.Call)
                and isinstance(value.op, tvm.ir.Op)
                and value.op.name == "relax.call_tir"
                and isinstance(value.args[0], tvm.ir.GlobalVar)
            ):
                sites.append({"kernel": value.args[0].name_hint, "layers": layers_of(value)})
    return sites


def constant_bytes(mod: tvm.IRModule) -> int:
    """Sum of ``nbytes`` over the distinct constant objects used by the module's Relax functions
    (a weight shared by two layers is one object: the pass gives both the same buffers)."""
    seen: dict[int, int] = {}

    @relax.expr_functor.visitor
    class _Count(relax.PyExprVisitor):
        def visit_generic_const_(self, const) -> None:  # noqa: D102
            arr = const.value
            n = int(np.prod([int(d) for d in arr.shape])) if len(arr.shape) else 1
            seen[hash(const)] = n * np.dtype(str(arr.dtype)).itemsize  # by object: a shared one once

    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            _Count().visit_expr(func)
    return sum(seen.values())
