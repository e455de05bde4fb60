"""GPU (CUDA) schedules for the project's kernels, applied to the fused graph.

The kernels are found by their block names (:mod:`tbn_tvm.kernels.rows`, and the generic decode
kernels ``tbn_dense`` / ``tbn_conv1d`` / ``tbn_conv2d``); fused epilogues (bias adds, residual
adds, activations, casts) are folded into the kernel's output block, which the thread that
holds the sum runs.  The row-reuse algebra stays: only the ``D`` distinct rows are reduced, and
the output block is re-indexed as (distinct row, copy) so that the thread holding ``z[d]``
writes the ``p`` outputs ``y[d + jD] = s_(d+jD) z[d]`` of its row (:func:`_gather_layout`).

Dense layers (``rows_dense``; ``tbn_dense`` without row reuse), batch ``M``:

* ``M <= 4`` (GEMV, :func:`_gemv`): one warp per distinct row, four rows per thread block.  The
  block first re-aligns its rows' tile bits into 32-bit words in shared memory (``row_words``:
  two tile-word loads and a funnel shift per word, once per block); lane ``l`` then walks the row
  word by word, testing bit ``l`` of the word (a broadcast shared-memory load, a shift and a
  select on ``x[32 c + l]``: coalesced loads) and the warp sums with a shuffle all-reduce.
* ``M > 4`` (GEMM, :func:`_gemm`): a tile of up to ``32 x 32`` (batch row x distinct row) per
  block, ``2 x 2`` per thread in registers; the block's row words are in shared memory and the
  inputs are staged 32 columns (one row word) at a time in shared memory.

Convolutions (``rows_conv``; ``tbn_conv*`` without row reuse; :func:`_conv`): an implicit GEMM
over (output pixel, distinct filter).  A block takes up to 128 pixels x 16 filters, each thread
one pixel and up to 4 filters in registers, so each input load serves several filters; the
filters' row words sit in shared memory (staged once per block) and the sign bit is a
warp-uniform broadcast; padding is folded into the input read.

Without re-aligned row words (decode kernels, rows that wrap around the tile) the tile's words
themselves are staged in shared memory when they fit.  Anything else in the graph, and any of
the project's kernels no hand schedule fits, is left to :func:`apply_dlight`.  Every kernel
scheduled here carries the attribute ``tbn.cuda_schedule`` (``gemv``, ``gemm``, ``conv``, or
``dlight.<Rule>``), which the tests read.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass

import tvm

from tbn_tvm.kernels import rows

#: Warp size (CUDA).
WARP = 32
#: Shared memory one block may use (bytes): below every CUDA GPU's static limit of 48 KiB.
SHARED_BYTES = 40 * 1024
#: Largest tile (uint32 words) staged whole in shared memory when there are no row words.
TILE_WORDS_STAGED = 4096
#: Largest batch (rows of ``x``) scheduled as a GEMV.
GEMV_MAX_BATCH = 4
#: Attribute naming the schedule a kernel got.
ATTR = "tbn.cuda_schedule"

_DEBUG = bool(os.environ.get("TBN_CUDA_SCHEDULE_DEBUG"))
_DECODE_CONV = re.compile(r"^tbn_conv\dd$")


def _name(sch, block) -> str:
    return str(sch.get(block).name_hint)


def _extent(sch, loop) -> int:
    return int(sch.get(loop).extent)


def _largest_divisor(n: int, candidates=(32, 16, 8, 4, 2, 1)) -> int:
    return next(c for c in candidates if n % c == 0)


def _kinds(sch, block) -> list[int]:
    """Iterator kinds of a block (0 spatial, 2 reduction)."""
    return [int(iv.iter_type) for iv in sch.get(block).iter_vars]


def _blocks(sch) -> dict[str, object]:
    root = sch.get_sblock("root")
    return {_name(sch, b): b for b in sch.get_child_blocks(root)}


@dataclass
class _Kernel:
    """One of the project's kernels, prepared for a GPU schedule."""

    sch: object
    op: str  # "dense" | "conv"
    reductions: list[str]  # the reduction blocks (the sum, its tail word)
    out: str  # the spatial block writing the result (epilogue folded in)
    words: str | None  # the re-aligned row words, when the kernel has them
    copies: int | None  # output rows per distinct row (None: D does not divide the rows)

    def block(self, name: str):
        """A block by name (a decomposed reduction by its update block)."""
        names = _blocks(self.sch)
        return self.sch.get_sblock(name if name in names else f"{name}_update")


