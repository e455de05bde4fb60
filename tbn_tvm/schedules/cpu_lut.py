"""Host CPU schedules of issue 23's kernels: the bit-plane GEMV (:func:`tbn_tvm.kernels.bitplane_lut.gemv_te`)
and the SNN codeword convolution (:mod:`tbn_tvm.kernels.codeword_conv`).
:func:`tbn_tvm.schedules.cpu.schedule_cpu` hands a kernel holding their blocks to
:func:`schedule`; without it they still build and are right (the generic rules of
:mod:`tbn_tvm.schedules.cpu_generic`, or TVM's default loop nest), only slower.

Bit-plane GEMV: per output row, each 32-input chunk's integers rebuilt in vector lanes (one plane
word broadcast per plane, shifted by the lane index), multiplied with the inputs and summed in
``lanes`` partial sums (r-factored), the rows over the cores when the layer is large enough.

Codeword convolution: per block of output rows (a few dozen positions, contiguous in memory),
each input channel's segment tables and codeword responses in vectors along the positions,
then every filter adds the response rows its indices pick into accumulators that stay in
registers; the blocks of rows over the cores when the layer is large enough.
"""

from __future__ import annotations

from tbn_tvm.schedules import inline_all_except
from tbn_tvm.schedules.knobs import parallel_min

#: Output positions a codeword block's accumulators hold (vector registers: 128 floats = 8
#: AVX-512 or 16 AVX2 registers).
MAX_BLOCK_POSITIONS = 64


def _name(sch, block) -> str:
    return str(sch.get(block).name_hint)


def _blocks(sch) -> dict:
    return {_name(sch, b): b for b in sch.get_child_blocks(sch.get_sblock("root"))}


def _extent(sch, loop) -> int:
    return int(sch.get(loop).extent)


def _try(fn, *args):
    try:
        return fn(*args)
    except Exception:  # noqa: BLE001 - the primitive does not apply; keep the block as it is
        return None


def handles(names: set[str]) -> bool:
    """Whether a kernel with blocks ``names`` is one of this module's."""
    from tbn_tvm.kernels import bitplane_lut, codeword_conv

    return (
        bitplane_lut.BLOCK_PACKED in names
        or bitplane_lut.BLOCK_PACKED_TAIL in names
        or bitplane_lut.BLOCK_GEMV in names
        or bitplane_lut.BLOCK_GEMV_TAIL in names
        or codeword_conv.BLOCK_GATHER in names
    )


def _macs(block) -> int:
    n = 1
    for iv in block.iter_vars:
        n *= int(iv.dom.extent)
    return n


def schedule_bitplane_gemv(sch, lanes: int, cores: int) -> None:
    from tbn_tvm.kernels import bitplane_lut as bp
    from tbn_tvm.schedules.cpu_generic import PARALLEL_MIN_MACS

    inline_all_except(sch, (bp.BLOCK_GEMV, bp.BLOCK_GEMV_TAIL))
    names = _blocks(sch)
    main = names.get(bp.BLOCK_GEMV)
    work = sum(_macs(sch.get(b)) for n, b in names.items() if n.startswith(bp.BLOCK_GEMV))
    parallel = cores > 1 and work >= parallel_min(PARALLEL_MIN_MACS)
    if main is not None and 32 % lanes == 0:
        loops = sch.get_loops(main)
        n_spatial = len(loops) - 2
        kb = loops[-1]
        _, kbi = sch.split(kb, [None, lanes])
        rf = sch.rfactor(kbi, n_spatial)
        rf_loops = sch.get_loops(rf)  # [*lead, n, kc, kbo, lane]: the lanes in vectors
        sch.vectorize(rf_loops[-1])
        sch.decompose_reduction(rf, rf_loops[n_spatial])
        spatial = sch.get_loops(rf)[:n_spatial]
        outer = sch.fuse(*spatial) if len(spatial) > 1 else spatial[0]
        if parallel:
            sch.parallel(outer)
        # the lane sums and the scale (with any fused epilogue) right after each row
        main = _blocks(sch)[bp.BLOCK_GEMV]
        _try(sch.compute_at, main, outer)
    elif parallel and main is not None:
        sch.parallel(sch.get_loops(main)[0])


#: Row vectors a packed GEMV block keeps in accumulator registers.
PACKED_ROW_VECTORS = 4
#: Input rows a packed GEMV block multiplies each decoded vector with.
PACKED_INPUT_ROWS = 4


