"""Load and validate an ONNX model, then import it into Relax with its weights folded to constants.

Every problem a user can cause is a :class:`~tbn_tvm.errors.TBNError` with one clear line:
missing or truncated file, a graph the ONNX checker or shape inference rejects, an opset or an
operator the project does not support (all of them listed at once, each with its node), dynamic
input shapes, an ``--input-shape`` of the wrong rank or one the weights disagree with, a tensor
too large to build.  The import itself runs TVM's Relax ONNX frontend with the project's own
converters in front of it (:mod:`tbn_tvm.frontend.converters`) for the operators TVM gets wrong;
a conversion failure names the ONNX node and operator; TVM's log lines never reach the user.
After the import every graph output is checked against what ONNX shape inference declares
(shape and dtype), so a wrong import is refused instead of running.

>>> loaded = load_onnx("examples/tbn-mnist-mlp.onnx")         # doctest: +SKIP
>>> [t.shape for t in loaded.inputs]                           # doctest: +SKIP
[(1, 784)]
"""

from __future__ import annotations

import math
import operator
import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from tbn_tvm.errors import TBNError
from tbn_tvm.frontend import ops as op_table

#: Lowest opset accepted (the Relax importer's floor).
MIN_OPSET = 7
#: Highest opset TVM 0.27's converters are written against; newer models are converted down to
#: it with ``onnx.version_converter`` (refused where that conversion does not exist).
IMPORT_OPSET = 23
#: Highest opset accepted: the one of the pinned onnx package.
MAX_OPSET = onnx.defs.onnx_opset_version()
#: Largest tensor (bytes) a compiled graph may hold; larger ones are refused before building.
MAX_TENSOR_BYTES = 2 << 30

_ELEM_DTYPES = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.DOUBLE: "float64",
    onnx.TensorProto.INT8: "int8",
    onnx.TensorProto.INT16: "int16",
    onnx.TensorProto.INT32: "int32",
    onnx.TensorProto.INT64: "int64",
    onnx.TensorProto.UINT8: "uint8",
    onnx.TensorProto.UINT16: "uint16",
    onnx.TensorProto.UINT32: "uint32",
    onnx.TensorProto.UINT64: "uint64",
    onnx.TensorProto.BOOL: "bool",
}


@dataclass(frozen=True)
class TensorSpec:
    """Name, static shape and numpy dtype of a graph input or output."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, d: Mapping) -> TensorSpec:
        """From :meth:`to_dict`'s form; ValueError for a dtype or shape no model can have."""
        shape = tuple(int(v) for v in d["shape"])
        dtype = str(d["dtype"])
        if dtype not in _ELEM_DTYPES.values():
            raise ValueError(f"unknown dtype {dtype[:40]!r}")
        if any(v < -1 for v in shape) or any(isinstance(v, bool | float) for v in d["shape"]):
            raise ValueError(f"bad shape {list(d['shape'])[:8]}")
        return cls(str(d["name"]), shape, dtype)


@dataclass
class LoadedModel:
    """A validated ONNX model.

    ``proto`` is the model as given; ``import_proto`` the one handed to TVM (converted to
    :data:`IMPORT_OPSET` when newer).  ``inputs`` have static shapes when loaded with
    ``static=True`` (dynamic dimensions are ``-1`` otherwise); ``outputs`` are what ONNX shape
    inference declares for them (``-1``: unknown dimension)."""

    proto: onnx.ModelProto
    source: str
    inputs: list[TensorSpec]
    opset: int
    outputs: list[TensorSpec] = field(default_factory=list)
    import_proto: onnx.ModelProto | None = None


def _display(model) -> str:
    return os.fspath(model) if isinstance(model, str | os.PathLike) else "<model>"


