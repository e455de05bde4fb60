"""Row reuse + bit-serial accumulation: the tiled format's structure kernels (dense and conv).

Flattened row-major, row ``r`` of a tiled weight (row length ``K``: ``in`` for a Linear layer,
``I * kh * kw`` for a conv filter) starts at bit ``r*K mod L`` of the tile.  With
``g = gcd(K, L)`` that offset depends only on ``r mod (L/g)``, so there are at most ``L/g``
distinct sign rows (``out / p`` when p divides the output count).  With the scales constant
along each row::

    y[r] = scale_r * z[d(r)],   d(r) = r mod (L/g),   z[d] = sum_k sign(start(d) + k) * x[k],
    start(d) = d*K mod L

(``D = min(rows, L/g)`` distinct rows are computed; when ``rows <= L/g`` nothing repeats and
``d(r) = r``.)  For ±1 signs ``z = 2 * sum_{bit=1} x - sum x``: no multiplies, and ``sum x`` is
shared by every row.  The kernels below compute ``z`` for the distinct rows only, then scale and
gather.

When no distinct row wraps around the end of the tile (``start(d) + K <= L`` for every ``d``,
always the case when p divides the output count) each row's bits are a contiguous bit string:
the kernel first re-aligns them into 32-bit words (two loads and a funnel shift per word), so
the inner loop is a shift, a test and a conditional add.  Otherwise it reads bit
``(start(d) + k) mod L`` directly.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from tbn_tvm.formats.bits import tir_bit
from tbn_tvm.kernels import Kernel, Layer, i64, make_kernel, shape64
from tbn_tvm.kernels.conv import conv_inputs, im2col_tap

#: Block names of the row-reuse kernels, for the schedules (one place).
BLOCK_ROW_WORDS = "row_words"
BLOCK_SUM = "tbn_rows_sum"
BLOCK_TAIL = "tbn_rows_tail"
BLOCK_CONV_SUM = "tbn_rows_conv_sum"
BLOCK_SUM_X = "tbn_sum_x"

BLOCK_DECODE = "decode_rows"
BLOCK_GEMM = "tbn_rows_gemm"
BLOCK_CONV_GEMM = "tbn_rows_conv_gemm"

#: Kernel kinds (the ``tbn.kernel`` attribute) of this module: bit-serial sums over the tile
#: bits (``rows_dense``, ``rows_conv``), or the distinct rows decoded to float once per call and
#: a plain dense GEMM / convolution on them (``rows_gemm``, ``rows_conv_gemm``: p times fewer
#: multiply-adds than the dense layer, in a form MetaSchedule tunes well).
KIND_DENSE = "rows_dense"
KIND_CONV = "rows_conv"
KIND_DENSE_GEMM = "rows_gemm"
KIND_CONV_GEMM = "rows_conv_gemm"
FORMS = ("bitserial", "decoded", "lut")  # and "auto": see auto_form


@dataclass(frozen=True)
class RowPlan:
    """How a tiled weight's rows reuse each other (see the module docstring)."""

    rows: int  # output rows / channels N
    row_length: int  # K
    tile_length: int  # L
    scale_chunk: int  # S
    num_scales: int

    @property
    def g(self) -> int:
        return math.gcd(self.row_length, self.tile_length)

    @property
    def period(self) -> int:
        """``L / g``: rows ``r`` and ``r + L/g`` are identical."""
        return self.tile_length // self.g

    @property
    def distinct(self) -> int:
        """Number of distinct rows computed: ``min(rows, L/g)``."""
        return min(self.rows, self.period)

    def start(self, d: int) -> int:
        """First tile bit of distinct row ``d``."""
        return d * self.row_length % self.tile_length

    def row_of(self, r: int) -> int:
        """The distinct row output row ``r`` reads."""
        return r % self.period

    @property
    def aligned(self) -> bool:
        """No distinct row wraps past the end of the tile."""
        return all(self.start(d) + self.row_length <= self.tile_length for d in range(self.distinct))

    @property
    def wordwise(self) -> bool:
        """Every row can be read as re-aligned 32-bit words: no row wraps past the tile end,
        or the tile has at least 32 bits (a word then spans at most the tile's end and its
        start, see :func:`_row_words_of`)."""
        return self.aligned or self.tile_length >= 32

    @property
    def words_per_row(self) -> int:
        return (self.row_length + 31) // 32

    @property
    def reuses(self) -> bool:
        """Whether some output rows share a distinct row (otherwise the plan saves nothing)."""
        return self.distinct < self.rows


def row_plan(fmt, rows: int) -> RowPlan | None:
    """A plan when the rows can be factored (scales constant along each row), else None."""
    K = fmt.n // rows
    if K * rows != fmt.n:
        return None
    S = fmt.scale_chunk
    if fmt.num_scales != 1 and S % K != 0:
        return None
    return RowPlan(rows, K, fmt.tile_length, S, fmt.num_scales)


