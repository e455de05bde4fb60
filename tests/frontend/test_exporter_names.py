"""Layer names from a plain ``torch.onnx.export`` (issue 24): its node names are made up
(``node_Conv_12``, ``node_linear_1``), its weight initializers carry the module's name
(``features.0.weight``): the layer is named after the initializer.  A node name of the user's
own, or a weight the exporter named itself (``onnx::Conv_19``, ``val_3``), keeps the node name."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import tbn_tvm
from tbn_tvm.frontend.layers import weighted_layers


def _chain(pairs: list[tuple[str, str]]) -> onnx.ModelProto:
    """x[1,8] -> Gemm (node name, weight name) -> ... -> y[1,8]."""
    rng = np.random.default_rng(0)
    nodes, inits, prev = [], [], "x"
    for i, (node_name, weight_name) in enumerate(pairs):
        inits.append(numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), weight_name))
        out = "y" if i == len(pairs) - 1 else f"h{i}"
        nodes.append(helper.make_node("Gemm", [prev, weight_name], [out], name=node_name, transB=1))
        prev = out
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_generated_node_names_give_way_to_the_weights_name():
    model = _chain(
        [
            ("node_Gemm_154", "features.0.weight"),  # torch.onnx.export (dynamo)
            ("node_linear_1", "head.weight"),
            ("Gemm_3", "classifier.weight"),  # an op-type name with a number
            ("fc4", "fc4_w.weight"),  # the user's own node name
            ("node_Gemm_9", "onnx::Gemm_19"),  # both made up: the node's kept
            ("", "val_3"),
        ]
    )
    assert [layer.name for layer in weighted_layers(model)] == [
        "features.0",
        "head",
        "classifier",
        "fc4",
        "node_Gemm_9",
        "gemm_5",
    ]


def test_plain_torch_onnx_export_is_named_after_the_modules(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxscript")
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten())
            self.head = nn.Linear(8 * 8 * 8, 10)

        def forward(self, x):
            return self.head(self.features(x))

    path = tmp_path / "plain.onnx"
    torch.onnx.export(Net().eval(), (torch.zeros(1, 1, 8, 8),), str(path), dynamo=True)
    nodes = [n.name for n in onnx.load(str(path)).graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    assert all(n.startswith("node_") for n in nodes), nodes  # what the exporter names them
    assert [layer["name"] for layer in tbn_tvm.inspect(path).to_dict()["layers"]] == ["features.0", "head"]
    report = tbn_tvm.compile(path, "llvm").report()
    assert [layer["name"] for layer in report["layers"]] == ["features.0", "head"]
