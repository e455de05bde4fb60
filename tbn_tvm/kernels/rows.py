"""Row reuse + bit-serial accumulation for tiled dense and conv layers.

Flattened row-major, row ``r`` of a tiled weight (row length ``K``: ``in`` for a Linear layer,
``I/groups * kh * kw`` for a conv filter) starts at bit ``r*K mod L`` of the tile.  Those
offsets are multiples of ``g = gcd(K, L)``, so there are only ``L / g`` distinct sign rows
(``out / p`` when p divides the output count).  With the scales constant along each row::

    y[r] = scale_r * z[d(r)],   d(r) = (r*K mod L) / g,   z[d] = sum_k sign(d, k) * x[k]

and for ±1 signs ``z = 2 * sum_{bit=1} x - sum x``: no multiplies, and ``sum x`` is shared by
every row.  The kernels below compute ``z`` for the distinct rows only, then scale and gather.

When no distinct row wraps around the end of the tile (``(D-1)*g + K <= L``, always the case
when p divides the output count) each row's bits are a contiguous bit string: the kernel first
re-aligns them into 32-bit words (two loads and a funnel shift per word), so the inner loop is
a shift, a test and a conditional add.  Otherwise it reads bit ``(d*g + k) mod L`` directly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from tbn_tvm.kernels import i64, shape64
from tbn_tvm.kernels.conv import conv_inputs


@dataclass(frozen=True)
class RowPlan:
    """How a tiled weight's rows reuse each other."""

    rows: int  # output rows / channels N
    row_length: int  # K
    tile_length: int  # L
    scale_chunk: int  # S
    num_scales: int

    @property
    def g(self) -> int:
        return math.gcd(self.row_length, self.tile_length)

    @property
    def distinct(self) -> int:
        """Number of distinct sign rows actually used by the ``rows`` outputs."""
        return min(self.rows, self.tile_length // self.g)

    @property
    def aligned(self) -> bool:
        """No distinct row wraps past the end of the tile."""
        return (self.distinct - 1) * self.g + self.row_length <= self.tile_length

    @property
    def words_per_row(self) -> int:
        return (self.row_length + 31) // 32


def row_plan(fmt, rows: int) -> RowPlan | None:
    """A plan when the rows can be factored (scales constant along each row), else None."""
    K = fmt.n // rows
    if K * rows != fmt.n:
        return None
    S = fmt.scale_chunk
    if fmt.num_scales != 1 and S % K != 0:
        return None
    return RowPlan(rows, K, fmt.tile_length, S, fmt.num_scales)


def _bit_of_tile(P, j):
    from tvm import tirx

    word = P[tirx.shift_right(j, i64(5))]
    return tirx.bitwise_and(
        tirx.shift_right(word, tirx.Cast("uint32", tirx.bitwise_and(j, i64(31)))), tirx.const(1, "uint32")
    )


def _row_words(plan: RowPlan, P, num_words: int):
    """``W[d, c]``: bits ``32c .. 32c+31`` of distinct row ``d`` as one word (aligned plans)."""
    from tvm import te, tirx

    D, C = plan.distinct, plan.words_per_row

    def body(d, c):
        b = d * i64(plan.g) + c * i64(32)
        w = tirx.shift_right(b, i64(5))
        s = tirx.Cast("uint32", tirx.bitwise_and(b, i64(31)))
        lo = tirx.shift_right(P[w], s)
        nxt = tirx.min(w + i64(1), i64(num_words - 1))
        hi = tirx.Select(
            s == tirx.const(0, "uint32"),
            tirx.const(0, "uint32"),
            tirx.shift_left(P[nxt], tirx.const(32, "uint32") - s),
        )
        return tirx.bitwise_or(lo, hi)

    return te.compute(shape64([D, C]), body, name="row_words")


def _row_scale_and_index(plan: RowPlan, A, n):
    from tvm import tirx

    d = tirx.floordiv(tirx.floormod(n * i64(plan.row_length), i64(plan.tile_length)), i64(plan.g))
    if plan.num_scales == 1:
        s = A[i64(0)]
    else:
        s = A[tirx.floordiv(n * i64(plan.row_length), i64(plan.scale_chunk))]
    return d, s


ACCUMULATE = ("signed", "shared_sum")


def dense_rows_te(
    x_shape: Sequence[int], fmt, plan: RowPlan, accumulate: str = "signed", dtype: str = "float32"
):
    """``Y[..., n] = scale_n * z[..., d(n)]`` with ``z`` computed once per distinct row.

    ``accumulate="signed"`` sums ``+x`` or ``-x`` by the bit (no multiplies, same rounding as a
    plain dot product); ``"shared_sum"`` uses ``2 * sum_{bit=1} x - sum x`` with ``sum x`` shared
    by all rows (fewer operations when adds are cheaper than negations, but it cancels: larger
    rounding error)."""
    from tvm import te, tirx

    *lead, K = (int(d) for d in x_shape)
    N, D = plan.rows, plan.distinct
    X = te.placeholder(shape64([*lead, K]), dtype, name="x")
    P = te.placeholder(shape64([fmt.num_words]), "uint32", name="tile_words")
    A = te.placeholder(shape64([fmt.num_scales]), "float32", name="scales")
    zero = tirx.const(0.0, dtype)
    one = tirx.const(1, "uint32")
    k = te.reduce_axis((i64(0), i64(K)), name="k")
    if plan.aligned:
        # two reduction axes: the word (kc) and the bit inside it (kb), so one word load serves
        # 32 inputs and the bit position is the loop index itself (vectorisable shifts)
        W = _row_words(plan, P, fmt.num_words)
        full, tail = divmod(K, 32)

        def signed_term(m, d, word, bit):
            xv = X[(*m, word * i64(32) + bit)]
            b = tirx.bitwise_and(tirx.shift_right(W[d, word], tirx.Cast("uint32", bit)), one)
            return tirx.Select(b == one, xv, -xv)

        if accumulate == "signed":
            parts = []
            if full:
                kc = te.reduce_axis((i64(0), i64(full)), name="kc")
                kb = te.reduce_axis((i64(0), i64(32)), name="kb")
                parts.append(
                    te.compute(
                        shape64([*lead, D]),
                        lambda *idx: te.sum(signed_term(idx[:-1], idx[-1], kc, kb), axis=[kc, kb]),
                        name="tbn_rows_sum",
                    )
                )
            if tail:  # the last, partial word of each row: its own small reduction, no guards
                kt = te.reduce_axis((i64(0), i64(tail)), name="kt")
                parts.append(
                    te.compute(
                        shape64([*lead, D]),
                        lambda *idx: te.sum(signed_term(idx[:-1], idx[-1], i64(full), kt), axis=kt),
                        name="tbn_rows_tail",
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

        def bit(d, kk):
            return tirx.bitwise_and(
                tirx.shift_right(
                    W[d, tirx.shift_right(kk, i64(5))], tirx.Cast("uint32", tirx.bitwise_and(kk, i64(31)))
                ),
                one,
            )
    else:

        def bit(d, kk):
            return _bit_of_tile(P, tirx.floormod(d * i64(plan.g) + kk, i64(plan.tile_length)))

    if accumulate == "signed":

        def rowsum(*idx):
            *m, d = idx
            return te.sum(tirx.Select(bit(d, k) == one, X[(*m, k)], -X[(*m, k)]), axis=k)

        Z = te.compute(shape64([*lead, D]), rowsum, name="tbn_rows_sum")

        def z_of(m, d):
            return Z[(*m, d)]
    elif accumulate == "shared_sum":

        def ones(*idx):
            *m, d = idx
            return te.sum(tirx.Select(bit(d, k) == one, X[(*m, k)], zero), axis=k)

        Pos = te.compute(shape64([*lead, D]), ones, name="tbn_rows_sum")
        k2 = te.reduce_axis((i64(0), i64(K)), name="k2")
        Sx = te.compute(
            shape64(lead) if lead else [], lambda *m: te.sum(X[(*m, k2)], axis=k2), name="tbn_sum_x"
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


def conv_rows_te(
    x_shape,
    fmt,
    plan: RowPlan,
    strides,
    padding,
    dilation,
    accumulate: str = "signed",
    dtype: str = "float32",
    sign_multiply: bool = False,
):
    """Grouped-free (groups = 1) N-d convolution computing only the distinct filters, bit-serial.

    ``sign_multiply`` writes the ±1 as a float factor (vectorises over output positions on a
    SIMD CPU) instead of a conditional negate (fewer instructions on a scalar MCU)."""
    from tvm import te, tirx

    X, P, A, Xp, out_spatial = conv_inputs(x_shape, fmt, strides, padding, dilation, dtype)
    B = int(x_shape[0])
    O, Cg, *ksize = fmt.shape
    nd = len(ksize)
    zero = tirx.const(0.0, dtype)
    ksz = math.prod(ksize)
    if plan.aligned:
        W = _row_words(plan, P, fmt.num_words)

        def bit(d, kk):
            return tirx.bitwise_and(
                tirx.shift_right(
                    W[d, tirx.shift_right(kk, i64(5))], tirx.Cast("uint32", tirx.bitwise_and(kk, i64(31)))
                ),
                tirx.const(1, "uint32"),
            )
    else:

        def bit(d, kk):
            return _bit_of_tile(P, tirx.floormod(d * i64(plan.g) + kk, i64(plan.tile_length)))

    rc = te.reduce_axis((i64(0), i64(Cg)), name="rc")
    rk = [te.reduce_axis((i64(0), i64(ksize[d])), name=f"rk{d}") for d in range(nd)]

    def flat_k():
        f = rc * i64(ksz)
        for d in range(nd):
            f = f + rk[d] * i64(math.prod(ksize[d + 1 :]))
        return f

    def src(b, pos, c):
        return Xp[(b, c, *[pos[d] * i64(strides[d]) + rk[d] * i64(dilation[d]) for d in range(nd)])]

    one = tirx.const(1, "uint32")
    if accumulate == "signed":

        def rowsum(b, d, *pos):
            if sign_multiply:
                # the sign as a float (+1 / -1) times the input: the factor depends on the filter
                # position only, so a loop over output positions is a plain (vector) multiply-add
                sign = tirx.Cast(dtype, bit(d, flat_k())) * tirx.const(2.0, dtype) - tirx.const(1.0, dtype)
                return te.sum(sign * src(b, pos, rc), axis=[rc, *rk])
            v = src(b, pos, rc)  # a conditional negate: cheapest on a scalar core
            return te.sum(tirx.Select(bit(d, flat_k()) == one, v, -v), axis=[rc, *rk])

        Z = te.compute(shape64([B, plan.distinct, *out_spatial]), rowsum, name="tbn_rows_conv_sum")

        def z_of(b, d, pos):
            return Z[(b, d, *pos)]
    elif accumulate == "shared_sum":

        def ones(b, d, *pos):
            return te.sum(tirx.Select(bit(d, flat_k()) == one, src(b, pos, rc), zero), axis=[rc, *rk])

        Pos = te.compute(shape64([B, plan.distinct, *out_spatial]), ones, name="tbn_rows_conv_sum")
        rc2 = te.reduce_axis((i64(0), i64(Cg)), name="rc2")
        rk2 = [te.reduce_axis((i64(0), i64(ksize[d])), name=f"rk2_{d}") for d in range(nd)]

        def box(b, *pos):
            return te.sum(
                Xp[(b, rc2, *[pos[d] * i64(strides[d]) + rk2[d] * i64(dilation[d]) for d in range(nd)])],
                axis=[rc2, *rk2],
            )

        Sx = te.compute(shape64([B, *out_spatial]), box, name="tbn_sum_x")

        def z_of(b, d, pos):
            return tirx.const(2.0, dtype) * Pos[(b, d, *pos)] - Sx[(b, *pos)]
    else:
        raise ValueError(f"accumulate must be one of {ACCUMULATE}")

    def out(b, o, *pos):
        d, s = _row_scale_and_index(plan, A, o)
        return s * z_of(b, d, pos)

    Y = te.compute(shape64([B, O, *out_spatial]), out, name=f"tbn_rows_conv{nd}d")
    return [X, P, A, Y]


def make(name: str, tensors) -> object:
    from tvm import te

    return te.create_prim_func(tensors).with_attr("global_symbol", name)
