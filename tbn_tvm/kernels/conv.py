"""1-D and 2-D convolution (NCW / NCHW) with the kernel read from a compact weight format.

Strides, padding, dilation and groups follow Relax's ``nn.conv1d`` / ``nn.conv2d`` attributes.
The weight's flat index is the row-major index of ``[O, I/groups, *kernel]``.
"""

from __future__ import annotations

import math

from tbn_tvm.kernels import Layer, finish, i64, shape64, widen

#: The block that decodes a compact conv weight to float once per call (SIMD CPUs).
BLOCK_DECODE_WEIGHT = "decode_weight"


def conv_inputs(layer: Layer, fmt):
    """Placeholders ``X`` and the format's buffers, the zero-padded input ``Xp`` (``X`` itself
    when there is no padding) and the output's spatial extents, shared by every conv kernel."""
    from tvm import te, tirx

    B, C, *spatial = layer.x_shape
    nd = len(spatial)
    ksize = list(fmt.shape[2:])
    if len(ksize) != nd:
        raise ValueError("kernel and input ranks differ")
    padding, strides, dilation = layer.padding, layer.strides, layer.dilation
    begin, end = list(padding[:nd]), list(padding[nd:])
    out_spatial = [
        (spatial[d] + begin[d] + end[d] - (ksize[d] - 1) * dilation[d] - 1) // strides[d] + 1
        for d in range(nd)
    ]
    X = te.placeholder(shape64(layer.x_shape), layer.dtype, name="x")
    bufs = fmt.placeholders()
    if not (any(begin) or any(end)):
        return X, bufs, X, out_spatial

    def pad_body(b, c, *pos):
        inside = tirx.all(
            *[tirx.all(pos[d] >= i64(begin[d]), pos[d] < i64(begin[d] + spatial[d])) for d in range(nd)]
        )
        src = [pos[d] - i64(begin[d]) for d in range(nd)]
        return tirx.if_then_else(inside, X[(b, c, *src)], tirx.const(0.0, layer.dtype))

    padded = [spatial[d] + begin[d] + end[d] for d in range(nd)]
    return X, bufs, te.compute(shape64([B, C, *padded]), pad_body, name="pad"), out_spatial


def conv_te(layer: Layer, fmt) -> list:
    """TE tensors ``[X, *buffers, Y]`` for an N-d (N = 1 or 2) grouped convolution."""
    from tvm import te, tirx

    X, bufs, Xp, out_spatial = conv_inputs(layer, fmt)
    B = layer.x_shape[0]
    O, Cg, *ksize = fmt.shape
    nd = len(ksize)
    og = O // layer.groups  # output channels per group
    rc = te.reduce_axis((i64(0), i64(Cg)), name="rc")
    rk = [te.reduce_axis((i64(0), i64(ksize[d])), name=f"rk{d}") for d in range(nd)]
    K = Cg * math.prod(ksize)

    def flat_of(o, c, ks):  # flat index of weight[o, c, *ks] in [O, Cg, *ksize]
        flat = o * i64(K) + c * i64(math.prod(ksize))
        for d in range(nd):
            flat = flat + ks[d] * i64(math.prod(ksize[d + 1 :]))
        return flat

    decoded = None
    if layer.simd and layer.form in ("auto", "decoded"):
        # a SIMD CPU: the weight decoded to float once per call (O x Cg x k.. values, a small
        # fraction of the multiply-adds), then a plain convolution the schedules vectorise
        decoded = te.compute(
            shape64([O, Cg, *ksize]),
            lambda o, c, *ks: fmt.read(bufs, flat_of(o, c, ks)),
            name=BLOCK_DECODE_WEIGHT,
        )

    def body(b, o, *pos):
        cin = rc if layer.groups == 1 else tirx.floordiv(o, i64(og)) * i64(Cg) + rc
        src = [pos[d] * i64(layer.strides[d]) + rk[d] * i64(layer.dilation[d]) for d in range(nd)]
        w = decoded[(o, rc, *rk)] if decoded is not None else fmt.read(bufs, flat_of(o, rc, rk))
        return te.sum(widen(Xp[(b, cin, *src)], layer) * widen(w, layer), axis=[rc, *rk])

    Y = te.compute(shape64([B, O, *out_spatial]), body, name=f"tbn_conv{nd}d")
    return [X, *bufs.values(), finish(Y, layer, f"tbn_conv{nd}d_cast")]
