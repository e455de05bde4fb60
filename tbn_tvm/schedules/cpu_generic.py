"""Default host CPU schedules for every kernel the project's hand schedules do not cover: TVM's
own kernels (dense layers left fp32, attention's activation matmuls, depthwise/grouped convs,
pooling, softmax/layer norm, element-wise and layout chains) and the project's decode-then-
compute kernels.  :func:`schedule_default` tries the rules in order; the first that applies
schedules the kernel, else it keeps TVM's loop nest (correct, slower).  See docs/host.md.

Each rule is the classic CPU recipe for its kind, written as TVM 0.27 ``s_tir.Schedule``
primitives (no search: the same kernel always gets the same schedule):

* :func:`schedule_conv` -- direct convolution, 1-D/2-D, grouped, depthwise: an accumulator tile
  (< 1 KiB, registers) held over the whole reduction, in one of three vector layouts
  (:func:`conv_mode`), the element-wise epilogue applied at the tile's write-back;
* :func:`schedule_matmul` -- GEMM/GEMV: ``rows x vectors`` accumulators, ``A`` broadcast, ``B``
  loaded as vectors, padded (``pad_einsum``) where nothing divides an extent;
* :func:`schedule_rows_reduction` -- reductions over the innermost axes, r-factored into vector
  partial sums, rows over the cores;
* :func:`schedule_window_reduction` -- pooling;
* :func:`schedule_injective` -- element-wise and layout kernels.

Kernels go over the cores only with enough work (:data:`PARALLEL_MIN_MACS`); blocks whose calls
have no vector lowering stay scalar (:func:`vectorizable`).
"""

from __future__ import annotations

from collections.abc import Sequence

from tbn_tvm.schedules import reverse_inline_safely
from tbn_tvm.schedules.cpu_decoded import ACC_MAX_FLOATS, ACC_REGS_AVX2, ACC_REGS_AVX512
from tbn_tvm.schedules.knobs import parallel_min

#: Multiply-adds (or element operations) below which a kernel stays on one core: TVM's thread
#: pool costs a few microseconds per parallel region (3 us measured for a 4,096-element add
#: that takes 0.25 us on one core), about what one core does with 10^5-10^6 multiply-adds.
PARALLEL_MIN_MACS = 1 << 20
PARALLEL_MIN_ELEMENTS = 1 << 19
#: :func:`ops_per_element` of the element-wise blocks :data:`PARALLEL_MIN_ELEMENTS` was measured
#: on (adds, copies with their index arithmetic): a block of more operations per element goes
#: over the cores at proportionally fewer elements.
PLAIN_ELEMENT_OPS = 8


