"""The model's weighted layers, found on the ONNX graph alone (no TVM), each with its one name.

A *layer* is a Gemm, MatMul, Conv or ConvTranspose node whose weight input is constant: an
initializer, a ``Constant`` node, or a sub-graph of constants (the tile + Expand/Tile/Mul/Reshape
chains exporters write), evaluated here with ONNX's reference implementation.  A layer is named
once, in this order of preference:

1. the PyTorch module name that :func:`tbn_tvm.torch.export_onnx` records in the model's
   metadata (``tbn_tvm.layers`` → ``nodes``);
2. the ONNX node name, unless an exporter generated it (``node_Conv_154``, ``node_linear_1``
   from ``torch.onnx.export``, ``Conv_0``) and the weight initializer has a name of its own;
3. the weight initializer's name (``features.0.weight`` → ``features.0``), unless generated
   too (``onnx::Conv_19``, ``val_12``);
4. a generated node name;
5. ``<op>_<node index>``.

The same name is used by ``inspect``, the compiler's kernels, the manifest and the C arrays
(``tbn_<name>_tile``): the importer gives it to the call that computes the layer, and every
rewrite after it keeps it there (:mod:`tbn_tvm.frontend.identity`).  :func:`fingerprint` keys a
constant by its bytes: it tells shared weights apart, never which layer a folded weight is.

>>> import numpy as np, onnx
>>> from onnx import helper, numpy_helper, TensorProto
>>> g = helper.make_graph([helper.make_node("Gemm", ["x", "fc1.weight"], ["y"], transB=1)], "g",
...     [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
...     [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
...     [numpy_helper.from_array(np.ones((2, 4), np.float32), "fc1.weight")])
>>> [(layer.name, layer.kind, layer.weight_name) for layer in weighted_layers(helper.make_model(g))]
[('fc1', 'matmul', 'fc1.weight')]
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

#: ONNX op -> layer kind (the ``op`` of :func:`tbn_tvm.formats.detect_layer_weight`).
WEIGHTED_OPS = {"Gemm": "matmul", "MatMul": "matmul", "Conv": "conv", "ConvTranspose": "conv_transpose"}

#: Metadata key written by :func:`tbn_tvm.torch.export_onnx` (JSON with ``layers`` and ``nodes``).
METADATA_KEY = "tbn_tvm.layers"


@dataclass
class OnnxLayer:
    """One weighted layer of the ONNX graph.

    ``weight`` is in the framework layout the formats describe: ``[out, in]`` for Gemm with
    ``transB=1``; for MatMul and Gemm without it, the stored ``[in, out]`` operand (the
    detector tries both orders); ``[O, I/g, *k]`` for Conv; ``[I, O/g, *k]`` for ConvTranspose.
    ``stored`` is the array as the graph holds it.  ``shared_by`` lists other layers (names)
    using the same weight value.  ``weight_input`` is the node input holding the weight: 1
    (``x · W``, Gemm's ``transA`` then transposes ``x`` only), or 0 for a weight as operand A
    (``MatMul(W, x)``, ``Gemm(W, x)`` with ``trans_a``: ``W · x``, computed as ``(xᵀ · Wᵀ)ᵀ``)."""

    name: str
    op_type: str
    kind: str  # "matmul" | "conv" | "conv_transpose"
    node_name: str
    node_index: int
    weight_name: str
    stored: np.ndarray
    trans_b: bool = False
    shared_by: tuple[str, ...] = ()
    output: str = ""  # the node's output: the importer names the layer's call after it
    weight_input: int = 1
    trans_a: bool = False

    @property
    def matmul_operand(self) -> np.ndarray:
        """The ``[in, out]`` operand of ``x @ W`` (matmul layers), as TVM folds it; for a weight
        as operand A (``W · x`` with ``W`` ``[out, in]`` once ``transA`` is applied), ``Wᵀ``:
        the operand of ``xᵀ · Wᵀ``, what the compiler builds."""
        if self.weight_input == 0:
            return self.stored if self.trans_a else np.ascontiguousarray(self.stored.T)
        return np.ascontiguousarray(self.stored.T) if self.trans_b else self.stored


def fingerprint(arr: np.ndarray) -> str:
    """A key identifying a constant by dtype, shape and bytes."""
    a = np.ascontiguousarray(arr)
    h = hashlib.sha1(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def c_identifier(name: str) -> str:
    """``name`` reduced to a safe C identifier fragment: ``[A-Za-z0-9_]``, at most 48 characters,
    never starting with a digit (the original name is never pasted into generated code)."""
    s = re.sub(r"[^A-Za-z0-9_]", "_", name)
    s = re.sub(r"_+", "_", s).strip("_")[:48] or "layer"
    return f"l{s}" if s[0].isdigit() else s


def metadata_names(proto: onnx.ModelProto) -> dict[str, str]:
    """ONNX node name -> PyTorch module name, as recorded by ``export_onnx`` (may be empty)."""
    for entry in proto.metadata_props:
        if entry.key == METADATA_KEY:
            try:
                nodes = json.loads(entry.value).get("nodes", {})
            except (ValueError, AttributeError):
                return {}
            return {str(k): str(v) for k, v in nodes.items()} if isinstance(nodes, dict) else {}
    return {}


def constant_values(proto: onnx.ModelProto, names: set[str]) -> dict[str, np.ndarray]:
    """Values of ``names`` that depend only on initializers and Constant nodes (evaluated with
    ONNX's reference evaluator when they are produced by nodes, e.g. Expand/Tile/Mul/Reshape)."""
    g = proto.graph
    values = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    producers = {out: node for node in g.node for out in node.output}
    graph_inputs = {vi.name for vi in g.input} - set(values)
    wanted = {}
    for name in sorted(names):
        if name in values:
            wanted[name] = values[name]
            continue
        # collect the producing sub-graph; give up if it touches a graph input
        stack, nodes, ok, seen = [name], [], True, set()
        while stack and ok:
            cur = stack.pop()
            if cur in seen or cur in values or cur == "":
                continue
            seen.add(cur)
            if cur in graph_inputs or cur not in producers:
                ok = False
                break
            node = producers[cur]
            if node.op_type in ("RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike"):
                ok = False
                break
            if node not in nodes:
                nodes.append(node)
            stack.extend(node.input)
        if not ok:
            continue
        order = [n for n in g.node if n in nodes]
        try:
            from onnx.reference import ReferenceEvaluator

            sub = onnx.helper.make_graph(
                order, "const", [], [onnx.helper.make_tensor_value_info(name, 0, None)], list(g.initializer)
            )
            model = onnx.helper.make_model(sub, opset_imports=proto.opset_import)
            wanted[name] = np.asarray(ReferenceEvaluator(model).run(None, {})[0])
        except Exception:  # noqa: BLE001 - an unevaluable chain simply is not a constant weight
            continue
    return wanted


def _attr(node, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


#: Initializer names exporters generate (the legacy torch exporter's ``onnx::Conv_19`` for a
#: folded weight, the dynamo exporter's ``val_12``).
_GENERATED_WEIGHT = re.compile(r"^(onnx::.*|val_\d+)$")


def _generated_node_name(node) -> bool:
    """A node name an exporter made up: ``node_<anything>`` (``torch.onnx.export``'s
    ``node_Conv_154``, ``node_linear_1``), the op type alone or with a number (``Conv_0``)."""
    name = node.name
    return name.startswith("node_") or re.fullmatch(rf"{re.escape(node.op_type)}(_\d+)?", name) is not None


def weighted_layers(proto: onnx.ModelProto) -> list[OnnxLayer]:
    """Every Gemm/MatMul/Conv/ConvTranspose node with a constant weight, in graph order, named
    as the module docstring says (names made unique with ``_2``, ``_3`` ...).  The weight is
    input 1; for Gemm and MatMul whose input 1 is not a constant, a constant input 0 (the
    weight as operand A, ``W · x``)."""
    g = proto.graph
    candidates = []
    for i, node in enumerate(g.node):
        if node.domain not in ("", "ai.onnx") or node.op_type not in WEIGHTED_OPS or len(node.input) < 2:
            continue
        candidates.append((i, node))
    values = constant_values(proto, {node.input[1] for _, node in candidates})
    first = [  # the weight as operand A: looked for only where operand B is not a constant
        (i, node)
        for i, node in candidates
        if WEIGHTED_OPS[node.op_type] == "matmul" and node.input[1] not in values and node.input[0]
    ]
    values.update(constant_values(proto, {node.input[0] for _, node in first}))
    first_ids = {i for i, _ in first}
    from_torch = metadata_names(proto)
    initializer_names = {t.name for t in g.initializer}
    layers: list[OnnxLayer] = []
    used: dict[str, int] = {}
    by_value: dict[str, OnnxLayer] = {}
    for i, node in candidates:
        weight_input = 1
        if i in first_ids and node.input[0] in values:
            weight_input = 0
        wname = node.input[weight_input]
        w = values.get(wname)
        if w is None or w.dtype.kind != "f":
            continue
        kind = WEIGHTED_OPS[node.op_type]
        if kind == "matmul" and w.ndim not in (1, 2):
            continue
        if kind != "matmul" and w.ndim < 3:
            continue
        own_weight = wname in initializer_names and not _GENERATED_WEIGHT.match(wname)
        if node.name and node.name in from_torch:
            name = from_torch[node.name]
        elif node.name and not (own_weight and _generated_node_name(node)):
            name = node.name
        elif own_weight:
            name = re.sub(r"\.weight$", "", wname)
        elif node.name:
            name = node.name
        else:
            name = f"{node.op_type.lower()}_{i}"
        count = used.get(name, 0) + 1
        used[name] = count
        if count > 1:
            name = f"{name}_{count}"
        trans_b = bool(_attr(node, "transB", 0)) if node.op_type == "Gemm" else False
        trans_a = bool(_attr(node, "transA", 0)) if node.op_type == "Gemm" else False
        layer = OnnxLayer(
            name,
            node.op_type,
            kind,
            node.name,
            i,
            wname,
            w,
            trans_b,
            output=node.output[0],
            weight_input=weight_input,
            trans_a=trans_a,
        )
        key = fingerprint(w)
        if key in by_value:
            first = by_value[key]
            first.shared_by = (*first.shared_by, name)
            layer.shared_by = (first.name,)
        else:
            by_value[key] = layer
        layers.append(layer)
    return layers


def _per_channel(value: np.ndarray, out_rank: int, axis: int, channels: int) -> np.ndarray | None:
    """``value`` as ``channels`` factors when it broadcasts along ``axis`` only (else None)."""
    if value.dtype != np.float32 or value.ndim > out_rank:
        return None
    shape = (1,) * (out_rank - value.ndim) + value.shape
    if any(d != 1 for i, d in enumerate(shape) if i != axis):
        return None
    if shape[axis] == channels:
        return value.reshape(-1).astype(np.float32)
    if shape[axis] == 1:
        return np.full(channels, value.reshape(-1)[0], np.float32)
    return None


@dataclass
class Affine:
    """What follows a layer and is folded into it (:mod:`tbn_tvm.passes.fold_affine`):
    ``factor`` per output channel, the node that carried it, and whether it was a BatchNorm
    (whose shift then stays as one bias vector of ``channels`` floats)."""

    factor: np.ndarray
    node_index: int
    batch_norm: bool


def folded_affines(proto: onnx.ModelProto, layers: list[OnnxLayer]) -> dict[int, Affine]:
    """Layer index (in ``layers``) -> the per-channel scale folded into it, mirroring on the
    ONNX graph what the compiler's FoldAffine pass does on Relax: a layer (its bias add
    included) whose only consumer is an inference BatchNormalization with constant parameters,
    a Mul by a per-channel constant, or a HardSigmoid (its ``alpha``: TVM imports it as
    ``clip(alpha · x + beta, 0, 1)``)."""
    g = proto.graph
    consumers: dict[str, list[int]] = {}
    for i, node in enumerate(g.node):
        for name in node.input:
            consumers.setdefault(name, []).append(i)
    outputs = {o.name for o in g.output}
    values = constant_values(proto, {n for node in g.node for n in node.input if n})
    out: dict[int, Affine] = {}
    for li, layer in enumerate(layers):
        node = g.node[layer.node_index]
        if layer.weight_input == 0:  # W · x: its output channels are rows; FoldAffine leaves it
            continue
        if layer.op_type == "Gemm" and (_attr(node, "alpha", 1.0) != 1.0 or _attr(node, "beta", 1.0) != 1.0):
            continue
        channels = (
            layer.stored.shape[0]
            if layer.kind == "conv"
            else (layer.stored.shape[0] if layer.trans_b else layer.stored.shape[-1])
        )
        name = node.output[0]
        users = consumers.get(name, [])
        if name in outputs or len(users) != 1:
            continue
        nxt = g.node[users[0]]
        if nxt.op_type == "Add" and layer.op_type == "MatMul":  # MatMul + bias Add (a Linear)
            other = nxt.input[1] if nxt.input[0] == name else nxt.input[0]
            c = values.get(other)
            if c is None:
                continue
            name = nxt.output[0]
            users = consumers.get(name, [])
            if name in outputs or len(users) != 1:
                continue
            nxt = g.node[users[0]]
        rank = 4 if layer.kind == "conv" and layer.stored.ndim == 4 else (3 if layer.kind == "conv" else 2)
        axis = 1 if layer.kind == "conv" else rank - 1
        if nxt.op_type == "BatchNormalization" and not _attr(nxt, "training_mode", 0):
            params = [values.get(n) for n in nxt.input[1:5]]
            if any(p is None for p in params) or len([o for o in nxt.output if o]) > 1:
                continue
            gamma, _, _, var = (np.asarray(p, np.float64).reshape(-1) for p in params)
            eps = float(_attr(nxt, "epsilon", 1e-5))
            a = (gamma / np.sqrt(var + eps)).astype(np.float32)
            if a.size == channels:
                out[li] = Affine(a, users[0], True)
        elif nxt.op_type == "HardSigmoid":  # imported as clip(alpha * x + beta, 0, 1): alpha folds
            alpha = np.float32(_attr(nxt, "alpha", 0.2))
            if np.isfinite(alpha):
                out[li] = Affine(np.full(channels, alpha, np.float32), users[0], False)
        elif nxt.op_type == "Mul":
            other = nxt.input[1] if nxt.input[0] == name else nxt.input[0]
            c = values.get(other)
            if c is not None:
                a = _per_channel(np.asarray(c), rank, axis, channels)
                if a is not None and np.all(np.isfinite(a)):
                    out[li] = Affine(a, users[0], False)
    from tbn_tvm.formats import fold_keeps_format

    for li in list(out):  # folded only where the weight stays as compact (see FoldAffine)
        layer = layers[li]
        before = layer.matmul_operand if layer.kind == "matmul" else layer.stored
        if not fold_keeps_format(before, folded_weight(layer, out[li].factor), layer.kind):
            del out[li]
    return out


def folded_weight(layer: OnnxLayer, factor: np.ndarray) -> np.ndarray:
    """The layer's weight (its detection operand: ``matmul_operand`` / ``stored``) times the
    per-output-channel ``factor``, rounded to float32 once (as the compiler folds it)."""
    if layer.kind == "matmul":
        w = layer.matmul_operand
        return (w * factor[None, :]).astype(np.float32) if w.ndim == 2 else (w * factor[0]).astype(np.float32)
    w = layer.stored
    return (w * factor.reshape((-1,) + (1,) * (w.ndim - 1))).astype(np.float32)
