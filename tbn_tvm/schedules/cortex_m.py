"""Schedules for a Cortex-M core (single issue, no SIMD float, small stack).

* padding / weight decoding / element-wise epilogues are inlined: no scratch buffers;
* the re-aligned row words of a row-reuse kernel are computed once per distinct row, under
  that row's loop (a few words on the stack), not once per element;
* the bit-serial reduction is split into 32-element chunks so one word serves 32 inputs.
"""

from __future__ import annotations

from tbn_tvm.schedules import reverse_inline_safely


def _name(sch, block) -> str:
    return sch.get(block).name_hint


def _blocks(sch):
    return sch.get_child_blocks(sch.get_sblock("root"))


def _try(fn, *args) -> bool:
    try:
        fn(*args)
        return True
    except Exception:  # the primitive does not apply to this block; leave it as it is
        return False


def _conv_lut_per_position(sch, rows) -> bool:
    """For a look-up-table convolution (sums indexed ``[b, *pos, d]`` read by a gather
    ``[b, o, *pos]``): put the gather's output channels innermost and compute the sums and the
    tail's tables under its last position loop.  Returns whether it applied."""
    names = {_name(sch, b): b for b in _blocks(sch)}
    sums = [b for n, b in names.items() if n.startswith((rows.BLOCK_LUT_SUM, rows.BLOCK_LUT_TAIL))]
    if not sums:
        return False
    consumers = sch.get_consumers(sums[0])
    if len(consumers) != 1:
        return False
    gather = consumers[0]
    kinds = [int(iv.iter_type) for iv in sch.get(gather).iter_vars]
    loops = sch.get_loops(gather)
    z_kinds = [int(iv.iter_type) for iv in sch.get(sums[0]).iter_vars]
    spatial = kinds.count(0)  # [b, o, *pos], then reductions (a codebook gather's input channels)
    if len(loops) != len(kinds) or spatial < 3 or kinds[:spatial] != [0] * spatial:
        return False
    per_channel = 1 if kinds.count(2) else 0  # the sums carry the input channel too: [b, *pos, ci, d]
    if z_kinds.count(0) != spatial + per_channel:
        return False
    b_, o_, *pos = loops[:spatial]
    if not _try(sch.reorder, b_, *pos, o_):
        return False
    at = sch.get_loops(gather)[len(pos)]
    for blk in sums:
        _try(sch.compute_at, blk, at)
    tail_table = names.get(rows.BLOCK_LUT_TABLE + "_tail")
    tail = names.get(rows.BLOCK_LUT_TAIL)
    if tail_table is not None and tail is not None:
        tl = sch.get_loops(tail)
        _try(sch.compute_at, tail_table, tl[len(pos) + per_channel])
    return True


def _dense_lut_per_row(sch, rows) -> None:
    """For a look-up-table matmul on several input rows (``x[M, K]``, a token matmul): compute
    the distinct rows' sums of one input row right where the gather ``[M, N]`` reads them (D
    floats of scratch instead of ``M x D``: 32 KiB for 64 tokens of 128 rows)."""
    names = {_name(sch, b): b for b in _blocks(sch)}
    sums = [b for n, b in names.items() if n.startswith((rows.BLOCK_LUT_SUM, rows.BLOCK_LUT_TAIL))]
    if not sums:
        return
    consumers = sch.get_consumers(sums[0])
    if len(consumers) != 1:
        return
    gather = consumers[0]
    kinds = [int(iv.iter_type) for iv in sch.get(gather).iter_vars]
    loops = sch.get_loops(gather)
    if len(loops) != 2 or kinds != [0, 0] or int(sch.get(loops[0]).extent) < 2:
        return
    for blk in sums:
        _try(sch.compute_at, blk, sch.get_loops(gather)[0])


def _patch_and_epilogue_per_position(sch, rows) -> None:
    """See step 3b of :func:`schedule_prim_mcu` (after the tables found their loops)."""
    names = {_name(sch, b): b for b in _blocks(sch)}
    patch = names.get(rows.BLOCK_PATCH)
    tables = [b for n, b in names.items() if n.startswith(rows.BLOCK_LUT_TABLE)]
    if patch is not None and tables:
        lead = len(sch.get(patch).iter_vars) - 1  # b, *pos (, ci)
        loops = sch.get_loops(tables[0])
        if len(loops) > lead - 1:
            _try(sch.compute_at, patch, loops[lead - 1])
    sums = [b for n, b in names.items() if n.startswith((rows.BLOCK_LUT_SUM, rows.BLOCK_LUT_TAIL))]
    if not sums:
        return
    gathers = sch.get_consumers(sums[0])
    if len(gathers) != 1:
        return
    gather = gathers[0]
    kinds = [int(iv.iter_type) for iv in sch.get(gather).iter_vars]
    spatial = kinds.count(0)
    for epilogue in sch.get_consumers(gather):
        _try(sch.reverse_compute_at, epilogue, sch.get_loops(gather)[spatial - 1])


