"""CompressWeights: replace each layer whose weight constant has a compact exact form.

Before::

    lv = R.matmul(x, metadata["ir.GenericConst"][0])              # [784, 128] float32, 401 KB

After::

    lv = R.call_tir(cls.tbn_dense0, (x, words, scales), out_ty=R.Tensor((1, 128), "float32"))
    # words: uint32[784] (the 25,088-bit tile), scales: float32[4]

Handled: ``relax.matmul`` with a constant right operand (ONNX MatMul and Gemm, whichever layout
the weight was stored in), ``relax.nn.conv1d`` / ``conv2d`` (NCW/NCHW data, OIW/OIHW kernel)
with any strides, padding, dilation and groups.  Bias adds and activations stay separate Relax
ops and are fused later by FuseOps.  Weights that match no compact format stay dense constants.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax

from tbn_tvm.formats import LayerWeight, TiledFormat, detect_layer_weight
from tbn_tvm.kernels import rows
from tbn_tvm.kernels.conv import make_conv
from tbn_tvm.kernels.dense import make_dense


@dataclass
class RewrittenLayer:
    """What the pass did with one layer (in program order)."""

    op: str  # "matmul", "conv1d" or "conv2d"
    kernel: str | None  # the PrimFunc name, None when the layer stayed dense
    weight: LayerWeight
    rows: rows.RowPlan | None = None  # set when only the distinct rows are computed


def _const_value(expr) -> np.ndarray | None:
    if isinstance(expr, tvm.ir.GenericConst):
        return expr.value.numpy()
    return None


def _is_f32(expr) -> bool:
    ty = expr.ty
    return isinstance(ty, relax.TensorType) and ty.dtype == "float32" and ty.shape is not None


@relax.expr_functor.mutator
class _Compressor(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule, layers: list[RewrittenLayer], reuse_rows: bool, simd: bool) -> None:
        super().__init__(mod)
        self.mod_ = mod
        self.layers = layers
        self.reuse_rows = reuse_rows
        self.simd = simd

    def transform(self) -> tvm.IRModule:
        for gv, func in self.mod_.functions_items():
            if isinstance(func, relax.Function):
                self.builder_.update_func(gv, self.visit_expr(func))
        return self.builder_.get()

    def _add_kernel(self, prefix: str, prim_func) -> relax.GlobalVar:
        name = f"{prefix}{len(self.layers)}"
        return self.builder_.add_func(prim_func.with_attr("global_symbol", name), name)

    def _compact_args(self, fmt: TiledFormat) -> list:
        words, scales = fmt.pack()
        return [relax.const(words, "uint32"), relax.const(scales, "float32")]

    def visit_call_(self, call):  # noqa: D102 - mutator hook
        call = self.visit_expr_post_order(call)
        if not isinstance(call.op, tvm.ir.Op):
            return call
        name = call.op.name
        if name == "relax.matmul":
            return self._matmul(call)
        if name in ("relax.nn.conv1d", "relax.nn.conv2d"):
            return self._conv(call, name.rsplit(".", 1)[1])
        return call

    def _matmul(self, call):
        x, w_expr = call.args
        w = _const_value(w_expr)
        if w is None or w.ndim != 2 or w.dtype != np.float32 or not _is_f32(x) or not _is_f32(call):
            return call
        lw = detect_layer_weight(w, "matmul")
        if not isinstance(lw.format, TiledFormat):
            self.layers.append(RewrittenLayer("matmul", None, lw))
            return call
        x_shape = [int(d) for d in x.ty.shape]
        if x_shape[-1] != w.shape[0]:
            return call
        plan = rows.row_plan(lw.format, w.shape[1]) if self.reuse_rows and lw.order == "transposed" else None
        if plan is not None:
            prim = rows.make("k", rows.dense_rows_te(x_shape, lw.format, plan))
            gv = self._add_kernel("tbn_rows_dense", prim)
        else:
            gv = self._add_kernel("tbn_dense", make_dense("k", x_shape, lw.format, lw.order))
        self.layers.append(RewrittenLayer("matmul", gv.name_hint, lw, plan))
        return relax.call_tir(gv, [x, *self._compact_args(lw.format)], call.ty)

    def _conv(self, call, op: str):
        x, w_expr = call.args
        attrs = call.attrs
        w = _const_value(w_expr)
        nd = 1 if op == "conv1d" else 2
        layouts = ("NCW", "OIW") if nd == 1 else ("NCHW", "OIHW")
        if (
            w is None
            or w.dtype != np.float32
            or not _is_f32(x)
            or not _is_f32(call)
            or (attrs.data_layout, attrs.kernel_layout) != layouts
            or str(attrs.out_layout) != layouts[0]
        ):
            return call
        lw = detect_layer_weight(w, "conv")
        if not isinstance(lw.format, TiledFormat):
            self.layers.append(RewrittenLayer(op, None, lw))
            return call
        x_shape = [int(d) for d in x.ty.shape]
        strides = [int(s) for s in attrs.strides]
        padding = [int(p) for p in attrs.padding]
        dilation = [int(d) for d in attrs.dilation]
        groups = int(attrs.groups)
        plan = rows.row_plan(lw.format, w.shape[0]) if self.reuse_rows and groups == 1 else None
        if plan is not None:
            prim = rows.make(
                "k",
                rows.conv_rows_te(
                    x_shape, lw.format, plan, strides, padding, dilation, sign_multiply=self.simd
                ),
            )
            gv = self._add_kernel(f"tbn_rows_{op}_", prim)
        else:
            prim = make_conv("k", x_shape, lw.format, strides, padding, dilation, groups)
            gv = self._add_kernel(f"tbn_{op}_", prim)
        self.layers.append(RewrittenLayer(op, gv.name_hint, lw, plan))
        return relax.call_tir(gv, [x, *self._compact_args(lw.format)], call.ty)


@tvm.transform.module_pass(opt_level=0, name="tbn.CompressWeights")
class CompressWeights:
    """Module pass; after it runs, ``self.layers`` lists every matmul/conv layer it looked at.

    ``reuse_rows`` (default) computes only the distinct rows of a tiled weight, bit-serially
    (:mod:`tbn_tvm.kernels.rows`); without it every output is computed from the decoded weight.
    ``simd`` picks kernel forms that vectorise (host CPUs) over ones with fewest scalar
    instructions (microcontrollers)."""

    def __init__(self, reuse_rows: bool = True, simd: bool = True) -> None:
        self.layers: list[RewrittenLayer] = []
        self.reuse_rows = reuse_rows
        self.simd = simd

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        self.layers.clear()
        mod = _Compressor(mod, self.layers, self.reuse_rows, self.simd).transform()
        return relax.transform.DeadCodeElimination()(mod)
