"""CompressWeights: replace each layer whose weight constant has a compact exact form.

Before::

    lv = R.matmul(x, metadata["ir.GenericConst"][0])              # [784, 128] float32, 401 KB

After::

    lv = R.call_tir(cls.tbn_fc1_rows_dense, (x, tile, scales), out_ty=R.Tensor((1, 128), "float32"))
    # tile: uint32[784] (the 25,088-bit tile), scales: float32[4]

Handled: ``relax.matmul`` with a constant right operand (ONNX MatMul and Gemm, whichever layout
the weight was stored in, 1-D weights included) or a constant left one (``W · x``: computed as
``(xᵀ · Wᵀ)ᵀ``, the transposes reshapes where an axis is 1), ``relax.nn.conv1d`` / ``conv2d``
(NCW/NCHW data, OIW/OIHW kernel) and ``conv1d_transpose`` / ``conv2d_transpose`` (IOW/IOHW kernel) with any
strides, padding, dilation and groups, in float32 or float16.  The pass never names a format: it
asks the registry (:func:`tbn_tvm.formats.detect_layer_weight`) for the cheapest exact form and
that form for its buffers and kernel (:func:`tbn_tvm.kernels.build`).  Bias adds and
activations stay separate Relax ops and are fused later.  Weights that match no compact format
stay dense constants.  A weight used by several layers gets one set of buffers.

Each layer is named by the span of its call (:mod:`tbn_tvm.frontend.identity`), and the
``call_tir`` that replaces it keeps that span.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax

from tbn_tvm import kernels
from tbn_tvm.formats import FLOAT_DTYPES, LayerWeight, detect_layer_weight
from tbn_tvm.frontend.identity import layers_of, with_span
from tbn_tvm.frontend.layers import c_identifier, fingerprint


@dataclass
class RewrittenLayer:
    """What the pass did with one layer (in program order)."""

    name: str  # the layer's one name (see tbn_tvm.frontend.layers)
    op: str  # "matmul", "conv1d", "conv2d", "conv1d_transpose" or "conv2d_transpose"
    kernel: str | None  # the PrimFunc name, None when the layer stayed dense
    weight: LayerWeight
    kernel_kind: str | None = None  # the kernel's tbn.kernel kind
    plan: object | None = None  # the format's structure plan (e.g. RowPlan), when used
    note: str | None = None  # said by compile: e.g. a compact kernel estimated slower than dense
    why: str | None = None  # why the cost model picked this kernel (kernels.cost), when it chose
    spec: object | None = None  # the kernels.Layer its kernel was built for (patch-wise tiles rebuild it)
    built_bytes: int | None = None  # bytes of the kernel's own layout of the weight, where it has one

    @property
    def rows(self):
        """The row-reuse plan when the layer computes only distinct rows (else None)."""
        from tbn_tvm.kernels.rows import RowPlan

        return self.plan if isinstance(self.plan, RowPlan) else None


def _const_value(expr) -> np.ndarray | None:
    if isinstance(expr, tvm.ir.GenericConst):
        return expr.value.numpy()
    return None


def _dtype(expr) -> str | None:
    ty = expr.ty
    if isinstance(ty, relax.TensorType) and ty.shape is not None:
        try:
            [int(d) for d in ty.shape]
        except (TypeError, ValueError):
            return None  # symbolic shape
        return str(ty.dtype)
    return None


def _shape(expr) -> tuple[int, ...]:
    return tuple(int(d) for d in expr.ty.shape)


_CONV_LAYOUTS = {
    "relax.nn.conv1d": ("conv1d", "conv", ("NCW", "OIW")),
    "relax.nn.conv2d": ("conv2d", "conv", ("NCHW", "OIHW")),
    "relax.nn.conv1d_transpose": ("conv1d_transpose", "conv_transpose", ("NCW", "IOW")),
    "relax.nn.conv2d_transpose": ("conv2d_transpose", "conv_transpose", ("NCHW", "IOHW")),
}


@relax.expr_functor.mutator
class _Compressor(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule, owner: CompressWeights) -> None:
        super().__init__(mod)
        self.mod_ = mod
        self.owner = owner
        self.layers = owner.layers
        self._buffers: dict[tuple[str, str], list] = {}  # one set of constants per weight
        self._symbols: set[str] = set()

    def transform(self) -> tvm.IRModule:
        for gv, func in self.mod_.functions_items():
            if isinstance(func, relax.Function):
                self.builder_.update_func(gv, self.visit_expr(func))
        return self.builder_.get()

    def visit_call_(self, call):  # noqa: D102 - mutator hook
        call = self.visit_expr_post_order(call)
        if not isinstance(call.op, tvm.ir.Op):
            return call
        name = call.op.name
        if name == "relax.matmul":
            return self._matmul(call)
        if name in _CONV_LAYOUTS:
            return self._conv(call, *_CONV_LAYOUTS[name])
        return call

    # ------------------------------------------------------------------ helpers
    def _name(self, call, op: str) -> str:
        """The layer's name, from the span the importer gave its call (never from the weight's
        bytes, which folds change); ``<op>_<i>`` for a call no ONNX layer made."""
        names = layers_of(call)
        return names[0] if names else f"{op}_{len(self.layers)}"

    def _symbol(self, name: str, kind: str) -> str:
        base = f"tbn_{c_identifier(name)}_{kind}"
        sym, i = base, 2
        while sym in self._symbols:
            sym, i = f"{base}_{i}", i + 1
        self._symbols.add(sym)
        return sym

    def _args(self, w: np.ndarray, lw: LayerWeight, name: str, kernel=None) -> list:
        """The run-time constants of a layer's kernel: the format's buffers, or the kernel's own
        layout of them (``kernel.info["buffers"]``, e.g. the packed bit-plane GEMV's fields);
        one set per weight and layout, shared by layers with the same weight."""
        own = kernel.info.get("buffers") if kernel is not None else None
        key = (fingerprint(w), lw.order, kernel.kind if own else None)
        if key not in self._buffers:
            consts = []
            for b in own or lw.format.buffers():
                c = relax.const(b.data, b.dtype)
                self.owner.const_names[hash(c)] = f"{c_identifier(name)}_{b.name}"
                consts.append(c)
            self._buffers[key] = consts
        return self._buffers[key]

    def _dense(self, call, w_expr, name: str, op: str, lw: LayerWeight):
        """A layer left dense: recorded, and its weight constant named after it."""
        self.layers.append(RewrittenLayer(name, op, None, lw))
        self.owner.const_names.setdefault(hash(w_expr), f"{c_identifier(name)}_weight")
        return call

    def _form(self, name: str) -> str:
        forms = self.owner.forms
        return forms if isinstance(forms, str) else forms.get(name, self.owner.default_form)

    def _emit(self, call, x, w: np.ndarray, lw: LayerWeight, layer: kernels.Layer, w_expr=None, finish=None):
        """The layer's kernel call in place of ``call`` (or ``call`` itself where an MCU's compact
        kernel is estimated slower than dense); ``finish`` turns the kernel's output (bound)
        into the call's result (a weight as operand A: the transpose back)."""
        w_expr = call.args[1] if w_expr is None else w_expr
        kernel = kernels.build(lw.format, layer)
        note = None
        if not layer.simd:  # an MCU: a compact kernel estimated slower than dense is not kept
            from tbn_tvm.kernels.cost import built_dense_note, slower_than_dense_note

            note = built_dense_note(layer, lw.format, kernel)
            if note is not None:
                self.layers.append(RewrittenLayer(layer.name, layer.op, None, lw, note=note))
                self.owner.const_names.setdefault(hash(w_expr), f"{c_identifier(layer.name)}_weight")
                return call
            note = slower_than_dense_note(layer, lw.format, kernel)
        sym = self._symbol(layer.name, kernel.kind)
        gv = self.builder_.add_func(kernel.func.with_attr("global_symbol", sym), sym)
        self.layers.append(
            RewrittenLayer(
                layer.name,
                layer.op,
                sym,
                lw,
                kernel.kind,
                kernel.plan,
                note,
                kernel.info.get("why"),
                spec=layer,
                built_bytes=sum(b.nbytes for b in kernel.info["buffers"])
                if kernel.info.get("buffers")
                else None,
            )
        )
        out_ty = relax.TensorType(layer.out_shape, layer.dtype)
        result = with_span(relax.call_tir(gv, [x, *self._args(w, lw, layer.name, kernel)], out_ty), call.span)
        if finish is not None:
            return finish(self.builder_.emit(result))
        if tuple(layer.out_shape) != _shape(call):  # a 1-D weight's unit axis, a token matmul's rows
            result = relax.op.reshape(self.builder_.emit(result), _shape(call))
        return result

    # ------------------------------------------------------------------ layers
    def _matmul(self, call):
        x, w_expr = call.args
        w = _const_value(w_expr)
        if w is None and _const_value(x) is not None:
            return self._weight_first(call)
        dtype = _dtype(x)
        if w is None or w.ndim not in (1, 2) or dtype not in FLOAT_DTYPES:
            return call
        if str(w.dtype) != dtype or _dtype(call) != dtype:
            return call
        x_shape = _shape(x)
        if x_shape[-1] != w.shape[0] or 0 in x_shape or w.size == 0:
            return call
        name = self._name(call, "matmul")
        lw = detect_layer_weight(w, "matmul")
        if not lw.compact:
            return self._dense(call, w_expr, name, "matmul", lw)
        w2 = w[:, None] if w.ndim == 1 else w
        if not self.owner.simd and len(x_shape) > 2:
            # an MCU's kernels and schedules take the rows of a token matmul (x[1, T, K]) as one
            # axis: x[T, K] (a reshape is a view of the same bytes, no copy), the output
            # reshaped back by _emit
            x = self.builder_.emit(relax.op.reshape(x, (math.prod(x_shape[:-1]), x_shape[-1])))
            x_shape = _shape(x)
        layer = kernels.Layer(
            name=name,
            op="matmul",
            x_shape=x_shape,
            out_shape=(*x_shape[:-1], w2.shape[1]),
            dtype=dtype,
            order=lw.order,
            reuse_rows=self.owner.reuse_rows,
            simd=self.owner.simd,
            form=self._form(name),
        )
        return self._emit(call, x, w, lw, layer)

    def _weight_first(self, call):
        """``W · x`` (ONNX ``MatMul(W, x)``, ``Gemm(W, x)``; ``transA`` is folded into the
        constant by then): computed as ``(xᵀ · Wᵀ)ᵀ`` with the compact kernel of the ``[in,
        out]`` operand ``Wᵀ``.  ``x`` ``[..., K, N]`` is transposed to ``[..., N, K]`` (a reshape
        when ``N = 1``: the same bytes), the kernel's ``[..., N, M]`` transposed back (a reshape
        when ``N`` or ``M`` is 1); a 1-D ``x`` is one row, a 1-D ``W`` one output column."""
        w_expr, x = call.args
        a = _const_value(w_expr)
        dtype = _dtype(x)
        if (
            a.ndim not in (1, 2)
            or dtype not in FLOAT_DTYPES
            or str(a.dtype) != dtype
            or _dtype(call) != dtype
        ):
            return call
        x_shape, out = _shape(x), _shape(call)
        k = a.shape[-1]
        if x_shape[-2 if len(x_shape) > 1 else -1] != k or 0 in x_shape or 0 in out or a.size == 0:
            return call
        w = np.ascontiguousarray(a.T)  # [K, M] (a 1-D W: [K], one output column)
        name = self._name(call, "matmul")
        lw = detect_layer_weight(w, "matmul")
        if not lw.compact:
            return self._dense(call, w_expr, name, "matmul", lw)
        m = a.shape[0] if a.ndim == 2 else 1
        if len(x_shape) == 1:
            xt_shape = (1, k)
        else:
            xt_shape = (*x_shape[:-2], x_shape[-1], k)
        n = xt_shape[-2]
        if n == 1:
            xt = self.builder_.emit(relax.op.reshape(x, xt_shape))
        else:
            axes = list(range(len(x_shape)))
            axes[-2], axes[-1] = axes[-1], axes[-2]
            xt = self.builder_.emit(relax.op.permute_dims(x, axes))
        kernel_out = (*xt_shape[:-1], m)
        if not self.owner.simd and len(xt_shape) > 2:  # an MCU's kernels take the rows as one axis
            xt = self.builder_.emit(relax.op.reshape(xt, (math.prod(xt_shape[:-1]), k)))
            xt_shape = _shape(xt)

        def finish(y):
            if tuple(_shape(y)) != kernel_out:
                y = self.builder_.emit(relax.op.reshape(y, kernel_out))
            if len(kernel_out) >= 2 and n > 1 and m > 1 and a.ndim == 2:
                axes = list(range(len(kernel_out)))
                axes[-2], axes[-1] = axes[-1], axes[-2]
                return relax.op.permute_dims(y, axes)
            return relax.op.reshape(y, out) if tuple(_shape(y)) != out else y

        layer = kernels.Layer(
            name=name,
            op="matmul",
            x_shape=xt_shape,
            out_shape=(*xt_shape[:-1], m),
            dtype=dtype,
            order=lw.order,
            reuse_rows=self.owner.reuse_rows,
            simd=self.owner.simd,
            form=self._form(name),
        )
        return self._emit(call, xt, w, lw, layer, w_expr=w_expr, finish=finish)

    def _conv(self, call, op: str, kind: str, layouts: tuple[str, str]):
        x, w_expr = call.args
        attrs = call.attrs
        w = _const_value(w_expr)
        dtype = _dtype(x)
        if (
            w is None
            or dtype not in FLOAT_DTYPES
            or str(w.dtype) != dtype
            or _dtype(call) != dtype
            or (attrs.data_layout, attrs.kernel_layout) != layouts
            or str(attrs.out_layout) != layouts[0]
            or 0 in _shape(x)
            or 0 in _shape(call)
            or w.size == 0
        ):
            return call
        name = self._name(call, op)
        lw = detect_layer_weight(w, kind)
        if not lw.compact:
            return self._dense(call, w_expr, name, op, lw)
        layer = kernels.Layer(
            name=name,
            op=op,
            x_shape=_shape(x),
            out_shape=_shape(call),
            dtype=dtype,
            strides=tuple(int(s) for s in attrs.strides),
            padding=tuple(int(p) for p in attrs.padding),
            dilation=tuple(int(d) for d in attrs.dilation),
            groups=int(attrs.groups),
            output_padding=tuple(int(p) for p in getattr(attrs, "output_padding", ()) or ()),
            reuse_rows=self.owner.reuse_rows,
            simd=self.owner.simd,
            form=self._form(name),
        )
        return self._emit(call, x, w, lw, layer)


