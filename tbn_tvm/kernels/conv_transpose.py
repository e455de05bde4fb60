"""1-D and 2-D transposed convolution (NCW / NCHW data, ``[I, O/groups, *kernel]`` weight) with
the weight read from a compact format, as Relax's ``nn.conv{1,2}d_transpose`` define it::

    y[b, o, p] = sum_{c in group(o), k} x[b, c, i] * W[c, o mod O_g, k]
                 where p = i * stride + k * dilation - pad_begin   (0 <= i < input extent)

The output extent is ``(in - 1) * stride - pad_begin - pad_end + dilation * (k - 1) +
output_padding + 1``; it is taken from the layer's declared output shape.
"""

from __future__ import annotations

import math

from tbn_tvm.kernels import Layer, finish, i64, shape64, widen


def conv_transpose_te(layer: Layer, fmt) -> list:
    """TE tensors ``[X, *buffers, Y]``."""
    from tvm import te, tirx

    B, C, *spatial = layer.x_shape
    Cw, Og, *ksize = fmt.shape
    nd = len(ksize)
    groups = layer.groups
    Cg = C // groups  # input channels per group
    O = layer.out_shape[1]
    out_spatial = list(layer.out_shape[2:])
    begin = list(layer.padding[:nd])
    X = te.placeholder(shape64(layer.x_shape), layer.dtype, name="x")
    bufs = fmt.placeholders()
    rc = te.reduce_axis((i64(0), i64(Cg)), name="rc")
    rk = [te.reduce_axis((i64(0), i64(ksize[d])), name=f"rk{d}") for d in range(nd)]
    ksz = math.prod(ksize)
    zero = tirx.const(0.0, layer.acc_dtype)

    def body(b, o, *pos):
        g = tirx.floordiv(o, i64(Og)) if groups > 1 else i64(0)
        cin = g * i64(Cg) + rc
        flat = (cin * i64(Og) + tirx.floormod(o, i64(Og))) * i64(ksz)
        for d in range(nd):
            flat = flat + rk[d] * i64(math.prod(ksize[d + 1 :]))
        num = [pos[d] + i64(begin[d]) - rk[d] * i64(layer.dilation[d]) for d in range(nd)]
        src = [tirx.floordiv(num[d], i64(layer.strides[d])) for d in range(nd)]
        ok = tirx.all(
            *[
                tirx.all(
                    num[d] >= i64(0),
                    tirx.floormod(num[d], i64(layer.strides[d])) == i64(0),
                    src[d] < i64(spatial[d]),
                )
                for d in range(nd)
            ]
        )
        safe = [tirx.min(tirx.max(src[d], i64(0)), i64(spatial[d] - 1)) for d in range(nd)]
        term = widen(X[(b, cin, *safe)], layer) * widen(fmt.read(bufs, flat), layer)
        return te.sum(tirx.Select(ok, term, zero), axis=[rc, *rk])

    Y = te.compute(shape64([B, O, *out_spatial]), body, name=f"tbn_conv{nd}d_transpose")
    return [X, *bufs.values(), finish(Y, layer, f"tbn_conv{nd}d_transpose_cast")]
