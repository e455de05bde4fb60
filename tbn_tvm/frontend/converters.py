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


def _const(value, dtype: str):
    from tvm import relax

    return relax.const(value, dtype)


def _dtype(expr) -> str:
    return str(expr.ty.dtype)


@converter("IsInf")
def is_inf(bb, inputs, attrs, opset, node):
    """Honours ``detect_negative`` / ``detect_positive`` (TVM ignores both)."""
    from tvm import relax

    x = inputs[0]
    neg, pos = int(attrs.get("detect_negative", 1)), int(attrs.get("detect_positive", 1))
    inf = relax.op.isinf(x)
    if neg and pos:
        return inf
    dt = _dtype(x)
    if not (neg or pos):
        return relax.op.logical_and(inf, relax.op.not_equal(x, x))  # all False, same shape
    side = relax.op.greater(x, _const(0, dt)) if pos else relax.op.less(x, _const(0, dt))
    return relax.op.logical_and(inf, side)


@converter("LayerNormalization")
def layer_norm(bb, inputs, attrs, opset, node):
    """With the optional ``Mean`` / ``InvStdDev`` outputs requested (TVM returns 0-d zeros for
    them): computed here in the stash type, reduced axes kept as 1."""
    from tvm import relax

    wanted = [o for o in list(node.output)[1:] if o]
    if not wanted:
        return None
    x, scale = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    ndim = len(x.ty.shape)
    axis = int(attrs.get("axis", -1))
    axis = axis + ndim if axis < 0 else axis
    axes = list(range(axis, ndim))
    eps = float(attrs.get("epsilon", 1e-5))
    stash = "float32" if int(attrs.get("stash_type", 1)) == 1 else _dtype(x)
    dt = _dtype(x)
    xs = x if stash == dt else relax.op.astype(x, stash)
    mean = bb.emit(relax.op.mean(xs, axes, keepdims=True))
    centred = bb.emit(relax.op.subtract(xs, mean))
    var = relax.op.mean(relax.op.multiply(centred, centred), axes, keepdims=True)
    inv = bb.emit(relax.op.divide(_const(1, stash), relax.op.sqrt(relax.op.add(var, _const(eps, stash)))))
    y = relax.op.multiply(centred, inv)
    y = y if stash == dt else relax.op.astype(y, dt)
    y = relax.op.multiply(y, scale)
    if bias is not None:
        y = relax.op.add(y, bias)
    return relax.Tuple([bb.emit(y), mean, inv])


def _fold_binary(op, items):
    acc = items[0]
    for item in items[1:]:
        acc = op(acc, item)
    return acc


@converter("Max")
def maximum(bb, inputs, attrs, opset, node):
    """Element-wise max of any number of inputs as ``relax.maximum`` (NaN kept, see
    :mod:`tbn_tvm.passes.legalize`; TVM lowers it at import time with ``max``, losing NaN)."""
    from tvm import relax

    items = [i for i in inputs if i is not None]
    return _fold_binary(relax.op.maximum, items) if len(items) > 1 else items[0]


@converter("Min")
def minimum(bb, inputs, attrs, opset, node):
    """Element-wise min as ``relax.minimum`` (NaN kept, as :func:`maximum`)."""
    from tvm import relax

    items = [i for i in inputs if i is not None]
    return _fold_binary(relax.op.minimum, items) if len(items) > 1 else items[0]


@converter("Clip")
def clip(bb, inputs, attrs, opset, node):
    """``min(max(x, lo), hi)`` with NaN kept (onnxruntime's Clip propagates NaN)."""
    from tvm import relax

    x = inputs[0]
    dt = _dtype(x)
    if opset < 11:
        lo = _const(float(attrs.get("min", -3.4028234663852886e38)), dt)
        hi = _const(float(attrs.get("max", 3.4028234663852886e38)), dt)
    else:
        lo = inputs[1] if len(inputs) > 1 else None
        hi = inputs[2] if len(inputs) > 2 else None
    if lo is not None:
        x = relax.op.maximum(x, lo)
    if hi is not None:
        x = relax.op.minimum(x, hi)
    return x
