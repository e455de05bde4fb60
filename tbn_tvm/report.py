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
from tbn_tvm.frontend.layers import (
    OnnxLayer,
    constant_values,
    fingerprint,
    folded_affines,
    folded_weight,
    weighted_layers,
)


@dataclass
class LayerReport:
    """One weighted layer: its ONNX facts and the format its weight was found to be."""

    layer: OnnxLayer
    weight: LayerWeight
    folded: bool = False  # a following BatchNorm / per-channel Mul was folded into the weight
    key: str = ""  # fingerprint of the weight as built (folded or not): one key, one set of buffers

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
        if self.folded:
            d["folded"] = "the following BatchNormalization/Mul/HardSigmoid scale is part of this weight"
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
            key = lr.key or fingerprint(lr.layer.stored)
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
                    d["label"]
                    + ("" if d["dtype"] == "float32" else f" {d['dtype']}")
                    + (" (BatchNorm/scale folded)" if "folded" in d else ""),
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


#: Scalar constants TVM's importer creates from a node's attributes (the build keeps them as
#: constants like the graph's own): per operator, how many.  A HardSigmoid folded into the
#: layer before it keeps one (``beta``; ``alpha`` is in the weight).  Checked against the build
#: on ONNX's node tests of these operators (``tests/test_report_scalars.py``).
IMPORTER_SCALARS = {
    "Elu": 2,
    "GroupNormalization": 8,
    "HardSigmoid": 2,
    "HardSwish": 2,
    "InstanceNormalization": 1,
    "Reciprocal": 1,
    "Selu": 3,
    "Shrink": 8,
    "Softsign": 1,
    "ThresholdedRelu": 1,
}

_ITEMSIZE = {onnx.TensorProto.FLOAT: 4, onnx.TensorProto.FLOAT16: 2, onnx.TensorProto.DOUBLE: 8}


def _importer_scalars(
    proto: onnx.ModelProto, node, index: int, folded: dict, const_names: set[str]
) -> OtherConstant | None:
    """The scalars TVM's importer creates for ``node`` (:data:`IMPORTER_SCALARS`; a Gemm's
    ``alpha`` != 1, and its ``beta`` != 1 on a bias that is not constant; a PRelu's zero where
    its slope has several dimensions; a LayerNormalization's 1 and epsilon where its Mean and
    InvStdDev outputs are asked for), or None."""
    if node.op_type == "Gemm":
        bias = node.input[2] if len(node.input) > 2 else ""
        count = int(float(_attr(node, "alpha", 1.0)) != 1.0)
        count += int(float(_attr(node, "beta", 1.0)) != 1.0 and bool(bias) and bias not in const_names)
    elif node.op_type == "PRelu":  # a slope of one value or a vector is TVM's prelu op; else a select
        shape = _shape(proto, node.input[1])
        count = int(shape is not None and len(shape) > 1 and any(d != 1 for d in shape))
    elif node.op_type == "LayerNormalization":  # 1 and epsilon where Mean/InvStdDev are asked for
        count = 2 if len([o for o in node.output if o]) > 1 else 0
    else:
        count = IMPORTER_SCALARS.get(node.op_type, 0)
        if node.op_type == "HardSigmoid" and index in folded:
            count -= 1
    if count <= 0:
        return None
    elem = _elem_type(proto, node.input[0])
    itemsize = _ITEMSIZE.get(elem, 4)
    dtype = {2: "float16", 8: "float64"}.get(itemsize, "float32")
    where = f"{node.op_type} '{node.name or f'#{index}'}'"
    return OtherConstant(f"{node.name or f'#{index}'}.scalars", where, (count,), dtype, count * itemsize)


def _elem_type(proto: onnx.ModelProto, name: str) -> int:
    for vi in [*proto.graph.input, *proto.graph.value_info, *proto.graph.output]:
        if vi.name == name and vi.type.HasField("tensor_type"):
            return vi.type.tensor_type.elem_type
    for t in proto.graph.initializer:
        if t.name == name:
            return t.data_type
    return onnx.TensorProto.FLOAT


def _shape(proto: onnx.ModelProto, name: str) -> list[int] | None:
    for t in proto.graph.initializer:
        if t.name == name:
            return list(t.dims)
    for vi in [*proto.graph.input, *proto.graph.value_info]:
        if vi.name == name and vi.type.HasField("tensor_type"):
            return [d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim]
    return None


