"""Host CPU schedules for the project's kernels (applied before Relax's default pipeline).

The row-reuse kernels (:mod:`tbn_tvm.kernels.rows`) get a hand schedule.  Bit-serial form: the
reduction over the row is split into SIMD-width chunks and r-factored, so the per-bit sign
select runs on vectors; distinct rows are spread over the cores; the re-aligned row words are
computed next to their row; row-reuse convolutions put the output row's positions innermost so
LLVM vectorises them.  Decoded form (distinct rows as float ±1, then a GEMM / convolution):
register-blocked micro-kernels (:mod:`tbn_tvm.schedules.cpu_decoded`).  Other kernels (plain
decode kernels, TVM's own legalized ops) keep TVM's default loop nest unless a tuning record
(``tbn-tvm tune``) schedules them.
"""

from __future__ import annotations

import tvm

from tbn_tvm.schedules import reverse_inline_safely
from tbn_tvm.schedules.cpu_decoded import PARALLEL_MIN_MACS
from tbn_tvm.schedules.knobs import parallel_min


def _work(block) -> int:
    """The iteration count of a block (bit-level multiply-adds of a bit-serial sum)."""
    n = 1
    for iv in block.iter_vars:
        n *= int(iv.dom.extent)
    return n


def _name(sch, block) -> str:
    return sch.get(block).name_hint


def _try(fn, *args):
    try:
        return fn(*args)
    except Exception:  # the primitive does not apply; keep the block as it is
        return None


def vector_lanes(target) -> int:
    """float32 lanes of the widest SIMD unit of the target's CPU (16 AVX-512, 8 AVX2, else 4)."""
    from tvm.target import codegen

    mcpu = target.attrs.get("mcpu")
    if not mcpu:
        return 4
    try:
        if codegen.llvm_cpu_has_features("avx512f", target):
            return 16
        if codegen.llvm_cpu_has_features("avx2", target):
            return 8
    except Exception:  # feature query unsupported for this target: stay conservative
        pass
    return 4


def schedule_rows(prim, lanes: int, cores: int):
    """Schedule one (possibly fused) PrimFunc holding a ``tbn_rows_sum`` block."""
    from tvm import s_tir

    sch = s_tir.Schedule(prim)
    root = sch.get_sblock("root")
    # epilogues (scale/gather, relu, bias) folded into one element-wise block
    for blk in list(sch.get_child_blocks(root)):
        name = _name(sch, blk)
        if name.startswith(("tbn_rows_sum", "tbn_rows_conv_sum", "row_words", "pad")):
            continue
        if not name.startswith("tbn_rows_"):
            reverse_inline_safely(sch, blk) or _try(sch.compute_inline, blk)
    blocks = {_name(sch, b): b for b in sch.get_child_blocks(root)}
    conv = next((b for n, b in blocks.items() if n.startswith("tbn_rows_conv_sum")), None)
    if conv is not None:
        return _schedule_conv_rows(sch, conv, blocks, lanes, cores)
    rsum = next(b for n, b in blocks.items() if n.startswith("tbn_rows_sum"))
    words = [b for n, b in blocks.items() if n.startswith("row_words")]
    kinds = [int(iv.iter_type) for iv in sch.get(rsum).iter_vars]
    loops = sch.get_loops(rsum)
    n_spatial = kinds.count(0)
    spatial, reduce = loops[:n_spatial], loops[n_spatial:]
    two_level = len(reduce) == 2 and int(sch.get(reduce[1]).extent) == 32  # (word, bit) axes
    fused = sch.fuse(*spatial) if len(spatial) > 1 else spatial[0]
    cores = cores if _work(sch.get(rsum)) >= parallel_min(PARALLEL_MIN_MACS) else 1
    if two_level and 32 % lanes == 0:
        _, kb = reduce
        kbo, kbi = sch.split(kb, [None, lanes])
        rf = sch.rfactor(kbi, n_spatial)
        rf_loops = sch.get_loops(rf)
        sch.vectorize(rf_loops[-1])
        if cores > 1:
            sch.parallel(rf_loops[0])
        if words:
            _try(sch.compute_at, words[0], rf_loops[0])
        _try(sch.decompose_reduction, rf, sch.get_loops(rf)[1])
    elif cores > 1:
        sch.parallel(fused)
        if words:
            _try(sch.compute_at, words[0], fused)
    return sch.mod["main"]


