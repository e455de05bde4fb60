"""TE definitions of the compute that reads compact weights (one module per layer kind)."""

from __future__ import annotations


def i64(v: int):
    """An int64 immediate.  Relax shapes are int64; TE with Python ints makes int32 buffers and
    FuseTIR then fails with "Inconsistent buffers", so every shape and index here is int64."""
    from tvm import tirx

    return tirx.IntImm("int64", int(v))


def shape64(dims) -> list:
    return [i64(d) for d in dims]