def _read(model: str | os.PathLike | onnx.ModelProto) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    if not isinstance(model, str | os.PathLike):
        raise TBNError(f"expected a path or an onnx.ModelProto, got {type(model).__name__}")
    path = Path(model)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise TBNError(f"{path}: no such file", hint="check the model path") from None
    except OSError as e:
        raise TBNError(f"{path}: cannot read the file ({e.strerror or e})") from None
    if stat.S_ISDIR(st.st_mode):
        raise TBNError(f"{path}: is a directory, expected an .onnx file")
    if not stat.S_ISREG(st.st_mode):
        raise TBNError(f"{path}: not a regular file (a FIFO, device or socket)", hint="pass an .onnx file")
    try:
        data = path.read_bytes()
        proto = onnx.load_model_from_string(data)
    except OSError as e:
        raise TBNError(f"{path}: cannot read the file ({e.strerror or e})") from None
    except Exception as e:  # protobuf DecodeError and friends
        raise TBNError(
            f"{path}: not a valid ONNX model ({type(e).__name__}: {' '.join(str(e).split()) or 'truncated or corrupt'})",
            hint="re-export the model; the file may be truncated",
        ) from None
    _check_names(proto, path)
    _check_external_data(proto, path)
    return proto


def _graph_names(graph: onnx.GraphProto):
    """Every name a graph (and its sub-graphs) carries: nodes, values, tensors, attributes."""
    yield graph.name
    for vi in (*graph.input, *graph.output, *graph.value_info):
        yield vi.name
    for t in graph.initializer:
        yield t.name
        for e in t.external_data:
            yield e.key
            yield e.value
    for node in graph.node:
        yield from (node.name, node.op_type, node.domain, *node.input, *node.output)
        for a in node.attribute:
            yield a.name
            if a.HasField("g"):
                yield from _graph_names(a.g)
            for g in a.graphs:
                yield from _graph_names(g)


def _check_names(proto: onnx.ModelProto, path: Path) -> None:
    """Refuse names protobuf could not decode (invalid UTF-8 arrives as bytes)."""
    for name in _graph_names(proto.graph):
        if not isinstance(name, str):
            shown = bytes(name)[:40].decode("utf-8", errors="backslashreplace")
            raise TBNError(
                f"{path}: a name in the model is not valid UTF-8 ({_printable(shown)})",
                hint="ONNX names are UTF-8 strings; re-export the model",
            )


def _check_external_data(proto: onnx.ModelProto, path: Path) -> None:
    """Tensors stored outside the file must lie in the model's own folder; load them."""
    from onnx.external_data_helper import uses_external_data

    tensors = [t for t in _all_tensors(proto.graph) if uses_external_data(t)]
    if not tensors:
        return
    base = path.resolve().parent
    for t in tensors:
        loc = next((e.value for e in t.external_data if e.key == "location"), "")
        bad = not loc or "\x00" in loc or os.path.isabs(loc)
        target = base if bad else (base / loc).resolve()
        if bad or not target.is_relative_to(base) or not target.is_file():
            raise TBNError(
                f"{path}: tensor '{_printable(t.name)}' points to external data outside the model's folder or missing",
                hint="keep external data files next to the model",
            )
    try:
        onnx.load_external_data_for_model(proto, str(base))
    except Exception as e:  # noqa: BLE001 - a broken external file
        raise TBNError(
            f"{path}: cannot load external tensor data ({' '.join(str(e).split())[:200]})"
        ) from None


def _all_tensors(graph: onnx.GraphProto):
    yield from graph.initializer
    for node in graph.node:
        for a in node.attribute:
            if a.HasField("t"):
                yield a.t
            yield from a.tensors
            if a.HasField("g"):
                yield from _all_tensors(a.g)
            for g in a.graphs:
                yield from _all_tensors(g)


def _printable(name: str, limit: int = 60) -> str:
    """A name as it may appear in one error line (control characters escaped, length capped)."""
    s = name.encode("unicode_escape", errors="backslashreplace").decode("ascii")
    return s if len(s) <= limit else s[: limit - 3] + "..."


def elem_dtype(elem_type: int) -> str | None:
    """numpy dtype name of an ONNX element type, or None when tbn-tvm does not handle it."""
    return _ELEM_DTYPES.get(elem_type)