def _schedule_conv_rows(sch, blk, blocks, lanes: int, cores: int):
    """Distinct filters over the cores; the output row's last spatial axis innermost and in
    vectors (one sign bit broadcast against contiguous inputs)."""
    loops = sch.get_loops(blk)
    kinds = [int(iv.iter_type) for iv in sch.get(blk).iter_vars]
    n_spatial = kinds.count(0)
    if len(loops) != len(kinds):
        return sch.mod["main"]
    b, d, *pos = loops[:n_spatial]
    reduce = loops[n_spatial:]
    cores = cores if _work(sch.get(blk)) >= parallel_min(PARALLEL_MIN_MACS) else 1
    fused = sch.fuse(b, d)
    if cores > 1:
        sch.parallel(fused)
    words = [x for n, x in blocks.items() if n.startswith("row_words")]
    if words:
        _try(sch.compute_at, words[0], fused)
    last = pos[-1]
    extent = int(sch.get(last).extent)
    if extent >= 4:
        if extent > lanes:
            outer, inner = sch.split(last, [None, lanes])
            sch.reorder(*pos[:-1], outer, *reduce, inner)
        else:
            inner = last
            sch.reorder(*pos[:-1], *reduce, inner)
        first_reduce = reduce[0]
        _try(sch.decompose_reduction, blk, first_reduce)
    return sch.mod["main"]


def block_names(func) -> set[str]:
    """Names of the blocks of a PrimFunc (empty when it has no schedulable blocks)."""
    from tvm import s_tir

    try:
        sch = s_tir.Schedule(func)
        root = sch.get_sblock("root")
    except Exception:  # noqa: BLE001 - not a block-structured PrimFunc
        return set()
    names: set[str] = set()
    stack = [root]
    while stack:
        blk = stack.pop()
        names.add(str(sch.get(blk).name_hint))
        stack.extend(sch.get_child_blocks(blk))
    return names


def schedule_cpu(mod: tvm.IRModule, target) -> tvm.IRModule:
    """Return ``mod`` with the project's row-reuse kernels hand-scheduled for ``target``: every
    PrimFunc (fused or not) holding a ``tbn_rows_sum`` / ``tbn_rows_conv_sum`` block (bit-serial
    form) or a ``tbn_rows_gemm`` / ``tbn_rows_conv_gemm`` block (decoded form) that no earlier
    step scheduled (e.g. a tuning record); others are left alone.  A kernel the schedule does
    not apply to keeps TVM's default loop nest (correct, slower)."""
    from tvm import tirx

    from tbn_tvm.kernels import rows
    from tbn_tvm.schedules import cpu_decoded, cpu_generic, cpu_lut

    lanes = vector_lanes(target)
    acc_regs = cpu_decoded.accumulator_registers(lanes)
    cores = int(target.attrs.get("num-cores", 0) or 0) or _cpu_count()
    updates = {}
    for gv, func in mod.functions_items():
        if not isinstance(func, tirx.PrimFunc) or (func.attrs and func.attrs.get("tirx.is_scheduled")):
            continue
        names = block_names(func)
        try:
            if cpu_lut.handles(names):  # issue 23's look-up kernels
                scheduled = cpu_lut.schedule(func, lanes, cores)
            elif rows.BLOCK_CONV_GEMM in names:
                scheduled = _schedule_conv_gemm(func, lanes, cores, acc_regs)
            elif rows.BLOCK_GEMM in names:
                scheduled = cpu_decoded.schedule_gemm(func, lanes, cores, acc_regs)
            elif names & {rows.BLOCK_SUM, rows.BLOCK_CONV_SUM}:
                scheduled = schedule_rows(func, lanes, cores)
            else:
                scheduled = cpu_generic.schedule_default(func, lanes, cores, acc_regs)
                if scheduled is None:
                    continue
            updates[gv] = scheduled.with_attr("tirx.is_scheduled", True)
        except Exception:  # noqa: BLE001 - fall back to the unscheduled kernel; still correct
            continue
    for gv, func in updates.items():
        mod[gv] = func
    return mod


def _schedule_conv_gemm(func, lanes: int, cores: int, acc_regs: int):
    """A decoded-form convolution: the generic register-blocked conv schedule
    (:func:`tbn_tvm.schedules.cpu_generic.schedule_conv`), except for stems (at most 4 input
    channels, large maps), where the decoded form's own schedule was about 2x faster (measured
    single-threaded on resnet18d/repvgg_a0/a wide ResNet; the generic one was up to 4x faster on
    the other layers)."""
    from tbn_tvm.schedules import cpu_decoded, cpu_generic

    shape = func.params[0].shape  # the input, NC[H]W (params are buffers in TVM 0.27)
    channels = int(shape[1]) if len(shape) >= 3 else 0
    if 0 < channels <= 4:
        try:
            return cpu_decoded.schedule_conv_gemm(func, lanes, cores, acc_regs)
        except Exception:  # noqa: BLE001 - 1-D, or a shape it does not tile
            pass
    try:
        return cpu_generic.schedule_conv(func, lanes, cores)
    except Exception:  # noqa: BLE001
        return cpu_decoded.schedule_conv_gemm(func, lanes, cores, acc_regs)


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
