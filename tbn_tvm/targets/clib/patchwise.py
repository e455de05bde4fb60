"""Patch-wise execution of a CNN's leading high-resolution stage on a microcontroller.

What keeps a CNN off a small board is the RAM its largest activations need at once: run layer
by layer, every kernel holds a whole input and a whole output feature map.  MCUNetV2 (Lin et
al., "Memory-efficient Patch-based Inference for Tiny Deep Learning", NeurIPS 2021) runs the
first, high-resolution part of the network patch by patch instead: for each spatial tile of the
stage's output, every layer of the stage computes just the region the tile needs (the
receptive field's overlap with the neighbouring tiles, its *halo*, is computed again), and
only the stage's output feature map is ever whole.  The rest of the network runs layer by layer.

This module rewrites the Relax graph the Cortex-M back end lowers (before fusion):

* a **stage** is a prefix of ``main`` from the model's input to a *cut*, a tensor that is the
  only one the rest of the graph reads; it may hold 2-D convolutions (dense ``conv2d`` and the
  project's compact kernels, rebuilt for each tile shape), max/average pooling, element-wise
  operators and residual adds of its own tensors, with per-channel constants;
* for a tile of the cut's ``H x W``, the regions each stage tensor needs are found backwards
  (a convolution or pool of kernel ``k``, stride ``s``, dilation ``d`` and padding ``p`` needs
  input rows ``a*s - p .. (b-1)*s - p + (k-1)*d`` for output rows ``a .. b-1``, clipped to the
  map); each layer then runs on its tile with the padding only where the tile touches the
  map's border (the same sums in the same order as the whole layer: outputs are exact);
* each output tile is copied into the cut's full buffer in place (``tbn.inplace_of``, see
  :mod:`tbn_tvm.targets.clib.inplace`); the arena planner
  (:mod:`tbn_tvm.targets.clib.memory_plan`) then overlaps the tiles' short-lived tensors.

:func:`plan` picks the cut and the tile grid: the fewest estimated multiply-adds (recompute
included) whose estimated arena fits the budget; :func:`apply` rewrites the module.  The
estimates rank candidates; the caller checks the real arena of the lowered graph and asks for
the next candidate when it does not fit.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from tbn_tvm.errors import TBNError

Region = tuple[int, int, int, int]  # rows h0 .. h1-1, columns w0 .. w1-1

_UNARY = frozenset(
    {
        "relax.nn.relu",
        "relax.nn.silu",
        "relax.nn.gelu",
        "relax.nn.gelu_tanh",
        "relax.nn.leakyrelu",
        "relax.sigmoid",
        "relax.tanh",
        "relax.clip",
        "relax.exp",
        "relax.negative",
        "relax.abs",
        "relax.sqrt",
        "relax.square",
    }
)
_BINARY = frozenset(
    {"relax.add", "relax.subtract", "relax.multiply", "relax.divide", "relax.maximum", "relax.minimum"}
)
_POOLS = frozenset({"relax.nn.max_pool2d", "relax.nn.avg_pool2d"})


@dataclass
class Node:
    """One binding of a stage: ``var = op(...)`` with its spatial map."""

    key: str  # a unique name of the tensor it binds (the var's name and its binding index)
    var: object  # the Relax var it binds
    call: object  # the Relax call
    kind: str  # "conv" (relax conv2d), "tbn" (a compact kernel), "pool", "unary", "binary"
    inputs: list  # per call argument: the name of a stage tensor, or None (a constant, ...)
    shape: tuple[int, ...]  # output [1, C, H, W]
    kernel: tuple[int, int] = (1, 1)
    strides: tuple[int, int] = (1, 1)
    dilation: tuple[int, int] = (1, 1)
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, left, bottom, right
    macs: int = 1  # multiply-adds (or operations) per output element
    layer: object = None  # the RewrittenLayer of a compact kernel

    @property
    def name(self) -> str:
        return self.key

    @property
    def spatial(self) -> bool:
        return self.kind in ("conv", "tbn", "pool")

    def need(self, out: Region, in_hw: tuple[int, int]) -> tuple[Region, tuple[int, int, int, int]]:
        """The input region (clipped to the input map ``in_hw``) that output region ``out``
        reads, and the padding (top, left, bottom, right) the tile's layer must add."""
        if not self.spatial:
            return out, (0, 0, 0, 0)
        (kh, kw), (sh, sw), (dh, dw) = self.kernel, self.strides, self.dilation
        pt, pl = self.padding[0], self.padding[1]
        r0, r1 = out[0] * sh - pt, (out[1] - 1) * sh - pt + (kh - 1) * dh + 1
        c0, c1 = out[2] * sw - pl, (out[3] - 1) * sw - pl + (kw - 1) * dw + 1
        h, w = in_hw
        region = (max(r0, 0), min(r1, h), max(c0, 0), min(c1, w))
        pads = (max(0, -r0), max(0, -c0), max(0, r1 - h), max(0, c1 - w))
        return region, pads


