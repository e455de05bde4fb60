"""1-D and 2-D convolution (NCW / NCHW) with the kernel read from a compact weight format.

Strides, padding, dilation and groups follow Relax's ``nn.conv1d`` / ``nn.conv2d`` attributes.
The weight's flat index is the row-major index of ``[O, I/groups, *kernel]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from tbn_tvm.kernels import i64, shape64


def conv_inputs(x_shape: Sequence[int], fmt, strides, padding, dilation, dtype: str = "float32"):
    """Placeholders ``X, words, scales``, the zero-padded input ``Xp`` (``X`` itself when there
    is no padding) and the output's spatial extents, shared by every conv kernel."""
    from tvm import te, tirx

    x_shape = [int(d) for d in x_shape]
    B, C, *spatial = x_shape
    _, _, *ksize = fmt.shape
    nd = len(spatial)
    if len(ksize) != nd:
        raise ValueError("kernel and input ranks differ")
    begin, end = list(padding[:nd]), list(padding[nd:])
    out_spatial = [
        (spatial[d] + begin[d] + end[d] - (ksize[d] - 1) * dilation[d] - 1) // strides[d] + 1
        for d in range(nd)
    ]
    X = te.placeholder(shape64(x_shape), dtype, name="x")
    P = te.placeholder(shape64([fmt.num_words]), "uint32", name="tile_words")
    A = te.placeholder(shape64([fmt.num_scales]), "float32", name="scales")
    if not (any(begin) or any(end)):
        return X, P, A, X, out_spatial

    def pad_body(b, c, *pos):
        inside = tirx.all(
            *[tirx.all(pos[d] >= i64(begin[d]), pos[d] < i64(begin[d] + spatial[d])) for d in range(nd)]
        )
        src = [pos[d] - i64(begin[d]) for d in range(nd)]
        return tirx.if_then_else(inside, X[(b, c, *src)], tirx.const(0.0, dtype))

    padded = [spatial[d] + begin[d] + end[d] for d in range(nd)]
    return X, P, A, te.compute(shape64([B, C, *padded]), pad_body, name="pad"), out_spatial


def conv_te(
    x_shape: Sequence[int],
    fmt,
    strides: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    groups: int,
    dtype: str = "float32",
):
    """TE tensors ``[X, words, scales, Y]`` for an N-d (N = 1 or 2) grouped convolution.

    ``padding`` is Relax's order: ``[begin_0, ..., begin_{d-1}, end_0, ..., end_{d-1}]``.
    """
    from tvm import te, tirx

    X, P, A, Xp, out_spatial = conv_inputs(x_shape, fmt, strides, padding, dilation, dtype)
    B = int(x_shape[0])
    O, Cg, *ksize = fmt.shape
    nd = len(ksize)
    og = O // groups  # output channels per group
    rc = te.reduce_axis((i64(0), i64(Cg)), name="rc")
    rk = [te.reduce_axis((i64(0), i64(ksize[d])), name=f"rk{d}") for d in range(nd)]
    K = Cg * math.prod(ksize)

    def body(b, o, *pos):
        # flat index of weight[o, rc, *rk] in [O, Cg, *ksize]
        flat = o * i64(K) + rc * i64(math.prod(ksize))
        for d in range(nd):
            flat = flat + rk[d] * i64(math.prod(ksize[d + 1 :]))
        cin = rc if groups == 1 else tirx.floordiv(o, i64(og)) * i64(Cg) + rc
        src = [pos[d] * i64(strides[d]) + rk[d] * i64(dilation[d]) for d in range(nd)]
        return te.sum(Xp[(b, cin, *src)] * fmt.tir_read(P, A, flat), axis=[rc, *rk])

    Y = te.compute(shape64([B, O, *out_spatial]), body, name=f"tbn_conv{nd}d")
    return [X, P, A, Y]


def make_conv(name: str, x_shape, fmt, strides, padding, dilation, groups):
    """A PrimFunc named ``name`` for :func:`conv_te`."""
    from tvm import te

    tensors = conv_te(x_shape, fmt, strides, padding, dilation, groups)
    return te.create_prim_func(tensors).with_attr("global_symbol", name)