def kernel_for(fmt, layer: Layer) -> Kernel | None:
    """The row-reuse, bit-serial kernel for a tiled or binary layer, or None when it does not
    apply (the layer option is off, scales vary inside rows, rows are not contiguous in the
    weight, grouped or transposed convolutions, float16).  A binary layer (nothing repeats)
    still gets the bit-serial sum: one plan, ``D = rows``."""
    if not layer.reuse_rows or layer.dtype != "float32":
        return None
    if layer.form == "auto":
        layer = dataclasses.replace(layer, form=auto_form(fmt, layer))
    decoded = layer.form == "decoded"
    if layer.op == "matmul":
        if layer.order != "transposed":
            return None
        plan = row_plan(fmt, layer.out_shape[-1])
        if plan is None:
            return None
        if decoded:
            return make_kernel(KIND_DENSE_GEMM, dense_rows_gemm_te(layer, fmt, plan), plan)
        g = (
            lut_group(plan)
            if (layer.form == "lut" or (layer.form == "bitserial" and not layer.simd))
            else None
        )
        if layer.form == "lut" and g is None and plan.wordwise:
            g = 4
        if g is not None:
            return make_kernel(KIND_DENSE_LUT, dense_rows_lut_te(layer, fmt, plan, g), plan, group=g)
        return make_kernel(KIND_DENSE, dense_rows_te(layer, fmt, plan), plan)
    if layer.op in ("conv1d", "conv2d") and layer.groups == 1:
        plan = row_plan(fmt, fmt.shape[0])
        if plan is None:
            return None
        if decoded:
            return make_kernel(KIND_CONV_GEMM, conv_rows_gemm_te(layer, fmt, plan), plan)
        g = (
            lut_group(plan)
            if (layer.form == "lut" or (layer.form == "bitserial" and not layer.simd))
            else None
        )
        if layer.form == "lut" and g is None and plan.wordwise:
            g = 4
        why = None
        if layer.form == "bitserial" and not layer.simd:  # a small first layer: signs in the code?
            from tbn_tvm.kernels import small_k

            if small_k.applies(layer, fmt, plan):
                from tbn_tvm.kernels.cost import small_k_choice

                signs, why = small_k_choice(layer, fmt.shape, plan, g)
                if signs:
                    return small_k.kernel(layer, fmt, plan, why)
        if g is not None:
            k = make_kernel(KIND_CONV_LUT, conv_rows_lut_te(layer, fmt, plan, g), plan, group=g)
        else:
            k = make_kernel(KIND_CONV, conv_rows_te(layer, fmt, plan), plan)
        if why:
            k.info["why"] = why
        return k
    return None


#: Rows of a matmul's input (batch x leading dims) from which the decoded form pays on a SIMD
#: CPU: decoding the D x K distinct rows once per call costs about what one bit-serial GEMV
#: costs, and a register-blocked GEMM needs a few input rows to fill its tile.
DECODED_MIN_ROWS = 8


def auto_form(fmt, layer: Layer) -> str:
    """The form ``form="auto"`` takes (the default of every build; a tuning database overrides
    it per layer with what it timed).  On a SIMD CPU (``layer.simd``): ``decoded`` where its
    register-blocked schedule (:mod:`tbn_tvm.schedules.cpu_decoded`, or the generic one of
    :mod:`tbn_tvm.schedules.cpu_generic`) applies and pays — 1-D and 2-D convolutions with
    8 | D distinct filters (filters in vectors) or 4 | output width (positions in vectors);
    matmuls with at least :data:`DECODED_MIN_ROWS` input rows and 8 | D — else ``bitserial``.
    On a scalar MCU always ``bitserial`` (look-up-table kernels where they pay)."""
    if not layer.simd or layer.dtype != "float32":
        return "bitserial"
    if layer.op == "matmul":
        if layer.order != "transposed":
            return "bitserial"
        plan = row_plan(fmt, layer.out_shape[-1])
        rows = math.prod(layer.x_shape[:-1])
        ok = plan is not None and rows >= DECODED_MIN_ROWS and padded_distinct(plan, layer) % 8 == 0
        return "decoded" if ok else "bitserial"
    if layer.op in ("conv1d", "conv2d") and layer.groups == 1:
        plan = row_plan(fmt, fmt.shape[0])
        if plan is None:
            return "bitserial"
        from tbn_tvm.schedules.cpu_generic import conv_mode

        try:  # decoded where a register-blocked conv schedule applies to the distinct filters
            Dp = padded_distinct(plan, layer)
            conv_mode(Dp, Dp, fmt.shape[1], layer.out_shape[-1], 16)
        except ValueError:
            return "bitserial"
        return "decoded"
    return "bitserial"