def _attr(node, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _other_constants(proto: onnx.ModelProto, layers: list[OnnxLayer], affines: dict) -> list[OtherConstant]:
    """Constants consumed by the non-constant part of the graph (outside the inputs TVM turns
    into shapes or attributes), other than layer weights: biases, norm parameters, indices.
    A BatchNormalization with constant parameters is built as ``x · a + b`` (two vectors), or,
    folded into the layer before it, as the shift ``b`` alone; a folded Mul's factor is gone.
    The scalars TVM's importer makes of some operators' attributes are listed too
    (:data:`IMPORTER_SCALARS`)."""
    g = proto.graph
    const_names = {t.name for t in g.initializer}
    inputs = {vi.name for vi in g.input} - const_names
    for node in g.node:  # forward: a node whose inputs are all constant is folded
        if node.op_type in ("RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike"):
            continue
        if all(i == "" or i in const_names for i in node.input) and not any(i in inputs for i in node.input):
            const_names.update(o for o in node.output if o)
    weights = {(layer.node_index, 1) for layer in layers}
    folded = {a.node_index: a for a in affines.values()}
    boundary: dict[str, str] = {}
    norms: list[OtherConstant] = []
    for i, node in enumerate(g.node):
        if all(o in const_names for o in node.output if o):
            continue
        if node.op_type == "BatchNormalization" and all(n in const_names for n in node.input[1:5]):
            channels = int(np.asarray(constant_values(proto, {node.input[1]})[node.input[1]]).size)
            where = f"BatchNormalization '{node.name or f'#{i}'}'"
            parts = ["shift"] if i in folded else ["scale", "shift"]
            norms += [
                OtherConstant(f"{node.name or f'#{i}'}.{p}", where, (channels,), "float32", 4 * channels)
                for p in parts
            ]
            continue
        scalars = _importer_scalars(proto, node, i, folded, const_names)
        if scalars is not None:
            norms.append(scalars)
        if node.op_type == "Mul" and i in folded:
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
    return out + norms


def inspect(model) -> ModelReport:
    """Describe every Gemm/MatMul/Conv/ConvTranspose layer with a constant weight, and the other
    constants (see module docstring).

    ``model`` is a path, an ``onnx.ModelProto`` or an already validated
    :class:`~tbn_tvm.frontend.onnx.LoadedModel`.  Raises :class:`~tbn_tvm.errors.TBNError` for a
    file that is not a valid ONNX model or uses unsupported operators."""
    from tbn_tvm.frontend.onnx import LoadedModel, load_onnx

    loaded = model if isinstance(model, LoadedModel) else load_onnx(model, static=False)
    layers = weighted_layers(loaded.proto)
    affines = folded_affines(loaded.proto, layers)
    reports = []
    for li, layer in enumerate(layers):
        if li in affines:  # BatchNorm / per-channel Mul folded into the weight, as the compiler does
            w = folded_weight(layer, affines[li].factor)
        else:
            w = layer.matmul_operand if layer.kind == "matmul" else layer.stored
        w = np.asarray(w)
        reports.append(LayerReport(layer, detect_layer_weight(w, layer.kind), li in affines, fingerprint(w)))
    return ModelReport(loaded.source, reports, _other_constants(loaded.proto, layers, affines))


def text_table(head: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    """Lines of a fixed-width table: the header, a rule, the rows, a rule (columns in ``right``
    right-aligned)."""
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]

    def fmt_row(r):  # no trailing spaces after the last column
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))
        ).rstrip()

    rule = "-" * (sum(widths) + 2 * (len(widths) - 1))
    return [fmt_row(head), rule, *map(fmt_row, rows), rule]


def patchwise_line(patch: dict) -> str:
    """One sentence on a patch-wise stage (issue 22): which layers, the tiles, the arena it
    saves and the instructions it costs (measured against the layer-by-layer build where the
    build ran on QEMU)."""
    out = "x".join(str(d) for d in patch["stage_output"][1:])
    th, tw = patch["tile"]
    text = (
        f"patch-wise: {', '.join(patch['layers'])} run over {patch['tiles']} tiles "
        f"({patch['grid'][0]}x{patch['grid'][1]}, up to {th}x{tw} of the {out} output); arena "
        f"{patch['arena_bytes']:,} bytes instead of {patch['layer_by_layer_arena_bytes']:,}"
    )
    if "recompute_overhead_instructions" in patch:
        base = patch["layer_by_layer_instructions"]
        over = patch["recompute_overhead_instructions"]
        text += (
            f"; recompute overhead {over:,} instructions ({100 * over / max(base, 1):.0f} % over the "
            f"layer-by-layer build's {base:,})"
        )
    else:
        text += f"; about {100 * patch['estimated_recompute']:.0f} % more multiply-adds (not measured)"
    return text


