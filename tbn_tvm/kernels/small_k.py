"""Small-K convolutions on a microcontroller: the signs in the code.

The first layer of an image model has 1 or 3 input channels: a 3x3 filter has K = 9 or 27
weights.  With so few, the look-up-table kernel (:func:`tbn_tvm.kernels.rows.conv_rows_lut_te`)
cannot amortise its tables (it builds ``2^g`` sums per group of ``g`` taps at every output
position, for as few as 16 filters), and the bit-serial one pays a bit test per weight.  Both
read the signs from the tile at run time.  Here the signs are constants of the kernel itself:
per output position the ``K`` taps of the input patch are loaded once (padding resolved), then
each distinct filter is one straight line of ``K - 1`` additions and subtractions (a sign is an
``add`` or a ``sub``, no multiply, no bit test), then each output is its filter's sum times its
scale.  The code grows with ``D x K`` (one instruction per weight), so the form is only taken
for small layers (:data:`MAX_TERMS`) and only where the cost model
(:func:`tbn_tvm.kernels.cost.small_k_choice`) estimates it cheapest.

Exact: the same signed terms in the same order as the dense convolution's multiply-adds by
±1 (the scale applied once at the end, as the other row kernels do).
"""

from __future__ import annotations

import numpy as np

from tbn_tvm.kernels import Layer, i64, make_kernel, shape64
from tbn_tvm.kernels.conv import conv_inputs, im2col_tap

KIND = "rows_conv_signs"
BLOCK_PATCH = "tbn_signs_patch"
BLOCK_SUMS = "tbn_signs_sums"
#: Largest distinct filters x weights per filter whose signs are written into the code.
MAX_TERMS = 1024


def applies(layer: Layer, fmt, plan) -> bool:
    """Whether the signs-in-code kernel can compute ``layer``: a 2-D, ungrouped float32 conv
    on a scalar core, with a row plan of at most :data:`MAX_TERMS` signs."""
    return (
        plan is not None
        and not layer.simd
        and layer.op == "conv2d"
        and layer.groups == 1
        and layer.dtype == "float32"
        and len(fmt.shape) == 4
        and plan.distinct * plan.row_length <= MAX_TERMS
    )


def distinct_signs(fmt, plan) -> np.ndarray:
    """``[D, K]`` booleans: the signs (True: +1) of the ``D`` distinct filters (filter ``d`` is
    the weight's row ``d``: rows ``r`` and ``r + period`` are equal)."""
    w = np.asarray(fmt.decode()).reshape(fmt.shape[0], -1)[: plan.distinct]
    # the kernel multiplies row d's sum by the scale the row plan gives it, which may be
    # negative (a tiled format's α has any sign): the signs are the decode's over the scale's
    scales = np.asarray(fmt.scales, np.float64).reshape(-1)
    if plan.num_scales == 1:
        row_scale = np.full(plan.distinct, scales[0])
    else:
        row_scale = scales[(np.arange(plan.distinct) * plan.row_length) // plan.scale_chunk]
    return (w > 0) == (row_scale[:, None] > 0)


def conv_signs_te(layer: Layer, fmt, plan) -> list:
    """The TE of the signs-in-code convolution (see the module docstring): ``patch[b, y, x, k]``
    (the ``K`` taps, padding resolved), ``z[b, y, x, d]`` (each distinct filter's signed sum,
    written out term by term), then ``Y[b, o, y, x] = scale_o * z[b, y, x, d(o)]``."""
    from tvm import te, tirx

    from tbn_tvm.kernels.rows import _row_scale_and_index

    X, bufs, Xp, out_spatial = conv_inputs(layer, fmt)
    A = bufs["scales"]
    B = layer.x_shape[0]
    O, C, kh, kw = fmt.shape
    K = C * kh * kw
    signs = distinct_signs(fmt, plan)

    tap = im2col_tap(layer, Xp, (kh, kw))
    patch = te.compute(shape64([B, *out_spatial, K]), lambda b, y, x, k: tap((b, y, x), k), name=BLOCK_PATCH)

    def sums(b, y, x, d):
        exprs = []
        for row in signs:
            e = None
            for k, positive in enumerate(row):
                t = patch[b, y, x, i64(k)]
                if e is None:
                    e = t if positive else -t
                else:
                    e = e + t if positive else e - t
            exprs.append(e)
        out = exprs[-1]
        for j in range(len(exprs) - 2, -1, -1):
            out = tirx.Select(d == i64(j), exprs[j], out)
        return out

    Z = te.compute(shape64([B, *out_spatial, plan.distinct]), sums, name=BLOCK_SUMS)

    def out(b, o, y, x):
        d, s = _row_scale_and_index(plan, A, o)
        return s * Z[b, y, x, d]

    Y = te.compute(shape64([B, O, *out_spatial]), out, name="tbn_rows_conv2d")
    return [X, *bufs.values(), Y]


def kernel(layer: Layer, fmt, plan, why: str | None = None):
    """The built kernel (kind :data:`KIND`).  Marked ``op_pattern`` 4 (out-element-wise
    fusable, as TVM marks a convolution): its TE has no reduction axis, so Relax would take it
    for an injective op and fuse two of these convolutions in a row into one kernel, which the
    per-position schedule cannot place (the stem and block convs of a ResNet 16/32/64)."""
    k = make_kernel(KIND, conv_signs_te(layer, fmt, plan), plan)
    k.func = k.func.with_attr("op_pattern", 4)
    if why:
        k.info["why"] = why
    return k
