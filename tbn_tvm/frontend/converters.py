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


def refuse(node, what: str):
    """Raise the one-line error for a use of an operator tbn-tvm cannot compile exactly."""
    from tbn_tvm.errors import TBNError
    from tbn_tvm.frontend.onnx import _printable

    label = _printable(node.name or (node.output[0] if node.output else "?")) if node is not None else "?"
    op = node.op_type if node is not None else "operator"
    raise TBNError(
        f"{op} node '{label}': {what}",
        hint="tbn-tvm compiles inference graphs exactly or not at all; change it in the exporter",
    )


def _constant(expr):
    """The numpy value of a Relax constant, or None."""
    import tvm

    return expr.value.numpy() if isinstance(expr, tvm.ir.GenericConst) else None


@converter("BatchNormalization")
def batch_norm(bb, inputs, attrs, opset, node):
    """Inference form only: ``training_mode=1`` (batch statistics, running-mean outputs) is
    refused (TVM computes other numbers).  With constant parameters the normalisation becomes
    ``x · a + b`` per channel, ``a = γ / sqrt(var + ε)``, ``b = β − mean · a`` computed here
    (float64, rounded once): no square root at run time, and :mod:`tbn_tvm.passes.fold_affine`
    can fold ``a`` and ``b`` into the layer before it."""
    import numpy as np
    from tvm import relax

    if int(attrs.get("training_mode", 0)) or len([o for o in node.output if o]) > 1:
        refuse(node, "training_mode=1 (batch statistics) is not supported; export the model in eval mode")
    x = inputs[0]
    params = [_constant(e) if e is not None else None for e in inputs[1:5]]
    if any(p is None for p in params) or _dtype(x) != "float32":
        return None
    gamma, beta, mean, var = (np.asarray(p, np.float64).reshape(-1) for p in params)
    eps = float(attrs.get("epsilon", 1e-5))
    a = gamma / np.sqrt(var + eps)
    b = beta - mean * a
    ndim = len(x.ty.shape)
    shape = (-1,) + (1,) * (ndim - 2) if ndim >= 2 else (-1,)
    A = relax.const(a.astype(np.float32).reshape(shape), "float32")
    B = relax.const(b.astype(np.float32).reshape(shape), "float32")
    return relax.op.add(relax.op.multiply(x, A), B)


@converter("Dropout")
def dropout(bb, inputs, attrs, opset, node):
    """Inference form: the identity, and an all-true boolean mask when the mask is requested.
    A ``training_mode`` input that is not the constant False is refused."""
    from tvm import relax

    if len(inputs) > 2 and inputs[2] is not None:
        flag = _constant(inputs[2])
        if flag is None or bool(flag):
            refuse(node, "training_mode is not constant False; export the model in eval mode")
    x = inputs[0]
    if len([o for o in node.output if o]) < 2:
        return x
    mask = relax.op.ones_like(x, "bool")
    return relax.Tuple([x, mask])


def _softplus_te(x):
    """``max(x, 0) + log1p(exp(-|x|))``: exact to float precision everywhere (TVM writes
    ``log(1 + exp(-|x|))``, which loses every small value)."""
    from tvm import te, tirx

    def body(*i):
        v = x(*i)
        zero = tirx.const(0, x.dtype)
        return tirx.Select(v > zero, v, zero) + tirx.log1p(tirx.exp(-tirx.abs(v)))

    return te.compute(x.shape, body, name="softplus")


@converter("Softplus")
def softplus(bb, inputs, attrs, opset, node):
    """Softplus with ``log1p`` (see :func:`_softplus_te`)."""
    return bb.emit_te(_softplus_te, inputs[0], primfunc_name_hint="softplus")


@converter("Mish")
def mish(bb, inputs, attrs, opset, node):
    """``x * tanh(softplus(x))`` with the exact softplus (TVM's ``log(1 + e^x)`` loses the
    small values)."""
    from tvm import te, tirx

    def f(x):
        sp = _softplus_te(x)
        return te.compute(x.shape, lambda *i: x(*i) * tirx.tanh(sp(*i)), name="mish")

    return bb.emit_te(f, inputs[0], primfunc_name_hint="mish")


@converter("NonMaxSuppression")
def non_max_suppression(bb, inputs, attrs, opset, node):
    """Its output shape depends on the data: refused (TVM returns a wrong static shape)."""
    refuse(node, "the number of selected boxes depends on the data; tbn-tvm compiles static shapes only")