@dataclass
class Stage:
    """A cut of ``main``: the stage's nodes (bindings ``0 .. len(nodes)-1``) and its output."""

    nodes: list[Node]
    shapes: dict[str, tuple[int, ...]]  # every stage tensor (and the model input) -> shape
    dtypes: dict[str, str]
    source: str  # the model input's name

    @property
    def output(self) -> Node:
        return self.nodes[-1]

    def layers(self) -> list[str]:
        from tbn_tvm.frontend.identity import layers_of

        return [n for node in self.nodes for n in layers_of(node.call)]


@dataclass
class Plan:
    """A patch-wise plan: the stage, the tile grid over its output, the estimates."""

    stage: Stage
    grid: tuple[int, int]  # tiles along H and W
    tile: tuple[int, int]  # tile height and width (the last tile of a row/column may be smaller)
    macs: int  # estimated multiply-adds of the stage, tiles and halos included
    full_macs: int  # the same stage layer by layer
    arena_estimate: int  # estimated arena (bytes): the larger of the stage and the rest
    positions: dict[str, tuple[int, int]] = field(default_factory=dict)  # node -> (tiles, whole)

    @property
    def overhead(self) -> float:
        return self.macs / max(self.full_macs, 1) - 1.0

    def tiles(self) -> list[Region]:
        _, _, h, w = self.stage.output.shape
        (nh, nw), (th, tw) = self.grid, self.tile
        return [
            (i * th, min((i + 1) * th, h), j * tw, min((j + 1) * tw, w))
            for i in range(nh)
            for j in range(nw)
            if i * th < h and j * tw < w
        ]

    def describe(self) -> dict:
        """The plan as the manifest records it (measured figures are added by the back end)."""
        from tbn_tvm.frontend.identity import layers_of

        out = self.stage.output
        recompute = {}
        for node in self.stage.nodes:
            tiles, whole = self.positions.get(node.name, (0, 0))
            for layer in layers_of(node.call):
                recompute[layer] = round(1.0 - whole / max(tiles, 1), 4)
        return {
            "layer_recompute": recompute,
            "layers": self.stage.layers(),
            "stage_output": list(out.shape),
            "grid": list(self.grid),
            "tile": list(self.tile),
            "tiles": len(self.tiles()),
            "estimated_recompute": round(self.overhead, 4),
            "computed_positions": {
                "tiles": sum(v[0] for v in self.positions.values()),
                "layer_by_layer": sum(v[1] for v in self.positions.values()),
            },
        }


def _ints(v) -> tuple[int, ...]:
    return tuple(int(x) for x in v)


def _tensor_shape(expr) -> tuple[int, ...] | None:
    from tvm import relax

    ty = getattr(expr, "ty", None)
    if not isinstance(ty, relax.TensorType) or ty.shape is None:
        return None
    try:
        return tuple(int(d) for d in ty.shape)
    except (TypeError, ValueError):
        return None


def _spatial_const(expr, c: int) -> bool:
    """A constant that is the same at every spatial position (right-aligned to [1, C, H, W]:
    H and W of size 1 or absent)."""
    import tvm

    if not isinstance(expr, tvm.ir.GenericConst):
        return False
    shape = _ints(expr.value.shape)
    full = (1,) * (4 - len(shape)) + shape if len(shape) <= 4 else None
    return full is not None and full[0] == 1 and full[2] == 1 and full[3] == 1 and full[1] in (1, c)