@tvm.transform.module_pass(opt_level=0, name="tbn.CompressWeights")
class CompressWeights:
    """Module pass; after it runs, ``self.layers`` lists every matmul/conv layer it looked at.

    Layers are named by the span of their call (:mod:`tbn_tvm.frontend.identity`); a call
    without one (not an ONNX layer) gets ``<op>_<i>``.
    ``reuse_rows`` (default) lets formats use their structure kernels (distinct rows of a tiled
    weight); without it every output is computed from the decoded weight.  ``simd`` picks kernel
    forms that vectorise (host CPUs) over ones with fewest scalar instructions (MCUs).  ``forms``
    says how a structure kernel computes (``bitserial``, ``decoded``, ``lut``, or ``auto``: the
    default, :func:`tbn_tvm.kernels.rows.auto_form`), for all layers or per layer name (what
    tuning chose, :mod:`tbn_tvm.schedules.tuning`; layers it does not name take ``default_form``,
    the back end's choice: ``auto`` on host CPUs, ``bitserial`` where its schedules expect it)."""

    def __init__(
        self,
        reuse_rows: bool = True,
        simd: bool = True,
        forms: Mapping[str, str] | str = "auto",
        default_form: str = "auto",
    ) -> None:
        self.layers: list[RewrittenLayer] = []
        self.default_form = default_form
        self.forms = forms if isinstance(forms, str) else dict(forms)
        #: constant object (hash) -> C-safe name ``<layer>_<buffer>`` (``fc1_tile``, ``fc2_weight``)
        self.const_names: dict[int, str] = {}
        self.reuse_rows = reuse_rows
        self.simd = simd

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        self.layers.clear()
        self.const_names.clear()
        mod = _Compressor(mod, self).transform()
        return relax.transform.DeadCodeElimination()(mod)
