"""Issue acceptance: a tiled conv-BN-ReLU-pool CNN on QEMU Cortex-M4.

A user's small CNN (conv-BN-ReLU-maxpool x2, two Gemm; p = 2/4/4/1), with BatchNormalization
as its own ONNX node, written twice: weights as plain initializers, and in the exporter's
tile form (tile -> Reshape [1, L] -> Expand [p, L] -> Mul by the scales -> Reshape).  Each
compressed build must

- give onnxruntime's outputs within 1e-5 relative,
- take at most half the instructions of its ``compress=False`` build (QEMU counts, measured
  at build time),
- leave no ``sqrtf`` in the generated C (BatchNorm folded at compile time),
- need an arena plus workspace of at most 1.25x the two largest adjacent activation tensors
  (the input and output of one conv, pool or Gemm)."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnx_zoo as zoo
import pytest
import reports
from onnx import TensorProto, helper, numpy_helper

pytestmark = pytest.mark.qemu

LAYERS = [  # name, weight shape, p, alpha
    ("conv1", (16, 1, 3, 3), 2, "single"),
    ("conv2", (32, 16, 3, 3), 4, "single"),
    ("fc1", (64, 32 * 7 * 7), 4, "per_copy"),
    ("fc2", (10, 64), 1, "single"),
]


def user_cnn(tile_form: bool, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    inits, nodes = [], []

    def const(name, arr, dtype=np.float32):
        inits.append(numpy_helper.from_array(np.asarray(arr, dtype), name))
        return name

    def weight(name, shape, p, alpha):
        t = zoo.make_tiled(shape, p, alpha, rng)
        if not tile_form:
            return const(f"{name}.weight", t.weight)
        tile = const(f"{name}.tile", t.tile.reshape(1, -1))
        pl = const(f"{name}.pl", [t.p, t.L], np.int64)
        nodes.append(helper.make_node("Expand", [tile, pl], [f"{name}.copies"], name=f"{name}_expand"))
        alphas = const(f"{name}.alphas", t.scales.reshape(-1, 1))
        nodes.append(
            helper.make_node("Mul", [f"{name}.copies", alphas], [f"{name}.scaled"], name=f"{name}_mul")
        )
        shape_name = const(f"{name}.shape", shape, np.int64)
        nodes.append(
            helper.make_node("Reshape", [f"{name}.scaled", shape_name], [f"{name}.weight"], name=f"{name}_w")
        )
        return f"{name}.weight"

    x = "x"
    for i, (name, shape, p, alpha) in enumerate(LAYERS[:2]):
        c = shape[0]
        nodes.append(
            helper.make_node(
                "Conv", [x, weight(name, shape, p, alpha)], [f"{name}_out"], pads=[1] * 4, name=name
            )
        )
        bn = f"bn{i + 1}"
        gamma = rng.uniform(0.5, 1.5, c) * np.where(rng.random(c) < 0.2, -1, 1)  # some negative
        args = [
            const(f"{bn}.{k}", v)
            for k, v in (
                ("g", gamma),
                ("b", rng.normal(0, 0.1, c)),
                ("m", rng.normal(0, 0.1, c)),
                ("v", rng.uniform(0.5, 2, c)),
            )
        ]
        nodes.append(helper.make_node("BatchNormalization", [f"{name}_out", *args], [f"{bn}_out"], name=bn))
        nodes.append(helper.make_node("Relu", [f"{bn}_out"], [f"relu{i + 1}"], name=f"relu{i + 1}"))
        nodes.append(
            helper.make_node(
                "MaxPool",
                [f"relu{i + 1}"],
                [f"pool{i + 1}"],
                kernel_shape=[2, 2],
                strides=[2, 2],
                name=f"pool{i + 1}",
            )
        )
        x = f"pool{i + 1}"
    nodes.append(helper.make_node("Flatten", [x], ["flat"], name="flatten"))
    (n1, s1, p1, a1), (n2, s2, p2, a2) = LAYERS[2:]
    bias = const("fc1.bias", rng.normal(0, 0.1, 64))
    nodes.append(
        helper.make_node("Gemm", ["flat", weight(n1, s1, p1, a1), bias], ["fc1_out"], transB=1, name="fc1")
    )
    nodes.append(helper.make_node("Relu", ["fc1_out"], ["relu3"], name="relu3"))
    nodes.append(helper.make_node("Gemm", ["relu3", weight(n2, s2, p2, a2)], ["y"], transB=1, name="fc2"))
    graph = helper.make_graph(
        nodes,
        "user_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 28, 28])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def two_largest_adjacent_bytes(model: onnx.ModelProto) -> int:
    """max over the conv, pool and Gemm nodes of (input + output activation bytes), float32."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    shapes = {
        v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    }
    best = 0
    for node in model.graph.node:
        if node.op_type in ("Conv", "MaxPool", "Gemm"):
            best = max(best, 4 * (math.prod(shapes[node.input[0]]) + math.prod(shapes[node.output[0]])))
    return best


@pytest.fixture(scope="module", params=[False, True], ids=["bn_node", "tile_expand_form"])
def builds(request, tmp_path_factory):
    import tbn_tvm

    model = user_cnn(tile_form=request.param)
    compact = tbn_tvm.compile(model, "cortex-m4")
    dense = tbn_tvm.compile(model, "cortex-m4", compress=False)
    out = compact.save(tmp_path_factory.mktemp("cnn") / "out")
    return model, compact, dense, out


def test_layers_are_compressed(builds):
    _, compact, _, _ = builds
    labels = {layer["name"]: " ".join(layer["label"].split()[:2]) for layer in compact.report()["layers"]}
    assert labels == {"conv1": "tiled p=2", "conv2": "tiled p=4", "fc1": "tiled p=4", "fc2": "binary"}, labels


def test_outputs_match_onnxruntime(builds):
    model, compact, _, _ = builds
    x = np.random.default_rng(1).standard_normal((3, 1, 1, 28, 28)).astype(np.float32)
    ref = np.stack([reports.ort(model, {"x": xi})[0] for xi in x])
    got = compact.run(x)
    np.testing.assert_allclose(got.reshape(ref.shape), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_compressed_takes_at_most_half_the_dense_instructions(builds):
    _, compact, dense, _ = builds
    ours, theirs = (b.report()["measured"]["instructions_per_inference"] for b in (compact, dense))
    assert ours <= 0.5 * theirs, (ours, theirs)


def test_batchnorm_is_folded_out_of_the_generated_c(builds):
    _, _, _, out = builds
    sources = sorted((out / "lib").glob("*.c"))
    assert sources
    for src in sources:
        assert "sqrtf" not in src.read_text(), src.name


def test_arena_is_within_a_quarter_of_the_two_largest_adjacent_activations(builds):
    model, compact, _, _ = builds
    report = compact.report()
    limit = 1.25 * two_largest_adjacent_bytes(model)
    assert report["arena_bytes"] + report.get("workspace_bytes", 0) <= limit, (report["arena_bytes"], limit)
