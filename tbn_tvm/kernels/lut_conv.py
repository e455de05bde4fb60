"""The SNN look-up convolution: the codebook format's structure kernel.

With ``w[o, i] = s_o · codeword[idx(o, i)]`` (:mod:`tbn_tvm.formats.codebook`), a convolution is::

    D[b, p, c, ci] = sum_j sign(c, j) · x[b, ci, p·stride + j·dilation]     (each codeword once)
    y[b, o, p]     = s_o · sum_i D[b, p, idx(o, i), g(o)·I_g + i]            (look up and add)

per output position ``p``: ``C·Cin·k·k`` signed additions for the dot products with the ``C``
codewords the layer uses, then ``O·I_g`` additions, where the direct form needs ``O·I_g·k·k``.
It pays when ``C·Cin·kk + O·I_g < O·I_g·kk`` (wide layers, small codebooks: a 3×3 layer of 64
channels with 32 codewords needs 0.6 of the additions); :func:`kernel_for` uses it only then.
The block ``tbn_lut_dots`` is indexed ``[b, *p, c, ci]`` so that a schedule computing it under
the output position loop (Cortex-M) keeps only ``C·Cin`` floats of it at a time.
"""

from __future__ import annotations

import math

from tbn_tvm.formats.bits import tir_bit, tir_field
from tbn_tvm.kernels import Kernel, Layer, i64, make_kernel, shape64
from tbn_tvm.kernels.conv import conv_inputs

KIND = "lut_conv"
BLOCK_DOTS = "tbn_lut_dots"
BLOCK_OUT = "tbn_lut_conv"
BLOCK_INDEX = "tbn_code_index"


def pays(fmt, layer: Layer) -> bool:
    """Whether the look-up form needs fewer additions than the direct one."""
    O, Ig = fmt.shape[0], fmt.shape[1]
    cin = layer.x_shape[1]
    kk = fmt.kernel_size
    return fmt.num_codewords * cin * kk + O * Ig < O * Ig * kk


def kernel_for(fmt, layer: Layer) -> Kernel | None:
    """The look-up conv for a codebook conv layer when it pays (float32, not transposed).

    On an MCU (``layer.simd`` False) the codeword dot products themselves come from look-up
    tables (:func:`lut_conv_tables_te`) and the choice is by estimated instructions against the
    sign-row look-up kernel of the same filters; elsewhere by additions (:func:`pays`)."""
    if layer.op not in ("conv1d", "conv2d") or layer.dtype != "float32" or not layer.reuse_rows:
        return None
    if not layer.simd:
        if layer.groups != 1 or not mcu_tables_pay(fmt, layer):
            return None
        g = _table_group(fmt)
        return make_kernel(
            KIND, lut_conv_tables_te(layer, fmt, g), None, codewords=fmt.num_codewords, group=g
        )
    if not pays(fmt, layer):
        return None
    return make_kernel(KIND, lut_conv_te(layer, fmt), None, codewords=fmt.num_codewords)


def _table_group(fmt) -> int:
    """Taps per look-up table of a codeword's dot product: 4 (two half tables of 4 entries)
    unless the kernel has fewer than 4 taps."""
    return 4 if fmt.kernel_size >= 4 else 2


#: The table-driven codeword kernel must be estimated this much cheaper than the sign-row
#: look-up kernel to be chosen: the estimates are within about 15 % of QEMU's counts, and the
#: sign-row kernel is the better-tested one.
TABLES_MARGIN = 0.85


