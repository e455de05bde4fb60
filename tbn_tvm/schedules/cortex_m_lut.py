"""Cortex-M schedules of the look-up kernels of issue 23: the bit-plane look-up kernel
(:mod:`tbn_tvm.kernels.bitplane_lut`) and the SNN codeword-response convolution
(:mod:`tbn_tvm.kernels.codeword_conv`).  :func:`tbn_tvm.schedules.cortex_m.schedule_prim_mcu`
hands a kernel holding their blocks to :func:`schedule`.

Bit-plane look-up: per input vector (a row of ``x``, or an output position's im2col patch), the
32-input chunks outermost; each chunk's tables (``32/g`` tables of ``2^g`` floats) built right
before every row reads them, the half tables under each table (a few floats), the rows'
accumulators updated once per chunk; the scale and the fused epilogue per input vector.
"""

from __future__ import annotations

from tbn_tvm.schedules import inline_all_except


def _name(sch, block) -> str:
    return str(sch.get(block).name_hint)


def _blocks(sch) -> dict:
    return {_name(sch, b): b for b in sch.get_child_blocks(sch.get_sblock("root"))}


def _try(fn, *args) -> bool:
    try:
        fn(*args)
        return True
    except Exception:  # noqa: BLE001 - the primitive does not apply; leave the block as it is
        return False


def handles(names: set[str]) -> bool:
    """Whether a kernel with blocks ``names`` is one of this module's."""
    from tbn_tvm.kernels import bitplane_lut, codeword_conv

    return bitplane_lut.BLOCK_SUM in names or codeword_conv.BLOCK_GATHER in names


def schedule_bitplane(sch) -> None:
    from tbn_tvm.kernels import bitplane_lut as bp
    from tbn_tvm.kernels import rows

    inline_all_except(sch, (bp.BLOCK_HALF, bp.BLOCK_TABLE, bp.BLOCK_SUM, rows.BLOCK_PATCH))
    names = _blocks(sch)
    z = names[bp.BLOCK_SUM]
    kinds = [int(iv.iter_type) for iv in sch.get(z).iter_vars]
    loops = sch.get_loops(z)
    lead = kinds.count(0) - 1  # [*lead, n, kc]
    n_loop, kc = loops[lead], loops[-1]
    sch.reorder(kc, n_loop)
    # the epilogue (scale, bias, activation) per input vector, right after its sums
    consumers = sch.get_consumers(z)
    if lead and len(consumers) == 1:
        _try(sch.reverse_compute_at, consumers[0], sch.get_loops(z)[lead - 1])
    loops = sch.get_loops(z)
    kc = loops[lead]
    sch.compute_at(names[bp.BLOCK_TABLE], kc)
    table = _blocks(sch)[bp.BLOCK_TABLE]
    e, f = sch.get_loops(table)[-2:]
    sch.reorder(f, e)  # group by group: its half tables, then its 2^g entries
    sch.compute_at(_blocks(sch)[bp.BLOCK_HALF], f)
    half = _blocks(sch)[bp.BLOCK_HALF]
    for loop in sch.get_loops(half)[-2:]:
        _try(sch.unroll, loop)
    # the entries as 2^(g/2) rows of 2^(g/2), the inner row unrolled (its half-table entries
    # stay in registers)
    e = sch.get_loops(table)[-1]
    size = int(sch.get(e).extent)
    inner = 1 << ((size.bit_length() - 1) // 2)
    _, lo = sch.split(e, [None, inner])
    _try(sch.unroll, lo)
    patch = _blocks(sch).get(rows.BLOCK_PATCH)
    if patch is not None and lead:
        _try(sch.compute_at, patch, sch.get_loops(z)[lead - 1])
    z = _blocks(sch)[bp.BLOCK_SUM]
    _try(sch.decompose_reduction, z, sch.get_loops(z)[lead])


def schedule_codeword(sch) -> None:
    """Codeword convolution: per tile of output positions (a run of one output row), each input
    channel's segment tables and codeword responses (``Cin·C·tile`` floats), then every filter
    gathers its responses into ``tile`` accumulators (registers), scales them and applies the
    fused epilogue; the codeword words and the byte indices once per call."""
    from tbn_tvm.kernels import codeword_conv as cw

    inline_all_except(sch, (cw.BLOCK_WORDS, cw.BLOCK_INDEX, cw.BLOCK_TABLE, cw.BLOCK_RESP, cw.BLOCK_GATHER))
    names = _blocks(sch)
    z, r = names[cw.BLOCK_GATHER], names[cw.BLOCK_RESP]
    b, o, *pos, ri = sch.get_loops(z)
    cin, codewords = (int(sch.get(lp).extent) for lp in sch.get_loops(r)[1:3])
    width = int(sch.get(pos[-1]).extent)
    tile = cw.position_tile(width, cin, codewords)[0]
    if width % tile:  # the kernel computed a padded width of whole tiles of position_tile's
        tile = max(d for d in range(1, tile + 1) if width % d == 0)
    xo, xi = sch.split(pos[-1], [None, tile])
    sch.reorder(b, *pos[:-1], xo, o, ri, xi)
    consumers = sch.get_consumers(z)
    if len(consumers) == 1:
        sch.reverse_compute_at(consumers[0], o)
        _try(sch.unroll, sch.get_loops(consumers[0])[-1])
    sch.compute_at(r, xo)
    sch.unroll(sch.get_loops(r)[-1])
    ci = sch.get_loops(r)[len(pos) + 1]
    for name, blk in _blocks(sch).items():
        if name.startswith(cw.BLOCK_TABLE):
            sch.compute_at(blk, ci)
            for loop in sch.get_loops(blk)[len(pos) + 2 :]:
                _try(sch.unroll, loop)
    z = _blocks(sch)[cw.BLOCK_GATHER]
    init = sch.decompose_reduction(z, sch.get_loops(z)[-2])
    _try(sch.unroll, sch.get_loops(init)[-1])
    _try(sch.unroll, sch.get_loops(z)[-1])


def schedule(prim):
    """A scheduled copy of ``prim`` (a kernel :func:`handles` says is this module's)."""
    from tvm import s_tir

    from tbn_tvm.kernels import bitplane_lut

    sch = s_tir.Schedule(prim)
    if bitplane_lut.BLOCK_SUM in set(_blocks(sch)):
        schedule_bitplane(sch)
    else:
        schedule_codeword(sch)
    return sch.mod["main"]