def artifact_table(manifest: dict) -> str:
    """The per-layer table of a built artifact (``tbn-tvm inspect OUT_DIR``): format, weight
    bytes, and where the target reports them flash bytes (weights + kernel code), the arena in
    use while the layer runs, and instructions (measured on QEMU at build time) or time per
    inference; then, for a Cortex-M build, every kernel call of ``model.c`` in order with its
    layers, instructions and arena, and the memory totals (stack: the measured peak and what
    was reserved)."""
    layers = manifest.get("layers", [])
    keys = ("flash_bytes", "arena_bytes", "instructions", "estimated_cycles_m4", "seconds")
    has = {key: any(key in layer for layer in layers) for key in keys}
    head = ["layer", "op", "format", "bytes"]
    labels = ("flash", "arena", "instructions", "est. M4 cycles", "ms")
    head += [label for key, label in zip(keys, labels, strict=True) if has[key]]
    rows = []
    for layer in layers:
        row = [layer["name"], layer["op"], layer.get("label", layer["format"]), f"{layer['bytes']:,}"]
        for key in keys[:4]:
            if has[key]:
                row.append(f"{layer[key]:,}" if key in layer else "-")
        if has["seconds"]:
            row.append(f"{layer['seconds'] * 1e3:.3f}" if "seconds" in layer else "-")
        rows.append(row)
    target = manifest.get("target", {})
    lines = [
        f"{manifest.get('source', '?')} built for {target.get('name', '?')} ({target.get('family', '?')})"
    ]
    lines += text_table(head, rows, set(range(3, len(head))))
    total = manifest.get("total", {})
    lines.append(
        f"weights {total.get('weight_bytes', 0):,} bytes; all constants {total.get('built_constant_bytes', 0):,} bytes"
    )
    steps = manifest.get("steps", [])
    if steps and any(s.get("instructions") is not None for s in steps):
        lines.append("")
        step_rows = [
            [
                s["kernel"],
                ",".join(s.get("layers", [])) or "-",
                f"{s['instructions']:,}" if s.get("instructions") is not None else "-",
                f"{s.get('arena_bytes', 0):,}",
            ]
            for s in steps
        ]
        lines += text_table(["kernel", "layers", "instructions", "arena"], step_rows, {2, 3})
    facts = [
        f"{label} {manifest[key]:,} bytes"
        for key, label in (
            ("flash_bytes", "flash"),
            ("ram_bytes", "RAM"),
            ("arena_bytes", "arena"),
            ("workspace_bytes", "workspace"),
            ("stack_bytes", "stack"),
        )
        if key in manifest
    ]
    if facts:
        lines.append(", ".join(facts))
    if manifest.get("patchwise"):
        lines.append(patchwise_line(manifest["patchwise"]))
    measured = manifest.get("measured", {})
    if measured.get("skipped"):
        lines.append(f"not measured: {measured['skipped']}")
    elif measured:
        parts = []
        if "instructions_per_inference" in measured:
            parts.append(f"{measured['instructions_per_inference']:,} instructions per inference")
        if "estimated_cycles_m4_per_inference" in measured:
            parts.append(
                f"estimated {measured['estimated_cycles_m4_per_inference']:,} Cortex-M4 / "
                f"{measured['estimated_cycles_m7_per_inference']:,} Cortex-M7 cycles"
            )
        if measured.get("stack_peak_bytes") is not None:
            parts.append(f"stack peak {measured['stack_peak_bytes']:,} bytes")
        parts += [
            f"{k} {v}"
            for k, v in measured.items()
            if k
            not in ("instructions_per_inference", "stack_peak_bytes", "stack_bytes", "on", "cycles_model")
            and "cycles" not in k
            and not isinstance(v, dict | list)
        ]
        lines.append(f"measured on {measured.get('on', '?')}: " + ", ".join(parts))
    return "\n".join(lines)
