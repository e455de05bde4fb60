"""TE/TIR kernels that compute a layer from a compact weight format.

A kernel is built for one :class:`Layer` (the op, the input shape, the conv attributes, the
layer's name) from one weight format.  The format is asked first (:meth:`WeightFormat.kernel`:
distinct rows of a tiled weight, a codebook's look-up table, ...); otherwise the generic
decode-in-kernel compute of this package reads element ``i`` of the weight through
:meth:`WeightFormat.read` inside the reduction (:mod:`.dense`, :mod:`.conv`,
:mod:`.conv_transpose`).  Every kernel takes ``(x, *format buffers)`` and returns the output.

Each kernel PrimFunc carries the attribute ``tbn.kernel`` (its :attr:`Kernel.kind`), which the
schedules dispatch on (:mod:`tbn_tvm.schedules`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def i64(v: int):
    """An int64 immediate.  Relax shapes are int64; TE with Python ints makes int32 buffers and
    FuseTIR then fails with "Inconsistent buffers", so every shape and index here is int64."""
    from tvm import tirx

    return tirx.IntImm("int64", int(v))


def shape64(dims) -> list:
    return [i64(d) for d in dims]


@dataclass(frozen=True)
class Layer:
    """What a kernel computes: one matmul/conv layer of the graph.

    ``op``: ``matmul`` (``y = x @ W``, ``x[..., K]``), ``conv1d``/``conv2d`` (NCW/NCHW data,
    weight ``[O, I/groups, *k]``), ``conv1d_transpose``/``conv2d_transpose`` (weight
    ``[I, O/groups, *k]``).  ``order`` says how a matmul's format maps to the stored ``[K, N]``
    operand (see :class:`tbn_tvm.formats.LayerWeight`).  ``padding`` is Relax's order
    ``[begin_0.., end_0..]``.  ``reuse_rows`` and ``simd`` are the pass options: compute only
    distinct rows; prefer vectorisable forms (host CPUs) over fewest scalar instructions (MCUs).
    """

    name: str
    op: str
    x_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    dtype: str = "float32"
    order: str = "stored"
    strides: tuple[int, ...] = ()
    padding: tuple[int, ...] = ()
    dilation: tuple[int, ...] = ()
    groups: int = 1
    output_padding: tuple[int, ...] = ()
    reuse_rows: bool = True
    simd: bool = True
    form: str = "bitserial"  # how a structure kernel computes: "bitserial" or "decoded" (rows.FORMS)

    @property
    def acc_dtype(self) -> str:
        """Accumulation dtype: float32 for float16 layers (as onnxruntime's CPU kernels do)."""
        return "float32" if self.dtype == "float16" else self.dtype


@dataclass
class Kernel:
    """A built kernel: the PrimFunc, its kind (``tbn.kernel``) and what its plan says."""

    func: Any
    kind: str
    plan: Any = None
    info: dict = field(default_factory=dict)


def make_kernel(kind: str, tensors, plan=None, **info) -> Kernel:
    """Wrap TE tensors ``[inputs..., output]`` into a :class:`Kernel` of ``kind``."""
    from tvm import te

    func = te.create_prim_func(list(tensors)).with_attr("tbn.kernel", kind)
    return Kernel(func, kind, plan, info)


def build(fmt, layer: Layer) -> Kernel:
    """The kernel computing ``layer`` from ``fmt``: the format's own structure kernel when it
    offers one, else the generic decode-in-kernel compute."""
    k = fmt.kernel(layer)
    if k is not None:
        return k
    if layer.op == "matmul":
        from tbn_tvm.kernels.dense import dense_te

        return make_kernel("decode_dense", dense_te(layer, fmt))
    if layer.op in ("conv1d", "conv2d"):
        from tbn_tvm.kernels.conv import conv_te

        return make_kernel("decode_conv", conv_te(layer, fmt))
    if layer.op in ("conv1d_transpose", "conv2d_transpose"):
        from tbn_tvm.kernels.conv_transpose import conv_transpose_te

        return make_kernel("decode_conv_transpose", conv_transpose_te(layer, fmt))
    raise ValueError(f"no kernel for layer op {layer.op!r}")


def finish(acc, layer: Layer, name: str):
    """Cast an accumulator tensor to the layer's dtype when they differ (float16 layers)."""
    from tvm import te, tirx

    if layer.acc_dtype == layer.dtype:
        return acc
    return te.compute(acc.shape, lambda *i: tirx.Cast(layer.dtype, acc(*i)), name=name)


def widen(value, layer: Layer):
    """``value`` in the accumulation dtype."""
    from tvm import tirx

    return value if layer.acc_dtype == layer.dtype else tirx.Cast(layer.acc_dtype, value)