def _schedule_signs(sch, small_k) -> None:
    """The signs-in-code convolution (:mod:`tbn_tvm.kernels.small_k`): per output position its
    patch (the taps, padding resolved) then every distinct filter's sum, the filter loop and
    the taps unrolled (each sign a constant add or subtract), right before the position's
    outputs are scaled and written (with their fused epilogue)."""
    for _ in range(8):  # inline the padding into the patch, the epilogue into the output
        changed = False
        for blk in _blocks(sch):
            if _name(sch, blk).startswith((small_k.BLOCK_PATCH, small_k.BLOCK_SUMS)):
                continue
            if _try(sch.compute_inline, blk) or reverse_inline_safely(sch, blk):
                changed = True
                break
        if not changed:
            break
    names = {_name(sch, b): b for b in _blocks(sch)}
    sums = names[small_k.BLOCK_SUMS]
    patch = names[small_k.BLOCK_PATCH]
    gathers = sch.get_consumers(sums)
    if gathers:  # distinct filters shared by several outputs: all of them per position, then the outputs
        b, o, y, x = sch.get_loops(gathers[0])
        sch.reorder(b, y, x, o)
        sch.compute_at(sums, x)
    # (one filter per output: the outputs and their epilogue were inlined into the sums' block)
    sch.compute_at(patch, sch.get_loops(sums)[-2])
    sch.unroll(sch.get_loops(sums)[-1])
    sch.unroll(sch.get_loops(patch)[-1])