def mcu_tables_pay(fmt, layer: Layer) -> bool:
    """Whether the table-driven codeword look-up conv is estimated (Cortex-M4 instructions per
    output position, measured per block on QEMU: see :mod:`tbn_tvm.kernels.cost`) cheaper than
    the sign-row look-up kernel of the same filters: ``Cin·(patch + tables + C·⌈kk/g⌉
    look-ups) + O·Cin`` gathered adds against ``⌈Cin·kk/4⌉·(table + O look-ups)``, with
    :data:`TABLES_MARGIN`.  The gathered add per filter and input channel (7 instructions)
    competes with 2.25 sign-row look-ups (4.9 each) for a 3x3 kernel, so it wins only for wide
    layers with few codewords (128 filters, 8 codewords: about 25 %) and loses where the
    codewords are as many as the filters (the τ=5 ResNet's 16- and 32-filter layers)."""
    from tbn_tvm.kernels import cost

    O, Ig = fmt.shape[0], fmt.shape[1]
    cin, kk, C = layer.x_shape[1], fmt.kernel_size, fmt.num_codewords
    g = _table_group(fmt)
    groups = -(-kk // g)
    per_channel = (
        groups * g * cost.MCU_PATCH_TAP + groups * cost.MCU_TABLE + C * groups * cost.MCU_CODEWORD_LOOKUP
    )
    mine = cin * per_channel + O * Ig * cost.MCU_GATHER_ADD
    row_groups = -(-(Ig * kk) // 4)
    theirs = row_groups * (cost.MCU_CONV_TABLE[4] + cost.MCU_CONV_LOOKUP * O)
    return mine < TABLES_MARGIN * theirs


def lut_conv_tables_te(layer: Layer, fmt, g: int = 4) -> list:
    """The look-up conv with table-driven codeword dot products (T-MAC's tables inside SNN's
    look-up): per output position and input channel, the ``kk`` taps' signed sums are built
    once as tables over groups of ``g`` taps (:func:`tbn_tvm.kernels.rows._lut_sums`, the
    codewords being its rows: ``⌈kk/g⌉`` look-ups per codeword instead of ``kk`` adds), then
    each output channel adds its codewords' results over the input channels.  Tensors
    ``[X, codebook, indices, scales, Y]``; blocks: the codeword words (``row_words``, once per
    call), the tables and sums indexed ``[b, *pos, ci, ...]``, the gather ``tbn_lut_conv``."""
    from tvm import te, tirx

    from tbn_tvm.kernels import rows

    X, bufs, Xp, out_spatial = conv_inputs(layer, fmt)
    book, indices, scales = bufs["codebook"], bufs["indices"], bufs["scales"]
    B, cin = layer.x_shape[0], layer.x_shape[1]
    O, Ig, *ksize = fmt.shape
    nd = len(ksize)
    kk = math.prod(ksize)
    C = fmt.num_codewords

    def word(c, _w):  # codeword c's kk sign bits as one word (kk <= 32: checked by the format)
        acc = None
        for j in range(kk):
            bit = tirx.shift_left(tir_bit(book, c * i64(kk) + i64(j)), tirx.const(j, "uint32"))
            acc = bit if acc is None else tirx.bitwise_or(acc, bit)
        return acc

    W = te.compute(shape64([C, 1]), word, name=rows.BLOCK_ROW_WORDS)

    def tap(m, k):
        b, pos, ci = m[0], m[1 : 1 + nd], m[1 + nd]
        offs = []
        for d in range(nd):
            inner = math.prod(ksize[d + 1 :])
            offs.append(tirx.floormod(tirx.floordiv(k, i64(inner)), i64(ksize[d])))
        return Xp[
            (b, ci, *[pos[d] * i64(layer.strides[d]) + offs[d] * i64(layer.dilation[d]) for d in range(nd)])
        ]

    plan = rows.RowPlan(rows=C, row_length=kk, tile_length=C * kk, scale_chunk=kk, num_scales=C)
    lead = [B, *out_spatial, cin]
    taps, k_pad = rows.patch_block(lead, kk, tap, layer.dtype, g)  # zero taps past kk
    z_of = rows._lut_sums(lead, k_pad, lambda m, k: taps[(*m, k)], plan, None, 0, g, layer.dtype, words=W)
    ri = te.reduce_axis((i64(0), i64(Ig)), name="ri")
    # the τ-bit codeword indices unpacked once per call (one byte each): the gather then costs a
    # byte load, not a bit-field extraction that may straddle two words
    index_dtype = "uint8" if C <= 256 else "int32"
    E = te.compute(
        shape64([O, Ig]),
        lambda o, i: tirx.Cast(index_dtype, tir_field(indices, o * i64(Ig) + i, fmt.tau)),
        name=BLOCK_INDEX,
    )

    def gathered(b, o, *pos):
        return te.sum(z_of((b, *pos, ri), tirx.Cast("int64", E[o, ri])), axis=ri)

    Z = te.compute(shape64([B, O, *out_spatial]), gathered, name=BLOCK_OUT)
    Y = te.compute(
        shape64([B, O, *out_spatial]), lambda b, o, *pos: scales[o] * Z[(b, o, *pos)], name="tbn_lut_scale"
    )
    return [X, book, indices, scales, Y]


def lut_conv_te(layer: Layer, fmt) -> list:
    """TE tensors ``[X, codebook, indices, scales, Y]`` (see the module docstring)."""
    from tvm import te, tirx

    X, bufs, Xp, out_spatial = conv_inputs(layer, fmt)
    book, indices, scales = bufs["codebook"], bufs["indices"], bufs["scales"]
    B, cin = layer.x_shape[0], layer.x_shape[1]
    O, Ig, *ksize = fmt.shape
    nd = len(ksize)
    kk = math.prod(ksize)
    C = fmt.num_codewords
    og = O // layer.groups
    rk = [te.reduce_axis((i64(0), i64(ksize[d])), name=f"rk{d}") for d in range(nd)]
    one = tirx.const(1, "uint32")

    def dots(b, *rest):
        pos, c, ci = rest[:nd], rest[nd], rest[nd + 1]
        j = rk[0]
        for d in range(1, nd):
            j = j * i64(ksize[d]) + rk[d]
        v = Xp[(b, ci, *[pos[d] * i64(layer.strides[d]) + rk[d] * i64(layer.dilation[d]) for d in range(nd)])]
        return te.sum(tirx.Select(tir_bit(book, c * i64(kk) + j) == one, v, -v), axis=rk)

    D = te.compute(shape64([B, *out_spatial, C, cin]), dots, name=BLOCK_DOTS)
    ri = te.reduce_axis((i64(0), i64(Ig)), name="ri")

    def gathered(b, o, *pos):
        idx = tirx.Cast("int64", tir_field(indices, o * i64(Ig) + ri, fmt.tau))
        ci = (tirx.floordiv(o, i64(og)) * i64(Ig) + ri) if layer.groups > 1 else ri
        return te.sum(D[(b, *pos, idx, ci)], axis=ri)

    Z = te.compute(shape64([B, O, *out_spatial]), gathered, name=BLOCK_OUT)
    Y = te.compute(
        shape64([B, O, *out_spatial]), lambda b, o, *pos: scales[o] * Z[(b, o, *pos)], name="tbn_lut_scale"
    )
    return [X, book, indices, scales, Y]