def load_onnx(
    model: str | os.PathLike | onnx.ModelProto,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    *,
    static: bool = True,
    family: str | None = None,
) -> LoadedModel:
    """Read, check and describe an ONNX model.

    ``input_shapes`` fixes dynamic dimensions (the rank must match).  With ``static=False``
    (``inspect``) dynamic dimensions are accepted and no shape inference runs.  ``family``: the
    target family the model is built for (its operators are checked for it)."""
    name = _display(model)
    proto = _read(model)
    try:
        onnx.checker.check_model(proto)
    except Exception as e:  # noqa: BLE001 - the checker raises several types
        raise TBNError(f"{name}: invalid ONNX model: {' '.join(str(e).split())[:300]}") from None
    _check_unique(proto, name)
    opset = _default_opset(proto, name)
    op_table.check_nodes(proto, opset, name, family)
    initializers = {t.name for t in proto.graph.initializer}
    overrides = _shape_overrides(input_shapes)
    graph_inputs = [vi for vi in proto.graph.input if vi.name not in initializers]
    unknown = sorted(set(overrides) - {vi.name for vi in graph_inputs})
    if unknown:  # before the inputs' own checks (a dynamic dimension would hide the typo)
        listed = ", ".join(f"'{_printable(u)}'" for u in unknown)
        raise TBNError(
            f"{name}: --input-shape names unknown input{'s' * (len(unknown) > 1)} {listed}",
            hint="inputs: " + (", ".join(_printable(vi.name) for vi in graph_inputs) or "none"),
        )
    inputs = [_input_spec(vi, overrides.pop(vi.name, None), name, static) for vi in graph_inputs]
    if not proto.graph.output:
        raise TBNError(f"{name}: the graph has no outputs")
    loaded = LoadedModel(proto=proto, source=name, inputs=inputs, opset=int(opset))
    if static:
        loaded.outputs = _infer_outputs(loaded)
    return loaded


def _shape_overrides(input_shapes) -> dict[str, tuple[int, ...]]:
    """``input_shapes`` as name -> positive dimensions; a shape may be a sequence of ints or a
    string as on the command line (``"4,32"``, ``"4x32"``).  TBNError for anything else."""
    if input_shapes is None:
        return {}
    if not isinstance(input_shapes, Mapping):
        raise TBNError(
            f"input_shapes must map input names to shapes, got {type(input_shapes).__name__}",
            hint='e.g. input_shapes={"x": [1, 784]}',
        )
    out = {}
    for key, value in input_shapes.items():
        label = _printable(str(key))
        try:
            if isinstance(value, str):
                dims = [int(d) for d in value.replace("x", ",").split(",") if d.strip()]
            elif isinstance(value, Sequence | np.ndarray):
                dims = [operator.index(d) for d in value]
            else:
                raise TypeError
        except (TypeError, ValueError):
            raise TBNError(
                f"bad shape for input '{label}': {_printable(repr(value), 60)}",
                hint='give positive dimensions, e.g. [1, 784] or "1,784"',
            ) from None
        if not dims or min(dims) <= 0:
            raise TBNError(
                f"bad shape for input '{label}': {list(dims)}",
                hint="every dimension must be at least 1 (zero-size inputs are not supported)",
            )
        out[str(key)] = tuple(dims)
    return out


def _check_unique(proto: onnx.ModelProto, name: str) -> None:
    """Refuse what onnxruntime refuses and the checker lets through: two nodes with one name,
    an output listed twice."""
    seen: set[str] = set()
    for node in proto.graph.node:
        if node.name and node.name in seen:
            raise TBNError(
                f"{name}: two nodes are named '{_printable(node.name)}'", hint="node names must be unique"
            )
        seen.add(node.name)
    outs = [o.name for o in proto.graph.output]
    dup = next((o for o in outs if outs.count(o) > 1), None)
    if dup is not None:
        raise TBNError(f"{name}: the graph lists output '{_printable(dup)}' twice")


_FLOAT_ONLY = {"Gemm", "Conv", "ConvTranspose"}
_FLOAT_TYPES = {
    onnx.TensorProto.FLOAT,
    onnx.TensorProto.FLOAT16,
    onnx.TensorProto.DOUBLE,
    onnx.TensorProto.BFLOAT16,
}


