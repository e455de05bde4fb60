"""Schedules for a Cortex-M core (single issue, no SIMD float, small stack).

* padding / weight decoding / element-wise epilogues are inlined: no scratch buffers;
* the re-aligned row words of a row-reuse kernel are computed once per distinct row, under
  that row's loop (a few words on the stack), not once per element;
* the bit-serial reduction is split into 32-element chunks so one word serves 32 inputs.
"""

from __future__ import annotations


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


def schedule_prim_mcu(prim):
    """Return a scheduled copy of one (possibly fused) PrimFunc."""
    from tvm import s_tir

    sch = s_tir.Schedule(prim)
    # 1. inline producers (pad, decode) and consumers (bias add, relu) except the row words
    changed = True
    while changed:
        changed = False
        for blk in _blocks(sch):
            if _name(sch, blk).startswith("row_words"):
                continue
            if _try(sch.compute_inline, blk) or _try(sch.reverse_compute_inline, blk):
                changed = True
                break
    # 2. row words under the distinct-row loop of their consumer; unroll the 32 bits of a word
    #    (constant masks and load offsets); chunk a single-axis reduction by 32
    for blk in _blocks(sch):
        name = _name(sch, blk)
        if not name.startswith(("tbn_rows_sum", "tbn_rows_tail", "tbn_rows_conv_sum")):
            continue
        kinds = [int(iv.iter_type) for iv in sch.get(blk).iter_vars]  # 0: spatial, 2: reduction
        n_spatial = kinds.count(0)
        loops = sch.get_loops(blk)
        if len(loops) != len(kinds):
            continue
        conv = name.startswith("tbn_rows_conv_sum")
        row_axis = loops[1] if conv else loops[n_spatial - 1]
        words = [b for b in _blocks(sch) if _name(sch, b).startswith("row_words")]
        if words:
            _try(sch.compute_at, words[0], row_axis)
        loops = sch.get_loops(blk)
        if not conv and int(sch.get(loops[-1]).extent) <= 32:
            _try(sch.unroll, loops[-1])
    # 3. initialise accumulators before their reduction loops, not inside them
    for blk in _blocks(sch):
        kinds = [int(iv.iter_type) for iv in sch.get(blk).iter_vars]
        if 2 in kinds:
            loops = sch.get_loops(blk)
            first_reduce = kinds.index(2) if len(loops) == len(kinds) else None
            if first_reduce is not None:
                _try(sch.decompose_reduction, blk, loops[first_reduce])
    return sch.mod["main"]
