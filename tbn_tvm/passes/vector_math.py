"""Legalizations of the transcendental element-wise operators with vectorisable float32 math
(:mod:`tbn_tvm.kernels.vmath`), for SIMD CPUs (the host back end).

TVM 0.27 lowers ``exp``, ``erf``, ``tanh`` and ``sigmoid`` to one libm call per element on
llvm, which stays scalar; GELU (ONNX exports it as ``Erf``), SiLU/sigmoid gates and softmax then
cost 10-40x a multiply-add pass.  Each operator here is lowered to the same compute with the
polynomial forms instead; other dtypes keep TVM's lowering.

>>> sorted(vector_math_map())[:3]
['relax.erf', 'relax.exp', 'relax.nn.gelu']
"""

from __future__ import annotations


def _unary(fn_name: str, op_name: str):
    def legalize(bb, call):
        import tvm
        from tvm import te

        from tbn_tvm.kernels import vmath

        x = call.args[0]
        if str(x.ty.dtype) != "float32":
            return tvm.ir.Op.get(op_name).get_attr("FLegalize")(bb, call)
        fn = getattr(vmath, fn_name)

        def f(t):
            return te.compute(t.shape, lambda *i: fn(t(*i)), name=fn_name)

        return bb.call_te(f, x, primfunc_name_hint=fn_name)

    return legalize


def _gelu(bb, call):
    """``0.5 x (1 + erf(x / sqrt 2))`` (relax.nn.gelu)."""
    import tvm
    from tvm import te, tirx

    from tbn_tvm.kernels import vmath

    x = call.args[0]
    if str(x.ty.dtype) != "float32":
        return tvm.ir.Op.get("relax.nn.gelu").get_attr("FLegalize")(bb, call)
    half = tirx.const(0.5, "float32")
    rsqrt2 = tirx.const(0.7071067811865476, "float32")

    def f(t):
        def body(*i):
            v = t(*i)
            return half * v * (tirx.const(1.0, "float32") + vmath.erf(v * rsqrt2))

        return te.compute(t.shape, body, name="gelu")

    return bb.call_te(f, x, primfunc_name_hint="gelu")


def _silu(bb, call):
    import tvm
    from tvm import te

    from tbn_tvm.kernels import vmath

    x = call.args[0]
    if str(x.ty.dtype) != "float32":
        return tvm.ir.Op.get("relax.nn.silu").get_attr("FLegalize")(bb, call)

    def f(t):
        return te.compute(t.shape, lambda *i: t(*i) * vmath.sigmoid(t(*i)), name="silu")

    return bb.call_te(f, x, primfunc_name_hint="silu")


def _softmax(log: bool):
    op_name = "relax.nn.log_softmax" if log else "relax.nn.softmax"

    def legalize(bb, call):
        import tvm
        from tvm import te, tirx

        from tbn_tvm.kernels import vmath

        x = call.args[0]
        if str(x.ty.dtype) != "float32":
            return tvm.ir.Op.get(op_name).get_attr("FLegalize")(bb, call)
        ndim = len(x.ty.shape)
        axis = int(call.attrs.axis) % ndim

        def f(t):
            shape = list(t.shape)
            k1 = te.reduce_axis((0, shape[axis]), name="k")
            red_shape = shape[:axis] + shape[axis + 1 :]

            def at(idx, k):
                return (*idx[:axis], k, *idx[axis:])

            mx = te.compute(red_shape, lambda *i: te.max(t(*at(i, k1)), axis=k1), name="softmax_max")

            def drop(i):
                return (*i[:axis], *i[axis + 1 :])

            e = te.compute(shape, lambda *i: vmath.exp(t(*i) - mx(*drop(i))), name="softmax_exp")
            k2 = te.reduce_axis((0, shape[axis]), name="k")
            s = te.compute(red_shape, lambda *i: te.sum(e(*at(i, k2)), axis=k2), name="softmax_sum")
            if log:
                return te.compute(
                    shape, lambda *i: t(*i) - mx(*drop(i)) - tirx.log(s(*drop(i))), name="log_softmax"
                )
            return te.compute(shape, lambda *i: e(*i) / s(*drop(i)), name="softmax")

        return bb.call_te(f, x, primfunc_name_hint="log_softmax" if log else "softmax")

    return legalize


def vector_math_map() -> dict:
    """Operator name -> vector-math legalization (float32; others fall back to TVM's)."""
    return {
        "relax.exp": _unary("exp", "relax.exp"),
        "relax.erf": _unary("erf", "relax.erf"),
        "relax.tanh": _unary("tanh", "relax.tanh"),
        "relax.sigmoid": _unary("sigmoid", "relax.sigmoid"),
        "relax.nn.silu": _silu,
        "relax.nn.gelu": _gelu,
        "relax.nn.softmax": _softmax(log=False),
        "relax.nn.log_softmax": _softmax(log=True),
    }
