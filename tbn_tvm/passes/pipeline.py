"""Every pass the compiler runs, in order, in one place.

Phase 0, import (:func:`tbn_tvm.frontend.onnx.to_relax`)
    ONNX -> Relax (TVM's importer, the project's converters in front) -> :func:`fold_constants`
    (FoldConstant, DeadCodeElimination: exporter chains become one constant per weight) ->
    outputs checked against ONNX shape inference.

Phase 1, the project's passes, every target (:func:`prepare`)
    CompressWeights: each matmul/conv whose weight has a compact exact form becomes a kernel
    reading the format's buffers (options from the back end: ``simd``; from the user:
    ``reuse_rows``).

Phase 2, lowering, per target family
    host (:func:`lower_host`): :func:`fuse` (Legalize with NaN-keeping lowerings,
    AnnotateTIROpPattern, FoldConstant, FuseOps, FuseTIR) -> MetaScheduleApplyDatabase (tuning
    records, when a database is given) -> hand schedules of the project's kernels not tuned
    (:mod:`tbn_tvm.schedules.cpu`) -> TVM's CPU library dispatch, dataflow lowering and
    finalisation (memory planning, VM code) -> LLVM.

    cortex-m (:func:`lower_mcu`): :func:`fuse` -> DeadCodeElimination; then the C back end
    extracts the kernel sequence, schedules each kernel with the schedule the back end passes in
    (tuning records first, else :mod:`tbn_tvm.schedules.cortex_m`) and emits C plus a static
    driver (:mod:`tbn_tvm.targets.clib`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import tvm
from tvm import relax

from tbn_tvm.passes.compress_weights import CompressWeights, RewrittenLayer
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
    names: dict[str, str] | None = None,
) -> Prepared:
    """Run the project's passes on an imported module (weights already folded to constants).

    ``compress=False`` leaves every weight dense (the plain TVM build); ``names`` maps weight
    fingerprints to layer names (:func:`tbn_tvm.frontend.layers.weighted_layers`)."""
    if not compress:
        return Prepared(mod, [])
    compress_pass = CompressWeights(names=names, reuse_rows=reuse_rows, simd=simd)
    mod = compress_pass(mod)
    return Prepared(mod, list(compress_pass.layers), dict(compress_pass.const_names))


# ----------------------------------------------------------------------------- phase 2
def fuse(legalize: bool = True) -> tvm.transform.Pass:
    """Legalize (NaN-keeping lowerings) and fuse: what the kernels look like when they are
    scheduled, tuned and looked up in a tuning database."""
    return tvm.transform.Sequential(
        [
            Legalize(),
            relax.transform.AnnotateTIROpPattern(),
            relax.transform.FoldConstant(),
            relax.transform.FuseOps(),
            relax.transform.FuseTIR(),
        ],
        name="tbn_fuse",
    )


def lower_host(mod: tvm.IRModule, target, database=None) -> tuple[tvm.IRModule, tvm.transform.Pass]:
    """Host lowering: returns the fused, scheduled module and the rest of the Relax pipeline
    ``tvm.compile`` runs on it.  Tuning records from ``database`` (a MetaSchedule database) are
    applied first; the project's kernels they do not cover get their hand schedules."""
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    from tbn_tvm.schedules.cpu import schedule_cpu

    with target:
        mod = fuse()(mod)
        if database is not None:
            with database:
                mod = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(mod)
        mod = schedule_cpu(mod, target)
    rest = (
        cpu.library_dispatch_passes(target) + cpu.dataflow_lower_passes(target) + cpu.finalize_passes(target)
    )

    @tvm.transform.module_pass(opt_level=0, name="tbn_host_finish")
    def finish(m, _ctx):
        with target:
            return tvm.transform.Sequential(rest)(m)

    return mod, finish


def lower_mcu(mod: tvm.IRModule) -> tvm.IRModule:
    """Cortex-M lowering up to the fused graph the C back end reads."""
    return tvm.transform.Sequential([fuse(), relax.transform.DeadCodeElimination()], name="tbn_lower_mcu")(
        mod
    )


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
