"""1-D and 2-D convolution (NCW / NCHW) with the kernel read from a compact weight format.

Strides, padding, dilation and groups follow Relax's ``nn.conv1d`` / ``nn.conv2d`` attributes.
The weight's flat index is the row-major index of ``[O, I/groups, *kernel]``.
"""

from __future__ import annotations

import math

from tbn_tvm.kernels import Layer, finish, i64, shape64, widen

#: The block that decodes a compact conv weight to float once per call (SIMD CPUs).
BLOCK_DECODE_WEIGHT = "decode_weight"


def computed_width(layer: Layer, width: int) -> int:
    """Output row positions a conv kernel computes on a SIMD CPU (``layer.simd`` with the
    host's ``auto``/``decoded`` forms): the row itself when a tile of 4..15 positions divides
    it, else the row rounded up to a multiple of 8 (the extra positions read zero padding and
    are dropped by the output block; the register-blocked schedules then need no tail)."""
    if not layer.simd or layer.form not in ("auto", "decoded") or width <= 15:
        return width
    if any(width % t == 0 for t in range(4, 16)):
        return width
    return -(-width // 8) * 8


def conv_out_spatial(layer: Layer, fmt) -> list[int]:
    """The output's spatial extents of a conv layer."""
    _, _, *spatial = layer.x_shape
    nd = len(spatial)
    ksize = list(fmt.shape[2:])
    begin, end = list(layer.padding[:nd]), list(layer.padding[nd:])
    return [
        (spatial[d] + begin[d] + end[d] - (ksize[d] - 1) * layer.dilation[d] - 1) // layer.strides[d] + 1
        for d in range(nd)
    ]


def conv_inputs(layer: Layer, fmt, compute_spatial: list[int] | None = None):
    """Placeholders ``X`` and the format's buffers, the zero-padded input ``Xp`` (``X`` itself
    when there is no padding) and the output's spatial extents, shared by every conv kernel.

    ``compute_spatial``: output extents the kernel computes when larger than the output's
    (:func:`computed_width`): ``Xp`` then has the extra zero columns those positions read."""
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
    extra = [0] * nd
    if compute_spatial is not None:
        for d in range(nd):
            need = (compute_spatial[d] - 1) * strides[d] + (ksize[d] - 1) * dilation[d] + 1
            extra[d] = max(0, need - (spatial[d] + begin[d] + end[d]))
    X = te.placeholder(shape64(layer.x_shape), layer.dtype, name="x")
    bufs = fmt.placeholders()
    if not (any(begin) or any(end) or any(extra)):
        return X, bufs, X, out_spatial

    def pad_body(b, c, *pos):
        inside = tirx.all(
            *[tirx.all(pos[d] >= i64(begin[d]), pos[d] < i64(begin[d] + spatial[d])) for d in range(nd)]
        )
        src = [pos[d] - i64(begin[d]) for d in range(nd)]
        return tirx.if_then_else(inside, X[(b, c, *src)], tirx.const(0.0, layer.dtype))

    padded = [spatial[d] + begin[d] + end[d] + extra[d] for d in range(nd)]
    return X, bufs, te.compute(shape64([B, C, *padded]), pad_body, name="pad"), out_spatial


def im2col_tap(layer: Layer, Xp, ksize) -> callable:
    """``tap(m, k)``: the (padded) input ``Xp`` at im2col index ``k`` of the output position
    ``m = (b, *pos)``, ``k`` in the filter's flat order ``(c, *kernel offsets)`` over a kernel of
    ``ksize``, with the layer's strides and dilation."""
    from tvm import tirx

    nd = len(ksize)
    ksz = math.prod(ksize)

    def tap(m, k):
        b, pos = m[0], m[1:]
        c = tirx.floordiv(k, i64(ksz))
        r = tirx.floormod(k, i64(ksz))
        src = []
        for d in range(nd):
            off = tirx.floormod(tirx.floordiv(r, i64(math.prod(ksize[d + 1 :]))), i64(ksize[d]))
            src.append(pos[d] * i64(layer.strides[d]) + off * i64(layer.dilation[d]))
        return Xp[(b, c, *src)]

    return tap


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
        decoded = _decoded_weight(layer, fmt, bufs, flat_of)

    def body(b, o, *pos):
        cin = rc if layer.groups == 1 else tirx.floordiv(o, i64(og)) * i64(Cg) + rc
        src = [pos[d] * i64(layer.strides[d]) + rk[d] * i64(layer.dilation[d]) for d in range(nd)]
        w = decoded[(o, rc, *rk)] if decoded is not None else fmt.read(bufs, flat_of(o, rc, rk))
        return te.sum(widen(Xp[(b, cin, *src)], layer) * widen(w, layer), axis=[rc, *rk])

    Y = te.compute(shape64([B, O, *out_spatial]), body, name=f"tbn_conv{nd}d")
    return [X, *bufs.values(), finish(Y, layer, f"tbn_conv{nd}d_cast")]


def _decoded_weight(layer: Layer, fmt, bufs, flat_of):
    """``W[o, c, *k]`` as float, once per call.  A tiled weight whose filters repeat
    (:func:`tbn_tvm.kernels.rows.row_plan`: ``D < O`` distinct filters, e.g. a depthwise conv
    at p > 1) decodes only the ``D`` distinct filters' signs from re-aligned words and scales
    them per filter; other formats read every element (:meth:`WeightFormat.read`)."""
    from tvm import te

    from tbn_tvm.kernels import rows

    O, Cg, *ksize = fmt.shape
    plan = rows.row_plan(fmt, O) if hasattr(fmt, "tile_length") else None
    if plan is not None and plan.reuses and plan.wordwise:
        signs = rows._decode_rows(plan, bufs["tile"], fmt.num_words, layer.dtype)  # [D, K]
        A = bufs["scales"]
        kk = math.prod(ksize)

        def body(o, c, *ks):
            d, scale = rows._row_scale_and_index(plan, A, o)
            k = c * i64(kk)
            for j in range(len(ks)):
                k = k + ks[j] * i64(math.prod(ksize[j + 1 :]))
            return scale * signs[d, k]

        return te.compute(shape64([O, Cg, *ksize]), body, name=BLOCK_DECODE_WEIGHT)
    return te.compute(
        shape64([O, Cg, *ksize]),
        lambda o, c, *ks: fmt.read(bufs, flat_of(o, c, ks)),
        name=BLOCK_DECODE_WEIGHT,
    )