def find_stages(mod, layers: list) -> list[Stage]:
    """Every cut of ``main`` that can run patch-wise, shortest first (see the module
    docstring); ``[]`` when the graph does not start with such a part."""
    from tvm import relax

    func = mod["main"]
    if len(func.params) != 1 or len(func.body.blocks) != 1:
        return []
    src = func.params[0]
    src_shape = _tensor_shape(src)
    if src_shape is None or len(src_shape) != 4 or src_shape[0] != 1:
        return []
    by_kernel = {rl.kernel: rl for rl in layers if rl.kernel is not None and rl.spec is not None}
    bindings = list(func.body.blocks[0].bindings)
    keys: dict[object, str] = {src: f"{src.name}#in"}
    for i, b in enumerate(bindings):
        keys[b.var] = f"{b.var.name}#{i}"
    shapes = {keys[src]: src_shape}
    dtypes = {keys[src]: str(src.ty.dtype)}
    users: dict[str, list[int]] = {}
    for i, b in enumerate(bindings):
        for v in relax.analysis.free_vars(b.value):
            if v in keys:
                users.setdefault(keys[v], []).append(i)
    returned = {keys[v] for v in relax.analysis.free_vars(func.body.body) if v in keys}
    nodes: list[Node] = []
    stages: list[Stage] = []
    for i, b in enumerate(bindings):
        node = _node(b, keys, shapes, by_kernel)
        if node is None:
            break
        nodes.append(node)
        shapes[node.name] = node.shape
        dtypes[node.name] = str(b.var.ty.dtype)
        live = {
            name
            for name in shapes
            if name != keys[src] and (any(u > i for u in users.get(name, ())) or name in returned)
        }
        if live == {node.name} and node.name not in returned and any(n.spatial for n in nodes):
            stages.append(Stage(list(nodes), dict(shapes), dict(dtypes), keys[src]))
    # a cut right before an element-wise operator of the cut's tensor is no cut worth making:
    # the operator would run alone after the stage instead of fused into its last tile kernel
    return [
        st
        for k, st in enumerate(stages)
        if not (
            k + 1 < len(stages)
            and len(stages[k + 1].nodes) == len(st.nodes) + 1
            and stages[k + 1].output.kind in ("unary", "binary")
        )
    ]


def _node(binding, keys: dict, shapes: dict, by_kernel: dict) -> Node | None:
    """The stage node of a binding, or None where it cannot run patch-wise."""
    import tvm
    from tvm import relax

    var, call = binding.var, binding.value
    shape = _tensor_shape(var)
    if not isinstance(call, relax.Call) or shape is None or len(shape) != 4 or shape[0] != 1:
        return None
    key = keys[var]

    def tensor_inputs(args):
        found = []
        for a in args:
            if isinstance(a, relax.Var):
                if keys.get(a) not in shapes:
                    return None
                found.append(keys[a])
            else:
                found.append(None)
        return found

    op = call.op
    name = op.name if isinstance(op, tvm.ir.Op) else ""
    if name == "relax.call_tir":
        rl = by_kernel.get(call.args[0].name_hint)
        if rl is None or rl.spec is None or rl.spec.op != "conv2d":
            return None
        args = list(call.args[1].fields)
        inputs = tensor_inputs(args)
        if inputs is None or inputs[0] is None or any(x is not None for x in inputs[1:]):
            return None
        spec = rl.spec
        fshape = rl.weight.format.shape  # [O, I/groups, kh, kw]
        return Node(
            key,
            var,
            call,
            "tbn",
            inputs,
            shape,
            kernel=(int(fshape[2]), int(fshape[3])),
            strides=_ints(spec.strides),
            dilation=_ints(spec.dilation),
            padding=_ints(spec.padding),
            macs=int(math.prod(fshape[1:])),
            layer=rl,
        )
    inputs = tensor_inputs(call.args)
    if inputs is None or not inputs or inputs[0] is None:
        return None
    in_shape = shapes[inputs[0]]
    if name == "relax.nn.conv2d":
        a = call.attrs
        if (str(a.data_layout), str(a.kernel_layout), str(a.out_layout)) != ("NCHW", "OIHW", "NCHW"):
            return None
        if not isinstance(call.args[1], tvm.ir.GenericConst):
            return None
        w = _ints(call.args[1].value.shape)
        return Node(
            key,
            var,
            call,
            "conv",
            inputs,
            shape,
            kernel=(w[2], w[3]),
            strides=_ints(a.strides),
            dilation=_ints(a.dilation),
            padding=_ints(a.padding),
            macs=int(math.prod(w[1:])),
        )
    if name in _POOLS:
        a = call.attrs
        if bool(a.ceil_mode) or str(a.layout) != "NCHW" or str(a.out_layout) != "NCHW":
            return None
        k = _ints(a.pool_size)
        return Node(
            key,
            var,
            call,
            "pool",
            inputs,
            shape,
            kernel=k,
            strides=_ints(a.strides),
            dilation=_ints(a.dilation),
            padding=_ints(a.padding),
            macs=k[0] * k[1],
        )
    if name in _UNARY:
        if in_shape != shape or any(x is not None for x in inputs[1:]):
            return None
        return Node(key, var, call, "unary", inputs, shape)
    if name in _BINARY:
        for a, src in zip(call.args, inputs, strict=True):
            if src is not None and shapes[src] != shape:
                return None
            if src is None and not _spatial_const(a, shape[1]):
                return None
        return Node(key, var, call, "binary", inputs, shape)
    return None