def _prepare(prim) -> _Kernel | None:
    """Recognise the kernel, fold its epilogue into one output block and re-index that block as
    (distinct row, copy); None for functions holding none of the project's kernels."""
    from tvm import s_tir

    sch = s_tir.Schedule(prim)
    names = set(_blocks(sch))
    if rows.BLOCK_SUM_X in names:
        return None  # the shared-sum form: no GPU schedule (the back end never asks for it)
    if rows.BLOCK_CONV_SUM in names:
        op, reductions = "conv", [rows.BLOCK_CONV_SUM]
        out = next(n for n in names if n.startswith("tbn_rows_conv") and n != rows.BLOCK_CONV_SUM)
    elif rows.BLOCK_SUM in names or rows.BLOCK_TAIL in names:
        op, reductions = "dense", [n for n in (rows.BLOCK_SUM, rows.BLOCK_TAIL) if n in names]
        out = next(n for n in names if n.startswith("tbn_rows_dense"))
    elif "tbn_dense" in names or any(_DECODE_CONV.match(n) for n in names):
        red = "tbn_dense" if "tbn_dense" in names else next(n for n in names if _DECODE_CONV.match(n))
        op, reductions = ("dense" if red == "tbn_dense" else "conv"), [red]
        out = _name(sch, sch.cache_write(sch.get_sblock(red), 0, "local"))
    else:
        return None
    words = rows.BLOCK_ROW_WORDS if rows.BLOCK_ROW_WORDS in names else None
    own = {*reductions, out, words}
    _fold_epilogue(sch, lambda n: n in own)
    red = sch.get_sblock(reductions[0])
    n_spatial = _kinds(sch, red).count(0)
    distinct = int(sch.get(red).iter_vars[n_spatial - 1 if op == "dense" else 1].dom.extent)
    ob = sch.get_sblock(out)
    axis = len(sch.get(ob).iter_vars) - 1 if op == "dense" else 1
    copies = _gather_layout(sch, ob, axis, int(sch.get(ob).iter_vars[axis].dom.extent), distinct)
    return _Kernel(_simplified(sch), op, reductions, out, words, copies)


def _fold_epilogue(sch, own) -> None:
    """Fold every block that is not the kernel's own (``own(name)``) into its neighbours:
    consumers (bias, residual add, activation, cast) into the output block, producers
    (padding) into their readers."""

    def sole_consumer(blk) -> bool:  # reverse-inlining past another reader would lose its input
        return all(len(sch.get_consumers(p)) == 1 for p in sch.get_producers(blk))

    changed = True
    while changed:
        changed = False
        for blk in list(_blocks(sch).values()):
            if own(_name(sch, blk)):
                continue
            prims = [sch.reverse_compute_inline] if sole_consumer(blk) else []
            for prim in [*prims, sch.compute_inline]:
                try:
                    prim(blk)
                except Exception:  # noqa: BLE001, S112 - does not apply here; try the other
                    continue
                changed = True
                break
    stray = [n for n in _blocks(sch) if not own(n)]
    if stray:
        raise ValueError(f"cannot fold {stray} into the kernel")


def _gather_layout(sch, out_block, axis: int, rows_total: int, distinct: int) -> int | None:
    """Make the output block iterate ``(..., n mod D, n div D, ...)`` over its row axis so that
    it can sit under the loop computing distinct row ``d``; returns the number of copies
    (``rows / D``; 1: nothing repeats, the block is unchanged), or None when ``D`` does not
    divide the rows (the gather then stays a pass of its own)."""
    if rows_total == distinct:
        return 1
    if rows_total % distinct:
        return None
    from tvm.tirx import IndexMap, floordiv, floormod

    from tbn_tvm.kernels import i64

    ndim = len(sch.get(out_block).iter_vars)

    def index_map(*idx):
        n = idx[axis]
        return [*idx[:axis], floormod(n, i64(distinct)), floordiv(n, i64(distinct)), *idx[axis + 1 :]]

    sch.transform_block_layout(out_block, IndexMap.from_func(index_map, ndim=ndim))
    return rows_total // distinct