def schedule_packed_gemv(sch, lanes: int, cores: int) -> None:
    """The packed-field GEMV: per block of ``lanes·R`` output rows (``R`` ≤
    :data:`PACKED_ROW_VECTORS` vectors), its partial sums in registers while the words
    stream by, each word's fields unrolled (a shift pair, a conversion and a multiply-add per
    field and vector); the tail inputs the same way; the blocks over the cores when the layer is
    large enough."""
    from tbn_tvm.kernels import bitplane_lut as bp
    from tbn_tvm.schedules.cpu_generic import PARALLEL_MIN_MACS

    inline_all_except(sch, (bp.BLOCK_PACKED, bp.BLOCK_PACKED_TAIL))
    names = _blocks(sch)
    work = sum(_macs(sch.get(b)) for n, b in names.items() if n.startswith(bp.BLOCK_PACKED))
    parallel = cores > 1 and work >= parallel_min(PARALLEL_MIN_MACS)
    first = names.get(bp.BLOCK_PACKED) or names[bp.BLOCK_PACKED_TAIL]
    loops = sch.get_loops(first)
    n_red = 2 if bp.BLOCK_PACKED in names else 1
    rows = _extent(sch, loops[-1 - n_red])
    inputs = _extent(sch, loops[-2 - n_red]) if len(loops) > 1 + n_red else 1  # the innermost input axis
    vec = lanes if rows % lanes == 0 else 8
    # input rows sharing each decoded vector (unrolled: LLVM decodes it once for all of them),
    # a divisor of the innermost input axis: a block of input rows fused across two leading axes
    # ([3, 2, K] in blocks of 3) gave wrong rows once the scale was computed under it
    per_input = max(d for d in range(1, PACKED_INPUT_ROWS + 1) if inputs % d == 0)
    budget = max(1, (16 if lanes >= 16 else 12) // per_input)
    per_block = vec * max(r for r in range(1, min(PACKED_ROW_VECTORS, budget) + 1) if rows % (vec * r) == 0)
    outer = None
    for name in (bp.BLOCK_PACKED, bp.BLOCK_PACKED_TAIL):
        blk = _blocks(sch).get(name)
        if blk is None:
            continue
        loops = sch.get_loops(blk)
        red = loops[-2:] if name == bp.BLOCK_PACKED else loops[-1:]
        *lead, n = loops[: len(loops) - len(red)]
        outer_lead, mi = [], None
        if lead:
            mo, mi = sch.split(lead[-1], [None, per_input])
            outer_lead = [*lead[:-1], mo]
        no, r, lane = sch.split(n, [None, per_block // vec, vec])
        inner = [mi, r, lane] if mi is not None else [r, lane]
        sch.reorder(*outer_lead, no, *red, *inner)
        # (the tail, when there is a main block, gets a loop nest of its own: a block computed
        # under the main one's loop would need its consumer, the scale, there first)
        here = sch.fuse(*outer_lead, no) if outer_lead else no
        if parallel:
            sch.parallel(here)
        outer = here if outer is None else outer
        acc = sch.cache_write(blk, 0, "local")
        sch.reverse_compute_at(acc, here)
        loops = sch.get_loops(blk)
        sch.vectorize(loops[-1])
        for loop in loops[len(loops) - len(inner) : -1]:
            sch.unroll(loop)  # the row vectors (and input rows)
        if name == bp.BLOCK_PACKED:
            sch.unroll(loops[-1 - len(inner)])  # the word's fields
        init = sch.decompose_reduction(blk, loops[len(loops) - len(inner) - len(red)])
        for b in (acc, init):
            _try(sch.vectorize, sch.get_loops(b)[-1])
    # the scale (with any fused epilogue) right after each block of rows
    for blk in sch.get_consumers(acc):
        if _try(sch.reverse_compute_at, blk, outer) is None:  # after a tail: its own loops
            last = sch.get_loops(blk)[-1]
            if _extent(sch, last) % vec == 0:
                _try(sch.vectorize, sch.split(last, [None, vec])[1])
            continue
        _try(sch.vectorize, sch.get_loops(blk)[-1])


def block_rows(height: int, width: int) -> int:
    """Output rows per codeword block: the fewest rows (a divisor of the height) giving at least
    64 positions, at most :data:`MAX_BLOCK_POSITIONS` (one row when a row alone is longer)."""
    fits = [r for r in range(1, height + 1) if height % r == 0 and r * width <= MAX_BLOCK_POSITIONS]
    if not fits:
        return 1
    enough = [r for r in fits if r * width >= 32]
    return enough[0] if enough else fits[-1]


def schedule_codeword(sch, lanes: int, cores: int) -> None:
    from tbn_tvm.kernels import codeword_conv as cw
    from tbn_tvm.schedules.cpu_generic import PARALLEL_MIN_MACS

    # the zero-padded input stays a buffer (once per call): the tables read whole vectors
    inline_all_except(
        sch, ("pad", cw.BLOCK_WORDS, cw.BLOCK_INDEX, cw.BLOCK_TABLE, cw.BLOCK_RESP, cw.BLOCK_GATHER)
    )
    names = _blocks(sch)
    if "pad" in names:
        _try(sch.vectorize, sch.get_loops(names["pad"])[-1])
    z, r = names[cw.BLOCK_GATHER], names[cw.BLOCK_RESP]
    # additions: the gathers, the responses and their tables (about as many each, for a 3x3 layer)
    work = _macs(sch.get(z)) + 2 * _macs(sch.get(r))
    b, o, *pos, ri = sch.get_loops(z)
    width = _extent(sch, pos[-1])
    if len(pos) == 2:
        rows = block_rows(_extent(sch, pos[0]), width)
        yo, yi = sch.split(pos[0], [None, rows])
        xo = None
        if width > MAX_BLOCK_POSITIONS:  # long rows: blocks of one row's positions
            per = max(d for d in range(1, MAX_BLOCK_POSITIONS + 1) if width % d == 0)
            xo, xi = sch.split(pos[1], [None, per])
            inner = [yi, xi]
            outer = [yo, xo]
        else:
            inner = [yi, pos[1]]
            outer = [yo]
    else:
        per = max(d for d in range(1, MAX_BLOCK_POSITIONS + 1) if width % d == 0)
        xo, xi = sch.split(pos[0], [None, per])
        inner, outer = [xi], [xo]
    sch.reorder(b, *outer, o, ri, *inner)
    block = sch.fuse(b, *outer)
    if cores > 1 and work >= parallel_min(PARALLEL_MIN_MACS) and _extent(sch, block) >= cores:
        sch.parallel(block)  # (before decompose_reduction: parallel needs whole reductions)
    sch.compute_at(r, block)
    # one filter's sums of the block's positions in a local buffer (registers), written once
    z = _blocks(sch)[cw.BLOCK_GATHER]
    copy = sch.cache_write(z, 0, "local")
    sch.reverse_compute_at(copy, o)
    for consumer in sch.get_consumers(copy):
        _try(sch.reverse_compute_at, consumer, o)
    z = _blocks(sch)[cw.BLOCK_GATHER]

    def vector_rows(blk) -> None:
        """The row's positions in a vector, the block's rows unrolled (contiguous loads)."""
        loops = sch.get_loops(blk)
        _try(sch.vectorize, loops[-1])
        if len(inner) > 1:
            _try(sch.unroll, loops[-2])

    for blk in (z, copy, *sch.get_consumers(copy)):
        vector_rows(blk)
    init = sch.decompose_reduction(z, sch.get_loops(z)[-1 - len(inner)])
    vector_rows(init)
    # the responses and their tables: per input channel, positions in vectors
    r = _blocks(sch)[cw.BLOCK_RESP]
    rl = sch.get_loops(r)
    ci = rl[1]
    for name, blk in _blocks(sch).items():
        if name.startswith(cw.BLOCK_TABLE):
            sch.compute_at(blk, ci)
            vector_rows(blk)
            _try(sch.unroll, sch.get_loops(blk)[-1 - len(inner)])  # the 2^len entries: taps loaded once
    vector_rows(r)


def schedule(func, lanes: int, cores: int):
    """A scheduled copy of ``func`` (a kernel :func:`handles` says is this module's)."""
    from tvm import s_tir

    from tbn_tvm.kernels import codeword_conv

    sch = s_tir.Schedule(func)
    from tbn_tvm.kernels import bitplane_lut

    names = _blocks(sch)
    if codeword_conv.BLOCK_GATHER in names:
        schedule_codeword(sch, lanes, cores)
    elif bitplane_lut.BLOCK_PACKED in names or bitplane_lut.BLOCK_PACKED_TAIL in names:
        schedule_packed_gemv(sch, lanes, cores)
    else:
        schedule_bitplane_gemv(sch, lanes, cores)
    return sch.mod["main"]