def _check_float_ops(graph: onnx.GraphProto, source: str) -> None:
    """Gemm and Conv on integer tensors: onnxruntime has no kernel for them, refuse them too."""
    types = {t.name: t.data_type for t in graph.initializer}
    for vi in (*graph.input, *graph.value_info, *graph.output):
        if vi.type.HasField("tensor_type"):
            types[vi.name] = vi.type.tensor_type.elem_type
    for node in graph.node:
        if node.op_type in _FLOAT_ONLY and node.domain in ("", "ai.onnx") and node.input:
            t = types.get(node.input[0])
            if t is not None and t not in _FLOAT_TYPES:
                raise TBNError(
                    f"{source}: {node.op_type} node '{_printable(node.name or node.output[0])}' takes "
                    f"{onnx.helper.tensor_dtype_to_np_dtype(t) if t else 'undefined'} tensors; "
                    "tbn-tvm (like onnxruntime) computes it on floating-point tensors only"
                )


def _default_opset(proto: onnx.ModelProto, name: str) -> int:
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None:
        domains = ", ".join(sorted(_printable(o.domain, 30) for o in proto.opset_import)) or "none"
        raise TBNError(
            f"{name}: the model imports no opset of the default ONNX domain (it imports: {domains}); "
            "tbn-tvm compiles operators of the default domain only"
        )
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise TBNError(
            f"{name}: ONNX opset {opset} is not supported (supported: {MIN_OPSET} to {MAX_OPSET})",
            hint="re-export with another opset or convert it with onnx.version_converter",
        )
    return int(opset)


def _input_spec(vi, override, name: str, static: bool) -> TensorSpec:
    label = _printable(vi.name)
    if not vi.type.HasField("tensor_type"):
        raise TBNError(
            f"{name}: input '{label}' is not a tensor (sequences, maps and optionals are not supported)"
        )
    tt = vi.type.tensor_type
    dtype = elem_dtype(tt.elem_type)
    if dtype is None:
        what = "undefined" if tt.elem_type == 0 else onnx.TensorProto.DataType.Name(tt.elem_type)
        raise TBNError(f"{name}: input '{label}' has element type {what}, which tbn-tvm does not support")
    declared = list(tt.shape.dim) if tt.HasField("shape") else None
    if override is not None:
        shape = tuple(int(d) for d in override)
        if declared is not None and len(declared) != len(shape):
            raise TBNError(
                f"{name}: input '{label}' has rank {len(declared)}, but --input-shape gives {len(shape)} dimension(s)",
                hint=f"give {len(declared)} dimensions, e.g. --input-shape {label}="
                + ",".join(["D"] * len(declared)),
            )
        for i, d in enumerate(declared or []):
            if d.HasField("dim_value") and d.dim_value != shape[i]:
                raise TBNError(
                    f"{name}: --input-shape {label} gives {shape[i]} for dimension {i}, which the model fixes to {d.dim_value}"
                )
        return TensorSpec(vi.name, shape, dtype)
    if declared is None:
        if static:
            raise TBNError(
                f"{name}: input '{label}' has no declared shape; tbn-tvm compiles static shapes only",
                hint=f"pass --input-shape {label}=D0,D1,...",
            )
        return TensorSpec(vi.name, (), dtype)
    shape = []
    for i, d in enumerate(declared):
        if d.HasField("dim_value") and d.dim_value >= 0:
            shape.append(int(d.dim_value))
        elif static:
            raise TBNError(
                f"{name}: input '{label}' has a dynamic dimension {i} ('{_printable(d.dim_param) or '?'}'); "
                "tbn-tvm compiles static shapes only",
                hint=f"re-export with a fixed shape or pass --input-shape {label}="
                + ",".join(str(x.dim_value) if x.HasField("dim_value") else "D" for x in declared),
            )
        else:
            shape.append(-1)
    return TensorSpec(vi.name, tuple(shape), dtype)


def with_input_shapes(proto: onnx.ModelProto, inputs: Sequence[TensorSpec]) -> onnx.ModelProto:
    """A copy of ``proto`` whose graph inputs declare the given static shapes."""
    m = onnx.ModelProto()
    m.CopyFrom(proto)
    specs = {t.name: t for t in inputs}
    for vi in m.graph.input:
        t = specs.get(vi.name)
        if t is None:
            continue
        shape = vi.type.tensor_type.shape
        del shape.dim[:]
        for d in t.shape:
            shape.dim.add().dim_value = d
    return m


