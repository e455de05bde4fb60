"""The signs-in-code convolution (tbn_tvm.kernels.small_k, issue 22) on QEMU against
onnxruntime: the first conv of an image model (1 or 3 input channels, K = 9 or 27), with
padding, stride, tiles whose scales are negative, a fused BatchNorm + ReLU; and it must cost
fewer instructions than the same layer built dense (``compress=False``)."""

from __future__ import annotations

import numpy as np
import pytest
import reports
from onnx import TensorProto as T
from onnx import helper as h

tbn_tvm = pytest.importorskip("tbn_tvm.api")
pytestmark = pytest.mark.qemu


def _weight(shape, p, rng, negative: bool) -> np.ndarray:
    n = int(np.prod(shape))
    L = n // p
    tile = np.where(rng.random(L) < 0.5, -1.0, 1.0)
    alpha = rng.uniform(0.1, 1.0, p) * (np.where(rng.random(p) < 0.5, -1.0, 1.0) if negative else 1.0)
    return (np.tile(tile, p) * np.repeat(alpha, L)).astype(np.float32).reshape(shape)


def _first_conv(w, hw, stride, pads, bn: bool, rng) -> object:
    o, c = w.shape[:2]
    k = w.shape[2]
    oh = (hw + pads[0] + pads[2] - k) // stride + 1
    ow = (hw + pads[1] + pads[3] - k) // stride + 1
    nodes = [h.make_node("Conv", ["x", "W"], ["c"], pads=list(pads), strides=[stride, stride], name="stem")]
    inits = [("W", w)]
    if bn:
        nodes += [
            h.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["n"]),
            h.make_node("Relu", ["n"], ["y"]),
        ]
        inits += [
            ("g", rng.uniform(0.5, 2.0, o).astype(np.float32)),
            ("b", rng.standard_normal(o).astype(np.float32)),
            ("m", rng.standard_normal(o).astype(np.float32) * 0.1),
            ("v", rng.uniform(0.5, 2.0, o).astype(np.float32)),
        ]
    else:
        nodes.append(h.make_node("Identity", ["c"], ["y"]))
    return reports.model(nodes, [("x", T.FLOAT, [1, c, hw, hw])], [("y", T.FLOAT, [1, o, oh, ow])], inits)


CASES = {  # (O, C, k), p, input side, stride, pads, negative scales, BatchNorm + ReLU
    "mnist_stem_1to16": ((16, 1, 3, 3), 1, 28, 1, (1, 1, 1, 1), False, False),
    "rgb_stem_stride2_bn": ((16, 3, 3, 3), 4, 17, 2, (1, 1, 1, 1), True, True),
    "rgb_stem_asym_pads": ((8, 3, 3, 3), 2, 11, 1, (0, 1, 2, 0), True, False),
    "odd_tile_5x5": ((12, 1, 5, 5), 3, 13, 1, (2, 2, 2, 2), True, True),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_signs_in_code_matches_onnxruntime_and_beats_dense(name):
    shape, p, hw, stride, pads, negative, bn = CASES[name]
    rng = np.random.default_rng(sum(map(ord, name)))
    m = _first_conv(_weight(shape, p, rng, negative), hw, stride, pads, bn, rng)
    compiled = tbn_tvm.compile(m, "cortex-m4")
    (layer,) = compiled.report()["layers"]
    assert layer["kernel"] == "rows_conv_signs", layer
    assert "signs in the code" in layer["kernel_choice"]
    x = rng.standard_normal((1, shape[1], hw, hw)).astype(np.float32)
    ref = reports.ort(m, {"x": x})[0]
    np.testing.assert_allclose(compiled.run(x), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    dense = tbn_tvm.compile(m, "cortex-m4", compress=False)
    mine = compiled.report()["measured"]["instructions_per_inference"]
    theirs = dense.report()["measured"]["instructions_per_inference"]
    assert mine < theirs, (mine, theirs)


def test_two_signs_convolutions_in_a_row_stay_two_kernels():
    """Two signs-in-code convs back to back (a ResNet 16/32/64's stem and block1.conv1, K = 27
    and 144): each its own kernel (``op_pattern`` out-element-wise fusable, as a convolution),
    not fused as injective ops into one kernel whose per-position schedule fails (its fallback
    inlined the sums and did not finish); exact on QEMU."""
    rng = np.random.default_rng(3)
    w1, w2 = _weight((16, 3, 3, 3), 1, rng, False), _weight((16, 16, 3, 3), 4, rng, False)
    nodes = [
        h.make_node("Conv", ["x", "W1"], ["c1"], pads=[1] * 4, name="stem"),
        h.make_node("Relu", ["c1"], ["r1"]),
        h.make_node("Conv", ["r1", "W2"], ["c2"], pads=[1] * 4, name="conv1"),
        h.make_node("Add", ["c2", "r1"], ["y"]),
    ]
    model = reports.model(
        nodes, [("x", T.FLOAT, [1, 3, 16, 16])], [("y", T.FLOAT, [1, 16, 16, 16])], [("W1", w1), ("W2", w2)]
    )
    compiled = tbn_tvm.compile(model, "cortex-m4")
    rep = compiled.report()
    kinds = {la["name"]: la.get("kernel") for la in rep["layers"]}
    assert kinds == {"stem": "rows_conv_signs", "conv1": "rows_conv_signs"}, kinds
    assert not any({"stem", "conv1"} <= set(s["layers"]) for s in rep["steps"]), rep["steps"]
    x = rng.standard_normal((1, 3, 16, 16)).astype(np.float32)
    (ref,) = reports.ort(model, {"x": x})
    np.testing.assert_allclose(compiled.run(x), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