def _simplified(sch):
    """A fresh schedule of the simplified function (block variables' ranges known: ``(j D + d)
    mod D`` becomes ``d`` after :func:`_gather_layout`, so the output reads one distinct row)."""
    from tvm import s_tir

    mod = s_tir.transform.StmtSimplify()(tvm.IRModule({"main": sch.mod["main"]}))
    return s_tir.Schedule(mod["main"])


# ----------------------------------------------------------------------------- helpers
def _bind_threads(sch, loop, threads: int, tag: str = "threadIdx.x") -> None:
    """Spread ``loop`` over ``threads`` threads of ``tag`` (a guard when it is shorter)."""
    if _extent(sch, loop) == threads:
        sch.bind(loop, tag)
        return
    _, inner = sch.split(loop, [None, threads])
    sch.bind(inner, tag)


def _cooperative(sch, block, threads: list[tuple[str, int]]) -> None:
    """Spread a staging block's own loops over the block's threads (outermost tag first)."""
    n_own = len(sch.get(block).iter_vars)
    own = sch.get_loops(block)[-n_own:]
    fused = sch.fuse(*own) if len(own) > 1 else own[0]
    parts = sch.split(fused, [None, *[t for _, t in threads]])
    for (tag, _), loop in zip(threads, parts[1:], strict=True):
        sch.bind(loop, tag)


def _local(sch, block) -> None:
    """Keep a reduction's accumulator in registers (once)."""
    if str(sch.get(block).writes[0].source.scope()) != "local":
        sch.set_scope(block, 0, "local")


def _read_of(sch, block, predicate) -> int | None:
    for i, region in enumerate(sch.get(block).reads):
        if predicate(region.source):
            return i
    return None


def _input_read(sch, block) -> int:
    """Index of the layer input ``x`` among the block's reads: the float buffer with the most
    dimensions that is not one of the kernel's intermediates (scales and biases are 1-D)."""
    best, best_ndim = None, -1
    for i, region in enumerate(sch.get(block).reads):
        buf = region.source
        if str(buf.dtype).startswith("float") and not str(buf.name).startswith(("tbn_", "row_words")):
            if len(buf.shape) > best_ndim:
                best, best_ndim = i, len(buf.shape)
    if best is None:
        raise ValueError("no input read")
    return best


def _is_tile(buf) -> bool:
    return str(buf.dtype) == "uint32" and not str(buf.name).startswith("row_words")


def _stage_tile(k: _Kernel, at, threads: list[tuple[str, int]]) -> None:
    """Without row words: copy the tile's words into shared memory once per block, when they fit."""
    sch = k.sch
    if k.words is not None:
        return
    reds = [k.block(n) for n in k.reductions]
    idx = _read_of(sch, reds[0], _is_tile)
    if idx is None:
        return
    buf = sch.get(reds[0]).reads[idx].source
    if math.prod(int(d) for d in buf.shape) > TILE_WORDS_STAGED:
        return
    readers = [b for b in reds if _read_of(sch, b, lambda s, name=buf.name: s.name == name) is not None]
    cache = sch.cache_read(reds[0], idx, "shared", consumer_blocks=readers)
    sch.compute_at(cache, at, preserve_unit_loops=True)
    _cooperative(sch, cache, threads)


