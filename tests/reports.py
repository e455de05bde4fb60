"""Small models reproducing the faults users reported, each with its right value.

Expected values come from numpy (the operator's definition) or onnxruntime, never from tbn-tvm.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper  # noqa: F401 - re-exported for tests

OPSET = 17


def model(nodes, inputs, outputs, initializers=(), opset: int = OPSET) -> onnx.ModelProto:
    """A checked ONNX model from nodes, ``(name, elem_type, shape)`` inputs/outputs and arrays."""
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
        [helper.make_tensor_value_info(n, t, s) for n, t, s in outputs],
        [numpy_helper.from_array(a, n) for n, a in initializers],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8 if opset <= 17 else 10
    onnx.checker.check_model(m, full_check=True)
    return m


def ort(m: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    import onnxruntime as rt

    opts = rt.SessionOptions()
    opts.log_severity_level = 3
    return rt.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(
        None, feeds
    )


def gemm_5bit_tile() -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    """Gemm (transB=1), W = 0.5 * a 5-bit tile repeated over [3, 4]; x = e0.  y = W @ e0."""
    w = 0.5 * np.array([[1, 1, -1, -1], [-1, 1, 1, -1], [-1, -1, 1, 1]], np.float32)
    m = model(
        [helper.make_node("Gemm", ["x", "W"], ["y"], transB=1)],
        [("x", TensorProto.FLOAT, [1, 4])],
        [("y", TensorProto.FLOAT, [1, 3])],
        [("W", w)],
    )
    x = np.array([[1, 0, 0, 0]], np.float32)
    return m, x, np.array([[0.5, -0.5, -0.5]], np.float32)


def tiled_conv(shape, L: int, seed: int = 0, x_hw: int = 12, pads=(0, 0, 0, 0)):
    """A Conv whose [O, I, k, k] weight is one α times an L-bit tile repeated (L may divide
    nothing); returns the model and an input."""
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape))
    tile = np.where(rng.random(L) < 0.5, -1.0, 1.0)
    w = (0.25 * np.tile(tile, -(-n // L))[:n]).astype(np.float32).reshape(shape)
    O, C, k, _ = shape
    out = x_hw + pads[0] + pads[2] - k + 1
    m = model(
        [helper.make_node("Conv", ["x", "W"], ["y"], pads=list(pads))],
        [("x", TensorProto.FLOAT, [1, C, x_hw, x_hw])],
        [("y", TensorProto.FLOAT, [1, O, out, out])],
        [("W", w)],
    )
    return m, rng.standard_normal((1, C, x_hw, x_hw)).astype(np.float32)


def tiled_gemm(shape, L: int, seed: int = 0):
    """A Gemm (transB=1) whose [out, in] weight is one α times an L-bit tile repeated."""
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape))
    tile = np.where(rng.random(L) < 0.5, -1.0, 1.0)
    w = (0.5 * np.tile(tile, -(-n // L))[:n]).astype(np.float32).reshape(shape)
    m = model(
        [helper.make_node("Gemm", ["x", "W"], ["y"], transB=1)],
        [("x", TensorProto.FLOAT, [1, shape[1]])],
        [("y", TensorProto.FLOAT, [1, shape[0]])],
        [("W", w)],
    )
    return m, rng.standard_normal((1, shape[1])).astype(np.float32)


def initializer(m: onnx.ModelProto, name: str) -> np.ndarray:
    """The initializer ``name`` of ``m`` as a numpy array."""
    from onnx import numpy_helper

    return next(numpy_helper.to_array(t) for t in m.graph.initializer if t.name == name)


def built_dense_layers(report: dict) -> set[str]:
    """Layers a Cortex-M build made dense because their compact kernel was estimated slower
    than the dense one (issue 22: no layer slower than in the ``--no-compress`` build); each is
    named by a ``built dense`` note of the compile summary."""
    import re

    named = set()
    for note in report.get("notes", []):
        m = re.match(r"layer (.+?): built dense: ", note)
        if m:
            named.add(m.group(1))
    return named


def check_layers_against_inspect(report: dict, inspected: dict) -> set[str]:
    """Every built layer as ``inspect`` found it, except the layers built dense with a note
    (reported ``dense`` with ``found`` = what inspect found, their fp32 bytes); the build's
    constant bytes are inspect's plus what those layers' dense weights add.  Returns the
    layers built dense."""
    found = {layer["name"]: layer for layer in inspected["layers"]}
    built = {layer["name"]: layer for layer in report["layers"]}
    assert set(built) == set(found) and len(built) == len(report["layers"])
    dense = built_dense_layers(report)
    extra = 0
    for name, layer in built.items():
        if name in dense:
            assert layer["format"] == "dense" and layer["found"] == found[name]["label"], (name, layer)
            assert layer["bytes"] == layer["fp32_bytes"]
            extra += layer["bytes"] - found[name]["bytes"]
            continue
        assert "found" not in layer, (
            f"{name} reported {layer['format']} (found: {layer['found']}) without a note"
        )
        for key in ("format", "label", "bytes"):
            assert layer[key] == found[name][key], (name, key, layer[key], found[name][key])
    total = report["total"]
    assert (
        total["constant_bytes"]
        == total["built_constant_bytes"]
        == inspected["total"]["constant_bytes"] + extra
    )
    return dense
