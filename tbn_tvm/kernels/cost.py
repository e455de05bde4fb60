"""Instruction estimates of a layer on a Cortex-M4: its compact kernel against TVM's dense build.

The compiler keeps a layer's compact weight (that is what the project is for) and picks the
cheapest kernel for it (:func:`tbn_tvm.kernels.rows.lut_group`: look-up tables or bit-serial
sums); these estimates say whether that kernel is still expected to be slower than the plain
fp32 build of the same layer, so that ``compile`` can say so and why.

Every constant is a per-operation instruction count measured on QEMU (``mps2-an386``, gcc 12
-O2, the project's instruction-count plugin, per kernel with ``run --per-layer``):

====================  =====  ==============================================================
dense GEMM             7.0   per multiply-add: TVM's fp32 ``matmul`` (64x256: 115,264)
dense conv            17.3   per multiply-add: TVM's fp32 ``conv2d`` (16x8x3x3 on 12x12)
bit-serial sum         5.8   per weight of a distinct row (:data:`rows.MCU_COST_BITSERIAL`)
look-up, dense         4.5   per group of ``g`` weights (:data:`rows.MCU_COST_LOOKUP`)
look-up, conv          4.9   per group and distinct filter, per output position
conv tables           197 / 125  per group (g = 4 / 2) with its im2col taps, per position
decode-in-kernel      18 / 38  per multiply-add, GEMM / conv (bit-plane, codebook direct)
codebook look-up       7.2   per table look-up of a codeword's dot product
codebook gather        7.0   per output channel and input channel (byte index, load, add)
codebook tables       44 / 15  per 16-entry table / per im2col tap (padding checked)
====================  =====  ==============================================================

Estimates, not measurements: they rank kernels and flag the slow cases; ``compile`` measures
the real counts per layer on QEMU (``tbn-tvm inspect OUT_DIR``).
"""

from __future__ import annotations

import math

from tbn_tvm.kernels import rows

MCU_DENSE_GEMM = 7.0
MCU_DENSE_CONV = 17.3
MCU_CONV_LOOKUP = 4.9
MCU_CONV_TABLE = {4: 197.0, 2: 125.0}
MCU_DECODE_GEMM = 18.0
MCU_DECODE_CONV = 38.0
MCU_GATHER = 3.0  # scale and copy one output
MCU_GATHER_ADD = 7.0  # one indexed load and add (a codebook conv's per-channel look-up)
MCU_PATCH_TAP = 15.0  # one im2col tap with its padding check
MCU_TABLE = 44.0  # one 16-entry look-up table from two half tables
MCU_CODEWORD_LOOKUP = 7.2  # one look-up of a codeword's dot product (field, load, add)


def _positions(layer) -> int:
    """Output vectors the layer computes: batch x spatial positions (conv) or leading dims."""
    if layer.op == "matmul":
        return math.prod(layer.out_shape[:-1])
    return layer.out_shape[0] * math.prod(layer.out_shape[2:])


def _rows_cols(layer, weight_shape) -> tuple[int, int]:
    """(output rows N, multiply-adds per output K) of the layer."""
    if layer.op == "matmul":
        return layer.out_shape[-1], layer.x_shape[-1]
    return weight_shape[0], math.prod(weight_shape[1:])


def dense_estimate(layer, weight_shape) -> float:
    """Instructions of TVM's dense fp32 build of ``layer`` (``weight_shape``: the format's
    framework-layout shape)."""
    n, k = _rows_cols(layer, weight_shape)
    per = MCU_DENSE_GEMM if layer.op == "matmul" else MCU_DENSE_CONV
    return per * n * k * _positions(layer)