def _lane_split(sch, block):
    """A sum block's reduction as (lane loop of 32, serial loop): the bit inside a row word
    when the block has (word, bit) axes, else the reduction split by 32 (the serial loop is
    inside: each lane first sums its own inputs, then the warp sums the lanes)."""
    n_reduce = _kinds(sch, block).count(2)
    reduce = sch.get_loops(block)[-n_reduce:]
    if len(reduce) == 2 and _extent(sch, reduce[1]) == WARP:
        kc, kb = reduce
        sch.reorder(kb, kc)
        return kb
    if len(reduce) != 1:
        raise ValueError("unexpected reduction loops")
    ko, ki = sch.split(reduce[0], [None, WARP])
    sch.reorder(ki, ko)
    return ki


def _row_words(sch, k: _Kernel) -> int:
    return _extent(sch, sch.get_loops(k.block(k.words))[-1]) if k.words is not None else 0


def _out_loops(k: _Kernel):
    """The output block's loops as (leading loops, distinct-row loop, copy loops, trailing
    loops): dense ``(*batch, d, j)``, conv ``(b, d, j, *pixel)``."""
    sch, ob = k.sch, k.block(k.out)
    n = len(sch.get(ob).iter_vars)
    loops = sch.get_loops(ob)[-n:]
    n_copy = 1 if k.copies and k.copies > 1 else 0
    axis = n - 1 - n_copy if k.op == "dense" else 1
    return loops[:axis], loops[axis], loops[axis + 1 : axis + 1 + n_copy], loops[axis + 1 + n_copy :]


# ----------------------------------------------------------------------------- dense
def _dense(k: _Kernel) -> str:
    sch = k.sch
    if k.copies is None:
        _dense_unfused(k)
        return "gemv_unfused"
    lead, _, _, _ = _out_loops(k)
    batch = math.prod(_extent(sch, lp) for lp in lead)
    if batch <= GEMV_MAX_BATCH:
        _gemv(k)
        return "gemv"
    _gemm(k)
    return "gemm"


def _gemv(k: _Kernel) -> None:
    """One warp per distinct row (see the module docstring)."""
    sch = k.sch
    lead, d, copies, _ = _out_loops(k)
    distinct = _extent(sch, d)
    row_words = _row_words(sch, k)
    per_block = _largest_divisor(distinct, (4, 2, 1))
    while per_block > 1 and per_block * row_words * 4 > SHARED_BYTES:
        per_block //= 2
    if row_words * 4 > SHARED_BYTES:
        raise ValueError("a row's words do not fit in shared memory")
    do, di = sch.split(d, [None, per_block])
    bx = sch.fuse(*lead, do) if lead else do
    sch.bind(bx, "blockIdx.x")
    sch.bind(di, "threadIdx.y")
    for name in k.reductions:
        blk = k.block(name)
        sch.compute_at(blk, di, preserve_unit_loops=True)
        sch.bind(_lane_split(sch, blk), "threadIdx.x")
        _local(sch, blk)
    ob = k.block(k.out)
    inner = copies[0] if copies else sch.add_unit_loop(ob)
    _bind_threads(sch, inner, WARP)  # lane j writes copy j of the row
    threads = [("threadIdx.y", per_block), ("threadIdx.x", WARP)]
    if k.words is not None:
        words = k.block(k.words)
        sch.compute_at(words, bx, preserve_unit_loops=True)
        sch.set_scope(words, 0, "shared")
        _cooperative(sch, words, threads)
    _stage_tile(k, bx, threads)


def _tile_sizes(batch: int, distinct: int, row_words: int) -> tuple[int, int]:
    """Batch x distinct-row tile of a GEMM block: up to 32 x 32, divisors of the extents, the
    row words and one staged input word per batch row fitting in shared memory."""
    tm = batch if batch <= 32 else _largest_divisor(batch)
    td = distinct if distinct <= 32 else _largest_divisor(distinct)
    while td > 1 and td * row_words * 4 + tm * WARP * 4 > SHARED_BYTES:
        td = td // 2 if td % 2 == 0 else 1
    if td * row_words * 4 + tm * WARP * 4 > SHARED_BYTES:
        raise ValueError("a row's words do not fit in shared memory")
    return tm, td


