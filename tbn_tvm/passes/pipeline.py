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
    host (:func:`lower_host`): Legalize (NaN-keeping lowerings) -> hand schedules of the
    project's kernels (:mod:`tbn_tvm.schedules.cpu`) -> Relax's default pipeline for the target
    (AnnotateTIROpPattern, FoldConstant, FuseOps, FuseTIR, dlight/default schedules, VM codegen)
    -> LLVM.

    cortex-m (:func:`lower_mcu`): Legalize -> AnnotateTIROpPattern -> FoldConstant -> FuseOps ->
    FuseTIR -> DeadCodeElimination; then the C back end extracts the kernel sequence, schedules
    each kernel with the schedule the back end passes in (:mod:`tbn_tvm.schedules.cortex_m`) and
    emits C plus a static driver (:mod:`tbn_tvm.targets.clib`).
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
def lower_host(mod: tvm.IRModule, target) -> tuple[tvm.IRModule, tvm.transform.Pass]:
    """Host lowering: returns the module after Legalize and the hand schedules, and the Relax
    pipeline ``tvm.compile`` runs on it."""
    from tbn_tvm.schedules.cpu import schedule_cpu

    with target:
        mod = Legalize()(mod)
        mod = schedule_cpu(mod, target)
    return mod, relax.get_default_pipeline(target)


def lower_mcu(mod: tvm.IRModule) -> tvm.IRModule:
    """Cortex-M lowering up to the fused graph the C back end reads."""
    seq = tvm.transform.Sequential(
        [
            Legalize(),
            relax.transform.AnnotateTIROpPattern(),
            relax.transform.FoldConstant(),
            relax.transform.FuseOps(),
            relax.transform.FuseTIR(),
            relax.transform.DeadCodeElimination(),
        ],
        name="tbn_lower_mcu",
    )
    return seq(mod)


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
