"""Legalize: lower Relax operators to TIR as TVM's LegalizeOps does, except where TVM's lowering
loses IEEE semantics that onnxruntime keeps.

TVM lowers ``relu``, ``maximum``, ``minimum`` and ``clip`` to ``max``/``min``, which LLVM and C
compile to ``maxnum``/``fmaxf``: a NaN input silently becomes the other operand (``relu(NaN) =
0``).  onnxruntime propagates NaN through Relu, Max, Min and Clip, and so does tbn-tvm: each of
these is lowered with an explicit compare-and-select that keeps a NaN operand.  Everything else
goes through TVM's own legalization; that of a layer's matmul or convolution keeps the call's
span, which names the layer (:mod:`tbn_tvm.frontend.identity`).  On a host CPU an element-wise
float multiply is fenced against contraction with the operator after it (:func:`_multiply`).

>>> [name for name in sorted(legalize_map()) if "conv" not in name]
['relax.clip', 'relax.matmul', 'relax.maximum', 'relax.minimum', 'relax.multiply', 'relax.nn.relu']
"""

from __future__ import annotations


def _relu(bb, call):
    from tvm import te, tirx

    def f(x):
        zero = tirx.const(0, x.dtype)
        return te.compute(x.shape, lambda *i: tirx.Select(x(*i) < zero, zero, x(*i)), name="relu")

    return bb.call_te(f, call.args[0], primfunc_name_hint="relu")


def _nan_aware(kind: str):
    from tvm import topi

    def legalize(bb, call):
        from tvm import te, tirx

        a, b = call.args

        def f(x, y):
            def body(*i):
                xv = _read(x, i, shape)
                yv = _read(y, i, shape)
                if not str(x.dtype).startswith("float"):
                    return tirx.max(xv, yv) if kind == "max" else tirx.min(xv, yv)
                pick = tirx.Select(xv > yv, xv, yv) if kind == "max" else tirx.Select(xv < yv, xv, yv)
                return tirx.Select(tirx.isnan(xv), xv, tirx.Select(tirx.isnan(yv), yv, pick))

            shape = topi.broadcast_to(x, _broadcast_shape(x, y)).shape if x.ndim or y.ndim else []
            return te.compute(shape, body, name=kind)

        return bb.call_te(f, a, b, primfunc_name_hint=kind)

    return legalize


def _read(t, idx, shape):
    """``t`` at the output index ``idx`` under NumPy broadcasting: a size-1 axis that the
    output does not have reads index 0; an axis of the output's size reads the output index
    (so an operand of the output's shape is read element-wise, which AnnotateTIROpPattern
    classifies as element-wise and FuseOps fuses into a diamond, e.g. a HardSwish after a conv)."""
    lead = len(idx) - t.ndim
    out = []
    for k in range(t.ndim):
        same = int(t.shape[k]) == int(shape[lead + k]) if shape is not None else False
        out.append(idx[lead + k] if (same or int(t.shape[k]) != 1) else 0)
    return t(*out)


def _broadcast_shape(x, y):
    nd = max(x.ndim, y.ndim)
    xs = [1] * (nd - x.ndim) + list(x.shape)
    ys = [1] * (nd - y.ndim) + list(y.shape)
    return [a if int(b) == 1 else b for a, b in zip(xs, ys)]


def _fence_products() -> bool:
    """Whether the current target is a host CPU through LLVM (not a Cortex-M, not a GPU).

    TVM 0.27's LLVM back end allows fusing any ``a * b + c`` into a multiply-add
    (``AllowFPOpFusion::Fast``, not configurable), which on a CPU with FMA spans two ONNX
    operators -- a Mul and the Add after it -- and skips the rounding ONNX does between them:
    ``Floor(x * a - 1)`` gives -1 where 0 is right.  The C library for Cortex-M is compiled with
    ``-ffp-contract=off`` instead."""
    import tvm

    target = tvm.target.Target.current(allow_none=True)
    if target is None or target.kind.name != "llvm":
        return False
    triple = str(target.attrs.get("mtriple", "") or "")
    return not triple.startswith(("thumb", "arm"))


