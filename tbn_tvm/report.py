"""``inspect``: what each layer's weight is, how many bytes it takes, and the totals.

Works on the ONNX graph alone (no TVM import, fast, dynamic shapes welcome), with the same
layer discovery and format registry the compiler uses, so the compiler and the report always
agree.  Besides the weights, the other constants the compiled model keeps (biases, normalisation
parameters, scalar operands) are listed and counted, so the total equals the constant bytes of
the build.

>>> rep = inspect("examples/tbn-mnist-mlp.onnx")              # doctest: +SKIP
>>> rep.to_dict()["total"]["weight_bytes"]                     # doctest: +SKIP
3316
>>> print(rep.table())                                         # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from tbn_tvm.formats import LayerWeight, bits_per_weight, detect_layer_weight
from tbn_tvm.frontend.layers import OnnxLayer, constant_values, fingerprint, weighted_layers


@dataclass
class LayerReport:
    """One weighted layer: its ONNX facts and the format its weight was found to be."""

    layer: OnnxLayer
    weight: LayerWeight

    @property
    def name(self) -> str:
        return self.layer.name

    @property
    def op(self) -> str:
        return self.layer.op_type

    @property
    def weight_shape(self) -> list[int]:
        fmt = self.weight.format
        if self.layer.kind == "matmul" and self.weight.order == "stored":
            return [fmt.shape[1], fmt.shape[0]]  # report Linear layout [out, in]
        return list(fmt.shape)

    def to_dict(self) -> dict:
        fmt = self.weight.format
        p = fmt.p
        d = {
            "name": self.name,
            "weight": self.layer.weight_name,
            "op": self.op,
            "weight_shape": self.weight_shape,
            "dtype": fmt.dtype,
            "format": fmt.kind,
            "label": fmt.label(),
            "p": int(p) if float(p).is_integer() else round(float(p), 4),
            "alpha": fmt.alpha_kind,
            "scales": fmt.num_scales,
            "bits_per_weight": round(bits_per_weight(fmt.storage_bits(), fmt.n), 4),
            "bytes": fmt.storage_bytes(),
            "fp32_bytes": 4 * fmt.n,
            **fmt.fields(),
        }
        if fmt.compact:
            d["weight_order"] = self.weight.order
        if self.layer.shared_by:
            d["shared_with"] = list(self.layer.shared_by)
        return d


@dataclass
class OtherConstant:
    """A constant the compiled graph keeps besides the layer weights (bias, norm parameter...)."""

    name: str
    consumer: str  # "<op> '<node>'"
    shape: tuple[int, ...]
    dtype: str
    bytes: int

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "used_by": self.consumer,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "bytes": self.bytes,
        }


@dataclass
class ModelReport:
    source: str
    layers: list[LayerReport]
    others: list[OtherConstant] = field(default_factory=list)

    def _unique_layers(self) -> list[LayerReport]:
        seen, out = set(), []
        for lr in self.layers:
            key = fingerprint(lr.layer.stored)
            if key not in seen:
                seen.add(key)
                out.append(lr)
        return out

    def totals(self) -> dict:
        unique = self._unique_layers()
        weight = sum(lr.weight.format.storage_bytes() for lr in unique)
        fp32 = sum(4 * lr.weight.format.n for lr in unique)
        other = sum(o.bytes for o in self.others)
        return {
            "weight_bytes": weight,
            "fp32_bytes": fp32,
            "compression": round(fp32 / weight, 2) if weight else 1.0,
            "other_constant_bytes": other,
            "constant_bytes": weight + other,
            "compact_layers": sum(1 for lr in self.layers if lr.weight.compact),
            "dense_layers": sum(1 for lr in self.layers if not lr.weight.compact),
        }

    def to_dict(self) -> dict:
        return {
            "model": self.source,
            "layers": [layer.to_dict() for layer in self.layers],
            "other_constants": [o.to_dict() for o in self.others],
            "total": self.totals(),
        }

    def table(self) -> str:
        """A fixed-width table in the spirit of larq's model summary."""
        head = ["layer", "op", "weight shape", "format", "alpha", "bits/weight", "bytes", "fp32 bytes"]
        rows = []
        for layer in self.layers:
            d = layer.to_dict()
            alpha = "-" if d["alpha"] == "none" else f"{d['alpha']} x{d['scales']}"
            shared = f" (= {d['shared_with'][0]})" if "shared_with" in d and layer.layer.shared_by else ""
            rows.append(
                [
                    d["name"] + shared,
                    d["op"],
                    "x".join(map(str, d["weight_shape"])),
                    d["label"] + ("" if d["dtype"] == "float32" else f" {d['dtype']}"),
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
            f"{t['compression']:g}x smaller); {len(self.layers)} layers "
            f"({t['compact_layers']} compact, {t['dense_layers']} dense)"
        )
        if self.others:
            lines.append(
                f"other constants (biases, norm parameters, ...): {t['other_constant_bytes']:,} bytes in "
                f"{len(self.others)} tensors; all constants: {t['constant_bytes']:,} bytes"
            )
        return "\n".join(lines)


#: Node inputs that TVM's importer turns into shapes or attributes (not constants of the build).
_SHAPE_INPUTS = {
    "Reshape": {1},
    "Expand": {1},
    "Tile": {1},
    "Slice": {1, 2, 3, 4},
    "Pad": {1, 3},
    "Resize": {1, 2, 3},
    "Upsample": {1},
    "ConstantOfShape": {0},
    "Squeeze": {1},
    "Unsqueeze": {1},
    "Split": {1},
    "TopK": {1},
    "OneHot": {1},
    "CumSum": {1},
    "Trilu": {1},
    "Range": {0, 1, 2},
    "ReduceSum": {1},
    "ReduceMean": {1},
    "ReduceMax": {1},
    "ReduceMin": {1},
    "ReduceProd": {1},
    "ReduceL1": {1},
    "ReduceL2": {1},
    "ReduceLogSum": {1},
    "ReduceLogSumExp": {1},
    "ReduceSumSquare": {1},
}


def _other_constants(proto: onnx.ModelProto, layers: list[OnnxLayer]) -> list[OtherConstant]:
    """Constants consumed by the non-constant part of the graph (outside the inputs TVM turns
    into shapes or attributes), other than layer weights: biases, norm parameters, indices."""
    g = proto.graph
    const_names = {t.name for t in g.initializer}
    inputs = {vi.name for vi in g.input} - const_names
    for node in g.node:  # forward: a node whose inputs are all constant is folded
        if node.op_type in ("RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike"):
            continue
        if all(i == "" or i in const_names for i in node.input) and not any(i in inputs for i in node.input):
            const_names.update(o for o in node.output if o)
    weights = {(layer.node_index, 1) for layer in layers}
    boundary: dict[str, str] = {}
    for i, node in enumerate(g.node):
        if all(o in const_names for o in node.output if o):
            continue
        skip = _SHAPE_INPUTS.get(node.op_type, set())
        for j, name in enumerate(node.input):
            if name in const_names and j not in skip and (i, j) not in weights and name not in boundary:
                boundary[name] = f"{node.op_type} '{node.name or f'#{i}'}'"
    # graph outputs that are constants are built too
    values = constant_values(proto, set(boundary))
    weight_keys = {fingerprint(layer.stored) for layer in layers}
    out = []
    for name in sorted(boundary, key=lambda n: list(boundary).index(n)):
        v = values.get(name)
        if v is None or v.dtype.kind not in "fiub" or fingerprint(v) in weight_keys:
            continue
        out.append(
            OtherConstant(name, boundary[name], tuple(int(d) for d in v.shape), str(v.dtype), int(v.nbytes))
        )
    return out


def inspect(model) -> ModelReport:
    """Describe every Gemm/MatMul/Conv/ConvTranspose layer with a constant weight, and the other
    constants (see module docstring).

    ``model`` is a path, an ``onnx.ModelProto`` or an already validated
    :class:`~tbn_tvm.frontend.onnx.LoadedModel`.  Raises :class:`~tbn_tvm.errors.TBNError` for a
    file that is not a valid ONNX model or uses unsupported operators."""
    from tbn_tvm.frontend.onnx import LoadedModel, load_onnx

    loaded = model if isinstance(model, LoadedModel) else load_onnx(model, static=False)
    layers = weighted_layers(loaded.proto)
    reports = []
    for layer in layers:
        w = layer.matmul_operand if layer.kind == "matmul" else layer.stored
        reports.append(LayerReport(layer, detect_layer_weight(np.asarray(w), layer.kind)))
    return ModelReport(loaded.source, reports, _other_constants(loaded.proto, layers))


def _fixed_table(head: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]

    def fmt_row(r):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))

    rule = "-" * len(fmt_row(head))
    return [fmt_row(head), rule, *map(fmt_row, rows), rule]


