"""C lowerings for the TIR math intrinsics TVM's C code generator leaves unresolved.

TVM 0.27 lowers most float intrinsics for ``target="c"`` to libm calls, but not ``fabs`` (used by
Abs, Softplus, Softsign, LpPool, IsInf), ``exp2``, ``exp10`` and ``fmod``: building them fails with
``Unresolved call tirx.fabs``.  :func:`register` adds those rules (the float32 libm names with
the ``f`` suffix, the float64 ones without); it is idempotent.
"""

from __future__ import annotations

_DONE: list[bool] = []


def _libm(name: str):
    def rule(op):
        from tvm import tirx

        dtype = str(op.ty.dtype) if hasattr(op.ty, "dtype") else str(op.ty)
        if dtype == "float32":
            return tirx.call_pure_extern(op.ty, f"{name}f", *op.args)
        if dtype == "float64":
            return tirx.call_pure_extern(op.ty, name, *op.args)
        return op

    return rule


def _exp10(op):
    from tvm import tirx

    dtype = str(op.ty.dtype) if hasattr(op.ty, "dtype") else str(op.ty)
    if dtype not in ("float32", "float64"):
        return op
    fn = "powf" if dtype == "float32" else "pow"
    return tirx.call_pure_extern(op.ty, fn, tirx.const(10.0, dtype), *op.args)


def register() -> None:
    """Register the missing ``target="c"`` lowerings (once per process)."""
    if _DONE:
        return
    from tvm.tirx import register_intrin_lowering

    for name in ("fabs", "exp2", "fmod"):
        register_intrin_lowering(f"tirx.{name}", target="c", f=_libm(name), level=99)
    register_intrin_lowering("tirx.exp10", target="c", f=_exp10, level=99)
    _DONE.append(True)
