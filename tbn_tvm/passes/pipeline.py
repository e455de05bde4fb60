"""The order of the project's Relax passes, in one place.

    ONNX -> from_onnx -> FoldConstant + DCE (frontend) -> CompressWeights -> target build

Targets add their own lowering after this (Relax's default pipeline on the host, the static C
driver on Cortex-M).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax

from tbn_tvm.passes.compress_weights import CompressWeights, RewrittenLayer


@dataclass
class Prepared:
    """A Relax module ready for a target build, with what the passes did."""

    mod: tvm.IRModule
    layers: list[RewrittenLayer]

    def constant_bytes(self) -> int:
        """Bytes of every constant left in the module (compact weights, biases, dense weights)."""
        return constant_bytes(self.mod)


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
    compress = CompressWeights(names=names, reuse_rows=reuse_rows, simd=simd)
    mod = compress(mod)
    return Prepared(mod, list(compress.layers))


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