def artifact_table(manifest: dict) -> str:
    """The per-layer table of a built artifact (``tbn-tvm inspect OUT_DIR``): format, weight
    bytes, and where the target reports them flash bytes (weights + kernel code), and time or
    instructions per inference when a run measured them."""
    layers = manifest.get("layers", [])
    has = {key: any(key in layer for layer in layers) for key in ("flash_bytes", "instructions", "seconds")}
    head = ["layer", "op", "format", "bytes"]
    head += ["flash"] * has["flash_bytes"] + ["instructions"] * has["instructions"] + ["ms"] * has["seconds"]
    rows = []
    for layer in layers:
        row = [layer["name"], layer["op"], layer.get("label", layer["format"]), f"{layer['bytes']:,}"]
        if has["flash_bytes"]:
            row.append(f"{layer['flash_bytes']:,}" if "flash_bytes" in layer else "-")
        if has["instructions"]:
            row.append(f"{layer['instructions']:,}" if "instructions" in layer else "-")
        if has["seconds"]:
            row.append(f"{layer['seconds'] * 1e3:.3f}" if "seconds" in layer else "-")
        rows.append(row)
    target = manifest.get("target", {})
    lines = [
        f"{manifest.get('source', '?')} built for {target.get('name', '?')} ({target.get('family', '?')})"
    ]
    lines += _fixed_table(head, rows, set(range(3, len(head))))
    total = manifest.get("total", {})
    lines.append(
        f"weights {total.get('weight_bytes', 0):,} bytes; all constants {total.get('built_constant_bytes', 0):,} bytes"
    )
    facts = [
        f"{label} {manifest[key]:,} bytes"
        for key, label in (("flash_bytes", "flash"), ("ram_bytes", "RAM"), ("arena_bytes", "arena"))
        if key in manifest
    ]
    if facts:
        lines.append(", ".join(facts))
    measured = manifest.get("measured", {})
    if measured:
        lines.append(
            "measured: "
            + ", ".join(f"{k} {v}" for k, v in measured.items() if not isinstance(v, dict | list))
        )
    return "\n".join(lines)