# ------------------------------------------------------------------------------ regions
def regions(stage: Stage, tile: Region) -> dict[str, Region]:
    """The region of every stage tensor (and the model input) one output tile needs."""
    need: dict[str, Region] = {stage.output.name: tile}
    for node in reversed(stage.nodes):
        out = need.get(node.name)
        if out is None:  # nothing in this tile reads it (cannot happen in a stage: kept safe)
            continue
        for src in node.inputs:
            if src is None:
                continue
            in_hw = stage.shapes[src][2:]
            r, _ = node.need(out, in_hw)
            old = need.get(src)
            need[src] = (
                r
                if old is None
                else (min(old[0], r[0]), max(old[1], r[1]), min(old[2], r[2]), max(old[3], r[3]))
            )
    return need


def _area(r: Region) -> int:
    return max(0, r[1] - r[0]) * max(0, r[3] - r[2])


def _bytes(stage: Stage, name: str, r: Region) -> int:
    shape = stage.shapes[name]
    return shape[1] * _area(r) * (2 if stage.dtypes.get(name) == "float16" else 4)


def estimate(stage: Stage, grid: tuple[int, int], rest_bytes: int, act_bytes: int = 4) -> Plan:
    """The estimated multiply-adds and arena of running ``stage`` over ``grid`` tiles.

    Arena: the stage's full output, plus, during a tile, the tile tensors alive at once (a
    node's output lives from its node to its last reader in the tile; an element-wise node on
    a tensor that dies there is taken to write in place, as fusion and the in-place planner
    make it), the regions sliced out of the model input; or ``rest_bytes``, the layer-by-layer
    arena of the rest of the graph, whichever is larger."""
    out = stage.output
    _, _, h, w = out.shape
    th, tw = -(-h // grid[0]), -(-w // grid[1])
    plan = Plan(stage, grid, (th, tw), 0, 0, 0)
    full = {n.name: n.shape[2] * n.shape[3] for n in stage.nodes}
    plan.full_macs = sum(n.macs * n.shape[1] * full[n.name] for n in stage.nodes)
    counts: dict[str, int] = {n.name: 0 for n in stage.nodes}
    peak = 0
    scale = act_bytes / 4
    out_bytes = int(out.shape[1] * h * w * act_bytes)
    last: dict[str, int] = {}
    for i, node in enumerate(stage.nodes):
        for src in node.inputs:
            if src is not None:
                last[src] = i
    for tile in plan.tiles():
        need = regions(stage, tile)
        live: dict[str, int] = {}
        for i, node in enumerate(stage.nodes):
            r = need[node.name]
            counts[node.name] += _area(r)
            size = int(_bytes(stage, node.name, r) * scale)
            ins = [s for s in node.inputs if s is not None]
            donor = next(
                (
                    s
                    for s in ins
                    if node.kind in ("unary", "binary") and s in live and last[s] == i and need[s] == r
                ),
                None,
            )
            sliced = 0
            for src in ins:
                want = node.need(r, stage.shapes[src][2:])[0]
                if want != need.get(src):
                    sliced += int(_bytes(stage, src, want) * scale)
            now = sum(live.values()) + sliced + (0 if donor else size)
            peak = max(peak, now)
            if donor:
                live.pop(donor)
            live[node.name] = size
            for src in ins:
                if last[src] == i and src in live and src != node.name:
                    live.pop(src)
    plan.macs = sum(n.macs * n.shape[1] * counts[n.name] for n in stage.nodes)
    plan.positions = {n.name: (counts[n.name], full[n.name]) for n in stage.nodes}
    plan.arena_estimate = max(peak + out_bytes, rest_bytes)
    return plan


def candidates(
    stages: list[Stage], rest_bytes: dict[str, int], budget: int, act_bytes: int = 4
) -> list[Plan]:
    """Every (stage, grid) whose estimated arena fits ``budget`` bytes, fewest estimated
    multiply-adds first (``rest_bytes``: per stage output, the arena of the rest)."""
    found = []
    for stage in stages:
        _, _, h, w = stage.output.shape
        for nh in sorted({-(-h // t) for t in range(1, h + 1)}):
            for nw in sorted({-(-w // t) for t in range(1, w + 1)}):
                if nh * nw == 1 or nh * nw > 256:
                    continue
                p = estimate(stage, (nh, nw), rest_bytes.get(stage.output.name, 0), act_bytes)
                if p.arena_estimate <= budget:
                    found.append(p)
    found.sort(key=lambda p: (p.macs, p.arena_estimate, len(p.tiles())))
    return found


# ------------------------------------------------------------------------------ rewrite
_PLACE = """
@T.prim_func(s_tir=True)
def main(tile: T.Buffer(({c}, {th}, {tw}), "{dt}"),{prev} out: T.Buffer(({c}, {h}, {w}), "{dt}")):
    T.func_attr({{"tirx.noalias": True, "op_pattern": 8{attr}}})
    for c, i, j in T.grid({c}, {th}, {tw}):
        with T.sblock("tbn_place"):
            vc, vi, vj = T.axis.remap("SSS", [c, i, j])
            out[vc, vi + {h0}, vj + {w0}] = tile[vc, vi, vj]
"""


def place_func(c: int, h: int, w: int, region: Region, dtype: str, first: bool):
    """A kernel writing a ``[C, th, tw]`` tile into rows ``h0..`` and columns ``w0..`` of a
    ``[C, H, W]`` map; after the first tile, the map's previous value is its second argument
    and the output takes its bytes (``tbn.inplace_of``): only the tile's elements are written."""
    import tvm
    from tvm.script import tirx as T

    from tbn_tvm.targets.clib.inplace import ATTR_INPLACE_OF

    h0, h1, w0, w1 = region
    src = _PLACE.format(
        c=c,
        th=h1 - h0,
        tw=w1 - w0,
        h=h,
        w=w,
        h0=h0,
        w0=w0,
        dt=dtype,
        prev="" if first else f' prev: T.Buffer(({c}, {h}, {w}), "{dtype}"),',
        attr="" if first else f', "{ATTR_INPLACE_OF}": 1',
    )
    return tvm.script.from_source(src, extra_vars={"T": T})


def apply(mod, plan: Plan):
    """``mod`` with ``plan``'s stage run tile by tile (see the module docstring)."""
    import tvm
    from tvm import relax

    from tbn_tvm import kernels
    from tbn_tvm.frontend.identity import with_span

    stage = plan.stage
    func = mod["main"]
    bindings = list(func.body.blocks[0].bindings)
    rest = bindings[len(stage.nodes) :]
    out = stage.output
    c, h, w = out.shape[1:]
    dtype = stage.dtypes[out.name]
    bb = relax.BlockBuilder(mod)
    built: dict[tuple, object] = {}
    places: dict[tuple, object] = {}

    def tbn_kernel(node: Node, x_shape, out_shape, pads):
        rl = node.layer
        key = (rl.kernel, x_shape, out_shape, pads)
        if key not in built:
            spec = dataclasses.replace(rl.spec, x_shape=x_shape, out_shape=out_shape, padding=pads)
            k = kernels.build(rl.weight.format, spec)
            sym = f"{rl.kernel}_t{len(built)}"
            built[key] = bb.add_func(k.func.with_attr("global_symbol", sym), sym)
        return built[key]

    def place(region: Region, first: bool):
        key = (region, first)
        if key not in places:
            sym = f"tbn_place_{len(places)}"
            f = place_func(c, h, w, region, dtype, first).with_attr("global_symbol", sym)
            places[key] = bb.add_func(f, sym)
        return places[key]

    params = list(func.params)
    src = params[0]
    src_key = stage.source
    with bb.function("tbn_patchwise_main", params, dict(func.attrs) if func.attrs else None):
        with bb.dataflow():
            full = None
            for t, tile in enumerate(plan.tiles()):
                need = regions(stage, tile)
                hw = stage.shapes[src_key][2:]
                have: dict[str, tuple[object, Region]] = {src_key: (src, (0, hw[0], 0, hw[1]))}
                for node in stage.nodes:
                    r = need[node.name]
                    args = []
                    pads = (0, 0, 0, 0)
                    for a, name in zip(_call_args(node), node.inputs, strict=True):
                        if name is None:
                            args.append(a)
                            continue
                        want, pads = node.need(r, stage.shapes[name][2:])
                        var, got = have[name]
                        if want != got:
                            var = bb.emit(
                                relax.op.strided_slice(
                                    var,
                                    axes=[2, 3],
                                    begin=[want[0] - got[0], want[2] - got[2]],
                                    end=[want[1] - got[0], want[3] - got[2]],
                                    assume_inbound=True,
                                )
                            )
                        args.append(var)
                    call = _tile_call(node, args, r, pads, tbn_kernel)
                    var = bb.emit(with_span(call, node.call.span) if node.kind != "tbn" else call)
                    have[node.name] = (var, r)
                tile_var, region = have[out.name]
                flat = bb.emit(relax.op.reshape(tile_var, (c, region[1] - region[0], region[3] - region[2])))
                ty = relax.TensorType((c, h, w), dtype)
                if full is None:
                    full = bb.emit(relax.call_tir(place(region, True), [flat], ty))
                else:
                    full = bb.emit(relax.call_tir(place(region, False), [flat, full], ty))
                _ = t
            whole = bb.emit(relax.op.reshape(full, out.shape))
            bb.emit_normalized(relax.VarBinding(out.var, whole))
            for b in rest:
                bb.emit_normalized(b)
        bb.emit_func_output(func.body.body)
    new = bb.get()
    patched = new["tbn_patchwise_main"]
    new = tvm.IRModule({gv: f for gv, f in new.functions_items() if gv.name_hint != "tbn_patchwise_main"})
    new["main"] = (
        patched.with_attr("global_symbol", "main") if "global_symbol" in (func.attrs or {}) else patched
    )
    return relax.transform.Normalize()(new)


def _call_args(node: Node) -> list:
    if node.kind == "tbn":
        return list(node.call.args[1].fields)
    return list(node.call.args)


def _tile_call(node: Node, args: list, r: Region, pads, tbn_kernel):
    """The call computing ``node`` on its tile ``r`` from tile arguments ``args``."""
    from tvm import relax

    from tbn_tvm.frontend.identity import with_span

    shape = (1, node.shape[1], r[1] - r[0], r[3] - r[2])
    if node.kind == "tbn":
        x_shape = _tensor_shape(args[0])
        gv = tbn_kernel(node, x_shape, shape, pads)
        call = relax.call_tir(gv, args, relax.TensorType(shape, str(node.var.ty.dtype)))
        return with_span(call, node.call.span)
    a = node.call.attrs
    if node.kind == "conv":
        return relax.op.nn.conv2d(
            args[0],
            args[1],
            strides=_ints(a.strides),
            padding=pads,
            dilation=_ints(a.dilation),
            groups=int(a.groups),
            data_layout="NCHW",
            kernel_layout="OIHW",
            out_layout="NCHW",
            out_dtype=None if str(a.out_dtype) in ("", "void") else str(a.out_dtype),
        )
    if node.kind == "pool":
        op = relax.op.nn.max_pool2d if node.call.op.name == "relax.nn.max_pool2d" else relax.op.nn.avg_pool2d
        return op(
            args[0],
            pool_size=_ints(a.pool_size),
            strides=_ints(a.strides),
            padding=pads,
            dilation=_ints(a.dilation),
            ceil_mode=False,
            count_include_pad=bool(a.count_include_pad),
            layout="NCHW",
            out_layout="NCHW",
        )
    return relax.Call(node.call.op, args, node.call.attrs, node.call.ty_args)


def rest_arena(mod, stage: Stage, act_bytes: int = 4) -> int:
    """The estimated layer-by-layer arena of the bindings after ``stage`` (bytes): the most
    bytes alive at once, each tensor from its binding to its last reader, the stage output
    from the start; an element-wise operator on a same-shaped tensor that dies there writes in
    place (as fusion and the in-place planner make it) and a reshape is a view.  Activations of
    ``act_bytes`` bytes (2: float16 storage); the model's output counts as float32 too."""
    from tvm import relax

    func = mod["main"]
    bindings = list(func.body.blocks[0].bindings)[len(stage.nodes) :]
    out = stage.output

    def size_of(var) -> int:
        shape = _tensor_shape(var)
        return 0 if shape is None else math.prod(shape) * (2 if str(var.ty.dtype) == "float16" else act_bytes)

    last: dict[object, int] = {}
    for i, b in enumerate(bindings):
        for v in relax.analysis.free_vars(b.value):
            last[v] = i
    for v in relax.analysis.free_vars(func.body.body):
        last[v] = len(bindings)
    owner: dict[object, object] = {out.var: out.var}  # var -> the var owning its buffer
    live: dict[object, int] = {out.var: size_of(out.var)}
    peak = sum(live.values())
    for i, b in enumerate(bindings):
        var, call = b.var, b.value
        size = size_of(var)
        ins = [v for v in relax.analysis.free_vars(call) if v in owner]
        op = call.op.name if isinstance(call, relax.Call) and hasattr(call.op, "name") else ""
        donor = None
        if op in ("relax.reshape", "relax.flatten") and ins:
            donor = owner[ins[0]]
        elif op in _UNARY | _BINARY:
            for v in ins:
                o = owner[v]
                users_left = [w for w, ow in owner.items() if ow.same_as(o) and last.get(w, -1) > i]
                if _tensor_shape(v) == _tensor_shape(var) and not users_left:
                    donor = o
                    break
        peak = max(peak, sum(live.values()) + (0 if donor is not None else size))
        if donor is not None:
            owner[var] = donor
            live[donor] = max(live[donor], size)
        else:
            owner[var] = var
            live[var] = size
        for o in list(live):
            if all(last.get(w, -1) <= i for w, ow in owner.items() if ow.same_as(o)):
                live.pop(o)
    return peak


def describe_error(
    stages: list[Stage], budget: int, smallest: Plan | None, whole: int, tried: int | None
) -> TBNError:
    """The error for a model whose activations fit no plan within ``budget`` arena bytes
    (``whole``: its layer-by-layer arena; ``tried``: the smallest real arena of the plans
    checked; ``smallest``: the plan of one-position tiles)."""
    if not stages:
        return TBNError(
            f"the activations need an arena of {whole:,} bytes layer by layer, the RAM leaves {budget:,}, "
            "and the model has no leading convolution stage to run patch-wise",
            hint="use a board with more RAM (--ram-size, --board)",
        )
    if tried is not None:
        best = f"{tried:,} bytes in the best patch-wise plans checked"
    else:
        best = f"about {smallest.arena_estimate if smallest else whole:,} bytes patch-wise in tiles of one position"
    return TBNError(
        f"the activations need an arena of {whole:,} bytes layer by layer and {best}; the RAM leaves "
        f"{budget:,} for it",
        hint="use a board with more RAM (--ram-size, --board), or --activations float16",
    )