def _multiply(bb, call):
    """Element-wise multiply; on a host CPU each float product passes through
    ``llvm.arithmetic.fence`` (:func:`_fence_products`), so that no add of another operator is
    contracted with it.  Products inside an operator (a matmul's, a convolution's) are not
    affected."""
    import tvm

    a, b = call.args
    dtype = str(call.ty.dtype) if hasattr(call.ty, "dtype") else ""
    if not dtype.startswith("float") or not _fence_products():
        return tvm.ir.Op.get("relax.multiply").get_attr("FLegalize")(bb, call)

    def f(x, y):
        from tvm import te, tirx, topi

        def body(*i):
            xv = _read(x, i, shape)
            yv = _read(y, i, shape)
            return tirx.call_llvm_pure_intrin(x.dtype, "llvm.arithmetic.fence", xv * yv)

        shape = topi.broadcast_to(x, _broadcast_shape(x, y)).shape if x.ndim or y.ndim else []
        return te.compute(shape, body, name="multiply")

    return bb.call_te(f, a, b, primfunc_name_hint="multiply")


def _clip(bb, call):
    from tvm import te, tirx

    x, lo, hi = call.args

    def f(t):
        low = tirx.const(float(lo.value.value) if hasattr(lo.value, "value") else lo.value, t.dtype)
        high = tirx.const(float(hi.value.value) if hasattr(hi.value, "value") else hi.value, t.dtype)

        def body(*i):
            v = t(*i)
            return tirx.Select(v < low, low, tirx.Select(v > high, high, v))

        return te.compute(t.shape, body, name="clip")

    return bb.call_te(f, x, primfunc_name_hint="clip")


def _keeping_span(op_name: str):
    """TVM's own legalization of ``op_name``; for the call of a layer (its span names it,
    :mod:`tbn_tvm.frontend.identity`) the ``call_tir`` keeps the span and calls a kernel of the
    layer's own, ``tbn_<layer>_<op>``: TVM would give layers of one shape one kernel, and FuseOps
    then one fused function, where no call site could be told from the other."""

    def legalize(bb, call):
        import tvm
        from tvm import relax

        from tbn_tvm.frontend.identity import layers_of
        from tbn_tvm.frontend.layers import c_identifier

        out = tvm.ir.Op.get(op_name).get_attr("FLegalize")(bb, call)
        names = layers_of(call)
        if not names or not isinstance(out, relax.Call) or out.op.name != "relax.call_tir":
            return out
        mod = bb.get()
        taken = {
            str(f.attrs["global_symbol"])
            for _, f in mod.functions_items()
            if f.attrs and "global_symbol" in f.attrs
        }
        base = symbol = f"tbn_{c_identifier(names[0])}_{op_name.rsplit('.', 1)[-1]}"
        i = 2
        while symbol in taken:  # two names may reduce to one C identifier
            symbol, i = f"{base}_{i}", i + 1
        own = bb.add_func(mod[out.args[0]].with_attr("global_symbol", symbol), symbol)
        return relax.Call(out.op, [own, *out.args[1:]], out.attrs, out.ty_args, call.span)

    return legalize


def legalize_map() -> dict:
    """Operator name -> the project's legalization (passed to TVM's LegalizeOps)."""
    from tbn_tvm.frontend.identity import LAYER_OPS

    return {
        **{name: _keeping_span(name) for name in sorted(LAYER_OPS)},
        "relax.nn.relu": _relu,
        "relax.multiply": _multiply,
        "relax.maximum": _nan_aware("max"),
        "relax.minimum": _nan_aware("min"),
        "relax.clip": _clip,
    }


def Legalize(vector_math: bool = False):  # noqa: N802 - TVM's pass naming
    """TVM's LegalizeOps with the NaN-keeping lowerings of :func:`legalize_map`, and with
    ``vector_math`` the vectorisable float32 transcendental functions of
    :mod:`tbn_tvm.passes.vector_math` (SIMD CPUs)."""
    from tvm import relax

    table = legalize_map()
    if vector_math:
        from tbn_tvm.passes.vector_math import vector_math_map

        table.update(vector_math_map())
    return relax.transform.LegalizeOps(table)
