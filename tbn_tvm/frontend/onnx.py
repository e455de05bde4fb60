"""Load and validate an ONNX model, then import it into Relax with its weights folded to constants.

Every problem a user can cause is a :class:`~tbn_tvm.errors.TBNError` with one clear line:
missing or truncated file, invalid graph, an operator the importer lacks (named with its node),
dynamic input shapes.

>>> loaded = load_onnx("examples/tbn-mnist-mlp.onnx")         # doctest: +SKIP
>>> [t.shape for t in loaded.inputs]                           # doctest: +SKIP
[(1, 784)]
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

#: Opsets the Relax ONNX importer of apache-tvm 0.27 handles (ONNX's default domain).
MIN_OPSET, MAX_OPSET = 7, 23


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
        return cls(str(d["name"]), tuple(int(v) for v in d["shape"]), str(d["dtype"]))


@dataclass
class LoadedModel:
    """A validated ONNX model with static input shapes."""

    proto: onnx.ModelProto
    source: str
    inputs: list[TensorSpec]
    opset: int


def _display(model) -> str:
    return os.fspath(model) if isinstance(model, str | os.PathLike) else "<model>"


def _read(model: str | os.PathLike | onnx.ModelProto) -> onnx.ModelProto:
    from tbn_tvm.errors import TBNError

    if isinstance(model, onnx.ModelProto):
        return model
    path = Path(model)
    if not path.exists():
        raise TBNError(f"{path}: no such file", hint="check the model path")
    if path.is_dir():
        raise TBNError(f"{path}: is a directory, expected an .onnx file")
    try:
        return onnx.load(str(path))
    except OSError as e:
        raise TBNError(f"{path}: cannot read the file ({e.strerror or e})") from None
    except Exception as e:  # protobuf DecodeError and friends
        raise TBNError(
            f"{path}: not a valid ONNX model ({type(e).__name__}: {' '.join(str(e).split()) or 'truncated or corrupt'})",
            hint="re-export the model; the file may be truncated",
        ) from None


def _elem_dtype(elem_type: int) -> str:
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).name
    except Exception:
        return "unknown"


def load_onnx(
    model: str | os.PathLike | onnx.ModelProto,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
) -> LoadedModel:
    """Read, check and describe an ONNX model; ``input_shapes`` fixes dynamic dimensions."""
    from tbn_tvm.errors import TBNError

    name = _display(model)
    proto = _read(model)
    try:
        onnx.checker.check_model(proto)
    except Exception as e:
        msg = " ".join(str(e).split())
        raise TBNError(f"{name}: invalid ONNX model: {msg[:300]}") from None
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or not MIN_OPSET <= opset <= MAX_OPSET:
        raise TBNError(
            f"{name}: ONNX opset {opset} is not supported (supported: {MIN_OPSET} to {MAX_OPSET})",
            hint="re-export with another opset or convert it with onnx.version_converter",
        )
    _check_ops(proto, name)
    initializers = {t.name for t in proto.graph.initializer}
    overrides = dict(input_shapes or {})
    inputs = []
    for vi in proto.graph.input:
        if vi.name in initializers:
            continue
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type"):
            raise TBNError(f"{name}: input '{vi.name}' is not a tensor")
        if vi.name in overrides:
            shape = tuple(int(d) for d in overrides.pop(vi.name))
        else:
            shape = []
            for i, d in enumerate(tt.shape.dim):
                if d.HasField("dim_value") and d.dim_value > 0:
                    shape.append(int(d.dim_value))
                else:
                    label = d.dim_param or "?"
                    raise TBNError(
                        f"{name}: input '{vi.name}' has a dynamic dimension {i} ('{label}'); "
                        "tbn-tvm compiles static shapes only",
                        hint=f"re-export with a fixed shape or pass --input-shape {vi.name}=D0,D1,...",
                    )
            shape = tuple(shape)
        inputs.append(TensorSpec(vi.name, shape, _elem_dtype(tt.elem_type)))
    if overrides:
        raise TBNError(f"{name}: --input-shape names unknown input(s): {', '.join(sorted(overrides))}")
    return LoadedModel(proto=proto, source=name, inputs=inputs, opset=int(opset))


def _check_ops(proto: onnx.ModelProto, name: str) -> None:
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    from tbn_tvm.errors import TBNError

    supported = _get_convert_map()
    for i, node in enumerate(proto.graph.node):
        if node.domain not in ("", "ai.onnx") or node.op_type not in supported:
            label = node.name or f"#{i}"
            dom = f"{node.domain}." if node.domain not in ("", "ai.onnx") else ""
            raise TBNError(
                f"{name}: operator {dom}{node.op_type} (node '{label}') is not supported by the TVM ONNX importer",
                hint="replace it in the exporter or open an issue with the model",
            )


def to_relax(loaded: LoadedModel):
    """Import into a Relax IRModule whose weights are constants, with constant sub-graphs
    (Expand/Tile/Mul/Reshape chains, transposes) folded into single constants."""
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    from tbn_tvm.errors import TBNError

    shape_dict = {t.name: list(t.shape) for t in loaded.inputs}
    dtype_dict = {t.name: t.dtype for t in loaded.inputs}
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mod = from_onnx(loaded.proto, shape_dict=shape_dict, dtype_dict=dtype_dict)
    except (tvm.error.TVMError, ValueError, NotImplementedError, KeyError, TypeError, AssertionError) as e:
        msg = " ".join(str(e).split())[:300]
        raise TBNError(f"{loaded.source}: the TVM ONNX importer failed: {msg}") from None
    seq = tvm.transform.Sequential(
        [relax.transform.FoldConstant(), relax.transform.DeadCodeElimination()], name="tbn_fold_weights"
    )
    return seq(mod)


def output_specs(mod) -> list[TensorSpec]:
    """Output names are not kept by Relax; shapes and dtypes come from the main function's type."""
    ret = mod["main"].ret_ty
    fields = list(ret.fields) if hasattr(ret, "fields") else [ret]
    return [TensorSpec("", tuple(int(d) for d in f.shape), str(f.dtype)) for f in fields]