def _start(plan: RowPlan, d):
    """TIR: first tile bit of distinct row ``d``."""
    from tvm import tirx

    if plan.distinct == 1:
        return i64(0)
    return tirx.floormod(d * i64(plan.row_length), i64(plan.tile_length))


def _row_words(plan: RowPlan, P, num_words: int):
    """``W[d, c]``: bits ``32c .. 32c+31`` of distinct row ``d`` as one word (aligned plans)."""
    return _row_words_of(plan, P, num_words, plan.words_per_row)


def _row_words_of(plan: RowPlan, P, num_words: int, C: int):
    """The first ``C`` re-aligned words of each distinct row (see :func:`_row_words`).

    Word ``c`` of row ``d`` holds tile bits ``p, p+1, ...`` from ``p = start(d) + 32c`` (mod
    ``L`` where rows wrap): a funnel shift of two tile words; a word that crosses the tile's
    end takes its high bits from the tile's first word (``L >= 32``: at most one crossing).
    32-bit arithmetic throughout (int64 costs a call on a Cortex-M)."""
    from tvm import te, tirx

    D, L = plan.distinct, plan.tile_length
    u32 = "uint32"
    one = tirx.const(1, u32)

    def extract(pos):  # 32 tile bits from bit ``pos`` (those past the tile's end: unspecified)
        s = tirx.Cast(u32, tirx.bitwise_and(tirx.Cast("int32", pos), tirx.const(31, "int32")))
        w = tirx.shift_right(pos, i64(5))
        lo = tirx.shift_right(P[w], s)
        nxt = tirx.min(w + i64(1), i64(num_words - 1))
        # (x << (31 - s)) << 1: the next word's low bits, 0 when s == 0, with no branch and no
        # shift by 32 (undefined in C)
        hi = tirx.shift_left(tirx.shift_left(P[nxt], tirx.const(31, u32) - s), one)
        return tirx.bitwise_or(lo, hi)

    def body(d, c):
        if plan.aligned:
            return extract(_start(plan, d) + c * i64(32))
        p = tirx.floormod(_start(plan, d) + c * i64(32), i64(L))
        left = tirx.Cast(u32, tirx.min(i64(L) - p, i64(31)))  # bits before the tile's end (<32)
        mask = tirx.shift_left(one, left) - one
        wrapped = tirx.bitwise_or(tirx.bitwise_and(extract(p), mask), tirx.shift_left(P[i64(0)], left))
        return tirx.Select(i64(L) - p >= i64(32), extract(p), wrapped)

    return te.compute(shape64([D, C]), body, name=BLOCK_ROW_WORDS)


def _row_bit(plan: RowPlan, P, num_words: int):
    """``bit(d, k)``: bit ``k`` of distinct row ``d`` (from re-aligned words when aligned)."""
    from tvm import tirx

    if plan.wordwise:
        W = _row_words(plan, P, num_words)

        def bit(d, kk):
            return tirx.bitwise_and(
                tirx.shift_right(
                    W[d, tirx.shift_right(kk, i64(5))], tirx.Cast("uint32", tirx.bitwise_and(kk, i64(31)))
                ),
                tirx.const(1, "uint32"),
            )

        return bit

    def bit(d, kk):
        return tir_bit(P, tirx.floormod(_start(plan, d) + kk, i64(plan.tile_length)))

    return bit


def _row_scale_and_index(plan: RowPlan, A, n):
    """TIR: the distinct row output row ``n`` reads, and its scale."""
    from tvm import tirx

    d = n if plan.rows <= plan.period else tirx.floormod(n, i64(plan.period))
    if plan.num_scales == 1:
        s = A[i64(0)]
    else:
        s = A[tirx.floordiv(n * i64(plan.row_length), i64(plan.scale_chunk))]
    return d, s


ACCUMULATE = ("signed", "shared_sum")


