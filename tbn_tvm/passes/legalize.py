"""Legalize: lower Relax operators to TIR as TVM's LegalizeOps does, except where TVM's lowering
loses IEEE semantics that onnxruntime keeps.

TVM lowers ``relu``, ``maximum``, ``minimum`` and ``clip`` to ``max``/``min``, which LLVM and C
compile to ``maxnum``/``fmaxf``: a NaN input silently becomes the other operand (``relu(NaN) =
0``).  onnxruntime propagates NaN through Relu, Max, Min and Clip, and so does tbn-tvm: each of
these is lowered with an explicit compare-and-select that keeps a NaN operand.  Everything else
goes through TVM's own legalization.

>>> sorted(legalize_map())
['relax.clip', 'relax.maximum', 'relax.minimum', 'relax.nn.relu']
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
                xv = x(*[i[len(i) - x.ndim + k] if x.shape[k] != 1 else 0 for k in range(x.ndim)])
                yv = y(*[i[len(i) - y.ndim + k] if y.shape[k] != 1 else 0 for k in range(y.ndim)])
                if not str(x.dtype).startswith("float"):
                    return tirx.max(xv, yv) if kind == "max" else tirx.min(xv, yv)
                pick = tirx.Select(xv > yv, xv, yv) if kind == "max" else tirx.Select(xv < yv, xv, yv)
                return tirx.Select(tirx.isnan(xv), xv, tirx.Select(tirx.isnan(yv), yv, pick))

            shape = topi.broadcast_to(x, _broadcast_shape(x, y)).shape if x.ndim or y.ndim else []
            return te.compute(shape, body, name=kind)

        return bb.call_te(f, a, b, primfunc_name_hint=kind)

    return legalize


def _broadcast_shape(x, y):
    nd = max(x.ndim, y.ndim)
    xs = [1] * (nd - x.ndim) + list(x.shape)
    ys = [1] * (nd - y.ndim) + list(y.shape)
    return [a if int(b) == 1 else b for a, b in zip(xs, ys)]


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


def legalize_map() -> dict:
    """Operator name -> the project's legalization (passed to TVM's LegalizeOps)."""
    return {
        "relax.nn.relu": _relu,
        "relax.maximum": _nan_aware("max"),
        "relax.minimum": _nan_aware("min"),
        "relax.clip": _clip,
    }


def Legalize():  # noqa: N802 - TVM's pass naming
    """TVM's LegalizeOps with the NaN-keeping lowerings of :func:`legalize_map`."""
    from tvm import relax

    return relax.transform.LegalizeOps(legalize_map())