def _infer_outputs(loaded: LoadedModel) -> list[TensorSpec]:
    """Run ONNX shape inference (strict, with data propagation) on the static-shape model; refuse
    models it rejects and tensors too large to build; return the graph outputs' declared types."""
    from onnx import shape_inference

    m = with_input_shapes(loaded.proto, loaded.inputs)
    try:
        inferred = shape_inference.infer_shapes(m, check_type=True, strict_mode=True, data_prop=True)
    except Exception as e:  # noqa: BLE001 - InferenceError, ValidationError, ...
        given = ", ".join(f"{_printable(t.name)}={'x'.join(map(str, t.shape))}" for t in loaded.inputs)
        raise TBNError(
            f"{loaded.source}: ONNX shape inference rejects the model for inputs {given}: "
            f"{' '.join(str(e).split())[:300]}",
            hint="check --input-shape against what the weights expect",
        ) from None
    g = inferred.graph
    _check_float_ops(g, loaded.source)
    for vi in [*g.value_info, *g.output]:
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type") or not tt.HasField("shape"):
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        if None in dims:
            continue
        dtype = elem_dtype(tt.elem_type)
        size = math.prod(dims) * (np.dtype(dtype).itemsize if dtype else 1)
        if size > MAX_TENSOR_BYTES:
            raise TBNError(
                f"{loaded.source}: tensor '{_printable(vi.name)}' of shape {'x'.join(map(str, dims))} "
                f"needs {size / 2**30:.1f} GiB; tbn-tvm builds tensors up to {MAX_TENSOR_BYTES >> 30} GiB"
            )
    outputs = []
    for vi in g.output:
        label = _printable(vi.name)
        if not vi.type.HasField("tensor_type"):
            raise TBNError(
                f"{loaded.source}: output '{label}' is not a tensor (sequences and optionals are not supported)"
            )
        tt = vi.type.tensor_type
        dtype = elem_dtype(tt.elem_type)
        if dtype is None:
            raise TBNError(f"{loaded.source}: output '{label}' has an element type tbn-tvm does not support")
        if not tt.HasField("shape"):
            raise TBNError(
                f"{loaded.source}: the shape of output '{label}' depends on the input data; "
                "tbn-tvm compiles static shapes only"
            )
        dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim)
        outputs.append(TensorSpec(vi.name, dims, dtype))
    return outputs


def to_import_opset(loaded: LoadedModel):
    """The model as TVM's importer takes it: converted down to :data:`IMPORT_OPSET` when newer
    and ``onnx.version_converter`` can; otherwise as it is (TVM picks its newest converter not
    newer than the opset, and the operator table admits only versions that the conformance suite
    verified along this same path)."""
    proto = loaded.proto
    if loaded.opset <= IMPORT_OPSET:
        return proto
    from onnx import version_converter

    try:
        converted = version_converter.convert_version(proto, IMPORT_OPSET)
        onnx.checker.check_model(converted)
    except Exception:  # noqa: BLE001 - the converter has no adapter for some op
        return proto
    return converted


def to_relax(loaded: LoadedModel, layers=None):
    """Import into a Relax IRModule whose weights are constants, with constant sub-graphs
    (Expand/Tile/Mul/Reshape chains, transposes) folded into single constants; check its outputs
    against the declared ones.  The call of each weighted layer (``layers``: the
    :func:`~tbn_tvm.frontend.layers.weighted_layers` of the model, found here when not given)
    carries its name (:mod:`tbn_tvm.frontend.identity`)."""
    from tbn_tvm.frontend.importer import import_model
    from tbn_tvm.frontend.layers import weighted_layers
    from tbn_tvm.passes.pipeline import fold_constants
    from tbn_tvm.quiet import captured

    proto = _with_safe_input_names(to_import_opset(loaded), loaded.inputs)
    loaded.import_proto = proto
    safe = [TensorSpec(vi.name, t.shape, t.dtype) for vi, t in zip(_graph_inputs(proto), loaded.inputs)]
    if layers is None:
        layers = weighted_layers(loaded.proto)
    mod = import_model(proto, loaded, safe, {layer.output: layer.name for layer in layers if layer.output})
    seq = fold_constants()
    with captured() as log:
        try:
            mod = seq(mod)
        except Exception as e:  # noqa: BLE001 - TVM raises its own error types
            raise TBNError(
                f"{loaded.source}: folding the model's constants failed: {' '.join(str(e).split())[:200]}",
                hint="report it with the model",
            ) from None
    del log
    if loaded.outputs:
        check_outputs(mod, loaded)
    return mod