def dense_rows_te(layer: Layer, fmt, plan: RowPlan, accumulate: str = "signed") -> list:
    """``Y[..., n] = scale_n * z[..., d(n)]`` with ``z`` computed once per distinct row.

    ``accumulate="signed"`` sums ``+x`` or ``-x`` by the bit (no multiplies, same rounding as a
    plain dot product); ``"shared_sum"`` uses ``2 * sum_{bit=1} x - sum x`` with ``sum x`` shared
    by all rows (fewer operations when adds are cheaper than negations, but it cancels: larger
    rounding error)."""
    from tvm import te, tirx

    dtype = layer.dtype
    *lead, K = layer.x_shape
    N, D = plan.rows, plan.distinct
    X = te.placeholder(shape64([*lead, K]), dtype, name="x")
    bufs = fmt.placeholders()
    P, A = bufs["tile"], bufs["scales"]
    zero = tirx.const(0.0, dtype)
    one = tirx.const(1, "uint32")
    k = te.reduce_axis((i64(0), i64(K)), name="k")
    if plan.wordwise and accumulate == "signed":
        # two reduction axes: the word (kc) and the bit inside it (kb), so one word load serves
        # 32 inputs and the bit position is the loop index itself (vectorisable shifts)
        W = _row_words(plan, P, fmt.num_words)
        full, tail = divmod(K, 32)

        def signed_term(m, d, word, bit):
            xv = X[(*m, word * i64(32) + bit)]
            b = tirx.bitwise_and(tirx.shift_right(W[d, word], tirx.Cast("uint32", bit)), one)
            return tirx.Select(b == one, xv, -xv)

        parts = []
        if full:
            kc = te.reduce_axis((i64(0), i64(full)), name="kc")
            kb = te.reduce_axis((i64(0), i64(32)), name="kb")
            parts.append(
                te.compute(
                    shape64([*lead, D]),
                    lambda *idx: te.sum(signed_term(idx[:-1], idx[-1], kc, kb), axis=[kc, kb]),
                    name=BLOCK_SUM,
                )
            )
        if tail:  # the last, partial word of each row: its own small reduction, no guards
            kt = te.reduce_axis((i64(0), i64(tail)), name="kt")
            parts.append(
                te.compute(
                    shape64([*lead, D]),
                    lambda *idx: te.sum(signed_term(idx[:-1], idx[-1], i64(full), kt), axis=kt),
                    name=BLOCK_TAIL,
                )
            )

        def out(*idx):
            *m, n = idx
            d, s = _row_scale_and_index(plan, A, n)
            z = parts[0][(*m, d)]
            for extra in parts[1:]:
                z = z + extra[(*m, d)]
            return s * z

        return [X, P, A, te.compute(shape64([*lead, N]), out, name="tbn_rows_dense")]

    bit = _row_bit(plan, P, fmt.num_words)
    if accumulate == "signed":

        def rowsum(*idx):
            *m, d = idx
            return te.sum(tirx.Select(bit(d, k) == one, X[(*m, k)], -X[(*m, k)]), axis=k)

        Z = te.compute(shape64([*lead, D]), rowsum, name=BLOCK_SUM)

        def z_of(m, d):
            return Z[(*m, d)]
    elif accumulate == "shared_sum":

        def ones(*idx):
            *m, d = idx
            return te.sum(tirx.Select(bit(d, k) == one, X[(*m, k)], zero), axis=k)

        Pos = te.compute(shape64([*lead, D]), ones, name=BLOCK_SUM)
        k2 = te.reduce_axis((i64(0), i64(K)), name="k2")
        Sx = te.compute(
            shape64(lead) if lead else [], lambda *m: te.sum(X[(*m, k2)], axis=k2), name=BLOCK_SUM_X
        )

        def z_of(m, d):
            return tirx.const(2.0, dtype) * Pos[(*m, d)] - Sx[tuple(m)]
    else:
        raise ValueError(f"accumulate must be one of {ACCUMULATE}")

    def out(*idx):
        *m, n = idx
        d, s = _row_scale_and_index(plan, A, n)
        return s * z_of(m, d)

    Y = te.compute(shape64([*lead, N]), out, name="tbn_rows_dense")
    return [X, P, A, Y]


