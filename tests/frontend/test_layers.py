"""Layer discovery and naming on the ONNX graph (tbn_tvm.frontend.layers)."""

from __future__ import annotations

import json

import numpy as np
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper

from tbn_tvm.frontend.layers import (
    METADATA_KEY,
    c_identifier,
    fingerprint,
    weighted_layers,
)

F = T.FLOAT


def _model(nodes, inits, metadata=None):
    g = h.make_graph(
        nodes,
        "g",
        [h.make_tensor_value_info("x", F, [1, 4])],
        [h.make_tensor_value_info("y", F, [1, 4])],
        [numpy_helper.from_array(a, n) for n, a in inits],
    )
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    if metadata is not None:
        e = m.metadata_props.add()
        e.key, e.value = METADATA_KEY, json.dumps(metadata)
    return m


W1 = np.arange(16, dtype=np.float32).reshape(4, 4)
W2 = -W1


def test_name_preference_order():
    nodes = [
        h.make_node("MatMul", ["x", "fc1.weight"], ["a"], name="node_a"),  # metadata wins
        h.make_node("MatMul", ["a", "w2"], ["b"], name="named"),  # node name
        h.make_node("MatMul", ["b", "fc3.weight"], ["c"]),  # initializer name, .weight dropped
        h.make_node("MatMul", ["c", "k"], ["y"]),  # Constant output: op_index
    ]
    const = h.make_node("Constant", [], ["k"], value=numpy_helper.from_array(W1 + 1))
    m = _model(
        [const, *nodes],
        [("fc1.weight", W1), ("w2", W2), ("fc3.weight", W1 * 2)],
        {"nodes": {"node_a": "encoder.fc1"}},
    )
    assert [layer.name for layer in weighted_layers(m)] == ["encoder.fc1", "named", "fc3", "matmul_4"]


def test_duplicate_names_made_unique_and_shared_weights():
    nodes = [
        h.make_node("MatMul", ["x", "w"], ["a"], name="same"),
        h.make_node("MatMul", ["a", "w"], ["y"], name="same"),
    ]
    layers = weighted_layers(_model(nodes, [("w", W1)]))
    assert [layer.name for layer in layers] == ["same", "same_2"]
    assert layers[0].shared_by == ("same_2",) and layers[1].shared_by == ("same",)


def test_gemm_trans_b_and_fingerprints():
    nodes = [h.make_node("Gemm", ["x", "w"], ["y"], transB=1, name="fc")]
    (layer,) = weighted_layers(_model(nodes, [("w", W1)]))
    assert layer.trans_b and np.array_equal(layer.matmul_operand, W1.T) and layer.output == "y"
    assert fingerprint(W1) != fingerprint(W1.astype(np.float64)) != fingerprint(W1.reshape(2, 8))


def test_activation_matmul_is_not_a_layer():
    nodes = [h.make_node("MatMul", ["x", "x2"], ["y"])]
    g = h.make_graph(
        nodes,
        "g",
        [h.make_tensor_value_info("x", F, [1, 4]), h.make_tensor_value_info("x2", F, [4, 4])],
        [h.make_tensor_value_info("y", F, [1, 4])],
    )
    assert weighted_layers(h.make_model(g, opset_imports=[h.make_opsetid("", 17)])) == []


def test_c_identifier_never_carries_code():
    for name in ['x\n#include "/etc/passwd"\ny', "a/b..c", "\x00", "9lives", "", "é" * 80]:
        c = c_identifier(name)
        assert c and c.replace("_", "a").isalnum() and c.isascii() and not c[0].isdigit() and len(c) <= 49
