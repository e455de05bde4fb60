"""``inspect``: what each layer's weight is, how many bytes it takes, and the totals.

Works on the ONNX graph alone (no TVM import, fast), with the same detector the compiler uses, so
the compiler and the report always agree.

>>> rep = inspect("examples/tbn-mnist-mlp.onnx")              # doctest: +SKIP
>>> rep.to_dict()["total"]["weight_bytes"]                     # doctest: +SKIP
3316
>>> print(rep.table())                                         # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from tbn_tvm.formats import DenseFormat, LayerWeight, detect_layer_weight


@dataclass
class LayerReport:
    name: str
    op: str
    weight: LayerWeight

    @property
    def weight_shape(self) -> list[int]:
        fmt = self.weight.format
        if self.weight.order == "stored" and self.op in ("Gemm", "MatMul"):
            return [fmt.shape[1], fmt.shape[0]]  # report Linear layout [out, in]
        return list(fmt.shape)

    def to_dict(self) -> dict:
        fmt = self.weight.format
        p = fmt.p if not isinstance(fmt, DenseFormat) else 1
        d = {
            "name": self.name,
            "op": self.op,
            "weight_shape": self.weight_shape,
            "format": fmt.kind,
            "p": int(p) if float(p).is_integer() else round(float(p), 4),
            "alpha": fmt.alpha_kind,
            "scales": fmt.num_scales,
            "bits_per_weight": round(fmt.storage_bits() / fmt.n, 4),
            "bytes": fmt.storage_bytes(),
            "fp32_bytes": 4 * fmt.n,
        }
        if not isinstance(fmt, DenseFormat):
            d["tile_length"] = fmt.tile_length
            d["weight_order"] = self.weight.order
        return d


@dataclass
class ModelReport:
    source: str
    layers: list[LayerReport]

    def totals(self) -> dict:
        weight = sum(layer.weight.format.storage_bytes() for layer in self.layers)
        fp32 = sum(4 * layer.weight.format.n for layer in self.layers)
        return {
            "weight_bytes": weight,
            "fp32_bytes": fp32,
            "compression": round(fp32 / weight, 2) if weight else 1.0,
        }

    def to_dict(self) -> dict:
        return {
            "model": self.source,
            "layers": [layer.to_dict() for layer in self.layers],
            "total": self.totals(),
        }

    def table(self) -> str:
        """A fixed-width table in the spirit of larq's model summary."""
        head = ["layer", "op", "weight shape", "format", "alpha", "bits/weight", "bytes", "fp32 bytes"]
        rows = []
        for layer in self.layers:
            d = layer.to_dict()
            fmt = d["format"] if d["format"] != "tiled" else f"tiled p={d['p']} L={d['tile_length']}"
            alpha = "-" if d["alpha"] == "none" else f"{d['alpha']} x{d['scales']}"
            rows.append(
                [
                    d["name"],
                    d["op"],
                    "x".join(map(str, d["weight_shape"])),
                    fmt,
                    alpha,
                    f"{d['bits_per_weight']:.4f}",
                    f"{d['bytes']:,}",
                    f"{d['fp32_bytes']:,}",
                ]
            )
        t = self.totals()
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
        right = {5, 6, 7}

        def fmt_row(r):
            return "  ".join(
                c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))
            )

        rule = "-" * len(fmt_row(head))
        lines = [fmt_row(head), rule, *map(fmt_row, rows), rule]
        lines.append(
            f"total: {t['weight_bytes']:,} bytes of weights ({t['fp32_bytes']:,} in fp32, "
            f"{t['compression']:g}x smaller); {len(self.layers)} layers"
        )
        return "\n".join(lines)


def _constant_values(proto: onnx.ModelProto, names: set[str]) -> dict[str, np.ndarray]:
    """Values of ``names`` that depend only on initializers and Constant nodes (evaluated with
    ONNX's reference evaluator when they are produced by nodes, e.g. Expand/Tile/Mul/Reshape)."""
    g = proto.graph
    values = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    producers = {out: node for node in g.node for out in node.output}
    graph_inputs = {vi.name for vi in g.input} - set(values)
    wanted = {}
    for name in names:
        if name in values:
            wanted[name] = values[name]
            continue
        # collect the producing sub-graph; give up if it touches a graph input
        stack, nodes, ok = [name], [], True
        seen = set()
        while stack and ok:
            cur = stack.pop()
            if cur in seen or cur in values or cur == "":
                continue
            seen.add(cur)
            if cur in graph_inputs or cur not in producers:
                ok = False
                break
            node = producers[cur]
            if node not in nodes:
                nodes.append(node)
            stack.extend(node.input)
        if not ok:
            continue
        order = [n for n in g.node if n in nodes]
        try:
            from onnx.reference import ReferenceEvaluator

            sub_inits = [t for t in g.initializer]
            sub = onnx.helper.make_graph(
                order, "const", [], [onnx.helper.make_tensor_value_info(name, 0, None)], sub_inits
            )
            model = onnx.helper.make_model(sub, opset_imports=proto.opset_import)
            wanted[name] = np.asarray(ReferenceEvaluator(model).run(None, {})[0])
        except Exception:
            continue
    return wanted


def inspect(model) -> ModelReport:
    """Describe every Gemm/MatMul/Conv layer with a constant weight (see module docstring).

    ``model`` is a path, an ``onnx.ModelProto`` or an already validated
    :class:`~tbn_tvm.frontend.onnx.LoadedModel`."""
    from tbn_tvm.frontend.onnx import LoadedModel, load_onnx

    loaded = model if isinstance(model, LoadedModel) else load_onnx(model)
    g = loaded.proto.graph
    weight_inputs = {}
    for i, node in enumerate(g.node):
        if node.op_type in ("Gemm", "MatMul", "Conv") and len(node.input) >= 2:
            weight_inputs[i] = node.input[1]
    values = _constant_values(loaded.proto, set(weight_inputs.values()))
    layers = []
    for i, wname in weight_inputs.items():
        node = g.node[i]
        w = values.get(wname)
        if w is None or w.dtype != np.float32:
            continue
        label = node.name or f"{node.op_type.lower()}_{i}"
        if node.op_type == "Conv":
            lw = detect_layer_weight(w, "conv")
        elif w.ndim == 2:
            trans_b = (
                next((a.i for a in node.attribute if a.name == "transB"), 0) if node.op_type == "Gemm" else 0
            )
            lw = detect_layer_weight(np.ascontiguousarray(w.T) if trans_b else w, "matmul")
        else:
            continue
        layers.append(LayerReport(label, node.op_type, lw))
    return ModelReport(loaded.source, layers)