def conv_rows_te(layer: Layer, fmt, plan: RowPlan, accumulate: str = "signed") -> list:
    """Ungrouped N-d convolution computing only the distinct filters, bit-serially.

    On a SIMD CPU (``layer.simd``) the ±1 is written as a float factor (vectorises over output
    positions) instead of a conditional negate (fewer instructions on a scalar MCU)."""
    from tvm import te, tirx

    dtype = layer.dtype
    X, bufs, Xp, out_spatial = conv_inputs(layer, fmt)
    P, A = bufs["tile"], bufs["scales"]
    B = layer.x_shape[0]
    O, Cg, *ksize = fmt.shape
    nd = len(ksize)
    zero = tirx.const(0.0, dtype)
    ksz = math.prod(ksize)
    bit = _row_bit(plan, P, fmt.num_words)
    rc = te.reduce_axis((i64(0), i64(Cg)), name="rc")
    rk = [te.reduce_axis((i64(0), i64(ksize[d])), name=f"rk{d}") for d in range(nd)]

    def flat_k():
        f = rc * i64(ksz)
        for d in range(nd):
            f = f + rk[d] * i64(math.prod(ksize[d + 1 :]))
        return f

    def src(b, pos, c):
        return Xp[
            (b, c, *[pos[d] * i64(layer.strides[d]) + rk[d] * i64(layer.dilation[d]) for d in range(nd)])
        ]

    one = tirx.const(1, "uint32")
    if accumulate == "signed":

        def rowsum(b, d, *pos):
            if layer.simd:
                # the sign as a float (+1 / -1) times the input: the factor depends on the filter
                # position only, so a loop over output positions is a plain (vector) multiply-add
                sign = tirx.Cast(dtype, bit(d, flat_k())) * tirx.const(2.0, dtype) - tirx.const(1.0, dtype)
                return te.sum(sign * src(b, pos, rc), axis=[rc, *rk])
            v = src(b, pos, rc)  # a conditional negate: cheapest on a scalar core
            return te.sum(tirx.Select(bit(d, flat_k()) == one, v, -v), axis=[rc, *rk])

        Z = te.compute(shape64([B, plan.distinct, *out_spatial]), rowsum, name=BLOCK_CONV_SUM)

        def z_of(b, d, pos):
            return Z[(b, d, *pos)]
    elif accumulate == "shared_sum":

        def ones(b, d, *pos):
            return te.sum(tirx.Select(bit(d, flat_k()) == one, src(b, pos, rc), zero), axis=[rc, *rk])

        Pos = te.compute(shape64([B, plan.distinct, *out_spatial]), ones, name=BLOCK_CONV_SUM)
        rc2 = te.reduce_axis((i64(0), i64(Cg)), name="rc2")
        rk2 = [te.reduce_axis((i64(0), i64(ksize[d])), name=f"rk2_{d}") for d in range(nd)]

        def box(b, *pos):
            return te.sum(
                Xp[
                    (
                        b,
                        rc2,
                        *[
                            pos[d] * i64(layer.strides[d]) + rk2[d] * i64(layer.dilation[d])
                            for d in range(nd)
                        ],
                    )
                ],
                axis=[rc2, *rk2],
            )

        Sx = te.compute(shape64([B, *out_spatial]), box, name=BLOCK_SUM_X)

        def z_of(b, d, pos):
            return tirx.const(2.0, dtype) * Pos[(b, d, *pos)] - Sx[(b, *pos)]
    else:
        raise ValueError(f"accumulate must be one of {ACCUMULATE}")

    def out(b, o, *pos):
        d, s = _row_scale_and_index(plan, A, o)
        return s * z_of(b, d, pos)

    Y = te.compute(shape64([B, O, *out_spatial]), out, name=f"tbn_rows_conv{nd}d")
    return [X, P, A, Y]