def accumulator_registers(vec: int, lanes: int = 16) -> int:
    """Vector registers of ``vec`` floats to give to an accumulator tile on a CPU with ``lanes``
    float32 lanes (see :mod:`tbn_tvm.schedules.cpu_decoded`)."""
    return min(ACC_REGS_AVX512 if lanes >= 16 else ACC_REGS_AVX2, ACC_MAX_FLOATS // vec)


def _extent(sch, loop) -> int:
    return int(sch.get(loop).extent)


def _same(sch, a, b) -> bool:
    """Whether two block handles name the same block (handles are not unique)."""
    return sch.get(a).same_as(sch.get(b))


def _same_shape(sch, a, b) -> bool:
    """Whether two blocks write buffers of one shape (an element-wise consumer of the whole
    output, not a slice of a padded one)."""
    sa = [int(d) for d in sch.get(a).writes[0].source.shape]
    sb = [int(d) for d in sch.get(b).writes[0].source.shape]
    return sa == sb


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _largest_divisor(n: int, at_most: int) -> int:
    return max(d for d in _divisors(n) if d <= max(1, at_most))


def _tile(n: int, at_most: int) -> int:
    """A tile size for an axis of ``n`` (unrolled, not vectorised): the largest divisor of ``n``
    up to ``at_most`` when it is at least 4 (or ``at_most``), else ``at_most`` itself (the last
    tile is then partial: TVM guards it with a predicate, slower)."""
    d = _largest_divisor(n, at_most)
    return d if d >= min(4, at_most) else min(n, at_most)


def _blocks(sch):
    root = sch.get_sblock("root")
    return {str(sch.get(b).name_hint): b for b in sch.get_child_blocks(root)}


def _vars_of(expr) -> set:
    from tvm.tirx.analysis import undefined_vars

    return set(undefined_vars(expr))


def _is_reduction(block) -> bool:
    return any(int(iv.iter_type) == 2 for iv in block.iter_vars)


def matmul_roles(block):
    """For a block ``C[..] += A[..] * B[..]`` with one reduction iter: (batch, m, n, k, nt) iter
    indices where ``nt`` says whether B is indexed ``[.., n, k]`` (k contiguous); None when the
    block is not matmul-like."""
    ivs = list(block.iter_vars)
    kinds = [int(iv.iter_type) for iv in ivs]
    if kinds.count(2) != 1 or any(k not in (0, 2) for k in kinds):
        return None
    if len(block.writes) != 1 or len(block.reads) < 2:
        return None
    var_of = {iv.var: i for i, iv in enumerate(ivs)}
    k = kinds.index(2)
    out_vars = [_vars_of(r.min) for r in block.writes[0].region]
    if not out_vars or len(out_vars[-1]) != 1:
        return None
    n = var_of.get(next(iter(out_vars[-1])))
    if n is None:
        return None
    operands = []
    for region in block.reads:
        if region.source.same_as(block.writes[0].source):
            continue
        used = set()
        last = None
        for r in region.region:
            vs = {var_of[v] for v in _vars_of(r.min) if v in var_of}
            used |= vs
            last = vs
        if k in used:
            operands.append((region, used, last))
    if len(operands) != 2:
        return None
    a = next((o for o in operands if n not in o[1]), None)
    b = next((o for o in operands if n in o[1]), None)
    if a is None or b is None or a is b:
        return None
    batch = [i for i in range(len(ivs)) if i != k and i != n and i in a[1] and i in b[1]]
    m = [i for i in range(len(ivs)) if i not in (k, n) and i not in batch]
    nt = b[2] == {k}
    if not nt and b[2] != {n}:
        return None
    return batch, m, n, k, nt


def matmul_tiles(M: int, N: int, lanes: int, acc_regs: int) -> tuple[int, int, int, int]:
    """(vec, nv, mt, Mp): ``nv`` vectors of ``vec`` columns by ``mt`` rows of accumulators for a
    GEMM whose innermost row axis has ``M`` rows (GEMV when ``M == 1``) and ``N`` columns; ``Mp``
    is ``M`` padded so that ``mt`` divides it (equal to ``M`` when a divisor of 4+ rows exists)."""
    vec = next((v for v in (lanes, 8, 4) if N % v == 0), 8)
    nvec = -(-N // vec)
    if M == 1:
        return vec, _largest_divisor(nvec, acc_regs), 1, 1
    nv = _largest_divisor(nvec, 2)
    limit = max(1, acc_regs // nv)
    mt = _largest_divisor(M, limit)
    if mt >= min(4, M):
        return vec, nv, mt, M
    # no good divisor (17 tokens): pad the rows to a multiple of the tile that wastes least
    best = min(range(4, limit + 1), key=lambda t: (-(-M // t) * t - M, -t)) if limit >= 4 else 1
    return vec, nv, best, -(-M // best) * best


def schedule_matmul(func, lanes: int, cores: int, acc_regs: int):
    """A register-blocked GEMM / GEMV for a (fused) matmul-like kernel
    (``C[.., m, n] += A[.., m, k] * B[.., k, n]``): ``mt x nv`` vector accumulators held over
    the whole reduction, ``A`` broadcast, ``B`` loaded as vectors; only the innermost row axis
    is tiled (a tile across two outer indices would write back a bounding box it did not
    compute); rows and columns padded (``pad_einsum``) when nothing divides them."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    blocks = _blocks(sch)
    main = [b for b in blocks.values() if _is_reduction(sch.get(b))]
    if len(main) != 1:
        raise ValueError("not a single-reduction kernel")
    main = main[0]
    roles = matmul_roles(sch.get(main))
    if roles is None:
        raise ValueError("not matmul-like")
    batch, m_idx, n_idx, k_idx, nt = roles
    if nt:
        raise ValueError("B is [.., n, k]: no vector axis along n")
    # the element-wise epilogue: one block after the matmul
    changed = True
    while changed:
        changed = False
        for blk in _blocks(sch).values():
            if _same(sch, blk, main) or _is_reduction(sch.get(blk)):
                continue
            if sch.get_producers(blk) and reverse_inline_safely(sch, blk):
                changed = True
                break
    ivs = sch.get(main).iter_vars
    m_idx = [i for i in m_idx if int(ivs[i].dom.extent) > 1] or m_idx[-1:]  # unit axes stay outer
    N = int(ivs[n_idx].dom.extent)
    M = int(ivs[m_idx[-1]].dom.extent) if m_idx else 1
    rows_outer = _prod([int(ivs[i].dom.extent) for i in m_idx[:-1]])
    vec, nv, mt, Mp = matmul_tiles(M, N, lanes, acc_regs)
    pad = [1] * len(ivs)
    if N % vec:
        pad[n_idx] = vec
    if Mp != M:
        pad[m_idx[-1]] = mt
    if pad != [1] * len(ivs):
        sch.pad_einsum(main, pad)
    loops = sch.get_loops(main)
    if len(loops) != len(ivs):
        raise ValueError("loop nest is not the block's iteration domain")
    bl = [loops[i] for i in batch]
    units = [loops[i] for i in roles[1] if i not in m_idx]
    mo_l = units + [loops[i] for i in m_idx[:-1]]
    m = loops[m_idx[-1]] if m_idx else None
    nl, kl = loops[n_idx], loops[k_idx]
    no, ni = sch.split(nl, [None, nv * vec])
    if m is not None:
        mo, mi = sch.split(m, [None, mt])
        sch.reorder(*bl, *mo_l, no, mo, kl, mi, ni)
        outer = [*bl, *mo_l, no, mo]
    else:
        mo = None
        sch.reorder(*bl, no, kl, ni)
        outer = [*bl, no]
    acc = sch.cache_write(main, 0, "global")
    # the epilogue reads the product element-wise: merge it into the write-back of the tile
    for blk in _blocks(sch).values():
        if _same(sch, blk, main) or _same(sch, blk, acc):
            continue
        if any(_same(sch, p, acc) for p in sch.get_producers(blk)) and _same_shape(sch, blk, acc):
            reverse_inline_safely(sch, blk)  # else it keeps its own pass
    sch.reverse_compute_at(acc, mo if mo is not None else no)
    niv, nii = sch.split(ni, [None, vec])
    sch.vectorize(nii)
    sch.unroll(niv)
    if m is not None:
        sch.unroll(mi)
    par = sch.fuse(*outer) if len(outer) > 1 else outer[0]
    work = rows_outer * M * N * int(sch.get(kl).extent) * _prod([int(ivs[i].dom.extent) for i in batch])
    if cores > 1 and work >= parallel_min(PARALLEL_MIN_MACS) and _extent(sch, par) >= 2:
        sch.parallel(par)
    init = sch.decompose_reduction(main, kl)
    for blk in (init, acc):
        if vectorizable(sch, blk):
            _vectorize_inner(sch, sch.get_loops(blk)[-1], lanes, let_moduli(sch, blk))
    for blk in _all_blocks(sch):  # pad_einsum's copies and an epilogue left on its own
        if (
            not _is_reduction(sch.get(blk))
            and sch.get_loops(blk)
            and len(sch.get_loops(blk)) == len(sch.get(blk).iter_vars)
        ):
            if str(sch.get(blk).name_hint).endswith("_pad"):
                try:
                    schedule_spatial(sch, blk, lanes, 1)
                except Exception:  # noqa: BLE001
                    pass
    return sch.mod["main"]


def schedule_default(func, lanes: int, cores: int, acc_regs: int):
    """The first default rule that applies to ``func`` (None: none does)."""
    import os

    for rule in (
        lambda: schedule_conv(func, lanes, cores),
        lambda: schedule_matmul(func, lanes, cores, acc_regs),
        lambda: schedule_rows_reduction(func, lanes, cores),
        lambda: schedule_window_reduction(func, lanes, cores),
        lambda: schedule_injective(func, lanes, cores),
    ):
        try:
            return rule()
        except Exception as e:  # noqa: BLE001 - the next rule, else TVM's default loop nest
            if os.environ.get("TBN_SCHED_DEBUG"):
                import traceback

                tb = [f for f in traceback.extract_tb(e.__traceback__) if "cpu_generic" in f.filename]
                print("  (no schedule:", str(e).splitlines()[0][:200], [f.lineno for f in tb], ")")
    return None


def _plain_reads(block) -> bool:
    """Every read index of ``block`` is a single iteration variable or a constant."""
    for region in block.reads:
        for r in region.region:
            if len(_vars_of(r.min)) > 1:
                return False
    return True


def _leading_spatial(block) -> int:
    n = 0
    for iv in block.iter_vars:
        if int(iv.iter_type) != 0:
            break
        n += 1
    return n


def schedule_rows_reduction(func, lanes: int, cores: int):
    """Reductions over the innermost axes (softmax, layer norm, mean, sums): the rows over the
    cores, every block of a row computed under it, reductions r-factored into vector partial
    sums, element-wise blocks in vectors."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    root = sch.get_sblock("root")
    blocks = list(sch.get_child_blocks(root))
    infos = [sch.get(b) for b in blocks]
    if not any(_is_reduction(b) for b in infos) or _is_reduction(infos[-1]):
        raise ValueError("not a row reduction")
    lead = min(_leading_spatial(b) for b in infos)
    # every reduction must reduce only trailing axes
    for b in infos:
        kinds = [int(iv.iter_type) for iv in b.iter_vars]
        if any(k not in (0, 2) for k in kinds):
            raise ValueError("opaque iterators")
        if _is_reduction(b) and kinds[kinds.index(2) :].count(0):
            raise ValueError("reduction is not over the trailing axes")
        if _is_reduction(b) and not _plain_reads(b):
            raise ValueError("a reduction reads through index arithmetic (a convolution?)")
    if lead == 0:
        raise ValueError("no leading spatial axis")
    work = sum(
        _prod([int(iv.dom.extent) for iv in sch.get(b).iter_vars]) * _element_weight(sch, b) for b in blocks
    )
    # r-factor each reduction into vector partial sums first (before compute_at: rfactor needs
    # the reduction loop to be its block's own)
    for blk in blocks:
        b = sch.get(blk)
        if not _is_reduction(b):
            continue
        loops = sch.get_loops(blk)
        nsp = _leading_spatial(b)
        red = loops[nsp:]
        r = sch.fuse(*red) if len(red) > 1 else red[0]
        ext = _extent(sch, r)
        vec = next((v for v in (lanes, 8, 4) if ext % v == 0 and ext >= 2 * v), None)
        if vec is None:
            continue
        _, ri = sch.split(r, [None, vec])
        try:
            sch.rfactor(ri, nsp)
        except Exception:  # noqa: BLE001 - a reduction rfactor does not understand: stays scalar
            pass
    blocks = list(sch.get_child_blocks(root))
    last = blocks[-1]
    loops = sch.get_loops(last)
    rows = sch.fuse(*loops[:lead]) if lead > 1 else loops[0]
    for blk in reversed(blocks[:-1]):
        sch.compute_at(blk, rows, preserve_unit_loops=True)
    n_rows = _extent(sch, rows)
    if cores > 1 and n_rows >= cores and work >= parallel_min(PARALLEL_MIN_ELEMENTS):
        sch.parallel(rows)
    # vectorise: element-wise blocks on their innermost axis; rf blocks on their vector axis
    for blk in _all_blocks(sch):
        b = sch.get(blk)
        bl = sch.get_loops(blk)
        if len(bl) <= 1:
            continue
        if not _is_reduction(b):
            if vectorizable(sch, blk):
                _vectorize_inner(sch, bl[-1], lanes, let_moduli(sch, blk))
        elif str(b.name_hint).endswith("_rf"):
            # loops: rows, ..., vector axis (spatial), reduction: put the vector axis inner
            try:
                sch.reorder(bl[-1], bl[-2])
                sch.vectorize(sch.get_loops(blk)[-1])
            except Exception:  # noqa: BLE001 - stays scalar
                pass
    return sch.mod["main"]


def _all_blocks(sch):
    out = []
    stack = [sch.get_sblock("root")]
    while stack:
        b = stack.pop()
        kids = list(sch.get_child_blocks(b))
        out.extend(kids)
        stack.extend(kids)
    return out


def _vectorize_inner(sch, loop, lanes: int, moduli: Sequence[int] = ()) -> None:
    """Vectors along ``loop`` (an element-wise block's innermost): split by the widest of
    ``lanes``, 8, 4 that divides it; where none does (a softmax row of 65 or 197 tokens), the
    loop is partitioned into whole vectors of ``lanes`` (or 8) and a scalar tail.  Widths
    that do not divide every one of ``moduli`` are not used (:func:`let_moduli`)."""
    ext = _extent(sch, loop)
    widths = _vector_widths(lanes, moduli)
    vec = next((v for v in widths if ext % v == 0), None)
    if vec is None:
        width = next((v for v in widths[:2] if ext > v and v >= 8), None)
        if width is None:
            return
        try:
            main = sch.loop_partition(loop, [ext - ext % width, None])[0]
            _, vi = sch.split(main, [None, width])
            sch.vectorize(vi)
        except Exception:  # noqa: BLE001 - stays scalar
            pass
        return
    try:
        if ext > vec:
            _, vi = sch.split(loop, [None, vec])
            sch.vectorize(vi)
        else:
            sch.vectorize(loop)
    except Exception:  # noqa: BLE001
        pass


def schedule_injective(func, lanes: int, cores: int):
    """Element-wise / layout kernels (transpose, reshape, concat, take, broadcasts): producers
    inlined, the output's loops fused, vectors innermost where the innermost extent allows,
    chunks over the cores when the kernel is large enough to pay for the fork."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    blocks = _all_blocks(sch)
    if any(_is_reduction(sch.get(b)) for b in blocks):
        raise ValueError("has a reduction")
    root = sch.get_sblock("root")
    for blk in list(sch.get_child_blocks(root))[:-1]:
        try:
            sch.compute_inline(blk)
        except Exception:  # noqa: BLE001 - stays its own loop nest
            pass
    done = False
    for blk in sch.get_child_blocks(root):
        if sch.get_loops(blk):
            schedule_spatial(sch, blk, lanes, cores)
            done = True
    if not done:
        raise ValueError("nothing to schedule")
    return sch.mod["main"]


# ----------------------------------------------------------------------------------- convolution
def conv_roles(block):
    """For a direct-convolution block ``Y[b, o, *pos] += X[b, c(o, rc), pos*s + rk*d] * W[..]``:
    ``(nd, input_read, weight_read)`` (indices into ``block.reads``), else None."""
    ivs = list(block.iter_vars)
    kinds = [int(iv.iter_type) for iv in ivs]
    if any(k not in (0, 2) for k in kinds):
        return None
    ns, nr = kinds.count(0), kinds.count(2)
    if ns not in (3, 4) or nr != ns - 1 or kinds != [0] * ns + [2] * nr:
        return None
    nd = ns - 2
    pos = {ivs[2 + j].var for j in range(nd)}
    rks = {ivs[ns + 1 + j].var for j in range(nd)}
    o_var, rc_var = ivs[1].var, ivs[ns].var
    x_read = w_read = None
    for i, region in enumerate(block.reads):
        if region.source.same_as(block.writes[0].source):
            continue
        idx = [_vars_of(r.min) for r in region.region]
        if len(idx) == 2 + nd and all(idx[2 + j] & pos and idx[2 + j] & rks for j in range(nd)):
            x_read = i
        elif any(o_var in v for v in idx) and any(rc_var in v for v in idx):
            w_read = i
    if x_read is None or w_read is None:
        return None
    return nd, x_read, w_read


def _channel_map(block, x_read) -> tuple[int, int]:
    """(filters per group Og, input channels per group Cg) of a conv block: the input channel
    read at ``rc = 0`` as the filter index grows."""
    from tvm import sym, tirx

    ivs = list(block.iter_vars)
    O = int(ivs[1].dom.extent)
    ns = len([iv for iv in ivs if int(iv.iter_type) == 0])
    Cg = int(ivs[ns].dom.extent)
    expr = block.reads[x_read].region[1].min

    def chan(o: int) -> int:
        ana = sym.Analyzer()
        ana.bind(ivs[1].var, tirx.IntImm("int64", o))
        ana.bind(ivs[ns].var, tirx.IntImm("int64", 0))
        v = ana.simplify(expr)
        return int(v)

    c0 = chan(0)
    og = O
    for o in range(1, O):
        if chan(o) != c0:
            og = o
            break
    return og, Cg


def _is_copy(block) -> bool:
    from tvm.tirx import stmt

    body = block.body
    # tvm.tirx.expr.BufferLoad is a factory function in TVM 0.27, not the class
    return isinstance(body, stmt.BufferStore) and type(body.value).__name__ in ("BufferLoad", "TensorLoad")


def conv_mode(O: int, Og: int, Cg: int, OW: int, lanes: int, stride: int = 1) -> str:
    """How :func:`schedule_conv` vectorises a convolution with ``O`` filters, ``Og`` per group,
    ``Cg`` input channels per group and output rows of ``OW``:

    * ``filters``: filters in vectors, inputs broadcast (``8 | Og``, not depthwise);
    * ``channels``: a depthwise conv with channels in vectors, the padded input, weight and
      accumulators stored channel-innermost (NCHWc inside the kernel) — short rows;
    * ``positions``: output positions in vectors, weights broadcast (a vector width divides
      the output row).
    A strided depthwise conv on rows of 8+ takes ``filters`` with one filter per "vector": a
    register tile of positions in scalar registers (measured on efficientnet_b0's 3x3 stride-2
    depthwise at 16x16: 35 us against 70 positions / 78 channels, single-threaded).  A
    stride-1 conv whose rows fill whole vectors takes ``positions`` (a binary 16->64 1x1 conv
    at 32x32: 41.5 us against 65 with filters in vectors; equal or better on the 3x3 convs of
    resnet18d at 16x16 and 32x32).
    Raises ValueError when none applies."""
    depthwise = Cg == 1 and Og == 1
    if depthwise and stride > 1 and OW >= 8:
        return "filters"
    if not depthwise and stride == 1 and OW % lanes == 0:
        return "positions"  # full-width rows: weights broadcast, the output written as it lies
    if not depthwise and Og % 8 == 0:
        return "filters"
    if not depthwise and Og % 4 == 0 and OW % 4 != 0:
        return "filters"  # in 4-lane vectors
    if not depthwise and 2 <= Og <= 2 * lanes and OW % 4 != 0:
        return "filters"  # a ragged filter count (22): one vector of that many lanes
    row_vec = next((v for v in (lanes, 8) if OW % v == 0), None)
    if depthwise and O % 8 == 0 and (row_vec is None or OW < 2 * lanes):
        return "channels"
    if next((v for v in (lanes, 8, 4) if OW % v == 0), None) is not None:
        return "positions"
    if depthwise and O % 8 == 0:
        return "channels"
    raise ValueError("no vector axis for this convolution")


def schedule_conv(func, lanes: int, cores: int):
    """A register-blocked direct convolution (1-D or 2-D, grouped, depthwise), for TVM's own
    conv kernels and the project's decode-then-convolve kernels (:func:`conv_mode` says which
    axis goes in vectors).  The accumulator tile (< 1 KiB, a stack array LLVM keeps in
    registers) stays put over the whole reduction; the element-wise epilogue is applied when
    the tile is written back; tiles over the cores when the layer has enough work."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    convs = [b for b in _all_blocks(sch) if conv_roles(sch.get(b)) is not None]
    if len(convs) != 1 or any(
        _is_reduction(sch.get(b)) and not _same(sch, b, convs[0]) for b in _all_blocks(sch)
    ):
        raise ValueError("not a single convolution")
    conv = convs[0]
    nd, x_read, w_read = conv_roles(sch.get(conv))
    block = sch.get(conv)
    Og, Cg = _channel_map(block, x_read)
    x_buf, w_buf = block.reads[x_read].source, block.reads[w_read].source
    # producers: a plain copy of the input is inlined; the zero padding stays its own block
    pad = None
    for p in sch.get_producers(conv):
        pb = sch.get(p)
        if pb.writes[0].source.same_as(x_buf):
            if _is_copy(pb):
                sch.compute_inline(p)
            else:
                pad = p
    _merge_epilogue_chain(sch, conv, pad)
    loops = sch.get_loops(conv)
    if len(loops) != 2 + nd + 1 + nd:
        raise ValueError("loop nest is not the block's iteration domain")
    b, o, *pos = loops[: 2 + nd]
    rc, *rk = loops[2 + nd :]
    O, OW = _extent(sch, o), _extent(sch, pos[-1])
    OH = _extent(sch, pos[0]) if nd == 2 else 1
    B = _extent(sch, b)
    macs = B * O * OH * OW * Cg * _prod([_extent(sch, r) for r in rk])
    mode = conv_mode(O, Og, Cg, OW, lanes, _stride_of_last(block, nd))
    if mode == "filters":
        vec = next((v for v in (lanes, 8, 4) if Og % v == 0), Og)
        acc_regs = accumulator_registers(vec)
        nvo = _largest_divisor(Og // vec, 3 if acc_regs >= 24 else 2)
        if OW * OH <= 4:  # a GEMV-like layer (1x1 maps): more filters per tile instead
            nvo = _largest_divisor(Og // vec, max(1, acc_regs // (OW * OH)))
    elif mode == "channels":
        vec = lanes if O % lanes == 0 else 8
        acc_regs = accumulator_registers(vec)
        nvo = 1
    else:
        vec = next(v for v in (lanes, 8, 4) if OW % v == 0)
        acc_regs = accumulator_registers(vec)
    if mode in ("filters", "channels"):
        Ot = nvo * vec
        Wt = _tile(OW, max(1, acc_regs // nvo))
        Ht = _tile(OH, max(1, acc_regs // (nvo * Wt))) if nd == 2 else 1
        oo, oi = sch.split(o, [None, Ot])
        oi_o, oi_v = sch.split(oi, [None, vec])
        wo, wi = sch.split(pos[-1], [None, Wt])
        if nd == 2:
            ho, hi = sch.split(pos[0], [None, Ht])
            sch.reorder(b, oo, ho, wo, rc, *rk, hi, wi, oi_o, oi_v)
            outer, unrolled = [b, oo, ho], [hi, wi, oi_o]
        else:
            sch.reorder(b, oo, wo, rc, *rk, wi, oi_o, oi_v)
            outer, unrolled = [b, oo], [wi, oi_o]
        vec_loop = oi_v
    else:
        nw = _largest_divisor(OW // vec, 2)
        Wt = nw * vec
        Ot = _largest_divisor(O if Cg == 1 and Og == 1 else Og, max(1, acc_regs // nw))
        oo, oi = sch.split(o, [None, Ot])
        wo, wi = sch.split(pos[-1], [None, Wt])
        wi_o, wi_v = sch.split(wi, [None, vec])
        if nd == 2:
            sch.reorder(b, oo, pos[0], wo, rc, *rk, oi, wi_o, wi_v)
            outer = [b, oo, pos[0]]
        else:
            sch.reorder(b, oo, wo, rc, *rk, oi, wi_o, wi_v)
            outer = [b, oo]
        unrolled, vec_loop = [oi, wi_o], wi_v
    acc = sch.cache_write(conv, 0, "global")  # < 1 KiB: a stack array (cpu_decoded.ACC_MAX_FLOATS)
    if mode != "positions":
        sch.transform_layout(conv, ("write", 0), _filters_last(nd))
    for blk in _all_blocks(sch):  # the epilogue, element-wise on the sum: at the write-back
        if any(_same(sch, p, acc) for p in sch.get_producers(blk)) and _same_shape(sch, blk, acc):
            reverse_inline_safely(sch, blk)
    sch.reverse_compute_at(acc, wo)
    # the weight: vectors of filters/channels (filters innermost), or as it is (broadcast)
    if mode != "positions":
        cur = sch.get(conv)
        wprod = next((p for p in sch.get_producers(conv) if sch.get(p).writes[0].source.same_as(w_buf)), None)
        if wprod is None:
            wprod = sch.cache_read(conv, _read_index(cur, w_buf), "global")
        _pack_weight(sch, wprod, len(w_buf.shape), vec, lanes, channel_blocks=mode == "channels")
        tiles = B * -(-OH // Ht) * -(-OW // Wt)
        if mode == "filters" and tiles <= 2 and _is_decode(sch, wprod):
            # a small map (a deep layer): decoding the whole weight per call costs as much as
            # the convolution and does not fit in cache; decode each input channel's slice of
            # the filter tile right before it is used instead (once per tile: 1-2 tiles here)
            sch.compute_at(wprod, rc)
            own = sch.get_loops(wprod)[-len(sch.get(wprod).iter_vars) :]
            try:
                sch.reorder(*own[1:], own[0])  # the filter axis (stored innermost) in vectors
            except Exception:  # noqa: BLE001 - a unit loop in between: the order is already right
                pass
            _vectorize_inner(sch, sch.get_loops(wprod)[-1], lanes)
    stride = _stride_of_last(sch.get(conv), nd)
    if mode == "positions" and pad is not None and stride > 1:
        # the padded row stored by phase (w % s, w // s): vector loads along the output row
        # read consecutive elements instead of every s-th one
        _phase_split(sch, pad, stride, nd)
    if mode == "channels":  # the padded input channel-innermost, written once per call
        if pad is None:
            pad = sch.cache_read(conv, _read_index(sch.get(conv), x_buf), "global")
        sch.transform_layout(pad, ("write", 0), _channel_blocks(2 + nd, vec, first=False))
    sch.vectorize(vec_loop)
    for lp in unrolled:
        sch.unroll(lp)
    if rk and _extent(sch, rk[-1]) <= 8:
        sch.unroll(rk[-1])
    if pad is not None and mode == "positions" and Cg == 1 and Og == 1:
        sch.compute_at(pad, oo)  # each tile's input planes padded right before use
        outer = [b, oo]
    par = sch.fuse(*outer)
    if cores > 1 and macs >= parallel_min(PARALLEL_MIN_MACS) and _extent(sch, par) >= cores:
        sch.parallel(par)
    init = sch.decompose_reduction(conv, rc)
    for blk in (init, acc):
        if vectorizable(sch, blk):
            _vectorize_inner(sch, sch.get_loops(blk)[-1], lanes, let_moduli(sch, blk))
    for blk in _all_blocks(sch):  # an epilogue that could not be merged: its own pass
        if _same(sch, blk, acc) or _same(sch, blk, conv):
            continue
        if any(_same(sch, p, acc) for p in sch.get_producers(blk)):
            _schedule_elementwise(sch, blk, lanes, cores)
    if pad is not None:  # last: decompose_padding rebuilds the loops around the pad block
        if mode == "channels":
            _schedule_channel_pack(sch, pad, vec, cores > 1 and macs >= parallel_min(PARALLEL_MIN_MACS))
        else:
            _schedule_pad(
                sch,
                pad,
                conv,
                lanes,
                parallel=mode == "filters" and cores > 1 and macs >= parallel_min(PARALLEL_MIN_MACS),
            )
    return sch.mod["main"]


def _merge_epilogue_chain(sch, conv, pad) -> None:
    """The element-wise blocks after the conv become one block."""
    changed = True
    while changed:
        changed = False
        for blk in _all_blocks(sch):
            if _same(sch, blk, conv) or (pad is not None and _same(sch, blk, pad)):
                continue
            if sch.get_producers(blk) and not _is_reduction(sch.get(blk)):
                if reverse_inline_safely(sch, blk):
                    changed = True
                    break


def _is_decode(sch, blk) -> bool:
    """A block decoding a compact weight (not a copy of a dense parameter)."""
    from tbn_tvm.kernels import rows
    from tbn_tvm.kernels.conv import BLOCK_DECODE_WEIGHT

    return str(sch.get(blk).name_hint) in (rows.BLOCK_DECODE, BLOCK_DECODE_WEIGHT)


def _pack_weight(sch, wprod, ndim: int, vec: int, lanes: int, channel_blocks: bool) -> None:
    """The block producing the conv weight (a decode, or a copy of a parameter) writes it
    filter-innermost: ``[.., O]`` (filters in vectors) or ``[O / vec, .., vec]`` (channel
    blocks), its own loops reordered so the stores are whole vectors.  A decode of distinct
    sign rows feeding it (:data:`tbn_tvm.kernels.rows.BLOCK_DECODE`) is stored ``[K, D]``."""
    from tbn_tvm.kernels import rows

    if channel_blocks:
        sch.transform_layout(wprod, ("write", 0), _channel_blocks(ndim, vec, first=True))
        loops = sch.get_loops(wprod)
        oo, oi = sch.split(loops[0], [None, vec])
        sch.reorder(oo, *loops[1:], oi)
        sch.vectorize(oi)
    else:
        sch.transform_layout(wprod, ("write", 0), _move_first_last(ndim))
        inner = _reorder_first_last(sch, wprod)
        if _extent(sch, inner) <= 2 * lanes and not any(_extent(sch, inner) % v == 0 for v in (lanes, 8, 4)):
            sch.vectorize(inner)  # a ragged filter count (22): one vector of that many lanes
        else:
            _vectorize_inner(sch, inner, lanes)
    for p in sch.get_producers(wprod):
        if str(sch.get(p).name_hint) == rows.BLOCK_DECODE:
            try:
                sch.transform_layout(p, ("write", 0), lambda d, k: (k, d))
                dl, kl = sch.get_loops(p)[-2:]
                sch.reorder(kl, dl)
                _vectorize_inner(sch, sch.get_loops(p)[-1], lanes)
            except Exception:  # noqa: BLE001 - stays [D, K]
                pass


def _channel_blocks(ndim: int, vec: int, first: bool):
    """Index map putting axis 0 (``first``: a weight ``[O, ..]``) or axis 1 (data
    ``[B, C, ..]``) into blocks of ``vec`` with the block's lane innermost."""
    from tvm import tirx

    v = tirx.IntImm("int64", vec)
    if first:
        if ndim == 4:
            return lambda o, c, h, w: (o // v, c, h, w, o % v)
        return lambda o, c, w: (o // v, c, w, o % v)
    if ndim == 4:
        return lambda b, c, h, w: (b, c // v, h, w, c % v)
    return lambda b, c, w: (b, c // v, w, c % v)


def _schedule_channel_pack(sch, pad, vec: int, parallel: bool) -> None:
    """The channel-innermost copy of the (padded) input: lanes over ``vec`` channels."""
    loops = sch.get_loops(pad)
    b, c, *rest = loops
    co, ci = sch.split(c, [None, vec])
    sch.reorder(b, co, *rest, ci)
    sch.vectorize(ci)
    if parallel:
        sch.parallel(sch.fuse(b, co))


def _prod(xs) -> int:
    out = 1
    for x in xs:
        out *= x
    return out


def _read_index(block, buf) -> int:
    for i, r in enumerate(block.reads):
        if r.source.same_as(buf):
            return i
    raise ValueError("buffer not read")


def _filters_last(nd: int):
    if nd == 2:
        return lambda b, o, h, w: (b, h, w, o)
    return lambda b, o, w: (b, w, o)


def _move_first_last(ndim: int):
    if ndim == 4:
        return lambda o, c, h, w: (c, h, w, o)
    if ndim == 3:
        return lambda o, c, w: (c, w, o)
    return lambda o, k: (k, o)


def _reorder_first_last(sch, blk):
    """Loops of a layout-transformed copy/decode block: the (new) innermost axis last."""
    loops = sch.get_loops(blk)
    if len(loops) >= 2:
        sch.reorder(*loops[1:], loops[0])
    return sch.get_loops(blk)[-1]


def _schedule_elementwise(
    sch, blk, lanes: int, cores: int, min_parallel: int = PARALLEL_MIN_ELEMENTS
) -> None:
    """A spatial block: vectors along its innermost axis when a vector width divides it (a
    fused axis with a ragged inner extent would read and write element by element; LLVM
    vectorises the plain inner loop itself, with a tail), the outer axes fused and spread
    over the cores when the block is large enough."""
    schedule_spatial(sch, blk, lanes, cores, min_parallel)


def _writes_in_loop_order(sch, blk) -> bool:
    """The block's write index is its loop variables in loop order (each used once, plain)."""
    b = sch.get(blk)
    region = b.writes[0].region
    ivs = [iv.var for iv in b.iter_vars]
    idx = [r.min for r in region]
    if len(idx) != len(ivs):
        return False
    for e, v in zip(idx, ivs):
        if not (isinstance(e, type(v)) and e.same_as(v)):
            return False
    return len(sch.get_loops(blk)) == len(ivs)  # still one loop per iterator (not yet fused)


#: TIR calls whose vector form TVM 0.27's LLVM back end lowers (others, e.g. ``tirx.cosh``, are
#: only lowered for scalars: "unknown intrinsic" at build time when vectorised).
VECTOR_CALLS = frozenset(
    "Select Cast if_then_else exp exp2 log log2 sqrt rsqrt floor ceil round trunc nearbyint fabs "
    "abs isnan isinf isfinite max min reinterpret shift_left shift_right bitwise_and bitwise_or "
    "bitwise_xor bitwise_not call_llvm_pure_intrin likely truncdiv truncmod floordiv floormod "
    "float16 float32 float64 int8 int16 int32 int64 uint8 uint16 uint32 uint64 bool tanh sigmoid "
    "erf pow fma Broadcast Ramp Buffer handle Let".split()
)


def vectorizable(sch, blk) -> bool:
    """Whether every call in the block's body has a vector lowering (:data:`VECTOR_CALLS`).  A
    body with both a ``Let`` and an ``if_then_else`` (a GELU or SiLU after a Concat or Pad
    along the vector axis) is not: TVM 0.27's vectoriser then fails with "Let cannot bind the
    same var to two different values" (found by a review helper)."""
    import re

    calls = set(re.findall(r"T\.([A-Za-z_0-9]+)\(", sch.get(blk).body.script()))
    if {"Let", "if_then_else"} <= calls:
        return False
    return calls <= VECTOR_CALLS


def ops_per_element(sch, blk) -> int:
    """Arithmetic operations and calls in one iteration of ``blk``'s body (at least 1), counted
    in its printed TVMScript, index arithmetic included, constants dropped: an add of two
    tensors counts about 4, a reshape's copy 16, the vector-math exp of a softmax 51.  Parallel
    thresholds weigh elements by it (:data:`PLAIN_ELEMENT_OPS`)."""
    import re

    body = re.sub(r"T\.(?:u?int|float|bfloat|bool)\d*\([^()]*\)", "c", sch.get(blk).body.script())
    body = re.sub(r"T\.(?:reads|writes|axis\.\w+|sblock|init)\(.*", "", body)
    return max(1, len(re.findall(r"<<|>>|[-+*/%<>&|]|T\.\w+\(", body)))


def _element_weight(sch, blk) -> int:
    """How many plain element operations one iteration of ``blk`` counts as (at least 1)."""
    return max(1, ops_per_element(sch, blk) // PLAIN_ELEMENT_OPS)


def _vector_widths(lanes: int, moduli: Sequence[int]) -> list[int]:
    """The vector widths to try, widest first: ``lanes``, 8, 4, those dividing every one of
    ``moduli`` (:func:`let_moduli`)."""
    return [v for v in (lanes, 8, 4) if all(m % v == 0 for m in moduli)]


def let_moduli(sch, blk) -> list[int]:
    """The constant divisors of the ``%`` and ``//`` in ``blk``'s indices when its body binds a
    value with a ``Let`` (the vector-math GELU after a tiled layer's gather ``Z[.., i % D]``),
    else none.  TVM 0.27 mis-vectorises such a gather inside a ``Let`` when the vector crosses a
    multiple of the divisor (16 lanes over ``i % 8`` of a 2-D buffer read the next row for
    lanes 8-15: found on a tiled ViT's MLP, p = 8); vectors whose width divides every divisor
    stay within one period, where the index is a plain ramp.  The bindings of the block's
    iterators that use its innermost loop count too (a fused loop's ``v = f % 4``)."""
    import re

    body = sch.get(blk).body.script()
    if "T.Let(" not in body:
        return []
    text = body
    loops = sch.get_loops(blk)
    if loops:
        var = str(sch.get(loops[-1]).loop_var.name)
        bindings = [ln for ln in sch.get(loops[-1]).script().splitlines() if "T.axis." in ln]
        text += "\n".join(ln for ln in bindings if re.search(rf"\b{re.escape(var)}\b", ln))
    return [int(m) for m in re.findall(r"(?:%|//) T\.int(?:32|64)\((\d+)\)", text)]


def schedule_spatial(sch, blk, lanes: int, cores: int, min_parallel: int = PARALLEL_MIN_ELEMENTS) -> None:
    """See :func:`_schedule_elementwise`.  The block goes over the cores when its elements times
    :func:`ops_per_element` reach ``min_parallel`` (a 130k-element GELU does; a 130k-element
    add does not)."""
    loops = sch.get_loops(blk)
    if not loops:
        return
    if not vectorizable(sch, blk):
        lanes = 1  # scalar calls only: the outer loops still go over the cores
    total = _prod([_extent(sch, lp) for lp in loops]) * _element_weight(sch, blk)
    # short rows (a 4x4 map): the trailing axes fused until a full vector fits, when the block
    # writes its output in loop order (fusing keeps the stores contiguous)
    while len(loops) > 1 and _extent(sch, loops[-1]) < lanes and _writes_in_loop_order(sch, blk):
        loops = [*loops[:-2], sch.fuse(loops[-2], loops[-1])]
    inner = loops[-1]
    ext = _extent(sch, inner)
    widths = _vector_widths(lanes, let_moduli(sch, blk))
    vec = next((v for v in widths if ext % v == 0), None) if lanes > 1 else None
    outer_loops = list(loops[:-1])
    if vec is not None and ext >= vec:
        io, ii = sch.split(inner, [None, vec])
        sch.vectorize(ii)
        outer_loops.append(io)
    else:
        outer_loops.append(inner) if not outer_loops else None
    if cores > 1 and total >= parallel_min(min_parallel) and outer_loops:
        par = sch.fuse(*outer_loops) if len(outer_loops) > 1 else outer_loops[0]
        if _extent(sch, par) >= cores:
            sch.parallel(par)


def _stride_of_last(block, nd: int) -> int:
    """The stride of the output row's position in the conv input's last index."""
    from tvm.sym import detect_linear_equation

    ivs = list(block.iter_vars)
    ow = ivs[1 + nd].var
    for region in block.reads:
        if len(region.region) == 2 + nd:
            try:
                coeffs = detect_linear_equation(region.region[-1].min, [ow])
                if len(coeffs) == 2:
                    return int(coeffs[0])
            except Exception:  # noqa: BLE001
                continue
    return 1


def _phase_split(sch, pad, stride: int, nd: int) -> None:
    from tvm import tirx

    width = int(sch.get(pad).writes[0].source.shape[-1])
    if width % stride:
        raise ValueError("padded row not a multiple of the stride")
    s = tirx.IntImm("int64", stride)
    if nd == 2:
        sch.transform_layout(pad, ("write", 0), lambda b, c, h, w: (b, c, h, w % s, w // s))
    else:
        sch.transform_layout(pad, ("write", 0), lambda b, c, w: (b, c, w % s, w // s))


def _schedule_pad(sch, pad, consumer, lanes: int, parallel: bool) -> None:
    """The zero-padded input: zeros written once, the interior copied without a test per
    element (TVM's decompose_padding), both in vectors; rows over the cores when asked."""
    consumer_loops = [sch.get(lp) for lp in sch.get_loops(consumer)]
    own = [lp for lp in sch.get_loops(pad) if not any(sch.get(lp).same_as(c) for c in consumer_loops)]
    if not own:
        return
    try:
        fill = sch.decompose_padding(pad, own[0])
        _vectorize_inner(sch, sch.get_loops(fill)[-1], lanes)
    except Exception:  # noqa: BLE001 - keeps the test per element
        pass
    _vectorize_inner(sch, sch.get_loops(pad)[-1], lanes)
    if parallel:
        pl = sch.get_loops(pad)
        try:
            sch.parallel(sch.fuse(*pl[:2]))
        except Exception:  # noqa: BLE001
            pass


# --------------------------------------------------------------------------------- pooling
def schedule_window_reduction(func, lanes: int, cores: int):
    """Pooling-like kernels (one reduction over a window of a padded input: MaxPool, AvgPool,
    LpPool): a channel plane per task, its padding computed right before it, the window loops
    outside the output row, the row in vectors where a width divides it."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    reds = [b for b in _all_blocks(sch) if _is_reduction(sch.get(b))]
    if len(reds) != 1:
        raise ValueError("not a single window reduction")
    red = reds[0]
    blk = sch.get(red)
    sources = {r.source.name for r in blk.reads if not r.source.same_as(blk.writes[0].source)}
    if len(sources) != 1:
        raise ValueError("a window reduction reads one tensor (a convolution reads two)")
    kinds = [int(iv.iter_type) for iv in blk.iter_vars]
    ns = kinds.count(0)
    if kinds != [0] * ns + [2] * (len(kinds) - ns) or ns < 3:
        raise ValueError("not (spatial..., window...) iterators")
    loops = sch.get_loops(red)
    if len(loops) != len(kinds):
        raise ValueError("loop nest is not the block's iteration domain")
    spatial, window = loops[:ns], loops[ns:]
    pads = [p for p in sch.get_producers(red)]
    plane = sch.fuse(*spatial[:2])  # batch x channel
    rows = spatial[2:]
    sch.reorder(plane, *rows[:-1], *window, rows[-1])
    ow = rows[-1]
    OW = _extent(sch, ow)
    vec = next((v for v in (lanes, 8, 4) if OW % v == 0), None)
    if vec is not None:
        _, vi = sch.split(ow, [None, vec])
        sch.vectorize(vi)

    def vectorize_own_loop(b) -> None:
        # a block whose own loops are all unit (a 1x1 output) has the plane loop innermost: that
        # loop holds the window reduction, vectorised it wrote every channel's sum to one element
        inner = sch.get_loops(b)[-1]
        if not sch.get(inner).same_as(sch.get(plane)):
            _vectorize_inner(sch, inner, lanes)

    for p in pads:
        try:
            sch.compute_at(p, plane)
            vectorize_own_loop(p)
        except Exception:  # noqa: BLE001 - computed once at the root
            pass
    for c in sch.get_consumers(red):
        try:
            sch.reverse_compute_at(c, plane)
            vectorize_own_loop(c)
        except Exception:  # noqa: BLE001
            pass
    total = _prod([int(iv.dom.extent) for iv in blk.iter_vars])
    if cores > 1 and total >= parallel_min(PARALLEL_MIN_ELEMENTS) and _extent(sch, plane) >= cores:
        sch.parallel(plane)
    sch.decompose_reduction(red, window[0])
    return sch.mod["main"]