def _gemm(k: _Kernel) -> None:
    """A (batch x distinct row) tile per block, 2 x 2 per thread (see the module docstring)."""
    sch = k.sch
    lead, d, copies, _ = _out_loops(k)
    *outer, m = lead  # tiles run along the last batch axis; the others go to the grid
    tm, td = _tile_sizes(_extent(sch, m), _extent(sch, d), _row_words(sch, k))
    mi = 2 if tm % 2 == 0 else 1
    di = 2 if td % 2 == 0 else 1
    ty, tx = tm // mi, td // di
    mo, mt, m_in = sch.split(m, [None, ty, mi])
    do, dt, d_in = sch.split(d, [None, tx, di])
    sch.reorder(*outer, mo, do, mt, dt, m_in, d_in, *copies)
    by = sch.fuse(*outer, mo) if outer else mo
    sch.bind(by, "blockIdx.y")
    sch.bind(do, "blockIdx.x")
    sch.bind(mt, "threadIdx.y")
    sch.bind(dt, "threadIdx.x")
    threads = [("threadIdx.y", ty), ("threadIdx.x", tx)]
    for i, name in enumerate(k.reductions):
        blk = k.block(name)
        sch.compute_at(blk, dt, preserve_unit_loops=True)
        _local(sch, blk)
        n_red = _kinds(sch, blk).count(2)
        loops = sch.get_loops(blk)
        red, spatial = loops[-n_red:], loops[-len(_kinds(sch, blk)) : -n_red]
        if n_red == 1 and _extent(sch, red[0]) > WARP:
            red = list(sch.split(red[0], [None, WARP]))
        sch.reorder(*red, *spatial)
        if i == 0 and len(red) == 2:  # stage 32 input columns per batch row per step
            x_shared = sch.cache_read(blk, _input_read(sch, blk), "shared", consumer_blocks=[blk])
            sch.compute_at(x_shared, red[0], preserve_unit_loops=True)
            _cooperative(sch, x_shared, threads)
        sch.decompose_reduction(blk, red[0])
    if k.words is not None:
        words = k.block(k.words)
        sch.compute_at(words, do, preserve_unit_loops=True)
        sch.set_scope(words, 0, "shared")
        _cooperative(sch, words, threads)
    _stage_tile(k, do, threads)


def _dense_unfused(k: _Kernel) -> None:
    """When ``D`` does not divide the rows: each sum block a GEMV kernel of its own (one warp per
    (batch row, distinct row), row words re-aligned on the fly), then the gather."""
    sch = k.sch
    if k.words is not None:
        sch.compute_inline(k.block(k.words))
    for name in k.reductions:
        blk = k.block(name)
        n_spatial = _kinds(sch, blk).count(0)
        loops = sch.get_loops(blk)
        spatial = sch.fuse(*loops[:n_spatial]) if n_spatial > 1 else loops[0]
        bx, ty = sch.split(spatial, [None, _largest_divisor(_extent(sch, spatial), (4, 2, 1))])
        sch.bind(bx, "blockIdx.x")
        sch.bind(ty, "threadIdx.y")
        sch.bind(_lane_split(sch, blk), "threadIdx.x")
    _elementwise(sch, k.block(k.out))


def _elementwise(sch, block, threads: int = 256) -> None:
    """One thread per element."""
    loops = sch.get_loops(block)
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    bx, tx = sch.split(fused, [None, min(threads, _extent(sch, fused))])
    sch.bind(bx, "blockIdx.x")
    sch.bind(tx, "threadIdx.x")


