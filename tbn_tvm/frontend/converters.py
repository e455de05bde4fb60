"""The project's own converters for ONNX operators where TVM 0.27's importer is wrong.

Each entry of :data:`CONVERTERS` is ``fn(bb, inputs, attrs, opset, node) -> relax.Expr | None``
(``None``: let TVM's converter handle this node).  A use the converter cannot express exactly is
refused with a :class:`~tbn_tvm.errors.TBNError` naming the operator and attribute.  Each one is
tested against ONNX's reference implementation (``onnx.reference.ReferenceEvaluator``).
"""

from __future__ import annotations

from collections.abc import Callable

CONVERTERS: dict[str, Callable] = {}


def converter(op_type: str):
    """Register ``fn`` as the converter of ``op_type``."""

    def wrap(fn):
        CONVERTERS[op_type] = fn
        return fn

    return wrap