def _with_safe_input_names(proto: onnx.ModelProto, inputs: Sequence[TensorSpec]) -> onnx.ModelProto:
    """A copy whose graph inputs are named ``in0, in1, ...``: TVM turns input names into
    parameter names of the generated code, and a model's names may hold any text (a library
    meant for firmware must never carry text from the model into code)."""
    m = onnx.ModelProto()
    m.CopyFrom(proto)
    existing = {o for node in m.graph.node for o in node.output} | {t.name for t in m.graph.initializer}
    rename = {}
    for i, t in enumerate(inputs):
        new, k = f"in{i}", 0
        while new in existing:  # a value of the model already has that name
            k += 1
            new = f"in{i}_{k}"
        rename[t.name] = new

    def fix(graph: onnx.GraphProto) -> None:
        for vi in graph.input:
            if vi.name in rename:
                vi.name = rename[vi.name]
        for vi in graph.output:
            if vi.name in rename:
                vi.name = rename[vi.name]
        for node in graph.node:
            for i, name in enumerate(node.input):
                if name in rename:
                    node.input[i] = rename[name]
            for a in node.attribute:
                if a.HasField("g"):
                    fix(a.g)
                for g in a.graphs:
                    fix(g)

    fix(m.graph)
    return m


def _graph_inputs(proto: onnx.ModelProto) -> list:
    initializers = {t.name for t in proto.graph.initializer}
    return [vi for vi in proto.graph.input if vi.name not in initializers]


def relax_outputs(mod) -> list[tuple[tuple[int, ...] | None, str | None]]:
    """(shape or None when not static, dtype or None) of each output of ``main``."""
    from tvm import relax

    ret = mod["main"].ret_ty
    fields = list(ret.fields) if isinstance(ret, relax.TupleType) else [ret]
    out = []
    for f in fields:
        if not isinstance(f, relax.TensorType) or f.shape is None:
            out.append((None, None))
            continue
        try:
            shape = tuple(int(d) for d in f.shape)
        except (TypeError, ValueError):
            shape = None
        out.append((shape, str(f.dtype)))
    return out


def check_outputs(mod, loaded: LoadedModel) -> None:
    """Refuse an import whose outputs disagree with ONNX shape inference (count, shape, dtype)."""
    got = relax_outputs(mod)
    want = loaded.outputs
    producers = {out: node for node in loaded.proto.graph.node for out in node.output}

    def culprit(name: str) -> str:
        node = producers.get(name)
        if node is None:
            return ""
        return f" (produced by {node.op_type} node '{_printable(node.name or name)}')"

    if len(got) != len(want):
        raise TBNError(
            f"{loaded.source}: the import produced {len(got)} outputs where the graph declares {len(want)}",
            hint="report it with the model",
        )
    for spec, (shape, dtype) in zip(want, got):
        label = _printable(spec.name)
        if shape is None:
            raise TBNError(
                f"{loaded.source}: output '{label}'{culprit(spec.name)} has no static shape after import; "
                "data-dependent shapes are not supported"
            )
        ok_shape = len(shape) == len(spec.shape) and all(w in (-1, g) for g, w in zip(shape, spec.shape))
        if not ok_shape or dtype != spec.dtype:
            raise TBNError(
                f"{loaded.source}: output '{label}'{culprit(spec.name)} would be {dtype}{list(shape)} but ONNX "
                f"declares {spec.dtype}{list(spec.shape)}; this use of the operator is not supported",
                hint="report it with the model",
            )


def output_specs(mod, loaded: LoadedModel | None = None) -> list[TensorSpec]:
    """The compiled outputs: names from the graph, shapes and dtypes from the Relax ``main``."""
    names = [o.name for o in loaded.proto.graph.output] if loaded is not None else []
    specs = []
    for i, (shape, dtype) in enumerate(relax_outputs(mod)):
        name = names[i] if i < len(names) else f"output{i}"
        if shape is None:
            raise TBNError(
                f"output '{_printable(name)}' has no static shape; data-dependent shapes are not supported"
            )
        specs.append(TensorSpec(name, shape, dtype))
    return specs