def compact_estimate(layer, weight_shape, kind: str, plan=None, group: int | None = None) -> float:
    """Instructions of the compact kernel ``kind`` (``tbn.kernel``) for ``layer``."""
    if plan is not None and hasattr(plan, "estimate"):  # issue 23's look-up kernels
        return plan.estimate(layer)
    n, k = _rows_cols(layer, weight_shape)
    m = _positions(layer)
    gather = MCU_GATHER * n * m
    if plan is not None and kind in (rows.KIND_DENSE_LUT, rows.KIND_CONV_LUT) and group:
        groups = -(-plan.row_length // group)
        if kind == rows.KIND_CONV_LUT:
            return m * groups * (MCU_CONV_TABLE.get(group, 197.0) + MCU_CONV_LOOKUP * plan.distinct) + gather
        build = groups * ((1 << group) + 2 * (1 << (group // 2))) * rows.MCU_COST_ENTRY / 2
        return m * (build + plan.distinct * groups * rows.MCU_COST_LOOKUP) + gather
    if plan is not None and kind in (rows.KIND_DENSE, rows.KIND_CONV):
        return m * rows.MCU_COST_BITSERIAL * plan.distinct * plan.row_length + gather
    if plan is not None and kind == "rows_conv_signs":
        return small_k_estimate(layer, plan)
    per = MCU_DECODE_GEMM if layer.op == "matmul" else MCU_DECODE_CONV
    return per * n * k * m


# ------------------------------------------------------------------ small-K convolutions (issue 22)
# fitted (relative least squares) to QEMU counts of five convs: 16x1x3x3 at 28x28 (141,776),
# 8x6x3x3 p=2 at 10x10 (51,924), 16x3x3x3 at 32x32 (560,981), 32x3x3x3 p=4 at 16x16 (178,529),
# 16x8x3x3 p=4 at 8x8 (48,137); the estimates are 0.68-1.21x of those counts
MCU_SIGNS_TAP = 7.5  # one patch tap per position (address, padding test, load, store)
MCU_SIGNS_TERM = 0.5  # one signed term of a distinct filter's sum (an add or a sub)
MCU_SIGNS_OUT = 5.0  # one output: its sum, scale, epilogue, store, loop


def small_k_estimate(layer, plan) -> float:
    """Instructions of the signs-in-code convolution (:mod:`tbn_tvm.kernels.small_k`): per
    output position ``K`` patch taps, ``D x K`` signed terms and ``N`` outputs."""
    m = _positions(layer)
    return m * (
        MCU_SIGNS_TAP * plan.row_length
        + MCU_SIGNS_TERM * plan.distinct * plan.row_length
        + MCU_SIGNS_OUT * plan.rows
    )


def small_k_choice(layer, weight_shape, plan, group: int | None) -> tuple[bool, str]:
    """Whether a small convolution (the first layer of an image model: K = C x kh x kw of 9 or
    27) takes the signs-in-code kernel, by estimated instructions against the look-up-table
    (``group``) or bit-serial kernel and the dense build; and the sentence the compile summary
    prints."""
    signs = small_k_estimate(layer, plan)
    kind = rows.KIND_CONV_LUT if group else rows.KIND_CONV
    other = compact_estimate(layer, weight_shape, kind, plan, group)
    dense = dense_estimate(layer, weight_shape)
    name = f"look-up tables (g={group})" if group else "bit-serial sums"
    k, d = plan.row_length, plan.distinct
    if signs < other:
        return True, (
            f"signs in the code (K = {k} taps, {d} distinct filters: {d * k} adds/subtracts per position), "
            f"estimated {signs:,.0f} instructions vs {other:,.0f} for {name} and {dense:,.0f} dense"
        )
    return False, f"{name}: estimated {other:,.0f} instructions vs {signs:,.0f} with the signs in the code"


#: Kernel kinds :func:`compact_estimate` models itself (the tiled format's row kernels and the
#: generic decode-in-kernel computes); :func:`built_dense_note` decides only for these.
ESTIMATED_KINDS = frozenset(
    (
        rows.KIND_DENSE,
        rows.KIND_CONV,
        rows.KIND_DENSE_LUT,
        rows.KIND_CONV_LUT,
        "decode_dense",
        "decode_conv",
        "rows_conv_signs",
    )
)


def _slower_than_dense(layer, fmt, kernel) -> tuple[float, float, int, int] | None:
    """``(compact, dense, compact_bytes, dense_bytes)`` when ``kernel`` is estimated to cost
    more instructions than TVM's dense fp32 build of ``layer``; None when it is not."""
    shape = fmt.shape
    dense = dense_estimate(layer, shape)
    compact = compact_estimate(layer, shape, kernel.kind, kernel.plan, kernel.info.get("group"))
    if compact <= dense:
        return None
    return compact, dense, fmt.storage_bits() // 8, math.prod(shape) * 4


def built_dense_note(layer, fmt, kernel) -> str | None:
    """Issue 22's rule on a Cortex-M: no layer of a compressed build may cost more instructions
    than the same layer of its ``--no-compress`` build.  When the best compact kernel ``kernel``
    of ``layer`` is estimated slower than TVM's dense fp32 build (:func:`compact_estimate` vs
    :func:`dense_estimate`), the layer is built dense (its float weight in flash) and this is
    the sentence ``compile`` prints (None: keep the compact kernel)."""
    if kernel.kind not in ESTIMATED_KINDS:  # no estimate of its own here: keep it
        return None
    slower = _slower_than_dense(layer, fmt, kernel)
    if slower is None:
        return None
    compact, dense, compact_bytes, dense_bytes = slower
    return (
        f"layer {layer.name}: built dense: its {fmt.label()} kernel ({kernel.kind}) is estimated at "
        f"{compact:,.0f} instructions, {compact / dense:.1f}x the dense build's {dense:,.0f}, and no "
        f"layer may be slower than in the --no-compress build; its weight takes {dense_bytes:,} bytes of "
        f"flash instead of {compact_bytes:,}"
    )


def slower_than_dense_note(layer, fmt, kernel) -> str | None:
    """A sentence for ``compile`` when the compact kernel is estimated slower than the dense
    build (None when it is not): the two estimates and why the compact weight is kept."""
    slower = _slower_than_dense(layer, fmt, kernel)
    if slower is None:
        return None
    compact, dense, compact_bytes, dense_bytes = slower
    return (
        f"layer {layer.name}: its {fmt.label()} kernel ({kernel.kind}) is estimated at "
        f"{compact:,.0f} instructions, {compact / dense:.1f}x the dense build's {dense:,.0f}; kept "
        f"compact for flash ({compact_bytes:,} bytes vs {dense_bytes:,}); --no-compress builds it dense"
    )


# ------------------------------------------------------------------ bit-plane look-up (T-MAC)
MCU_BP_LOOKUP = 4.0  # one look-up: field extract, address, load, add
MCU_BP_ENTRY = 2.5  # one table entry (half-table loads, add, store)
MCU_BP_WORD = 3.0  # one plane word per row and chunk (load; re-aligned: +5)


def bitplane_estimate(layer, weight_shape, bits: int, g: int) -> float:
    """Instructions of the bit-plane look-up kernel with groups of ``g`` inputs
    (:mod:`tbn_tvm.kernels.bitplane_lut`) for a ``bits``-bit weight: per input vector
    ``⌈K/32⌉·32/g`` tables of ``2^g`` entries, then ``bits`` look-ups per ``g`` weights of
    every row."""
    from tbn_tvm.kernels.bitplane_lut import fields_per_word

    n, k = _rows_cols(layer, weight_shape)
    m = _positions(layer)
    chunks = -(-k // 32)
    fields = fields_per_word(k, g)
    word = MCU_BP_WORD + (5.0 if k % 32 else 0.0)
    tables = chunks * fields * ((1 << g) + (1 << (g // 2 + 1))) * MCU_BP_ENTRY
    rows_ = n * chunks * bits * (word + fields * MCU_BP_LOOKUP)
    patch = 0.0 if layer.op == "matmul" else chunks * fields * g * MCU_PATCH_TAP
    return m * (tables + rows_ + patch) + MCU_GATHER * n * m


def bitplane_group(layer, fmt) -> int | None:
    """The group size whose look-up kernel is estimated cheapest on a Cortex-M, or None when
    decoding in the kernel or the dense build is estimated cheaper (the layer then takes the
    decode-in-kernel compute, which :func:`built_dense_note` may build dense)."""
    from tbn_tvm.kernels.bitplane_lut import GROUPS

    best = min(GROUPS, key=lambda g: bitplane_estimate(layer, fmt.shape, fmt.k, g))
    others = min(compact_estimate(layer, fmt.shape, "decode"), dense_estimate(layer, fmt.shape))
    return best if bitplane_estimate(layer, fmt.shape, fmt.k, best) < others else None


# ------------------------------------------------------------------ SNN codeword convolution
MCU_CW_ENTRY = 0.22  # per segment-table entry and tap, per channel and position (taps, adds, stores)
MCU_CW_RESP = 4.2  # one segment look-up of a codeword response (address, load, add; the store amortised)
MCU_CW_GATHER = 2.5  # one gathered response per filter, channel and position (load, add)
MCU_CW_INDEX = 8.75  # one filter and channel per position tile (index byte, response address, loop)


def codeword_estimate(layer, plan) -> float:
    """Instructions of the codeword convolution (:mod:`tbn_tvm.kernels.codeword_conv`): per
    output position, each input channel's segment tables and its ``C`` codeword responses,
    then ``O·I_g`` gathered adds (the index and address once per tile of positions)."""
    from tbn_tvm.kernels.codeword_conv import position_tile, segments

    O, Ig, *ksize = plan.shape
    m = _positions(layer)
    cin = layer.x_shape[1]
    segs = segments(tuple(ksize))
    tile, computed = position_tile(layer.out_shape[-1], cin, plan.codewords)
    m = m * computed // layer.out_shape[-1]
    entries = sum((1 << length) * (length + 1) for _, _, length in segs)
    per_channel = entries * MCU_CW_ENTRY + plan.codewords * len(segs) * MCU_CW_RESP
    gather = O * Ig * (MCU_CW_GATHER + MCU_CW_INDEX / tile)
    return m * (cin * per_channel + gather + MCU_GATHER * O) + 10.0 * O * Ig


def codebook_choice(layer, fmt) -> tuple[str, str]:
    """The kernel a codebook conv takes on a Cortex-M: the codeword convolution or the filters
    as sign rows with look-up tables, by estimated instructions; and a sentence saying why (the
    compile summary prints it)."""
    from tbn_tvm.kernels import codeword_conv

    cw = codeword_estimate(layer, codeword_conv.plan_for(fmt))
    O, K = fmt.shape[0], fmt.n // fmt.shape[0]
    if layer.groups == 1:
        plan = rows.RowPlan(rows=O, row_length=K, tile_length=O * K, scale_chunk=K, num_scales=O)
        g = rows.lut_group(plan) or 4
        other, other_kind = compact_estimate(layer, fmt.shape, rows.KIND_CONV_LUT, plan, g), "sign rows"
    else:
        other, other_kind = compact_estimate(layer, fmt.shape, "decode"), "decoding in the kernel"
    C, cin = fmt.num_codewords, layer.x_shape[1]
    if cw < other:
        return codeword_conv.KIND, (
            f"codeword convolution: {C} codewords x {cin} channels then {O}x{fmt.shape[1]} gathered "
            f"adds per position, estimated {cw:,.0f} instructions vs {other:,.0f} for {other_kind}"
        )
    return rows.KIND_CONV_LUT, (
        f"{other_kind}: estimated {other:,.0f} instructions vs {cw:,.0f} for the codeword "
        f"convolution ({C} codewords for {O} filters)"
    )
