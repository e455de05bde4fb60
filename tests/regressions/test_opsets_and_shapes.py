"""Opsets up to the pinned onnx's, clean refusals outside, and inspect of dynamic-shape models.

Reported: 349 node tests refused because exporters write opsets 24-28; ``inspect`` refused a
dynamic-batch model and advised ``--input-shape``, which ``inspect`` does not take.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import reports
from onnx import TensorProto as T
from onnx import helper as h

import tbn_tvm
from tbn_tvm.errors import TBNError

F = T.FLOAT


def _reshape_relu(opset: int) -> onnx.ModelProto:
    g = h.make_graph(
        [h.make_node("Reshape", ["x", "s"], ["r"]), h.make_node("Relu", ["r"], ["y"])],
        "g",
        [h.make_tensor_value_info("x", F, [2, 3])],
        [h.make_tensor_value_info("y", F, [3, 2])],
        [reports.numpy_helper.from_array(np.array([3, 2], np.int64), "s")],
    )
    m = h.make_model(g, opset_imports=[h.make_opsetid("", opset)])
    m.ir_version = 11
    return m


@pytest.mark.parametrize("opset", [24, 25, onnx.defs.onnx_opset_version()])
def test_new_opsets_compile(opset):
    m = _reshape_relu(opset)
    x = np.array([[1, -2, 3], [-4, 5, -6]], np.float32)
    np.testing.assert_array_equal(tbn_tvm.compile(m, "llvm").run(x), np.maximum(x.reshape(3, 2), 0))


@pytest.mark.parametrize("opset, words", [(6, "opset 6 is not supported"), (99, "opset 99 is not supported")])
def test_opsets_outside_are_refused(opset, words):
    m = _reshape_relu(14)
    m.opset_import[0].version = opset
    with pytest.raises(TBNError) as err:
        tbn_tvm.compile(m, "llvm")
    assert words in err.value.render() or "invalid ONNX model" in err.value.render()


def test_only_other_domains_named():
    m = _reshape_relu(14)
    del m.opset_import[:]
    m.opset_import.append(h.make_opsetid("ai.onnx.ml", 3))
    with pytest.raises(TBNError, match="default ONNX domain|invalid ONNX model"):
        tbn_tvm.compile(m, "llvm")


def test_unsupported_ops_listed_at_once():
    g = h.make_graph(
        [
            h.make_node("Foo", ["x"], ["a"], domain="my.domain", name="first"),
            h.make_node("Bar", ["a"], ["b"], domain="my.domain", name="second"),
        ],
        "g",
        [h.make_tensor_value_info("x", F, [2])],
        [h.make_tensor_value_info("b", F, [2])],
    )
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17), h.make_opsetid("my.domain", 1)])
    m.ir_version = 8
    with pytest.raises(TBNError) as err:
        tbn_tvm.compile(m, "llvm")
    line = err.value.render()
    assert "my.domain.Foo" in line and "my.domain.Bar" in line and "'first'" in line and "'second'" in line


def test_inspect_takes_dynamic_batch():
    w = (0.5 * np.tile(np.float32([1, -1, -1, 1]), 16)).reshape(4, 16)
    g = h.make_graph(
        [h.make_node("Gemm", ["x", "W"], ["y"], transB=1)],
        "g",
        [h.make_tensor_value_info("x", F, ["batch", 16])],
        [h.make_tensor_value_info("y", F, ["batch", 4])],
        [reports.numpy_helper.from_array(w.astype(np.float32), "W")],
    )
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    m.ir_version = 8
    layers = tbn_tvm.inspect(m).to_dict()["layers"]
    assert layers[0]["format"] == "tiled"
    with pytest.raises(TBNError, match="--input-shape x=D,16"):
        tbn_tvm.compile(m, "llvm")
    got = tbn_tvm.compile(m, "llvm", input_shapes={"x": [3, 16]}).run(np.ones((3, 16), np.float32))
    np.testing.assert_allclose(got, np.ones((3, 16), np.float32) @ w.T.astype(np.float32), rtol=1e-6)
