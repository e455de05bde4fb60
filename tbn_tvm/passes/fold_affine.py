"""FoldAffine: fold per-output-channel scales into the weight of the layer before them.

After BatchNormalization (inference) becomes ``y · a + b`` (:mod:`tbn_tvm.frontend.converters`)
and exporters' per-channel ``Mul``/``Add`` nodes, a layer is often followed by a multiplication
by a constant with one value per output channel.  This pass rewrites::

    multiply(conv(x, W), A)            ->  conv(x, W · A[o])
    multiply(add(conv(x, W), C), A)    ->  add(conv(x, W · A[o]), C · A)
    multiply(matmul(x, W), A)          ->  matmul(x, W · A[n])        (W is [in, out])

when the layer's weight is a constant, ``A`` has one value per output channel (broadcast over
the rest) and the intermediate has no other use.  The scaled weight of a tiled layer is still
tiled, with one (possibly negative) scale per output row, which :mod:`tbn_tvm.formats.tiled`
recognises: BatchNorm then costs nothing at run time.  The shift ``b`` stays an add (a bias),
fused into the layer's kernel.  A weight that would lose its compact form (an integer grid
``α·q`` times ``γ/σ`` rounds off the grid) is left alone: the multiply stays an epilogue, fused
into the layer's kernel too (:func:`~tbn_tvm.formats.fold_keeps_format`, which ``inspect``
applies as well).  The rewritten call keeps the span that names its layer
(:mod:`tbn_tvm.frontend.identity`): the scaled weight's bytes are new, the layer is not.  Products are rounded once to float32; against onnxruntime's
separate normalisation the outputs differ by float rounding only.

Runs before :class:`~tbn_tvm.passes.compress_weights.CompressWeights` (see
:mod:`tbn_tvm.passes.pipeline`).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from tbn_tvm.formats import fold_keeps_format
from tbn_tvm.frontend.identity import with_span

_LAYERS = {"relax.nn.conv1d": 1, "relax.nn.conv2d": 2, "relax.matmul": 0}


def _const(expr) -> np.ndarray | None:
    return expr.value.numpy() if isinstance(expr, tvm.ir.GenericConst) else None


def _per_channel(a: np.ndarray, out_ndim: int, channel_axis: int, channels: int) -> np.ndarray | None:
    """``a`` as a vector of ``channels`` values when it broadcasts along ``channel_axis`` of an
    ``out_ndim``-d output and nowhere else, else None."""
    if a.dtype != np.float32 or a.ndim > out_ndim:
        return None
    shape = (1,) * (out_ndim - a.ndim) + a.shape
    for i, d in enumerate(shape):
        if i != channel_axis and d != 1:
            return None
    n = shape[channel_axis]
    if n == channels:
        return a.reshape(-1)
    if n == 1:
        return np.full(channels, a.reshape(-1)[0], np.float32)
    return None


def _use_counts(func) -> dict:
    counts: dict = {}

    @relax.expr_functor.visitor
    class _Count(relax.PyExprVisitor):
        def visit_var_(self, var) -> None:  # noqa: D102
            counts[var] = counts.get(var, 0) + 1

        def visit_dataflow_var_(self, var) -> None:  # noqa: D102
            counts[var] = counts.get(var, 0) + 1

    _Count().visit_expr(func)
    return counts


@relax.expr_functor.mutator
class _Folder(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule) -> None:
        super().__init__(mod)
        self.mod_ = mod
        self.uses: dict = {}
        self.folded = 0

    def transform(self) -> tvm.IRModule:
        for gv, func in self.mod_.functions_items():
            if isinstance(func, relax.Function):
                self.uses = _use_counts(func)
                self.builder_.update_func(gv, self.visit_expr(func))
        return self.builder_.get()

    def _bound(self, expr):
        """The call ``expr`` stands for, when it is a variable used only once."""
        if isinstance(expr, relax.Var):
            if self.uses.get(expr, 0) > 1:
                return None
            value = self.lookup_binding(expr)
            return value
        return expr

    def _scaled(self, expr, a: np.ndarray):
        """``expr · a`` (per output channel) folded into its layer, or None."""
        call = self._bound(expr)
        if not isinstance(call, tvm.ir.Call) or not isinstance(call.op, tvm.ir.Op):
            return None
        name = call.op.name
        if name == "relax.add":
            lhs, rhs = call.args
            c = _const(rhs)
            if c is None or c.dtype != np.float32:
                return None
            inner = self._scaled(lhs, a)
            if inner is None:
                return None
            out_ndim = len(call.ty.shape)
            axis = 1 if out_ndim > 2 or self._is_conv(lhs) else out_ndim - 1
            cv = _per_channel(c, out_ndim, axis, a.size)
            if cv is None:
                return None
            shape = [1] * out_ndim
            shape[axis] = a.size
            return relax.op.add(inner, relax.const((cv * a).astype(np.float32).reshape(shape)))
        if name not in _LAYERS:
            return None
        x, w_expr = call.args
        w = _const(w_expr)
        if w is None or w.dtype != np.float32:
            return None
        if name == "relax.matmul":
            if w.ndim != 2 or w.shape[1] != a.size:
                return None
            new_w = (w * a[None, :]).astype(np.float32)
            if not fold_keeps_format(w, new_w, "matmul"):
                return None
            return with_span(relax.op.matmul(x, relax.const(new_w)), call.span)  # the layer's identity
        attrs = call.attrs
        if int(attrs.groups) != 1 and w.shape[0] != a.size:
            return None
        if w.shape[0] != a.size:
            return None
        new_w = (w * a.reshape((-1,) + (1,) * (w.ndim - 1))).astype(np.float32)
        if not fold_keeps_format(w, new_w, "conv"):
            return None
        return relax.Call(call.op, [x, relax.const(new_w)], call.attrs, call.ty_args, call.span)

    def _is_conv(self, expr) -> bool:
        call = self._bound(expr)
        return (
            isinstance(call, tvm.ir.Call)
            and isinstance(call.op, tvm.ir.Op)
            and call.op.name != "relax.matmul"
        )

    def visit_call_(self, call):  # noqa: D102
        call = self.visit_expr_post_order(call)
        if not isinstance(call.op, tvm.ir.Op) or call.op.name != "relax.multiply":
            return call
        lhs, rhs = call.args
        a = _const(rhs)
        if a is None:
            lhs, rhs = rhs, lhs
            a = _const(rhs)
        if a is None or not isinstance(lhs.ty, relax.TensorType) or lhs.ty.shape is None:
            return call
        out_ndim = len(lhs.ty.shape)
        layer = self._layer_of(lhs)
        if layer is None:
            return call
        axis = out_ndim - 1 if layer == "relax.matmul" else 1
        try:
            channels = int(lhs.ty.shape[axis])
        except (TypeError, ValueError):
            return call
        av = _per_channel(a, out_ndim, axis, channels)
        if av is None or not np.all(np.isfinite(av)):
            return call
        folded = self._scaled(lhs, av)
        if folded is None:
            return call
        self.folded += 1
        return folded

    def _layer_of(self, expr) -> str | None:
        call = self._bound(expr)
        while (
            isinstance(call, tvm.ir.Call) and isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.add"
        ):
            call = self._bound(call.args[0])
        if isinstance(call, tvm.ir.Call) and isinstance(call.op, tvm.ir.Op) and call.op.name in _LAYERS:
            return call.op.name
        return None


@tvm.transform.module_pass(opt_level=0, name="tbn.FoldAffine")
class FoldAffine:
    """Module pass (see the module docstring); ``self.folded`` counts the folded scales."""

    def __init__(self) -> None:
        self.folded = 0

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        folder = _Folder(mod)
        mod = folder.transform()
        self.folded = folder.folded
        return relax.transform.DeadCodeElimination()(mod)
