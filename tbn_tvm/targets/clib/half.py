"""16-bit activation storage (``compile --activations float16``): the arena's tensors are kept as
IEEE binary16, every kernel still computes in float32.

Each kernel reads an arena tensor ``A`` as ``float(A16[i])`` and writes one as
``Y16[i] = (half)y`` (round to nearest even); the model's input and output, the weights and
the kernels' own scratch stay float32.  On a Cortex-M4F/M7 the two conversions are single
``VCVTB`` instructions (the library is built with ``-mfp16-format=ieee``).  A tensor its
producing kernel accumulates into (a reduction straight into the output buffer, with no
float32 epilogue to round once) stays float32: it would otherwise add in half precision.

Half storage halves the arena; the price is one rounding to 11 significant bits per stored
tensor (relative error up to 2^-11 each), which the build measures (:func:`accuracy`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tbn_tvm.targets.clib.lower import LoweredGraph


def _writes_by_reduction(prim) -> bool:
    """Whether ``prim`` reads its output buffer (accumulates into it)."""
    from tbn_tvm.targets.clib.inplace import _is_load, _source, _walk

    out = list(prim.params)[-1]
    found = []

    def visit(n, _store):
        if _is_load(n) and _source(n).same_as(out):
            found.append(n)

    _walk(prim.body, visit)
    return bool(found)


def half_values(graph: LoweredGraph) -> set[str]:
    """The values stored as float16: arena tensors (not the model's input or output, not
    constants) of float32 whose producing kernel does not accumulate into them."""
    inputs = {graph.root(v.name) for v in graph.values.values() if v.kind == "input"}
    outputs = {graph.root(o) for o in graph.outputs}
    producer: dict[str, str] = {}
    for step in graph.steps:
        for o in step.outs:
            producer.setdefault(graph.root(o), step.kernel)
    reduces: dict[str, bool] = {}
    half = set()
    for name, v in graph.values.items():
        if v.alias_of is not None or v.kind != "tensor" or v.dtype != "float32":
            continue
        if name in inputs or name in outputs or name not in producer:
            continue
        k = producer[name]
        if k not in reduces:
            reduces[k] = _writes_by_reduction(graph.kernels[k])
        if not reduces[k]:
            half.add(name)
    return half


def with_half_values(graph: LoweredGraph, half: set[str]) -> LoweredGraph:
    """A copy of ``graph`` whose ``half`` values (and reshapes of them) are float16."""
    values = {}
    for name, v in graph.values.items():
        values[name] = dataclasses.replace(v, dtype="float16") if graph.root(name) in half else v
    return LoweredGraph(values, list(graph.steps), list(graph.outputs), dict(graph.kernels))


def rewrite(prim, params: list[int]):
    """``prim`` with the parameters ``params`` (indices) stored as float16: loads widened to
    float32, stores rounded to float16 (see the module docstring)."""
    import tvm
    import tvm_ffi
    from tvm import tirx

    old = list(prim.params)
    remap = [(old[i], old[i].with_dtype("float16")) for i in params]

    def pick(v):
        return next((new for o, new in remap if v.same_as(o)), None)

    def on_load(ld):
        new = pick(ld.source)
        return ld if new is None else tirx.Cast("float32", tirx.BufferLoad(new, list(ld.indices)))

    def on_store(st):
        new = pick(st.buffer)
        return st if new is None else tirx.BufferStore(new, tirx.Cast("float16", st.value), list(st.indices))

    def on_var(v):
        new = pick(v)
        return v if new is None else new

    return tvm_ffi.structural_map(
        prim,
        [(tvm.ir.expr.TensorLoad, on_load), (tirx.BufferStore, on_store), (tvm.ir.expr.Var, on_var)],
        order="pre",
    )


def half_kernels(graph: LoweredGraph, scheduled: dict) -> tuple[LoweredGraph, dict]:
    """The steps and kernels of ``graph`` (whose float16 values are set) with each kernel
    rewritten for the arguments it gets as float16 (``scheduled``: kernel name -> the scheduled
    PrimFunc).  A kernel called with float16 at some steps and float32 at others becomes one
    kernel per combination (``<name>_h<k>``).  Returns the new graph and its kernels."""
    kernels: dict[str, object] = {}
    variants: dict[tuple[str, tuple[int, ...]], str] = {}
    steps = []
    for step in graph.steps:
        idx = tuple(j for j, a in enumerate(step.args) if graph.values[a].dtype == "float16")
        key = (step.kernel, idx)
        if key not in variants:
            same = [k for k in variants if k[0] == step.kernel]
            name = step.kernel if not same else f"{step.kernel}_h{len(same)}"
            prim = scheduled[step.kernel]
            kernels[name] = rewrite(prim, list(idx)) if idx else prim
            variants[key] = name
        steps.append(dataclasses.replace(step, kernel=variants[key]))
    return LoweredGraph(graph.values, steps, list(graph.outputs), kernels), kernels


def accuracy(y16: np.ndarray, y32: np.ndarray, classes: int) -> dict:
    """The accuracy cost of float16 storage on N samples (``y16``, ``y32``: ``[N, outputs]``,
    the float16 build's and the float32 build's outputs): ``max_rel_error``, the largest over
    the samples of max |y16 - y32| / max |y32|, and ``top1_agreement``, the share of rows of
    ``classes`` values (the output's last axis) whose arg-max agrees."""
    n = y32.shape[0]
    a = y16.reshape(n, -1).astype(np.float64)
    b = y32.reshape(n, -1).astype(np.float64)
    scale = np.maximum(np.abs(b).max(axis=1), np.finfo(np.float32).tiny)
    rel = np.abs(a - b).max(axis=1) / scale
    agree = float((a.reshape(-1, classes).argmax(axis=1) == b.reshape(-1, classes).argmax(axis=1)).mean())
    return {"samples": int(n), "max_rel_error": float(rel.max()), "top1_agreement": agree}