@converter("RoiAlign")
def roi_align(bb, inputs, attrs, opset, node):
    """``mode="max"`` is refused: TVM takes the max of the bilinear samples where ONNX's
    reference takes the max of the weighted corner values."""
    mode = attrs.get("mode", b"avg")
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    if mode != "avg":
        refuse(node, f"mode='{mode}' is not supported (only 'avg')")
    return None


def _text(value, default: str) -> str:
    if value is None:
        return default
    return value.decode() if isinstance(value, bytes) else str(value)


#: Coordinate transformations of nearest-mode Resize computed exactly as ONNX defines them.
_NEAREST_COORDINATES = frozenset(
    {"half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners", "asymmetric"}
)
_NEAREST_MODES = frozenset({"round_prefer_floor", "round_prefer_ceil", "floor", "ceil"})


def _nearest_source(y, in_width: int, out_width: int, scale: float, coordinate: str, rounding: str):
    """The input index nearest-mode Resize reads for output index ``y`` (a TIR int) along one
    axis, as ONNX's reference computes it (``onnx.reference`` ``op_resize``): the source
    coordinate in float64 with the reference's operations in its order, then the neighbour its
    rounding picks, clamped to the axis.  No multiply feeds an add, so no target can contract
    the arithmetic into a fused multiply-add (which moves exact ties: issue 20)."""
    from tvm import tirx

    f64 = "float64"
    yf = tirx.Cast(f64, y)

    def c(v: float):
        return tirx.const(float(v), f64)

    output_width = scale * in_width  # float, as the reference
    if coordinate == "align_corners":
        x = c(0.0) if output_width == 1 else (yf * c(in_width - 1)) / c(output_width - 1)
    elif coordinate == "asymmetric":
        x = yf / c(scale)
    elif coordinate == "pytorch_half_pixel" and output_width == 1:
        x = c(-0.5)
    elif coordinate == "half_pixel_symmetric":
        offset = (in_width / 2) * (1 - out_width / output_width)
        x = (c(offset) + (yf + c(0.5)) / c(scale)) - c(0.5)
    else:  # half_pixel, pytorch_half_pixel
        x = (yf + c(0.5)) / c(scale) - c(0.5)
    # the reference's neighbours [start - 1, start] (edge-padded by one) and its coefficients
    xp = x + c(1.0)
    p = tirx.floor(xp)
    start = tirx.Select(xp - p == c(0.0), p - c(1.0), p)
    whole = tirx.floor(x)
    ratio = tirx.Select(x == whole, c(1.0), x - whole)
    half = c(0.5)
    second = {
        "round_prefer_floor": ratio > half,
        "round_prefer_ceil": ratio >= half,
        "floor": ratio == c(1.0),
        "ceil": tirx.const(True, "bool"),
    }[rounding]
    second = tirx.Or(second, ratio == c(1.0))
    idx = tirx.Select(second, start, start - c(1.0))
    idx = tirx.Max(tirx.Min(idx, c(in_width - 1)), c(0.0))
    return tirx.Cast("int64", idx)


def _nearest_resize(bb, x, out_shape, scales, coordinate: str, rounding: str):
    """``x`` resized to ``out_shape`` by nearest-neighbour indexing (one gather kernel)."""
    from tvm import te

    in_shape = [int(d) for d in x.ty.shape]

    def f(data):
        def body(*i):
            src = [
                i[a]
                if in_shape[a] == out_shape[a] and abs(scales[a] - 1.0) <= 1e-9
                else _nearest_source(i[a], in_shape[a], out_shape[a], scales[a], coordinate, rounding)
                for a in range(len(in_shape))
            ]
            return data(*src)

        return te.compute(out_shape, body, name="resize_nearest")

    return bb.emit_te(f, x, primfunc_name_hint="resize_nearest")


def _nearest_sizes(in_shape, scales, sizes):
    """(per-axis scale as the reference uses it, output shape), from constant ``scales`` or
    ``sizes`` covering every axis; None when neither is usable."""
    import numpy as np

    if sizes is not None and sizes.size == len(in_shape):
        out = [int(v) for v in sizes.reshape(-1)]
        if 0 in in_shape:
            return None
        return [out[a] / in_shape[a] for a in range(len(in_shape))], out
    if scales is not None and scales.size == len(in_shape):
        s = np.asarray(scales, np.float32).reshape(-1)
        out = (s * np.array(in_shape)).astype(int)
        return [float(v) for v in s], [int(v) for v in out]
    return None