# ----------------------------------------------------------------------------- conv
def _conv(k: _Kernel) -> str:
    """Implicit GEMM over (output pixel, distinct filter) (see the module docstring)."""
    sch = k.sch
    if k.copies is None:
        raise ValueError("D does not divide the filters")
    lead, d, copies, pos = _out_loops(k)
    (b,) = lead
    pix = sch.fuse(*pos) if len(pos) > 1 else pos[0]
    pixels, distinct = _extent(sch, pix), _extent(sch, d)
    row_words = _row_words(sch, k)
    tp = pixels if pixels <= 128 else 64
    td = distinct if distinct <= 16 else _largest_divisor(distinct, (16, 8, 4, 2, 1))
    while td > 1 and td * row_words * 4 > SHARED_BYTES:
        td = td // 2 if td % 2 == 0 else 1
    if row_words * 4 > SHARED_BYTES:
        raise ValueError("a filter's words do not fit in shared memory")
    fi = _largest_divisor(td, (4, 2, 1))
    ty = td // fi
    po, pt = sch.split(pix, [None, tp])
    do, dt, d_in = sch.split(d, [None, ty, fi])
    sch.reorder(b, do, po, dt, pt, d_in, *copies)
    bx = sch.fuse(b, do, po)
    sch.bind(bx, "blockIdx.x")
    sch.bind(dt, "threadIdx.y")
    sch.bind(pt, "threadIdx.x")
    for name in k.reductions:
        blk = k.block(name)
        sch.compute_at(blk, pt, preserve_unit_loops=True)
        _local(sch, blk)
        n_red = _kinds(sch, blk).count(2)
        loops = sch.get_loops(blk)
        red, spatial = loops[-n_red:], loops[-len(_kinds(sch, blk)) : -n_red]
        sch.reorder(*red, *spatial)  # one input load serves the thread's filters
        sch.decompose_reduction(blk, red[0])
    threads = [("threadIdx.y", ty), ("threadIdx.x", tp)]
    if k.words is not None:
        words = k.block(k.words)
        sch.compute_at(words, bx, preserve_unit_loops=True)
        sch.set_scope(words, 0, "shared")
        _cooperative(sch, words, threads)
    _stage_tile(k, bx, threads)
    return "conv"


# ----------------------------------------------------------------------------- entry points
def schedule_kernel(prim):
    """The hand-scheduled copy of one (fused) PrimFunc, or None when it holds none of the
    project's kernels or no hand schedule fits it (set ``TBN_CUDA_SCHEDULE_DEBUG=1`` to see why)."""
    try:
        k = _prepare(prim)
        if k is None:
            return None
        kind = _dense(k) if k.op == "dense" else _conv(k)
    except Exception:  # noqa: BLE001 - no hand schedule fits: dlight's rules take the kernel
        if _DEBUG:
            import traceback

            traceback.print_exc()
        return None
    return k.sch.mod["main"].with_attr("tirx.is_scheduled", True).with_attr(ATTR, kind)


def schedule_cuda(mod: tvm.IRModule, target) -> tvm.IRModule:
    """``mod`` with every PrimFunc not scheduled yet that holds one of the project's kernels
    hand-scheduled for the GPU (see the module docstring); others are left alone."""
    from tvm import tirx

    updates = {}
    for gv, func in mod.functions_items():
        if not isinstance(func, tirx.PrimFunc) or (func.attrs and func.attrs.get("tirx.is_scheduled")):
            continue
        done = schedule_kernel(func)
        if done is not None:
            updates[gv] = done
    for gv, func in updates.items():
        mod[gv] = func
    return mod


def apply_dlight(mod: tvm.IRModule, target) -> tvm.IRModule:
    """dlight's GPU rules (Matmul, Reduction, GeneralReduction, Fallback; not GEMV) on every
    PrimFunc not scheduled yet, tried one rule at a time per kernel: a rule that raises on a
    kernel (dlight asserts on some tile-decoding reductions) is skipped, not fatal."""
    from tvm import tirx
    from tvm.s_tir import dlight as dl

    rules = [dl.gpu.Matmul(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(), dl.gpu.Fallback()]
    updates = {}
    for gv, func in mod.functions_items():
        if not isinstance(func, tirx.PrimFunc) or (func.attrs and func.attrs.get("tirx.is_scheduled")):
            continue
        for rule in rules:
            try:
                with target:
                    done = dl.ApplyDefaultSchedule(rule)(tvm.IRModule({gv: func}))[gv]
            except Exception:  # noqa: BLE001, S112 - this rule does not handle the kernel
                continue
            if done.attrs and done.attrs.get("tirx.is_scheduled"):
                updates[gv] = done.with_attr(ATTR, f"dlight.{type(rule).__name__}")
                break
    for gv, func in updates.items():
        mod[gv] = func
    return mod
