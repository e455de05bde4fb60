"""Bit-plane look-up kernels: T-MAC's bit-serial table look-up, in float32.

A bit-plane weight (:mod:`tbn_tvm.formats.bitplane`) is ``w[n, j] = α_n · q[n, j]`` with ``q`` a
``k``-bit two's-complement integer, ``q = Σ_{b<k-1} 2^b·bit_b − 2^(k−1)·bit_{k−1}``, stored as
``k`` packed planes.  T-MAC (Wei et al., "T-MAC: CPU Renaissance via Table Lookup for Low-Bit LLM
Deployment on Edge", EuroSys 2025) computes such a GEMV without multiplies: cut the input into
groups of ``g``, build each group's ``2^g`` partial sums once per input vector, and let every
plane of every row read one entry per group::

    T[grp, e] = Σ_{t < g, bit t of e set} x[grp·g + t]                 (2^g subset sums per group)
    y[n]      = α_n · Σ_b c_b · Σ_grp T[grp, field_b(n, grp)]           (c_b = 2^b, −2^(k−1) on top)

where ``field_b(n, grp)`` is the ``g``-bit field of plane ``b`` over the group's inputs in row
``n``.  The tables cost ``2^g`` entries per ``g`` inputs, once per input vector (per output
position of a convolution, from its im2col patch), shared by all ``k`` planes and all ``N`` rows;
the rows then take ``k`` look-ups per ``g`` weights instead of ``g`` multiply-adds.  T-MAC
quantises its tables to int8; here they stay float32 subset sums of the inputs (no
quantisation, no cancelling offset): the result differs from a plain dot product only in the
order of the additions.

Tables are built per 32-input chunk (one plane word holds ``32/g`` fields) from two half tables
of ``2^(g/2)`` entries (one add per entry).  A row whose bits do not start on a word boundary
(``K`` not a multiple of 32) gets each chunk's word re-aligned from two plane words (a funnel
shift); inputs past ``K`` read as zero, so the next row's bits in a row's last word select
nothing.

Non-finite inputs: a table entry adds 0 for each finite input it leaves out and NaN for a
non-finite one (what ``x·0`` would give), so a NaN input makes
every output of its vector NaN, as the direct product does (``NaN·w``); an infinite input makes
them NaN too, where the direct product gives ``±inf`` for a nonzero weight (the planes' signed
coefficients would add ``+inf`` and ``−inf``).  Finite inputs are unaffected (``x·0 = 0``).

Every kernel here (and the packed and decoded forms below) sums ``x·q`` before it multiplies
by ``α``: inputs near float32's largest value (about 1e37 and up, times the integers) can
overflow to ``±inf`` where the direct product with a small ``α`` stays finite, and an ``α``
large enough to overflow ``x·w`` on its own leaves such a sum finite where the direct product
gives ``±inf``.

Blocks (for the schedules): ``tbn_bp_half`` / ``tbn_bp_table`` (the tables, indexed
``[*lead, group, ...]``), ``tbn_bp_sum`` (``[*lead, n]``, reduction over the 32-input chunks),
``tbn_bp_scale`` (``α`` and the output), and for a convolution the im2col patch
:data:`tbn_tvm.kernels.rows.BLOCK_PATCH`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tbn_tvm.formats.bitplane import plane_words
from tbn_tvm.kernels import Kernel, Layer, i64, make_kernel, shape64

KIND_DENSE = "bitplane_lut"
KIND_CONV = "bitplane_conv_lut"
KINDS = (KIND_DENSE, KIND_CONV)
BLOCK_HALF = "tbn_bp_half"
BLOCK_TABLE = "tbn_bp_table"
BLOCK_SUM = "tbn_bp_sum"
BLOCK_SCALE = "tbn_bp_scale"

#: Group sizes the kernel builds tables for (a group's field never straddles a plane word).
GROUPS = (2, 4, 8)


def fields_per_word(K: int, g: int) -> int:
    """Groups of ``g`` inputs per 32-input chunk: ``32/g``, fewer when the whole row is shorter
    than a word (``⌈K/g⌉``)."""
    return min(32 // g, -(-K // g))


def coefficients(fmt) -> list[float]:
    """``c_b``: the weight of plane ``b`` in ``q`` (two's complement: ``2^b``, the top ``−2^(k−1)``)."""
    k = fmt.k
    return [float(1 << b) for b in range(k - 1)] + [-float(1 << (k - 1))]


def applies(fmt, layer: Layer) -> bool:
    """Whether the look-up kernel can compute ``layer`` from ``fmt``: float32, two's-complement
    codes, rows contiguous in the weight (a Linear ``[out, in]`` weight, an ungrouped conv)."""
    if layer.dtype != "float32" or fmt.encoding != "twos" or not layer.reuse_rows:
        return False
    if layer.op == "matmul":
        rows = fmt.shape[0] if len(fmt.shape) > 1 else 1
        return layer.order == "transposed" and rows == layer.out_shape[-1]
    return layer.op in ("conv1d", "conv2d") and layer.groups == 1


def _field_words(P, K: int, plane: int):
    """``word(b, n, kc)``: bits ``32·kc .. 32·kc+31`` of row ``n`` in plane ``b`` (``plane``
    words each) as one word (bit ``j`` = input ``32·kc + j``).  Bits past the row's end belong
    to the next row (or plane): the inputs they would select are zero."""
    from tvm import tirx

    one = tirx.const(1, "uint32")

    def word(b, n, kc):
        base = b * i64(plane)
        if K % 32 == 0:
            return P[base + n * i64(K // 32) + kc]
        pos = n * i64(K) + kc * i64(32)
        w = base + tirx.shift_right(pos, i64(5))
        s = tirx.Cast("uint32", tirx.bitwise_and(pos, i64(31)))
        lo = tirx.shift_right(P[w], s)
        # (x << (31 - s)) << 1: the next word's low bits, 0 when s == 0 (no shift by 32)
        hi = tirx.shift_left(tirx.shift_left(P[w + i64(1)], tirx.const(31, "uint32") - s), one)
        return tirx.bitwise_or(lo, hi)

    return word


def _tables(lead: list, chunks: int, per_word: int, x_at, g: int, dtype: str):
    """``T[*lead, kc, e, f]``: the ``2^g`` subset sums of group ``f`` (inputs ``32·kc + g·f ..``,
    read by ``x_at(m, k)``) of each 32-input chunk ``kc``, from two half tables
    ``H[*lead, kc, f, part, e']`` of ``2^(g/2)`` entries.  The group is the innermost axis, so a
    look-up's address is one shift-add of its field plus a constant offset per group."""
    from tvm import te, tirx

    h = g // 2
    one = tirx.const(1, "uint32")
    # -0.0 as bits (x + -0.0 = x): TVM's simplifier folds v·0.0 to 0, wrong for ±inf and NaN,
    # and its LLVM code generator takes a reinterpreted 0 for a null pointer
    zero_bits = tirx.reinterpret(dtype, tirx.const(0x80000000, "uint32"))

    def half(*idx):
        *m, kc, f, part, e = idx
        s = None
        for t in range(h):
            v = x_at(m, kc * i64(32) + f * i64(g) + part * i64(h) + i64(t))
            bit = tirx.bitwise_and(tirx.shift_right(tirx.Cast("uint32", e), tirx.const(t, "uint32")), one)
            # an input left out adds v·0: 0 if it is finite, else NaN (the module docstring: a
            # non-finite input reaches every row, zero weights included)
            term = tirx.Select(bit == one, v, v * zero_bits)
            s = term if s is None else s + term
        return s

    H = te.compute(shape64([*lead, chunks, per_word, 2, 1 << h]), half, name=BLOCK_HALF)
    size = i64(1 << h)
    return te.compute(
        shape64([*lead, chunks, 1 << g, per_word]),
        lambda *idx: (
            H[(*idx[:-3], idx[-3], idx[-1], i64(0), tirx.floormod(idx[-2], size))]
            + H[(*idx[:-3], idx[-3], idx[-1], i64(1), tirx.floordiv(idx[-2], size))]
        ),
        name=BLOCK_TABLE,
    )


def _sums(lead: list, K: int, x_at, fmt, P, rows: int, g: int, dtype: str):
    """``Z[*lead, n] = Σ_b c_b Σ_grp T[*lead, grp, field_b(n, grp)]`` (before ``α``)."""
    from tvm import te, tirx

    chunks = -(-K // 32)
    per_word = fields_per_word(K, g)
    T = _tables(lead, chunks, per_word, x_at, g, dtype)
    word = _field_words(P, K, plane_words(fmt.n))
    coef = coefficients(fmt)
    mask = tirx.const((1 << g) - 1, "uint32")
    kc = te.reduce_axis((i64(0), i64(chunks)), name="kc")

    def body(*idx):
        *m, n = idx
        total = None
        for b, c in enumerate(coef):
            w = word(i64(b), n, kc)
            s = None
            for f in range(per_word):
                e = tirx.bitwise_and(tirx.shift_right(w, tirx.const(g * f, "uint32")), mask)
                v = T[(*m, kc, tirx.Cast("int64", e), i64(f))]
                s = v if s is None else s + v
            term = s if c == 1.0 else tirx.const(c, dtype) * s
            total = term if total is None else total + term
        return te.sum(total, axis=kc)

    return te.compute(shape64([*lead, rows]), body, name=BLOCK_SUM)


def dense_te(layer: Layer, fmt, g: int) -> list:
    """``y[..., n] = α_n Σ_j x[..., j] q[n, j]`` by table look-up: ``[x, planes, scales, y]``."""
    from tvm import te, tirx

    *lead, K = layer.x_shape
    N = layer.out_shape[-1]
    X = te.placeholder(shape64([*lead, K]), layer.dtype, name="x")
    bufs = fmt.placeholders()
    P, A = bufs["planes"], bufs["scales"]
    zero = tirx.const(0.0, layer.dtype)

    def x_at(m, k):
        if K % 32 == 0 or (K < 32 and K % g == 0):
            return X[(*m, k)]
        return tirx.if_then_else(k < i64(K), X[(*m, tirx.min(k, i64(K - 1)))], zero)

    Z = _sums(lead, K, x_at, fmt, P, N, g, layer.dtype)

    def out(*idx):
        s = A[i64(0)] if fmt.num_scales == 1 else A[idx[-1]]
        return s * Z[idx]

    return [X, P, A, te.compute(shape64([*lead, N]), out, name=BLOCK_SCALE)]


def conv_te(layer: Layer, fmt, g: int) -> list:
    """The same per output position of an ungrouped 1-D/2-D convolution, its im2col patch
    (``C·kh·kw`` inputs in the filter's flat order, zero padding resolved) as the input vector:
    ``[x, planes, scales, y]``."""
    from tvm import te

    from tbn_tvm.kernels import rows
    from tbn_tvm.kernels.conv import conv_inputs, im2col_tap

    X, bufs, Xp, out_spatial = conv_inputs(layer, fmt)
    P, A = bufs["planes"], bufs["scales"]
    B = layer.x_shape[0]
    O, Cg, *ksize = fmt.shape
    ksz = math.prod(ksize)
    K = Cg * ksz

    patch = im2col_tap(layer, Xp, ksize)

    lead = [B, *out_spatial]
    width = 32 if K > 32 else fields_per_word(K, g) * g
    im2col, _ = rows.patch_block(lead, K, patch, layer.dtype, width)  # zeros past K
    Z = _sums(lead, K, lambda m, k: im2col[(*m, k)], fmt, P, O, g, layer.dtype)

    def out(b, o, *pos):
        s = A[i64(0)] if fmt.num_scales == 1 else A[o]
        return s * Z[(b, *pos, o)]

    return [X, P, A, te.compute(shape64([B, O, *out_spatial]), out, name=BLOCK_SCALE)]


def _chunked_gemv(X, A, fmt, N: int, rows: int, chunk: int, q, names: tuple[str, str]):
    """``y[..., n] = α · Σ_j x[..., j] · q(n, j // chunk, j % chunk)`` for ``n < N`` (``rows``
    ≥ ``N`` sums computed: padding rows), as the two GEMVs build it: a block reducing over the
    whole chunks (``names[0]``, axes ``(chunk index, position in the chunk)``) and one over the
    inputs past them (``names[1]``), then ``α`` (one or per row) times their sum."""
    from tvm import te

    *lead, K = (int(d) for d in X.shape)
    full, tail = divmod(K, chunk)
    parts = []
    if full:
        kc = te.reduce_axis((i64(0), i64(full)), name="kc")
        kb = te.reduce_axis((i64(0), i64(chunk)), name="kb")
        parts.append(
            te.compute(
                shape64([*lead, rows]),
                lambda *idx: te.sum(X[(*idx[:-1], kc * i64(chunk) + kb)] * q(idx[-1], kc, kb), axis=[kc, kb]),
                name=names[0],
            )
        )
    if tail:
        kt = te.reduce_axis((i64(0), i64(tail)), name="kt")
        parts.append(
            te.compute(
                shape64([*lead, rows]),
                lambda *idx: te.sum(
                    X[(*idx[:-1], i64(chunk * full) + kt)] * q(idx[-1], i64(full), kt), axis=kt
                ),
                name=names[1],
            )
        )

    def out(*idx):
        z = parts[0][idx]
        for extra in parts[1:]:
            z = z + extra[idx]
        s = A[i64(0)] if fmt.num_scales == 1 else A[idx[-1]]
        return s * z

    return te.compute(shape64([*lead, N]), out, name=BLOCK_SCALE)


KIND_GEMV = "bitplane_gemv"
BLOCK_GEMV = "tbn_bp_gemv"
BLOCK_GEMV_TAIL = "tbn_bp_gemv_tail"


def gemv_te(layer: Layer, fmt) -> list:
    """The SIMD-CPU form for few input rows: each 32-input chunk's integers rebuilt in vector
    lanes from the plane words (``q = Σ_b c_b·bit_b``, one word per plane and chunk broadcast,
    shifted by the lane's position) and multiplied with the inputs, the sum r-factored over
    the lanes (:mod:`tbn_tvm.schedules.cpu_lut`); ``y = α·Σ x·q``.  The weight is read as
    ``k/32`` words per weight, never decoded to memory.  ``[x, planes, scales, y]``."""
    from tvm import te, tirx

    *lead, K = layer.x_shape
    N = layer.out_shape[-1]
    X = te.placeholder(shape64([*lead, K]), layer.dtype, name="x")
    bufs = fmt.placeholders()
    P, A = bufs["planes"], bufs["scales"]
    word = _field_words(P, K, plane_words(fmt.n))
    coef = [int(c) for c in coefficients(fmt)]
    one = tirx.const(1, "uint32")

    def q(n, kc, kb):
        total = None
        for b, c in enumerate(coef):
            bit = tirx.Cast(
                "int32", tirx.bitwise_and(tirx.shift_right(word(i64(b), n, kc), tirx.Cast("uint32", kb)), one)
            )
            term = bit if c == 1 else bit * tirx.const(c, "int32")
            total = term if total is None else total + term
        return tirx.Cast(layer.dtype, total)

    y = _chunked_gemv(X, A, fmt, N, N, 32, q, (BLOCK_GEMV, BLOCK_GEMV_TAIL))
    return [X, P, A, y]


KIND_PACKED = "bitplane_packed_gemv"
BLOCK_PACKED = "tbn_bp_packed"
BLOCK_PACKED_TAIL = "tbn_bp_packed_tail"
#: Rows the packed buffer pads ``N`` to a multiple of (one AVX-512 vector; two AVX2 ones).
PACKED_ROW_ALIGN = 16
#: Most input rows the form ``auto`` computes with the packed GEMV (more: the decoded GEMM).
#: Measured on the 4-bit 128x512 GEMM, one thread (AVX-512): within 1.05x of TVM's dense build
#: at 1-64 rows, where the decoded form took 1.5-6.5x as long (64 rows: 78 vs 113 us).
PACKED_MAX_ROWS = 64


def field_bits(k: int) -> int | None:
    """Bits of one packed integer for ``k``-bit codes (2, 4 or 8: a word holds a whole number
    of fields), or None above 8 bits."""
    for f in (2, 4, 8):
        if k <= f:
            return f
    return None


def pack_fields(q: np.ndarray, f: int, align: int = PACKED_ROW_ALIGN) -> np.ndarray:
    """The integers ``q[N, K]`` (each in ``[−2^(f−1), 2^(f−1))``) as ``f``-bit two's-complement
    fields of int32 words, ``[⌈K/(32/f)⌉, N']`` (``N'``: ``N`` rounded up to ``align``): word
    ``[w, n]`` holds inputs ``w·32/f ..`` of row ``n``, input ``w·32/f + j`` in bits
    ``f·j .. f·j+f−1``.  Padding (rows past ``N``, inputs past ``K``) is 0.

    This is the bit-plane weight transposed: the same ``k ≤ f`` bits per weight, stored per
    weight instead of per plane, so that a vector of rows rebuilds ``q`` with one shift pair
    instead of ``k`` shift-and-adds.  Raises ValueError when a value does not fit."""
    q = np.asarray(q, dtype=np.int64)
    if q.ndim != 2:
        raise ValueError(f"pack_fields takes a 2-D [N, K] array, got shape {q.shape}")
    lo, hi = -(1 << (f - 1)), 1 << (f - 1)
    if q.size and (q.min() < lo or q.max() >= hi):
        raise ValueError(f"integers do not fit in {f}-bit fields")
    N, K = q.shape
    per = 32 // f
    words, Np = -(-K // per), -(-N // align) * align
    u = np.zeros((Np, words * per), np.uint64)
    u[:N, :K] = (q & ((1 << f) - 1)).astype(np.uint64)
    u = u.reshape(Np, words, per) << (np.arange(per, dtype=np.uint64) * np.uint64(f))
    packed = np.bitwise_or.reduce(u, axis=2).astype(np.uint32)  # [N', words]
    return np.ascontiguousarray(packed.T).view(np.int32)


def packed_applies(fmt, layer: Layer) -> bool:
    """Whether :func:`packed_gemv_te` computes ``layer``: a float32 matmul with the weight's
    rows its outputs, codes of at most 8 bits (either encoding)."""
    if layer.op != "matmul" or layer.dtype != "float32" or not layer.reuse_rows:
        return False
    rows = fmt.shape[0] if len(fmt.shape) > 1 else 1
    return layer.order == "transposed" and rows == layer.out_shape[-1] and field_bits(fmt.k) is not None


def packed_gemv_te(layer: Layer, fmt) -> tuple[list, list]:
    """The SIMD-CPU form for few input rows (decode in the kernel, rows in vector lanes): ``q``
    stored as packed ``f``-bit fields (:func:`pack_fields`, ``f`` = :func:`field_bits` of ``k``),
    each word a vector of rows loaded once and each field rebuilt with one shift pair
    (``(w << (32 − f(j+1))) >> (32 − f)``, arithmetic), converted and multiplied with the
    broadcast input; ``y = α·Σ x·q``.  Never decoded to memory.

    Returns ``([x, codes, scales, y], buffers)``: the TE tensors and the run-time buffers
    (``codes`` int32 ``[⌈K/(32/f)⌉, N']``, ``scales`` float32) that replace the format's planes."""
    from tvm import te, tirx

    from tbn_tvm.formats.base import Buffer

    *lead, K = layer.x_shape
    N = layer.out_shape[-1]
    f = field_bits(fmt.k)
    per = 32 // f
    codes = pack_fields(fmt.codes_q().reshape(N, K), f)
    words, Np = codes.shape
    X = te.placeholder(shape64([*lead, K]), layer.dtype, name="x")
    W = te.placeholder(shape64([words, Np]), "int32", name="codes")
    A = te.placeholder(shape64([fmt.num_scales]), "float32", name="scales")

    def q(n, w, j):  # field j of word w in row n, sign-extended
        up = tirx.shift_left(W[w, n], tirx.Cast("int32", i64(32 - f) - j * i64(f)))
        return tirx.Cast(layer.dtype, tirx.shift_right(up, tirx.const(32 - f, "int32")))

    y = _chunked_gemv(X, A, fmt, N, Np, per, q, (BLOCK_PACKED, BLOCK_PACKED_TAIL))
    bufs = [Buffer("codes", codes), Buffer("scales", fmt.scales.astype(np.float32))]
    return [X, W, A, y], bufs


KIND_DECODED = "bitplane_gemm"


def decoded_te(layer: Layer, fmt) -> list:
    """The SIMD-CPU form for many input rows: the integers ``q`` decoded to float once per call
    (``[N', K]``, ``N'`` the rows rounded up to a multiple of 8, extra rows zero), a plain GEMM
    on them, then ``y = α·z``.  Block names as the tiled format's decoded form
    (:data:`tbn_tvm.kernels.rows.BLOCK_DECODE`, :data:`~tbn_tvm.kernels.rows.BLOCK_GEMM`), so the
    same register-blocked schedule applies.  ``[x, planes, scales, y]``."""
    from tvm import te, tirx

    from tbn_tvm.kernels import rows

    *lead, K = layer.x_shape
    N = layer.out_shape[-1]
    Np = N if N <= 8 or N % 8 == 0 else -(-N // 8) * 8
    X = te.placeholder(shape64([*lead, K]), layer.dtype, name="x")
    bufs = fmt.placeholders()
    P, A = bufs["planes"], bufs["scales"]
    plane = plane_words(fmt.n)
    coef = [int(c) for c in coefficients(fmt)]
    one = tirx.const(1, "uint32")

    def decode(n, k):
        nn = n if Np == N else tirx.min(n, i64(N - 1))
        i = nn * i64(K) + k
        # floordiv/floormod (not shifts) so that a vector of 16 lanes along k reads one word
        w, sh = tirx.floordiv(i, i64(32)), tirx.Cast("uint32", tirx.floormod(i, i64(32)))
        total = None
        for b, c in enumerate(coef):
            bit = tirx.Cast("int32", tirx.bitwise_and(tirx.shift_right(P[i64(b * plane) + w], sh), one))
            term = bit if c == 1 else bit * tirx.const(c, "int32")
            total = term if total is None else total + term
        q = tirx.Cast(layer.dtype, total)
        return q if Np == N else tirx.Select(n < i64(N), q, tirx.const(0.0, layer.dtype))

    Wd = te.compute(shape64([Np, K]), decode, name=rows.BLOCK_DECODE)
    k = te.reduce_axis((i64(0), i64(K)), name="k")
    Z = te.compute(
        shape64([*lead, Np]),
        lambda *idx: te.sum(X[(*idx[:-1], k)] * Wd[idx[-1], k], axis=k),
        name=rows.BLOCK_GEMM,
    )

    def out(*idx):
        s = A[i64(0)] if fmt.num_scales == 1 else A[idx[-1]]
        return s * Z[idx]

    return [X, P, A, te.compute(shape64([*lead, N]), out, name=BLOCK_SCALE)]


@dataclass(frozen=True)
class Plan:
    """What a bit-plane look-up kernel computes: ``bits`` planes, groups of ``group`` inputs."""

    shape: tuple[int, ...]  # the weight's framework shape
    bits: int
    group: int

    def estimate(self, layer: Layer) -> float:
        """Cortex-M instructions (:func:`tbn_tvm.kernels.cost.bitplane_estimate`)."""
        from tbn_tvm.kernels import cost

        return cost.bitplane_estimate(layer, self.shape, self.bits, self.group)


def kernel(fmt, layer: Layer, g: int) -> Kernel:
    """The look-up kernel with groups of ``g`` inputs (``g`` in :data:`GROUPS`)."""
    if g not in GROUPS:
        raise ValueError(f"group size must be one of {GROUPS}, got {g}")
    plan = Plan(tuple(fmt.shape), fmt.k, g)
    if layer.op == "matmul":
        return make_kernel(KIND_DENSE, dense_te(layer, fmt, g), plan, group=g)
    return make_kernel(KIND_CONV, conv_te(layer, fmt, g), plan, group=g)


def kernel_for(fmt, layer: Layer) -> Kernel | None:
    """The kernel of a bit-plane layer, or None for the generic decode-in-kernel compute.

    On a Cortex-M: the look-up kernel with the group size :func:`tbn_tvm.kernels.cost.bitplane_group`
    picks, where it is estimated cheaper than decoding in the kernel and than the dense build.
    On a SIMD CPU (matmuls; convolutions decode their weight once per call,
    :mod:`tbn_tvm.kernels.conv`), by the layer's form: ``auto`` takes the GEMV on packed
    integer fields (:func:`packed_gemv_te`) for at most :data:`PACKED_MAX_ROWS` input rows and
    k ≤ 8 (``built_bytes`` in the report: ``f`` bits per weight); otherwise, and for the form
    ``bitserial``, the GEMV with the integers rebuilt in vector lanes from the planes
    (:func:`gemv_te`) for fewer than :data:`~tbn_tvm.kernels.rows.DECODED_MIN_ROWS` input rows,
    else the weight decoded once per call and a GEMM (:func:`decoded_te`); ``lut`` the look-up
    kernel (g = 4)."""
    if layer.simd and layer.form == "auto" and packed_applies(fmt, layer):
        if math.prod(layer.x_shape[:-1]) <= PACKED_MAX_ROWS:
            tensors, bufs = packed_gemv_te(layer, fmt)
            f = field_bits(fmt.k)
            why = (
                f"bit-plane integers as packed {f}-bit fields, rows in vector lanes: one shift pair per "
                f"weight instead of {fmt.k} shift-and-adds; {sum(b.nbytes for b in bufs):,} B built"
            )
            return make_kernel(KIND_PACKED, tensors, None, buffers=bufs, why=why)
    if not applies(fmt, layer):
        return None
    if layer.simd:
        if layer.op != "matmul":
            return None
        if layer.form == "lut":
            return kernel(fmt, layer, 4)
        from tbn_tvm.kernels.rows import DECODED_MIN_ROWS

        many = math.prod(layer.x_shape[:-1]) >= DECODED_MIN_ROWS
        if layer.form == "decoded" or (layer.form == "auto" and many):
            return make_kernel(KIND_DECODED, decoded_te(layer, fmt), None)
        return make_kernel(KIND_GEMV, gemv_te(layer, fmt), None)
    from tbn_tvm.kernels import cost

    g = cost.bitplane_group(layer, fmt)
    if not g:
        return None
    built = kernel(fmt, layer, g)
    est = cost.bitplane_estimate(layer, fmt.shape, fmt.k, g)
    built.info["why"] = (
        f"bit-plane look-up (T-MAC), tables of {g} inputs shared by {fmt.k} planes: estimated "
        f"{est:,.0f} instructions vs {cost.dense_estimate(layer, fmt.shape):,.0f} dense"
    )
    return built