@converter("Upsample")
def upsample(bb, inputs, attrs, opset, node):
    """Nearest mode with constant whole scales: ``y[i] = x[floor(i / scale)]``, ONNX's
    definition, as a gather (TVM's converter reads the wrong neighbour)."""
    import numpy as np

    if _text(attrs.get("mode"), "nearest") != "nearest":
        return None
    scales = attrs.get("scales") if opset < 9 else (_constant(inputs[1]) if len(inputs) > 1 else None)
    if scales is None:
        return None
    scales = np.asarray(scales, np.float32).reshape(-1)
    try:
        in_shape = [int(d) for d in inputs[0].ty.shape]
    except (TypeError, ValueError):
        return None
    if scales.size != len(in_shape) or not np.all(scales == np.floor(scales)) or np.any(scales < 1):
        return None
    out = [int(d * s) for d, s in zip(in_shape, scales.tolist())]
    return _nearest_resize(bb, inputs[0], out, [float(v) for v in scales], "asymmetric", "floor")


@converter("Resize")
def resize(bb, inputs, attrs, opset, node):
    """Refused where TVM's result differs from ONNX's: ``antialias=1``, and ``scales`` that do
    not give whole output sizes (ONNX maps coordinates with the given scale, TVM with the ratio
    of the sizes; the two agree only when ``input * scale`` is a whole number).  Nearest mode
    (opset 11 on, constant scales or sizes, no ``axes``, ``keep_aspect_ratio_policy`` stretch,
    any coordinate transformation but ``tf_crop_and_resize``) is computed here, exactly as ONNX
    defines it (:func:`_nearest_source`): TVM maps coordinates with a float32 reciprocal, which
    reads the wrong neighbour at ties (2 -> 7, 6 -> 21, 10 -> 35 ...) and, contracted into a
    fused multiply-add, at others."""
    if int(attrs.get("antialias", 0)):
        refuse(node, "antialias=1 is not supported")
    scales_at = 1 if opset < 11 else 2
    scales = (
        _constant(inputs[scales_at]) if len(inputs) > scales_at and inputs[scales_at] is not None else None
    )
    if (
        opset >= 11
        and _text(attrs.get("mode"), "nearest") == "nearest"
        and _text(attrs.get("coordinate_transformation_mode"), "half_pixel") in _NEAREST_COORDINATES
        and _text(attrs.get("nearest_mode"), "round_prefer_floor") in _NEAREST_MODES
        and attrs.get("axes") is None
        and _text(attrs.get("keep_aspect_ratio_policy"), "stretch") == "stretch"
    ):
        sizes = _constant(inputs[3]) if len(inputs) > 3 and inputs[3] is not None else None
        try:
            in_shape = [int(d) for d in inputs[0].ty.shape]
        except (TypeError, ValueError):
            in_shape = None
        found = None
        if in_shape is not None:
            found = _nearest_sizes(in_shape, scales if scales is not None and scales.size else None, sizes)
        if found is not None and 0 not in found[1]:
            return _nearest_resize(
                bb,
                inputs[0],
                found[1],
                found[0],
                _text(attrs.get("coordinate_transformation_mode"), "half_pixel"),
                _text(attrs.get("nearest_mode"), "round_prefer_floor"),
            )
    if scales is not None and scales.size:
        try:
            dims = [int(d) for d in inputs[0].ty.shape]
        except (TypeError, ValueError):
            return None
        for d, s in zip(dims, scales.reshape(-1).tolist()):
            if abs(d * s - round(d * s)) > 1e-6 * max(1.0, d * s):
                refuse(node, f"scale {s:g} on a dimension of {d} does not give a whole output size")
    return None


def _refuse_empty_reduction(bb, inputs, attrs, opset, node):
    """A reduction whose input has a zero-size dimension: TVM reads uninitialised memory where
    ONNX gives the reduction's identity (-inf for ReduceMax ...): refused."""
    try:
        dims = [int(d) for d in inputs[0].ty.shape]
    except (TypeError, ValueError, AttributeError):
        return None
    if 0 in dims:
        refuse(node, f"reducing a tensor with a zero-size dimension (shape {dims}) is not supported")
    return None


for _op in ("ReduceMax", "ReduceMin", "ReduceProd", "ArgMax", "ArgMin", "ReduceLogSumExp"):
    CONVERTERS[_op] = _refuse_empty_reduction
