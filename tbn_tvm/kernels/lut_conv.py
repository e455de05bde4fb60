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


def pays(fmt, layer: Layer) -> bool:
    """Whether the look-up form needs fewer additions than the direct one."""
    O, Ig = fmt.shape[0], fmt.shape[1]
    cin = layer.x_shape[1]
    kk = fmt.kernel_size
    return fmt.num_codewords * cin * kk + O * Ig < O * Ig * kk


def kernel_for(fmt, layer: Layer) -> Kernel | None:
    """The look-up conv for a codebook conv layer when it pays (float32, not transposed)."""
    if layer.op not in ("conv1d", "conv2d") or layer.dtype != "float32" or not layer.reuse_rows:
        return None
    if not pays(fmt, layer):
        return None
    return make_kernel(KIND, lut_conv_te(layer, fmt), None, codewords=fmt.num_codewords)


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