def schedule_prim_mcu(prim):
    """Return a scheduled copy of one (possibly fused) PrimFunc.  A kernel without a ``root``
    block (TVM's scatter and unpool kernels, written as one opaque block; a kernel without any
    block) has nothing these schedules change: it is returned as it is (the C code generator writes its loops marked
    parallel as plain loops)."""
    from tvm import s_tir

    from tbn_tvm.kernels import rows

    try:
        sch = s_tir.Schedule(prim)
        sch.get_sblock("root")
    except Exception:  # noqa: BLE001 - s_tir raises ScheduleError: no root block to schedule under
        return prim
    from tbn_tvm.schedules import cortex_m_lut

    if cortex_m_lut.handles({_name(sch, b) for b in _blocks(sch)}):  # issue 23's look-up kernels
        return cortex_m_lut.schedule(prim)
    from tbn_tvm.kernels import small_k

    if any(_name(sch, b) == small_k.BLOCK_SUMS for b in _blocks(sch)):
        try:
            _schedule_signs(sch, small_k)
            return sch.mod["main"]
        except Exception:  # noqa: BLE001 - an unexpected fused form: the default loops below
            sch = s_tir.Schedule(prim)
    keep = (  # computed once (per call, or per position), read many times
        "row_words",
        "tbn_code_index",
        rows.BLOCK_LUT_HALF,
        rows.BLOCK_LUT_TABLE,
        rows.BLOCK_PATCH,
        small_k.BLOCK_PATCH,  # a signs-in-code kernel whose own schedule failed: its sums
        small_k.BLOCK_SUMS,  # inlined would repeat every filter's whole line per output
    )
    # 1. inline producers (pad, decode) and consumers (bias add, relu) except the row words and
    #    the look-up tables
    changed = True
    while changed:
        changed = False
        for blk in _blocks(sch):
            if _name(sch, blk).startswith(keep):
                continue
            if _try(sch.compute_inline, blk) or reverse_inline_safely(sch, blk):
                changed = True
                break
    # 1b. a look-up-table convolution: everything per output position, right where the gather
    #     reads it (the patch's tables and the distinct filters' sums: a few hundred bytes)
    conv_lut = _conv_lut_per_position(sch, rows)
    if not conv_lut:
        _dense_lut_per_row(sch, rows)
    # 2. row words under the distinct-row loop of their consumer; unroll the 32 bits of a word
    #    (constant masks and load offsets); chunk a single-axis reduction by 32
    for blk in _blocks(sch):
        name = _name(sch, blk)
        if not name.startswith(
            ("tbn_rows_sum", "tbn_rows_tail", "tbn_rows_conv_sum", rows.BLOCK_LUT_SUM, rows.BLOCK_LUT_TAIL)
        ):
            continue
        kinds = [int(iv.iter_type) for iv in sch.get(blk).iter_vars]  # 0: spatial, 2: reduction
        n_spatial = kinds.count(0)
        loops = sch.get_loops(blk)
        if len(loops) != len(kinds):
            continue
        conv = name.startswith("tbn_rows_conv_sum")
        lut = name.startswith((rows.BLOCK_LUT_SUM, rows.BLOCK_LUT_TAIL))
        row_axis = loops[1] if conv else loops[n_spatial - 1]
        words = [b for b in _blocks(sch) if _name(sch, b).startswith("row_words")]
        if words and not lut and not conv:
            _try(sch.compute_at, words[0], row_axis)
        if conv:
            # distinct filters computed per output position, right where the gather reads them:
            # D floats of scratch instead of a [D, H, W] buffer (the row words, a few words per
            # distinct filter, are computed once beforehand)
            consumers = sch.get_consumers(blk)
            if len(consumers) == 1:
                cl = sch.get_loops(consumers[0])
                ck = [int(iv.iter_type) for iv in sch.get(consumers[0]).iter_vars]
                if len(cl) == len(ck) and ck.count(0) == len(ck) and len(cl) >= 3:
                    b_, o_, *pos = cl
                    if _try(sch.reorder, b_, *pos, o_):
                        _try(sch.compute_at, blk, sch.get_loops(consumers[0])[len(pos)])
            loops = sch.get_loops(blk)
        if lut and words and not conv_lut:  # the funnel shift once per word chunk, inside the look-up loop
            _try(sch.compute_inline, words[0])
            loops = sch.get_loops(blk)
        if lut and name.startswith(rows.BLOCK_LUT_SUM) and len(loops) == n_spatial + 2:
            # word chunks outside the rows: each chunk's 2^g x (32/g) table entries are read by
            # every row from one base address (the row words were all computed before)
            _try(sch.reorder, loops[n_spatial], row_axis)
        loops = sch.get_loops(blk)
        if not conv and int(sch.get(loops[-1]).extent) <= 32:
            _try(sch.unroll, loops[-1])
    # 2b. look-up tables: the half tables under the table's group loop (a few floats live), the
    #     look-up sum's groups chunked by the groups in one tile word, that chunk unrolled
    #     (constant shifts: one bit-field extract per look-up)
    names = {_name(sch, b): b for b in _blocks(sch)}
    for suffix, user in (("", rows.BLOCK_LUT_SUM), ("_tail", rows.BLOCK_LUT_TAIL)):
        half = names.get(rows.BLOCK_LUT_HALF + suffix)
        table = names.get(rows.BLOCK_LUT_TABLE + suffix)
        if half is None or table is None:
            continue
        consumer = next((b for n, b in names.items() if n.startswith(user)), None)
        if suffix == "" and consumer is not None:
            # each word chunk's tables built right before the rows read them (a few hundred bytes
            # of RAM instead of the whole table); the look-up loop is word-chunk outermost
            cl = sch.get_loops(consumer)
            # after step 2 the sum's innermost loops are (word chunk kc, row d, field kb)
            kc = cl[-3] if len(cl) >= 3 else None
            if kc is not None:
                _try(sch.compute_at, table, kc)
        _try(sch.compute_at, half, sch.get_loops(table)[-2])
        for loop in sch.get_loops(half)[-2:]:  # a few adds: unrolled
            _try(sch.unroll, loop)
        _try(sch.unroll, sch.get_loops(table)[-1])
    # 3. the look-up conv's codeword dot products: computed per output position, under the
    #    position loop of the look-up sum, so only C x Cin floats of them live at a time
    from tbn_tvm.kernels import lut_conv

    names = {_name(sch, b): b for b in _blocks(sch)}
    dots = next((b for n, b in names.items() if n.startswith(lut_conv.BLOCK_DOTS)), None)
    gather = next((b for n, b in names.items() if n.startswith(lut_conv.BLOCK_OUT)), None)
    if dots is not None and gather is not None:
        kinds = [int(iv.iter_type) for iv in sch.get(gather).iter_vars]
        loops = sch.get_loops(gather)
        n_spatial = kinds.count(0)
        if len(loops) == len(kinds) and n_spatial >= 3:
            b, o, *pos = loops[:n_spatial]  # [b, o, *pos] -> [b, *pos, o]: one dots block per position
            _try(sch.reorder, b, *pos, o)
            loops = sch.get_loops(gather)
            _try(sch.compute_at, dots, loops[n_spatial - 2])
    # 3b. a look-up convolution's patch (its inputs, padding resolved) per output position (and
    #     input channel), right before the tables read it; the gather's epilogue (scale) right
    #     after each output, so no output-sized scratch buffer is left
    if conv_lut:
        _patch_and_epilogue_per_position(sch, rows)
    # 4. accumulate in a local scalar (a register), written back once per output, and
    #    initialise it before the reduction loops, not inside them
    for blk in _blocks(sch):
        kinds = [int(iv.iter_type) for iv in sch.get(blk).iter_vars]
        if 2 not in kinds:
            continue
        loops = sch.get_loops(blk)
        if len(loops) != len(kinds):
            continue
        first_reduce = kinds.index(2)
        if _name(sch, blk).startswith(rows.BLOCK_LUT_SUM):  # reordered: accumulates in its output
            first_reduce = next(
                (i for i, lp in enumerate(loops) if sch.get(lp).loop_var.name.startswith("kc")), first_reduce
            )
            _try(sch.decompose_reduction, blk, loops[first_reduce])
            continue
        if first_reduce:
            try:
                write_back = sch.cache_write(blk, 0, "global")  # a 1-element stack array: a register
                sch.reverse_compute_at(write_back, loops[first_reduce - 1])
            except Exception:  # noqa: BLE001 - keep accumulating in place
                pass
        loops = sch.get_loops(blk)
        _try(sch.decompose_reduction, blk, loops[first_reduce])
    return sch.mod["main"]
