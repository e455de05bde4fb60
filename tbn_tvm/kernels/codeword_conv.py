"""The SNN codeword convolution: each input channel convolved with the ``C ≤ 2^τ`` codewords
once, then every filter gathers its codewords' responses by index.

With ``w[o, i] = s_o · codeword[idx(o, i)]`` (:mod:`tbn_tvm.formats.codebook`; Wang, Yang, Sun,
Yao, "Sub-bit Neural Networks", ICCV 2021, §3: the ``2^τ`` kernels of a layer are convolved with
the input once and each filter adds the responses its indices pick)::

    R[b, ci, c, p] = Σ_j sign(c, j) · x[b, ci, p·stride + j·dilation]          (C·Cin responses)
    y[b, o, p]     = s_o · Σ_{i < I/g} R[b, g(o)·I_g + i, idx(o, i), p]         (O·I_g gathers)

per output position ``p``: ``O·I_g`` additions where the direct form needs ``O·I_g·kh·kw``,
plus the responses.  The responses themselves come from look-up tables of signed partial sums
over the kernel's rows (T-MAC's tables on the taps): each kernel row is cut into segments of
at most 3 taps, a segment's ``2^len`` signed sums ``H[s, e, p] = Σ_t ±x`` (bit ``t`` of ``e``
set: ``+``) are built once per input channel and position, and a codeword's response is the sum
of one entry per segment, ``R[c] = Σ_s H[s, pattern(c, s)]`` (3 look-ups per codeword of a 3×3
kernel instead of 9 signed additions).  Every sum is an ordinary float32 sum of the same
inputs: the result differs from the direct convolution only in the order of the additions.

Blocks (for the schedules): ``tbn_cw_words`` (each codeword's ``kh·kw`` sign bits as one word,
once per call), ``tbn_cw_index`` (the ``τ``-bit indices as bytes, once per call),
``tbn_cw_table_<s>`` (segment ``s``'s table ``H[b, ci, e, *pos]``), ``tbn_cw_resp`` (``R[b, ci, c, *pos]``),
``tbn_cw_gather`` (``[b, o, *pos]``, reduction over the filter's input channels) and
``tbn_cw_scale``.  Every output position's responses are independent, so a schedule may compute
them per tile of positions (Cortex-M: ``Cin·C·tile`` floats live) or per image (host).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tbn_tvm.formats.bits import tir_bit, tir_field
from tbn_tvm.kernels import Kernel, Layer, i64, make_kernel, shape64

KIND = "codeword_conv"
BLOCK_WORDS = "tbn_cw_words"
BLOCK_INDEX = "tbn_cw_index"
BLOCK_TABLE = "tbn_cw_table"
BLOCK_RESP = "tbn_cw_resp"
BLOCK_GATHER = "tbn_cw_gather"
BLOCK_SCALE = "tbn_cw_scale"

#: Taps per segment of a kernel row (a segment's table has 2^len entries).
MAX_SEGMENT = 3


def segments(ksize: tuple[int, ...]) -> list[tuple[int, int, int]]:
    """``(first tap, kernel row, length)`` of each segment: every kernel row (the last axis)
    cut into ``⌈kw/3⌉`` near-equal runs of taps.  First taps index the flattened kernel."""
    kw = ksize[-1]
    rows = math.prod(ksize[:-1])
    n = -(-kw // MAX_SEGMENT)
    lens = [kw // n + (1 if i < kw % n else 0) for i in range(n)]
    out = []
    for r in range(rows):
        j = 0
        for length in lens:
            out.append((r * kw + j, r, length))
            j += length
    return out


def applies(fmt, layer: Layer) -> bool:
    """Float32 1-D/2-D convolutions whose codewords fit in a word (``kh·kw ≤ 32``)."""
    return (
        layer.op in ("conv1d", "conv2d")
        and layer.dtype == "float32"
        and layer.reuse_rows
        and fmt.kernel_size <= 32
        and len(fmt.shape) - 2 == len(layer.x_shape) - 2
    )


def codeword_conv_te(layer: Layer, fmt) -> list:
    """TE tensors ``[X, codebook, indices, scales, Y]`` (see the module docstring)."""
    from tvm import te, tirx

    from tbn_tvm.kernels.conv import conv_inputs, conv_out_spatial

    B, cin = layer.x_shape[0], layer.x_shape[1]
    O, Ig, *ksize = fmt.shape
    out_spatial = conv_out_spatial(layer, fmt)
    computed = list(out_spatial)
    if not layer.simd:  # a Cortex-M computes whole tiles of positions (position_tile)
        computed[-1] = position_tile(out_spatial[-1], cin, fmt.num_codewords)[1]
    else:  # a SIMD CPU: rows of whole vectors (the extra positions read zeros, are dropped)
        computed[-1] = host_width(out_spatial[-1])
    X, bufs, Xp, _ = conv_inputs(layer, fmt, computed)
    book, indices, scales = bufs["codebook"], bufs["indices"], bufs["scales"]
    nd = len(ksize)
    kk = math.prod(ksize)
    kw = ksize[-1]
    C = fmt.num_codewords
    og = O // layer.groups
    segs = segments(tuple(ksize))
    u32 = "uint32"
    one = tirx.const(1, u32)

    def cw_word(c):  # codeword c's kk sign bits, bit j = tap j (1: +1)
        acc = None
        for j in range(kk):
            bit = tirx.shift_left(tir_bit(book, c * i64(kk) + i64(j)), tirx.const(j, u32))
            acc = bit if acc is None else tirx.bitwise_or(acc, bit)
        return acc

    W = te.compute(shape64([C]), cw_word, name=BLOCK_WORDS)
    index_dtype = "uint8" if C <= 256 else "int32"
    E = te.compute(
        shape64([O, Ig]),
        lambda o, i: tirx.Cast(index_dtype, tir_field(indices, o * i64(Ig) + i, fmt.tau)),
        name=BLOCK_INDEX,
    )

    def tap(b, ci, pos, row, col):
        """x at kernel row ``row`` (an index into ksize[:-1]) and column ``col`` for ``pos``."""
        src = []
        rest = row
        inner = []
        for d in range(nd - 2, -1, -1):  # the leading kernel axes of row ``row``
            inner.append(rest % ksize[d])
            rest //= ksize[d]
        lead_offsets = list(reversed(inner))
        for d in range(nd - 1):
            src.append(pos[d] * i64(layer.strides[d]) + i64(lead_offsets[d] * layer.dilation[d]))
        src.append(pos[nd - 1] * i64(layer.strides[nd - 1]) + col * i64(layer.dilation[nd - 1]))
        return Xp[(b, ci, *src)]

    def table(first, row, length):
        col = first - row * kw

        def body(b, ci, e, *pos):
            val = None
            for t in range(length):
                v = tap(b, ci, pos, row, i64(col + t))
                bit = tirx.bitwise_and(tirx.shift_right(tirx.Cast(u32, e), tirx.const(t, u32)), one)
                term = tirx.Select(bit == one, v, -v)
                val = term if val is None else val + term
            return val

        return body

    if layer.simd:  # one table per segment (each vectorises along the positions)
        H = [
            te.compute(
                shape64([B, cin, 1 << length, *computed]),
                table(first, row, length),
                name=f"{BLOCK_TABLE}_{k}",
            )
            for k, (first, row, length) in enumerate(segs)
        ]

        def lookup(k, b, ci, e, pos):
            return H[k][(b, ci, e, *pos)]
    else:  # one buffer of every segment's table (a schedule unrolls the segment axis): one base
        # address for every look-up of a position tile (a Cortex-M has few registers)
        width = max(length for _, _, length in segs)
        bodies = [table(first, row, length) for first, row, length in segs]

        def stacked(b, ci, s, e, *pos):
            out = bodies[-1](b, ci, e, *pos)
            for k in range(len(segs) - 2, -1, -1):
                out = tirx.Select(s == i64(k), bodies[k](b, ci, e, *pos), out)
            return out

        Hs = te.compute(
            shape64([B, cin, len(segs), 1 << width, *computed]), stacked, name=f"{BLOCK_TABLE}_all"
        )

        def lookup(k, b, ci, e, pos):
            return Hs[(b, ci, i64(k), e, *pos)]

    def response(b, ci, c, *pos):
        r = None
        for k, (first, _, length) in enumerate(segs):
            pattern = tirx.bitwise_and(
                tirx.shift_right(W[c], tirx.const(first, u32)), tirx.const((1 << length) - 1, u32)
            )
            v = lookup(k, b, ci, tirx.Cast("int64", pattern), pos)
            r = v if r is None else r + v
        return r

    R = te.compute(shape64([B, cin, C, *computed]), response, name=BLOCK_RESP)
    ri = te.reduce_axis((i64(0), i64(Ig)), name="ri")

    def gathered(b, o, *pos):
        ci = (tirx.floordiv(o, i64(og)) * i64(Ig) + ri) if layer.groups > 1 else ri
        # mod C (a no-op: indices are < C) so that a schedule can bound the responses a
        # position reads and compute them per tile of positions
        c = tirx.floormod(tirx.Cast("int64", E[o, ri]), i64(C))
        return te.sum(R[(b, ci, c, *pos)], axis=ri)

    Z = te.compute(shape64([B, O, *computed]), gathered, name=BLOCK_GATHER)
    Y = te.compute(
        shape64([B, O, *out_spatial]), lambda b, o, *pos: scales[o] * Z[(b, o, *pos)], name=BLOCK_SCALE
    )
    return [X, book, indices, scales, Y]


#: Bytes of codeword responses a Cortex-M keeps at once (``Cin·C·tile`` floats): the position
#: tile of the Cortex-M schedule (:mod:`tbn_tvm.schedules.cortex_m_lut`) is the largest that fits.
RESPONSE_BYTES = 64 * 1024
#: Output positions whose accumulators stay in registers (the FPU has 32 single registers).
MAX_TILE = 12


def position_tile(width: int, cin: int, codewords: int) -> tuple[int, int]:
    """``(tile, computed width)``: output positions of one row computed together, at most
    :data:`MAX_TILE` and with their responses in :data:`RESPONSE_BYTES`, and the row's width
    rounded up to a multiple of it (the extra positions read zero padding and are dropped).
    The tile minimises the estimated gather work per row, ``computed · (1 + 3.5 / tile)``
    (an indexed response row costs about 3.5 gathered adds: :mod:`tbn_tvm.kernels.cost`);
    ties go to the tile that divides the width."""
    fits = max(1, min(MAX_TILE, RESPONSE_BYTES // (4 * cin * codewords)))

    def cost(t: int) -> tuple[float, int]:
        computed = -(-width // t) * t
        return computed * (1 + 3.5 / t), computed

    best = min(range(1, fits + 1), key=lambda t: (cost(t)[0], cost(t)[1], -t))
    return best, cost(best)[1]


@dataclass(frozen=True)
class Plan:
    """What a codeword convolution computes (for the cost estimates and the schedules)."""

    shape: tuple[int, ...]  # the weight's framework shape [O, I/g, *k]
    codewords: int
    segments: int
    width: int  # taps of the longest segment

    def estimate(self, layer: Layer) -> float:
        """Cortex-M instructions (:func:`tbn_tvm.kernels.cost.codeword_estimate`)."""
        from tbn_tvm.kernels import cost

        return cost.codeword_estimate(layer, self)


def plan_for(fmt) -> Plan:
    segs = segments(tuple(fmt.shape[2:]))
    return Plan(tuple(fmt.shape), fmt.num_codewords, len(segs), max(s[2] for s in segs))


def kernel(fmt, layer: Layer) -> Kernel:
    return make_kernel(KIND, codeword_conv_te(layer, fmt), plan_for(fmt), codewords=fmt.num_codewords)


def host_width(width: int) -> int:
    """Output positions of a row a SIMD CPU computes: the row when 4 divides it, else the row
    rounded up to a multiple of 8 (whole vectors of 8 or 16 lanes for blocks of rows)."""
    return width if width % 4 == 0 else -(-width // 8) * 8


#: On a SIMD CPU the codeword convolution's additions (gathered rows of responses, tables)
#: run at about half the rate of the decoded convolution's fused multiply-adds.
HOST_ADD_COST = 2.0


def host_pays(fmt, layer: Layer) -> bool:
    """Whether a SIMD CPU should take the codeword convolution rather than the weight decoded
    once per call and a dense convolution: its additions per output position, each input
    channel's segment tables and ``C`` responses plus ``O·I_g`` gathered adds, at
    :data:`HOST_ADD_COST` each, against ``O·I_g·kh·kw`` multiply-adds."""
    O, Ig = fmt.shape[0], fmt.shape[1]
    segs = segments(tuple(fmt.shape[2:]))
    per_channel = sum((1 << length) * length for _, _, length in segs) + fmt.num_codewords * len(segs)
    adds = layer.x_shape[1] * per_channel + O * Ig
    return HOST_ADD_COST * adds < O * Ig * fmt.kernel_size


def kernel_for(fmt, layer: Layer) -> Kernel | None:
    """The codeword convolution where it applies and, on a Cortex-M, is estimated cheaper than
    the filters as sign rows with look-up tables (:func:`tbn_tvm.kernels.cost.codebook_choice`);
    None otherwise (the caller then builds the sign-row kernel)."""
    if not applies(fmt, layer):
        return None
    if layer.simd:
        return kernel(fmt, layer) if host_pays(fmt, layer) else None
    from tbn_tvm.kernels import cost

    choice, why = cost.codebook_choice(layer, fmt)
    if choice != KIND or cost.codeword_estimate(layer, plan_for(fmt)) > cost.dense_estimate(layer, fmt.shape):
        return None  # the sign rows (which the dense rule of kernels.cost covers)
    k = kernel(fmt, layer)
    k.info["why"] = why
    return k
