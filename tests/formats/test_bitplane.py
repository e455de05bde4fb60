"""Bit-plane format: detection, packing and decoding against weights built from the definition
(Ivan 2022: W = α · (−1)^s · Σ b_i 2^i), and compiled numerics on llvm and QEMU."""

from __future__ import annotations

import numpy as np
import pytest
import reports
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto

from tbn_tvm.formats import detect_layer_weight
from tbn_tvm.formats.bitplane import BitplaneFormat


def bitwise_weight(rng, shape, k, per_channel=False, signmag=False):
    """α·(−1)^s·Σ_{i<k-1} b_i 2^i (sign-magnitude) or α·q with q in two's complement range."""
    if signmag:
        bits = rng.integers(0, 2, size=(*shape, k - 1))
        mag = (bits * (1 << np.arange(k - 1))).sum(-1)
        q = np.where(rng.integers(0, 2, size=shape) == 1, -mag, mag)
    else:
        q = rng.integers(-(1 << (k - 1)), 1 << (k - 1), size=shape)
    alpha = rng.uniform(0.01, 1.0, size=(shape[0],) if per_channel else (1,)).astype(np.float32)
    a = alpha.reshape(-1, *[1] * (len(shape) - 1)) if per_channel else alpha[0]
    return (q.astype(np.float32) * a).astype(np.float32), q


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(2, 10),
    cols=st.integers(2, 40),
    k=st.integers(2, 8),
    per_channel=st.booleans(),
    signmag=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_roundtrip_from_the_definition(rows, cols, k, per_channel, signmag, seed):
    rng = np.random.default_rng(seed)
    w, q = bitwise_weight(rng, (rows, cols), k, per_channel, signmag)
    fmt = BitplaneFormat.detect(w)
    assert fmt is not None
    assert np.array_equal(fmt.decode(), w)
    assert fmt.k <= k  # the grid may need fewer bits than it was drawn with
    assert fmt.storage_bits() <= fmt.k * w.size + 32 * (rows + 1) + 32 * fmt.k


def test_ulps_off_and_non_grid_weights_are_not_bitplane():
    """One ulp off the grid is within a float32 rounding (found, and said so: see
    test_float64_products_are_found_exact_to_float32_rounding); many ulps are not."""
    rng = np.random.default_rng(0)
    w, _ = bitwise_weight(rng, (16, 32), 6)
    off = w.copy()
    off[3, 5] = np.nextafter(off[3, 5], np.float32(np.inf))
    assert BitplaneFormat.detect(w) is not None and not BitplaneFormat.detect(w).rounded
    one = BitplaneFormat.detect(off)
    assert one is not None and one.rounded and one.label().endswith("exact to float32 rounding")
    off[3, 5] *= np.float32(1 + 2.0**-18)  # 32 ulps: no α makes it a rounding of α·q
    assert BitplaneFormat.detect(off) is None
    assert BitplaneFormat.detect(rng.standard_normal((8, 8)).astype(np.float32)) is None
    big = np.arange(-300, 300, dtype=np.float32).reshape(20, 30) * np.float32(0.5)  # needs 10 bits
    assert BitplaneFormat.detect(big) is None


def test_registry_prefers_the_cheapest_form():
    rng = np.random.default_rng(1)
    signs = np.where(rng.random((8, 64)) < 0.5, -1.0, 1.0).astype(np.float32) * np.float32(0.25)
    assert detect_layer_weight(signs.T.copy(), "matmul").format.kind == "binary"  # 1 bit beats 2
    w, _ = bitwise_weight(rng, (8, 64), 6)
    lw = detect_layer_weight(np.ascontiguousarray(w.T), "matmul")
    assert lw.format.label() == "bitplane k=6" and np.array_equal(lw.format.decode(), w)


def _gemm(w):
    return reports.model(
        [reports.helper.make_node("Gemm", ["x", "W"], ["y"], transB=1)],
        [("x", TensorProto.FLOAT, [1, w.shape[1]])],
        [("y", TensorProto.FLOAT, [1, w.shape[0]])],
        [("W", w)],
    )


def _conv(w):
    O, C, kh, _ = w.shape
    return reports.model(
        [reports.helper.make_node("Conv", ["x", "W"], ["y"], pads=[1, 1, 1, 1])],
        [("x", TensorProto.FLOAT, [1, C, 6, 6])],
        [("y", TensorProto.FLOAT, [1, O, 6, 6])],
        [("W", w)],
    )


@pytest.mark.parametrize("target", ["llvm", pytest.param("cortex-m4", marks=pytest.mark.qemu)])
@pytest.mark.parametrize("layer", ["gemm", "conv"])
def test_compiled_matches_onnxruntime(target, layer):
    import tbn_tvm

    rng = np.random.default_rng(2)
    if layer == "gemm":
        w, _ = bitwise_weight(rng, (24, 40), 6, per_channel=True, signmag=True)
        m, x = _gemm(w), rng.standard_normal((1, 40)).astype(np.float32)
    else:
        w, _ = bitwise_weight(rng, (8, 3, 3, 3), 4)
        m, x = _conv(w), rng.standard_normal((1, 3, 6, 6)).astype(np.float32)
    assert tbn_tvm.inspect(m).to_dict()["layers"][0]["format"] == "bitplane"
    ref = reports.ort(m, {"x": x})[0]
    got = tbn_tvm.compile(m, target).run(x)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


@pytest.mark.parametrize("per_row", [False, True])
@pytest.mark.parametrize("k", [2, 4, 7])
def test_float64_products_are_found_exact_to_float32_rounding(k, per_row):
    """``w = fl32(α·q)`` from a float64 product (numpy, BatchNorm folds): not bit-exact for any
    float32 ``α``, found with every decoded value the stored one or a float32 neighbour, and
    ``inspect`` says so."""
    rng = np.random.default_rng(k)
    q = rng.integers(-(1 << (k - 1)), 1 << (k - 1), (24, 40))
    q[:, 0] = (1 << (k - 1)) - 1  # every row reaches the top of the range
    alpha = rng.uniform(0.01, 1.0, (24, 1)) if per_row else np.float64(0.1234567891234)
    w = (q * alpha).astype(np.float32)  # float64 product, then rounded
    fmt = BitplaneFormat.detect(w)
    assert fmt is not None and fmt.k <= k
    assert np.array_equal(fmt.codes_q().reshape(q.shape) * (1 if fmt.k == k else 1), q) or fmt.k < k
    d = fmt.decode()
    assert np.all(np.abs(d.astype(np.float64) - w) <= np.spacing(np.abs(w)))
    if not np.array_equal(d, w):
        assert fmt.rounded and "exact to float32 rounding" in fmt.label()
        lw = detect_layer_weight(np.ascontiguousarray(w.T), "matmul")
        assert lw.format.fields().get("exact") == "exact to float32 rounding"
