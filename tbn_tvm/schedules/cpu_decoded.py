"""Host CPU hand schedules of the *decoded* forms of the tiled kernels (``rows_gemm``,
``rows_conv_gemm`` of :mod:`tbn_tvm.kernels.rows`): the distinct rows/filters decoded to float
±1 once per call, then a register-blocked GEMM / direct convolution on them, then scale and
gather (p copies per distinct row) fused with the epilogue.

The schedules follow the classic CPU micro-kernel recipe (BLIS; TVM's x86 ``conv2d_NCHWc``):
an output tile of ``rows x vectors`` accumulators held in registers (a cache of the sum under
1 KiB, see :data:`ACC_MAX_FLOATS`) while the whole reduction runs, one operand broadcast, the other loaded as vectors:

* convolution, stride 1 along the row: output positions in vectors, filters broadcast
  (``Dt`` distinct filters x ``Wt`` positions);
* convolution with stride > 1 or a short row, and GEMM: distinct filters/rows in vectors (the
  decoded weight stored ``[K, D]``), inputs broadcast.

The outer tile loops (batch, filter blocks, output rows) are spread over the cores; the
epilogue (scale, gather, bias, residual, ReLU) is one vectorised element-wise pass.  Numbers do
not change: ±1 products are exact, the sums run in the same order per output element as the
plain decoded kernel (over ``c``, then the kernel window).
"""

from __future__ import annotations

from tbn_tvm.schedules import inline_all_except
from tbn_tvm.schedules.knobs import current, parallel_min

#: Work below which a kernel stays on one core (see tbn_tvm.schedules.cpu_generic).
PARALLEL_MIN_MACS = 1 << 20

#: Vector registers given to accumulators (x86-64 with AVX-512 has 32, AVX2 16; leaving room
#: for the broadcast operand and the loaded vectors).
ACC_REGS_AVX512 = 24
ACC_REGS_AVX2 = 12
#: The accumulator tile is a cache of scope "global" smaller than 1 KiB: TVM 0.27's
#: LowerTVMBuiltin keeps such an allocation on the stack (LLVM then holds it in registers),
#: while a "local" cache inside a parallel loop becomes a TVMBackendAllocWorkspace call per
#: iteration, its sums go through memory and two threads run slower than one (measured).
ACC_MAX_FLOATS = 255


