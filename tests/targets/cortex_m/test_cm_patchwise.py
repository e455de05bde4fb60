"""Patch-wise execution (issue 22, MCUNetV2's patch-based inference): a CNN whose activations do
not fit ``--ram-size`` layer by layer runs its leading stage tile by tile, within the RAM, and
gives onnxruntime's outputs (1e-5 relative); the manifest, ``compile`` and ``inspect OUT_DIR``
say which layers run patch-wise, the tiles, the arena and the recompute overhead measured
against the layer-by-layer build; a RAM no plan fits is one error line."""

from __future__ import annotations

import itertools
import json

import numpy as np
import onnx
import onnx_zoo as zoo
import pytest
import reports
from onnx import TensorProto, helper, numpy_helper
from test_cli import cli, ok, user_error


# ------------------------------------------------------------------------------ regions
@pytest.mark.parametrize("k, s, d, p", [(3, 1, 1, 1), (3, 2, 1, 1), (3, 1, 2, 2), (2, 2, 1, 0), (5, 3, 1, 2)])
def test_tile_regions_read_what_the_whole_layer_reads(k, s, d, p):
    """For every output row range of a conv/pool (input length h), the input rows Node.need
    gives the tile are the span of the whole layer's windows for those outputs, clipped to the
    map, its padding is the part of the span outside the map, and the tile's layer then gives
    exactly the range's outputs (brute force over the windows)."""
    from tbn_tvm.targets.clib.patchwise import Node

    for h in (5, 7, 12):
        out_len = (h + 2 * p - ((k - 1) * d + 1)) // s + 1
        node = Node("n", None, None, "pool", ["x"], (1, 1, out_len, 1), (k, 1), (s, 1), (d, 1), (p, 0, p, 0))
        for a, b in itertools.combinations(range(out_len + 1), 2):
            rows = {o * s - p + i * d for o in range(a, b) for i in range(k)}
            lo, hi = min(rows), max(rows) + 1  # the windows' span, padding included
            (r0, r1, _, _), (pt, _, pb, _) = node.need((a, b, 0, 1), (h, 1))
            assert (r0, r1) == (max(lo, 0), min(hi, h)), (h, a, b)
            assert all(r0 <= r < r1 for r in rows if 0 <= r < h)
            assert (pt, pb) == (max(0, -lo), max(0, hi - h))
            assert (r1 - r0 + pt + pb - ((k - 1) * d + 1)) // s + 1 == b - a


# ------------------------------------------------------------------------------ on QEMU
def odd_cnn(seed: int = 0) -> onnx.ModelProto:
    """3x13x11 input: conv (pads 1) + ReLU; dilated conv (dilation 2) + residual add; a stride-2
    conv with asymmetric pads (top 1, right 1) + ReLU; MaxPool 3x3 pads 1; AveragePool 2x2
    counting its bottom/right padding; global average pool; a binary Gemm."""
    rng = np.random.default_rng(seed)
    inits, nodes = [], []

    def const(name, arr):
        inits.append(numpy_helper.from_array(np.asarray(arr, np.float32), name))
        return name

    def conv(x, name, out, shape, p, **attrs):
        w = const(f"{name}.w", zoo.tiled_weight(shape, p, "per_copy", rng))
        b = const(f"{name}.b", rng.normal(0, 0.1, shape[0]))
        nodes.append(helper.make_node("Conv", [x, w, b], [out], name=name, **attrs))

    def node(op, ins, out, **attrs):
        nodes.append(helper.make_node(op, ins, [out], name=f"{op.lower()}_{out}", **attrs))

    conv("x", "conv_a", "a0", (8, 3, 3, 3), 2, pads=[1, 1, 1, 1])
    node("Relu", ["a0"], "A")
    conv("A", "conv_b", "b0", (8, 8, 3, 3), 4, pads=[2, 2, 2, 2], dilations=[2, 2])
    node("Add", ["b0", "A"], "B")
    conv("B", "conv_c", "c0", (16, 8, 3, 3), 4, pads=[1, 0, 0, 1], strides=[2, 2])
    node("Relu", ["c0"], "C")
    node("MaxPool", ["C"], "D", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    node("AveragePool", ["D"], "E", kernel_shape=[2, 2], pads=[0, 0, 1, 1], count_include_pad=1)
    node("GlobalAveragePool", ["E"], "g")
    node("Flatten", ["g"], "f")
    nodes.append(
        helper.make_node(
            "Gemm",
            ["f", const("fc.w", zoo.tiled_weight((4, 16), 1, "single", rng))],
            ["y"],
            transB=1,
            name="fc",
        )
    )
    graph = helper.make_graph(
        nodes,
        "odd_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 13, 11])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _exact(model, build, samples: int = 3):
    name = model.graph.input[0].name
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(7).standard_normal((samples, *shape)).astype(np.float32)
    ref = np.stack([reports.ort(model, {name: xi})[0] for xi in x])
    got = build.run(x)
    np.testing.assert_allclose(got.reshape(ref.shape), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


@pytest.mark.qemu
def test_odd_shapes_run_patch_wise_exactly():
    """12 KiB of RAM: the layer-by-layer build needs ~15 KiB; the stage (strided, dilated,
    asymmetric padding, residual, pools) runs over tiles whose size divides neither 6 nor 5."""
    import tbn_tvm

    model = odd_cnn()
    build = tbn_tvm.compile(model, "cortex-m4", ram_size="12K")
    try:
        rep = build.report()
        patch = rep["patchwise"]
        assert rep["ram_bytes"] <= 12 * 1024
        assert patch["layers"] == ["conv_a", "conv_b", "conv_c"] and patch["tiles"] > 1
        assert patch["arena_bytes"] == rep["arena_bytes"] < patch["layer_by_layer_arena_bytes"]
        measured = rep["measured"]["instructions_per_inference"]
        assert patch["recompute_overhead_instructions"] == measured - patch["layer_by_layer_instructions"] > 0
        _exact(model, build)
    finally:
        build.close()


@pytest.mark.qemu
def test_conv_bn_cnn_fits_24k_and_says_so(tmp_path):
    """Issue 22's acceptance: the conv-BN-ReLU-pool CNN 1x28x28 (68,408 B of RAM layer by layer)
    in at most 24 KiB with float32 activations, exact; compile and inspect name the stage."""
    from test_cm_cnn_acceptance import user_cnn

    import tbn_tvm

    model = user_cnn(tile_form=False)
    path = tmp_path / "cnn.onnx"
    onnx.save(model, path)
    out = tmp_path / "out"
    proc = ok(cli("compile", path, "--target", "cortex-m4", "--ram-size", "24K", "-o", out))
    assert "patch-wise: conv1, conv2 run over" in proc.stdout, proc.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["ram_bytes"] <= 24 * 1024, manifest["ram_bytes"]
    assert manifest["patchwise"]["recompute_overhead_instructions"] > 0
    assert "patch-wise: conv1, conv2" in ok(cli("inspect", out)).stdout
    _exact(model, tbn_tvm.load(out))


@pytest.mark.qemu
def test_ram_no_plan_fits_is_one_error_line(tmp_path):
    path = tmp_path / "odd.onnx"
    onnx.save(odd_cnn(), path)
    proc = cli("compile", path, "--target", "cortex-m4", "--ram-size", "8K", "-o", tmp_path / "out")
    user_error(proc, "activations", "patch-wise")
    assert not (tmp_path / "out").exists()