def padded_distinct(plan: RowPlan, layer: Layer) -> int:
    """Distinct rows the decoded form computes: ``D``, or on a SIMD CPU ``D`` rounded up to a
    multiple of 8 when 8 does not divide it (``D = 22`` -> 24: the extra rows decode to zero and
    no output reads them; the filters then fill whole vectors)."""
    D = plan.distinct
    if layer.simd and D > 8 and D % 8:
        return -(-D // 8) * 8
    return D


def _decode_rows(plan: RowPlan, P, num_words: int, dtype: str, rows: int | None = None):
    """``Wd[d, k]``: the distinct rows as float ±1, ``[D, K]`` (a conv's filter flattened
    row-major over ``[C/groups, *kernel]``; ``rows`` > D: rows past D are 0).  Read from the
    re-aligned row words (:func:`_row_words`: one word per 32 elements, bit ``k & 31`` of word
    ``k >> 5``, shifts by the loop index that a CPU vectorises) where the plan allows, else bit
    by bit from the tile."""
    from tvm import te, tirx

    one = tirx.const(1.0, dtype)
    zero = tirx.const(0.0, dtype)
    D, K = plan.distinct, plan.row_length
    rows = D if rows is None else rows

    def real(d):  # a padding row reads row 0 and is zeroed
        return d if rows == D else tirx.Select(d < i64(D), d, i64(0))

    def keep(d, v):
        return v if rows == D else tirx.Select(d < i64(D), v, zero)

    if plan.wordwise:
        W = _row_words(plan, P, num_words)

        def body(d, k):
            word = W[real(d), tirx.shift_right(k, i64(5))]
            bit = tirx.bitwise_and(
                tirx.shift_right(word, tirx.Cast("uint32", tirx.bitwise_and(k, i64(31)))),
                tirx.const(1, "uint32"),
            )
            return keep(d, tirx.Select(bit == tirx.const(1, "uint32"), one, -one))

        return te.compute(shape64([rows, K]), body, name=BLOCK_DECODE)

    def body_bits(d, k):
        bit = tir_bit(P, tirx.floormod(_start(plan, real(d)) + k, i64(plan.tile_length)))
        return keep(d, tirx.Select(bit == tirx.const(1, "uint32"), one, -one))

    return te.compute(shape64([rows, K]), body_bits, name=BLOCK_DECODE)


def dense_rows_gemm_te(layer: Layer, fmt, plan: RowPlan) -> list:
    """``Z = X @ Wd^T`` on the ``D`` decoded distinct rows, then ``Y[..., n] = s_n Z[..., d(n)]``."""
    from tvm import te

    dtype = layer.dtype
    *lead, K = layer.x_shape
    X = te.placeholder(shape64([*lead, K]), dtype, name="x")
    bufs = fmt.placeholders()
    P, A = bufs["tile"], bufs["scales"]
    Dp = padded_distinct(plan, layer)
    Wd = _decode_rows(plan, P, fmt.num_words, dtype, Dp)
    k = te.reduce_axis((i64(0), i64(K)), name="k")
    Z = te.compute(
        shape64([*lead, Dp]),
        lambda *idx: te.sum(X[(*idx[:-1], k)] * Wd[idx[-1], k], axis=k),
        name=BLOCK_GEMM,
    )

    def out(*idx):
        *m, n = idx
        d, s = _row_scale_and_index(plan, A, n)
        return s * Z[(*m, d)]

    return [X, P, A, te.compute(shape64([*lead, plan.rows]), out, name="tbn_rows_dense")]


def conv_rows_gemm_te(layer: Layer, fmt, plan: RowPlan) -> list:
    """A plain convolution with the ``D`` decoded distinct filters, then scale and gather."""
    from tvm import te

    from tbn_tvm.kernels.conv import computed_width, conv_out_spatial

    dtype = layer.dtype
    spatial = conv_out_spatial(layer, fmt)
    computed = [*spatial[:-1], computed_width(layer, spatial[-1])]
    X, bufs, Xp, out_spatial = conv_inputs(layer, fmt, computed)
    P, A = bufs["tile"], bufs["scales"]
    B = layer.x_shape[0]
    O, Cg, *ksize = fmt.shape
    nd = len(ksize)
    Dp = padded_distinct(plan, layer)
    Wd = _decode_rows(plan, P, fmt.num_words, dtype, Dp)
    rc = te.reduce_axis((i64(0), i64(Cg)), name="rc")
    rk = [te.reduce_axis((i64(0), i64(ksize[d])), name=f"rk{d}") for d in range(nd)]

    def flat(c):  # the filter element (c, *rk) in the flattened row
        f = c
        for j in range(nd):
            f = f * i64(ksize[j]) + rk[j]
        return f

    def conv(b, d, *pos):
        src = [pos[j] * i64(layer.strides[j]) + rk[j] * i64(layer.dilation[j]) for j in range(nd)]
        return te.sum(Xp[(b, rc, *src)] * Wd[d, flat(rc)], axis=[rc, *rk])

    Z = te.compute(shape64([B, Dp, *computed]), conv, name=BLOCK_CONV_GEMM)

    def out(b, o, *pos):
        d, s = _row_scale_and_index(plan, A, o)
        return s * Z[(b, d, *pos)]

    return [X, P, A, te.compute(shape64([B, O, *out_spatial]), out, name=f"tbn_rows_conv{nd}d")]


# ----------------------------------------------------------------------------------------------
# Look-up tables over groups of inputs (T-MAC's idea, in float32: no quantisation of the table)
# ----------------------------------------------------------------------------------------------
KIND_DENSE_LUT = "rows_lut"
KIND_CONV_LUT = "rows_conv_lut"
BLOCK_LUT_HALF = "tbn_lut_half"
BLOCK_LUT_TABLE = "tbn_lut_table"
BLOCK_LUT_SUM = "tbn_rows_lut_sum"
BLOCK_LUT_TAIL = "tbn_rows_lut_tail"

#: Instruction estimates on a Cortex-M4 (measured on QEMU for this project's kernels): one
#: element of the bit-serial sum; one table look-up (field extract, load, add); one table entry.
MCU_COST_BITSERIAL = 5.8
MCU_COST_LOOKUP = 4.5
MCU_COST_ENTRY = 5.0


def lut_group(plan: RowPlan) -> int | None:
    """The group size ``g`` whose look-up kernel an MCU runs in the fewest estimated
    instructions, or None when the bit-serial kernel is estimated cheaper (or rows wrap)."""
    if not plan.wordwise:
        return None
    K, D = plan.row_length, plan.distinct
    best, best_cost = None, MCU_COST_BITSERIAL * D * K
    for g in (2, 4):
        groups = -(-K // g)
        build = groups * ((1 << g) + 2 * (1 << (g // 2))) * MCU_COST_ENTRY / 2
        cost = build + D * groups * MCU_COST_LOOKUP
        if cost < best_cost:
            best, best_cost = g, cost
    return best


def _lut_sums(lead: list, K: int, xv, plan: RowPlan, P, nwords: int, g: int, dtype: str, words=None):
    """The look-up-table row sums ``z(m, d)`` over inputs ``xv(m, k)``, ``k < K`` (see
    :func:`dense_rows_lut_te`); ``lead`` are the leading (batch, position) extents.  ``words``
    (a ``[D, ceil(K/32)]`` uint32 tensor): the rows' sign bits as words, where they do not
    come from a tile ``P`` (a codebook's filters)."""
    from tvm import te, tirx

    groups = -(-K // g)
    h = g // 2
    one = tirx.const(1, "uint32")
    zero = tirx.const(0.0, dtype)

    def x_at(m, k):
        if K % g == 0:  # no group runs past the row: no guard
            return xv(m, k)
        return tirx.if_then_else(k < i64(K), xv(m, tirx.min(k, i64(K - 1))), zero)

    def half(*idx):  # H[..., grp, part, e]: ±x of the h inputs of one half of the group
        *m, grp, part, e = idx
        s = None
        for b in range(h):
            v = x_at(m, grp * i64(g) + part * i64(h) + i64(b))
            bit = tirx.bitwise_and(tirx.shift_right(tirx.Cast("uint32", e), tirx.const(b, "uint32")), one)
            term = tirx.Select(bit == one, v, -v)
            s = term if s is None else s + term
        return s

    mask = (1 << h) - 1

    def table(first: int, count: int, suffix: str):
        """The tables of groups ``first .. first + count`` (one tensor per consumer, so that a
        schedule can build each chunk where it is read)."""
        H = te.compute(
            shape64([*lead, count, 2, 1 << h]),
            lambda *idx: half(*idx[:-3], idx[-3] + i64(first), idx[-2], idx[-1]),
            name=BLOCK_LUT_HALF + suffix,
        )
        return te.compute(
            shape64([*lead, count, 1 << g]),
            lambda *idx: (
                H[(*idx[:-2], idx[-2], i64(0), tirx.bitwise_and(idx[-1], i64(mask)))]
                + H[(*idx[:-2], idx[-2], i64(1), tirx.shift_right(idx[-1], i64(h)))]
            ),
            name=BLOCK_LUT_TABLE + suffix,
        )

    # whole 32-bit words of each row: its bits re-aligned into words (as the bit-serial kernel
    # does), field kb of word kc being (RW[d, kc] >> g*kb) & mask, a constant shift once kb is
    # unrolled; the last, partial word's groups read the tile directly
    per_word = 32 // g
    full, rest = divmod(K, 32)
    fmask = tirx.const((1 << g) - 1, "uint32")
    parts = []
    if full:
        T = table(0, full * per_word, "")
        RW = words if words is not None else _row_words_of(plan, P, nwords, full)
        kc = te.reduce_axis((i64(0), i64(full)), name="kc")
        kb = te.reduce_axis((i64(0), i64(per_word)), name="kb")

        def lookup(m, d):
            e = tirx.bitwise_and(tirx.shift_right(RW[d, kc], tirx.Cast("uint32", kb * i64(g))), fmask)
            return T[(*m, kc * i64(per_word) + kb, tirx.Cast("int64", e))]

        parts.append(
            te.compute(
                shape64([*lead, plan.distinct]),
                lambda *idx: te.sum(lookup(idx[:-1], idx[-1]), axis=[kc, kb]),
                name=BLOCK_LUT_SUM,
            )
        )
    if rest:
        T_tail = table(full * per_word, groups - full * per_word, "_tail")
        kt = te.reduce_axis((i64(0), i64(-(-rest // g))), name="kt")
        straddles = 32 % g != 0 or any(plan.start(d) % g for d in range(plan.distinct))

        if words is not None or not plan.aligned:  # the re-aligned last word of each row
            RWt = words if words is not None else _row_words_of(plan, P, nwords, full + 1)

            def field(d):
                sh = tirx.Cast("uint32", kt * i64(g))
                return tirx.Cast("int64", tirx.bitwise_and(tirx.shift_right(RWt[d, i64(full)], sh), fmask))

        def aligned_field(d):
            o = tirx.Cast("int32", _start(plan, d) + i64(32 * full) + kt * i64(g))
            # a zero-padded patch reads a few bits past the last row: stay inside the tile
            w = tirx.min(tirx.shift_right(o, tirx.const(5, "int32")), tirx.const(nwords - 1, "int32"))
            sh = tirx.Cast("uint32", tirx.bitwise_and(o, tirx.const(31, "int32")))
            bits = tirx.shift_right(P[w], sh)
            if straddles:
                nxt = P[tirx.min(w + tirx.const(1, "int32"), tirx.const(nwords - 1, "int32"))]
                hi = tirx.shift_left(tirx.shift_left(nxt, tirx.const(31, "uint32") - sh), one)
                bits = tirx.bitwise_or(bits, hi)
            return tirx.Cast("int64", tirx.bitwise_and(bits, fmask))

        if words is None and plan.aligned:
            field = aligned_field
        parts.append(
            te.compute(
                shape64([*lead, plan.distinct]),
                lambda *idx: te.sum(T_tail[(*idx[:-1], kt, field(idx[-1]))], axis=kt),
                name=BLOCK_LUT_TAIL,
            )
        )

    def z_of(m, d):
        z = parts[0][(*m, d)]
        for extra in parts[1:]:
            z = z + extra[(*m, d)]
        return z

    return z_of


def dense_rows_lut_te(layer: Layer, fmt, plan: RowPlan, g: int = 4) -> list:
    """``Y[..., n] = s_n · Σ_grp T[..., grp, bits(d(n), grp)]``: for every group of ``g``
    inputs the ``2^g`` signed sums are built once per input vector (from two half tables of
    ``2^(g/2)`` entries: one add per entry) and shared by all distinct rows; each row then reads
    one entry per ``g`` weights, indexed by its ``g`` tile bits (T-MAC, EuroSys 2025, in float32:
    exact up to the order of the additions)."""
    from tvm import te

    *lead, K = layer.x_shape
    X = te.placeholder(shape64([*lead, K]), layer.dtype, name="x")
    bufs = fmt.placeholders()
    P, A = bufs["tile"], bufs["scales"]
    z_of = _lut_sums(lead, K, lambda m, k: X[(*m, k)], plan, P, fmt.num_words, g, layer.dtype)

    def out(*idx):
        *m, n = idx
        d, s = _row_scale_and_index(plan, A, n)
        return s * z_of(m, d)

    return [X, P, A, te.compute(shape64([*lead, plan.rows]), out, name="tbn_rows_dense")]


BLOCK_PATCH = "tbn_patch"


def patch_block(lead: list, K: int, xv, dtype: str, g: int = 1):
    """``P[*m, k] = xv(m, k)``: the ``K`` inputs of one look-up vector (a convolution's im2col
    patch, zero padding resolved) as their own block, padded with zeros to a whole number of
    look-up groups of ``g``, so that the look-up tables read them without bounds checks; a
    Cortex-M schedule computes it per output position (a few hundred bytes) right before the
    tables.  Returns ``(P, padded K)``."""
    from tvm import te, tirx

    k_pad = -(-K // g) * g

    def body(*idx):
        m, k = idx[:-1], idx[-1]
        if k_pad == K:
            return xv(m, k)
        return tirx.if_then_else(k < i64(K), xv(m, tirx.min(k, i64(K - 1))), tirx.const(0.0, dtype))

    return te.compute(shape64([*lead, k_pad]), body, name=BLOCK_PATCH), k_pad


def conv_rows_lut_te(layer: Layer, fmt, plan: RowPlan, g: int = 4, words_of=None) -> list:
    """The look-up-table form of an ungrouped convolution: per output position the input patch
    (``C·kh·kw`` values, im2col order = the filter's flat order) is the input vector of
    :func:`dense_rows_lut_te`; only the distinct filters are summed, then scaled and gathered.
    ``words_of(bufs)``: the filters' sign words ``[D, ceil(K/32)]`` from the format's buffers,
    for a format without a ``tile`` (the codebook format); default: re-aligned tile words."""
    from tvm import te

    X, bufs, Xp, out_spatial = conv_inputs(layer, fmt)
    P, A = bufs.get("tile"), bufs["scales"]
    words = words_of(bufs) if words_of is not None else None
    B = layer.x_shape[0]
    O, Cg, *ksize = fmt.shape
    nd = len(ksize)
    ksz = math.prod(ksize)
    K = Cg * ksz

    patch = im2col_tap(layer, Xp, ksize)

    lead = [B, *out_spatial]
    im2col, k_pad = patch_block(lead, K, patch, layer.dtype, g)  # zeros past K: any sign bits do
    z_of = _lut_sums(
        lead,
        k_pad,
        lambda m, k: im2col[(*m, k)],
        plan,
        P,
        getattr(fmt, "num_words", 0),
        g,
        layer.dtype,
        words,
    )

    def out(b, o, *pos):
        d, s = _row_scale_and_index(plan, A, o)
        return s * z_of((b, *pos), d)

    return [X, *bufs.values(), te.compute(shape64([B, O, *out_spatial]), out, name=f"tbn_rows_conv{nd}d")]
