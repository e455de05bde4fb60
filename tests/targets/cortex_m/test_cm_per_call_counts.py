"""Per-layer instruction counts on QEMU are per call site and add up to the measured total
(issue 20, item 2).

The model has three fully connected layers of one shape, each followed by a LayerNorm of one
shape: gcc folds the three identical layer kernels into one body behind stubs (the stubs branch
into the first body), and the three LayerNorm calls are one kernel called three times.  Before the
fix the first layer got every instruction of the shared body and the others ~1, and each
LayerNorm call was listed with the total of all three."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import tbn_tvm

pytestmark = pytest.mark.qemu

WIDTH = 32
LAYERS = ("fc1", "fc2", "fc3")


def _model(binary: bool) -> onnx.ModelProto:
    rng = np.random.default_rng(7)
    nodes, inits, x = [], [], "x"
    for i, name in enumerate(LAYERS):
        w = rng.standard_normal((WIDTH, WIDTH)).astype(np.float32)
        if binary:  # ±α: a compact layer; the three kernels are the same code
            w = np.where(w > 0, 0.25, -0.25).astype(np.float32)
        inits += [
            numpy_helper.from_array(w, f"{name}.weight"),
            numpy_helper.from_array(rng.standard_normal(WIDTH).astype(np.float32), f"{name}.bias"),
            numpy_helper.from_array(
                (1 + 0.1 * rng.standard_normal(WIDTH)).astype(np.float32), f"ln{i}.scale"
            ),
            numpy_helper.from_array((0.1 * rng.standard_normal(WIDTH)).astype(np.float32), f"ln{i}.bias"),
        ]
        nodes += [
            helper.make_node("Gemm", [x, f"{name}.weight", f"{name}.bias"], [f"h{i}"], name=name, transB=1),
            helper.make_node(
                "LayerNormalization",
                [f"h{i}", f"ln{i}.scale", f"ln{i}.bias"],
                [f"n{i}"],
                name=f"ln{i}",
                axis=-1,
            ),
        ]
        x = f"n{i}"
    nodes[-1].output[0] = "y"
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, WIDTH])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _check(steps: list[dict], total: int, after_last_call, kernel_key: str) -> None:
    counted = sum(s["instructions"] for s in steps)
    assert abs(counted - total) <= 0.01 * total, (counted, total)
    assert counted + after_last_call == total  # exactly, in fact: every instruction is in one call
    assert all(s[kernel_key] > 0 for s in steps), steps
    layers = [s for s in steps if s["layers"]]
    assert [s["layers"] for s in layers] == [[n] for n in LAYERS]
    # the same work costs the same at every call site: none gets the others' instructions
    for group in (layers, [s for s in steps if s["kernel"].startswith("layer_norm")]):
        counts = [s["instructions"] for s in group]
        assert len(counts) == 3 and max(counts) < 1.1 * min(counts), counts
        assert min(s[kernel_key] for s in group) > 100, group


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "dense"])
def test_per_call_counts_add_up_to_the_measured_total(binary, tmp_path):
    proto = _model(binary)
    model = tbn_tvm.compile(proto, "cortex-m4", compress=binary)
    report = model.report()
    assert report["compressed_layers"] == (3 if binary else 0)
    kernels = [s["kernel"] for s in report["steps"]]
    assert sum(k.startswith("layer_norm") for k in kernels) == 3 and len(set(kernels)) == len(kernels) - 2
    measured = report["measured"]
    _check(
        report["steps"],
        measured["instructions_per_inference"],
        measured["instructions_after_last_call"],
        "kernel_instructions",
    )
    for layer in report["layers"]:  # a layer's figure is its call site's
        (step,) = [s for s in report["steps"] if layer["name"] in s["layers"]]
        assert layer["instructions"] == step["instructions"]

    x = np.random.default_rng(3).standard_normal((2, 1, WIDTH)).astype(np.float32)
    y = model.run(x, per_layer=True)
    stats = model.last_run_stats
    _check(
        stats["instructions_per_layer"],
        stats["instructions_per_inference"],
        stats["instructions_after_last_call"],
        "kernel_instructions",
    )
    import onnxruntime as ort

    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    want = np.stack([sess.run(None, {"x": xi})[0] for xi in x])
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4)