def accumulator_registers(lanes: int) -> int:
    """Vector registers to give to accumulators for a CPU with ``lanes`` float32 lanes (at most
    :data:`ACC_MAX_FLOATS` floats in all)."""
    return min(ACC_REGS_AVX512 if lanes >= 16 else ACC_REGS_AVX2, ACC_MAX_FLOATS // lanes)


def _prod_iters(block) -> int:
    """The iteration count of a block (its multiply-adds for a GEMM/conv block)."""
    n = 1
    for iv in block.iter_vars:
        n *= int(iv.dom.extent)
    return n


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _largest_divisor(n: int, at_most: int) -> int:
    return max(d for d in _divisors(n) if d <= max(1, at_most))


def _extent(sch, loop) -> int:
    return int(sch.get(loop).extent)


def _blocks(sch):
    root = sch.get_sblock("root")
    return {str(sch.get(b).name_hint): b for b in sch.get_child_blocks(root)}


def _schedule_epilogue(sch, blk, lanes: int, cores: int) -> None:
    """The element-wise output block: vectors along its innermost axis where a vector width
    divides it, outer axes over the cores (:func:`tbn_tvm.schedules.cpu_generic.schedule_spatial`)."""
    from tbn_tvm.schedules.cpu_generic import schedule_spatial

    schedule_spatial(sch, blk, lanes, cores)


def schedule_conv_gemm(prim, lanes: int, cores: int, acc_regs: int):
    """Schedule a (fused) PrimFunc holding ``tbn_rows_conv_gemm`` (2-D convolution on the
    decoded distinct filters).  Raises when the primitives do not apply (the caller keeps the
    unscheduled kernel)."""
    from tbn_tvm.kernels import rows

    sch, blocks, conv, decode, out = _open(prim, rows.BLOCK_CONV_GEMM, ("pad",))
    loops = sch.get_loops(conv)
    if len(loops) != 7:  # b, d, oh, ow, rc, rk0, rk1 (conv2d only)
        raise ValueError("not a 2-D convolution")
    b, d, oh, ow, rc, rk0, rk1 = loops
    D, OW = _extent(sch, d), _extent(sch, ow)
    stride_w = _stride_of_last(sch, conv)
    along_row = stride_w == 1 and OW % 8 == 0
    if along_row:
        # output positions in vectors; Dt filters broadcast
        vec = lanes if OW % lanes == 0 else 8
        best = None
        for nvec in (1, 2):
            if OW % (nvec * vec):
                continue
            Dt = _largest_divisor(D, acc_regs // nvec)
            if best is None or Dt * nvec > best[0] * best[1]:
                best = (Dt, nvec)
        Dt, nvec = best
        Wt = nvec * vec
        do, di = sch.split(d, [None, Dt])
        wo, wi = sch.split(ow, [None, Wt])
        sch.reorder(b, do, oh, wo, rc, rk0, rk1, di, wi)
        inner_vec, inner_unroll = wi, di
    else:
        # distinct filters in vectors (decoded weight stored [K, D]); positions broadcast
        vec = _vector_of(D, lanes)
        Dt = vec * _largest_divisor(D // vec, max(1, acc_regs // 4))
        Wt = _largest_divisor(OW, acc_regs // (Dt // vec))
        do, di = sch.split(d, [None, Dt])
        wo, wi = sch.split(ow, [None, Wt])
        sch.reorder(b, do, oh, wo, rc, rk0, rk1, wi, di)
        inner_vec, inner_unroll = di, wi
    acc = sch.cache_write(conv, 0, "global")  # < 1 KiB: a stack array, see ACC_MAX_FLOATS
    sch.reverse_compute_at(acc, wo)
    if not along_row:  # the accumulator tile with the filter axis innermost: whole vectors
        sch.transform_layout(conv, ("write", 0), lambda bb, dd, h, w: (bb, h, w, dd))
    sch.vectorize(inner_vec)
    sch.unroll(inner_unroll)
    sch.unroll(rk1)
    macs = _prod_iters(sch.get(conv))
    par = sch.fuse(b, do, oh)
    if cores > 1 and macs >= parallel_min(PARALLEL_MIN_MACS):
        sch.parallel(par)
    init = sch.decompose_reduction(conv, rc)
    # the init and write-back of the accumulator tile: vectorise their innermost loop
    for blk in (init, acc):
        _try_vectorize(sch, sch.get_loops(blk)[-1])
    if "pad" in blocks and cores > 1 and macs >= parallel_min(PARALLEL_MIN_MACS):
        # the padded input's rows over the cores
        pl = sch.get_loops(blocks["pad"])
        sch.parallel(sch.fuse(*pl[:-1]))
    _schedule_decode(sch, decode, blocks.get(rows.BLOCK_ROW_WORDS), lanes, filters_in_vectors=not along_row)
    _schedule_epilogue(sch, out, lanes, cores)
    return sch.mod["main"]


def _open(prim, main: str, extra: tuple[str, ...] = ()):
    """A schedule of ``prim`` with its epilogue inlined into the output block; returns it, its
    blocks by name, the ``main`` block (GEMM / conv), the decode block and the output block."""
    from tvm import s_tir

    from tbn_tvm.kernels import rows

    sch = s_tir.Schedule(prim)
    keep = (*extra, rows.BLOCK_ROW_WORDS, rows.BLOCK_DECODE, main)
    inline_all_except(sch, keep, producers=False)  # the epilogue into the kernel's output block
    blocks = _blocks(sch)
    out = next(b for n, b in blocks.items() if n not in keep)
    return sch, blocks, blocks[main], blocks[rows.BLOCK_DECODE], out


def _vector_of(D: int, lanes: int) -> int:
    """The vector width along the distinct rows/filters axis (``lanes`` or 8), else raise."""
    vec = lanes if D % lanes == 0 else (8 if D % 8 == 0 else 0)
    if not vec:
        raise ValueError("no vector axis")
    return vec


def _schedule_decode(sch, decode, words, lanes: int, filters_in_vectors: bool, at=None) -> None:
    """The decode of the distinct rows to ±1: ``[D, K]`` with the row's elements in vectors, or
    (``filters_in_vectors``) stored ``[K, D]`` from row words stored ``[C, D]`` with the rows in
    vectors.  ``at``: the loop to decode under (a panel per block of rows), else once per call."""
    if filters_in_vectors:
        sch.transform_layout(decode, ("write", 0), lambda dd, kk: (kk, dd))
        if words is not None:
            sch.transform_layout(words, ("write", 0), lambda dd, cc: (cc, dd))
    if at is not None:
        sch.compute_at(decode, at)
        if words is not None:
            sch.compute_at(words, at)
    dl = sch.get_loops(decode)
    dd, kk = dl[-2], dl[-1]
    if filters_in_vectors:
        sch.reorder(kk, dd)
        inner = dd
    else:
        inner = kk
    ext = _extent(sch, inner)
    vec = lanes if ext % lanes == 0 else (8 if ext % 8 == 0 else 0)
    if vec:
        _, vi = sch.split(inner, [None, vec])
        sch.vectorize(vi)


def _try_vectorize(sch, loop) -> None:
    try:
        sch.vectorize(loop)
    except Exception:  # noqa: BLE001 - a loop that cannot be a vector stays scalar
        pass


def _stride_of_last(sch, conv) -> int:
    """The stride of the output row's position in the padded input index of ``conv``."""
    blk = sch.get(conv)
    ow_var = blk.iter_vars[3].var
    for region in blk.reads:  # the input (4-D, indexed by the output position)
        if len(region.region) == 4:
            coeff = _coefficient(region.region[3].min, ow_var)
            if coeff:
                return coeff
    return 0


def _coefficient(expr, var) -> int | None:
    from tvm.sym import pattern as arith

    try:
        res = arith.detect_linear_equation(expr, [var])
    except Exception:  # noqa: BLE001
        return None
    if len(res) != 2:
        return None
    try:
        return int(res[0])
    except Exception:  # noqa: BLE001
        return None


def schedule_gemm(prim, lanes: int, cores: int, acc_regs: int):
    """Schedule a (fused) PrimFunc holding ``tbn_rows_gemm`` (``Z[m, d] = X[m, :] . Wd[d, :]``
    on the decoded distinct rows): ``Mt x Dt`` accumulators, ``Dt`` in vectors (decoded rows
    stored ``[K, D]``, a panel per filter block), ``X`` broadcast."""
    from tbn_tvm.kernels import rows
    from tbn_tvm.schedules.cpu_generic import matmul_tiles

    sch, blocks, gemm, decode, out = _open(prim, rows.BLOCK_GEMM)
    ivs = sch.get(gemm).iter_vars
    D = int(ivs[-2].dom.extent)
    vec = _vector_of(D, lanes)
    nv = _largest_divisor(D // vec, 2)
    # only the innermost row axis with more than one row is tiled (a tile across two outer
    # indices would write back a bounding box it did not compute); padded when nothing divides
    m_axes = [i for i in range(len(ivs) - 2) if int(ivs[i].dom.extent) > 1] or [len(ivs) - 3]
    M = int(ivs[m_axes[-1]].dom.extent)
    _, _, Mt, Mp = matmul_tiles(M, nv * vec, vec, acc_regs)
    if Mp != M:
        pad = [1] * len(ivs)
        pad[m_axes[-1]] = Mt
        sch.pad_einsum(gemm, pad)
    loops = sch.get_loops(gemm)
    *ms, d, k = loops
    m = ms[m_axes[-1]]
    outer_ms = [lp for i, lp in enumerate(ms) if i != m_axes[-1]]
    Dt = vec * nv
    do, di = sch.split(d, [None, Dt])
    mo, mi = sch.split(m, [None, Mt])
    sch.reorder(do, *outer_ms, mo, k, mi, di)
    acc = sch.cache_write(gemm, 0, "global")  # < 1 KiB: a stack array, see ACC_MAX_FLOATS
    sch.reverse_compute_at(acc, mo)
    sch.vectorize(di)
    sch.unroll(mi)
    # the panel of Dt decoded rows ([K, Dt]), decoded right before the row block uses it
    _schedule_decode(sch, decode, blocks.get(rows.BLOCK_ROW_WORDS), lanes, filters_in_vectors=True, at=do)
    if outer_ms:
        mo = sch.fuse(*outer_ms, mo)
    macs = _prod_iters(sch.get(gemm))
    spread = cores > 1 and macs >= parallel_min(PARALLEL_MIN_MACS)
    # the blocks of distinct rows over the cores, else (or with the knob gemm_rows) the blocks
    # of input rows
    rows_first = current().gemm_rows and _extent(sch, mo) >= cores
    if spread and _extent(sch, do) >= cores and not rows_first:
        sch.parallel(do)
    elif spread and _extent(sch, mo) >= cores:
        sch.parallel(mo)
    init = sch.decompose_reduction(gemm, k)
    for blk in (init, acc):
        _try_vectorize(sch, sch.get_loops(blk)[-1])
    _schedule_epilogue(sch, out, lanes, cores)
    return sch.mod["main"]
