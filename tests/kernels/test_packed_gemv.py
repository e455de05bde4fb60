"""The host's packed-field bit-plane GEMV (:func:`tbn_tvm.kernels.bitplane_lut.packed_gemv_te`):
the bit-plane integers stored as 2/4/8-bit two's-complement fields, rows in vector lanes.

* :func:`~tbn_tvm.kernels.bitplane_lut.pack_fields` against a numpy reading of its documented
  layout (each word's field ``j`` sign-extended), over field widths, row counts that no vector
  divides and rows that end inside a word.
* Whole models against onnxruntime on the dense weight and against ``α·(x @ q.T)`` in float64,
  for k = 1..8 (both encodings: numpy-built two's-complement and sign-magnitude integers),
  one or per-row α, N that is no multiple of 16, K with inputs past the last whole word, 1..32
  input rows (13: no block of 4 divides them), a 3-D input, a fused bias and ReLU.
* NaN and ±inf inputs reach the outputs the direct product gives them (each input is multiplied
  by its integer once; padding multiplies nothing).
"""

from __future__ import annotations

import numpy as np
import pytest
import reports
from onnx import TensorProto as T
from onnx import helper as h

tbn_tvm = pytest.importorskip("tbn_tvm")
from tbn_tvm.kernels import bitplane_lut  # noqa: E402


def _read_fields(packed: np.ndarray, f: int, N: int, K: int) -> np.ndarray:
    """``q[N, K]`` from :func:`pack_fields`'s documented layout, field by field."""
    per = 32 // f
    words = packed.view(np.uint32).astype(np.int64)  # [W, N']
    q = np.zeros((N, K), np.int64)
    for k in range(K):
        u = (words[k // per, :N] >> (f * (k % per))) & ((1 << f) - 1)
        q[:, k] = np.where(u >= 1 << (f - 1), u - (1 << f), u)
    return q


@pytest.mark.parametrize("f", [2, 4, 8])
@pytest.mark.parametrize("N,K", [(1, 1), (5, 3), (16, 16), (17, 33), (40, 37), (3, 200)])
def test_pack_fields_layout(f, N, K):
    rng = np.random.default_rng(N * 1000 + K + f)
    q = rng.integers(-(1 << (f - 1)), 1 << (f - 1), (N, K))
    q.flat[0] = -(1 << (f - 1))
    packed = bitplane_lut.pack_fields(q, f)
    per = 32 // f
    assert packed.dtype == np.int32
    assert packed.shape == (
        -(-K // per),
        -(-N // bitplane_lut.PACKED_ROW_ALIGN) * bitplane_lut.PACKED_ROW_ALIGN,
    )
    np.testing.assert_array_equal(_read_fields(packed, f, N, K), q)
    # the padding (rows past N, fields past K) reads as zero
    assert not packed.view(np.uint32)[:, N:].any()
    if K % per:
        assert not (packed.view(np.uint32)[-1, :N].astype(np.int64) >> (f * (K % per))).any()


def test_pack_fields_refuses_what_does_not_fit():
    with pytest.raises(ValueError, match="4-bit fields"):
        bitplane_lut.pack_fields(np.array([[8]]), 4)
    with pytest.raises(ValueError, match="4-bit fields"):
        bitplane_lut.pack_fields(np.array([[-9]]), 4)
    with pytest.raises(ValueError, match="2-D"):
        bitplane_lut.pack_fields(np.zeros(4, np.int64), 4)


def test_field_bits():
    assert [bitplane_lut.field_bits(k) for k in range(1, 10)] == [2, 2, 4, 4, 8, 8, 8, 8, None]


def _gemm(rng, N, K, k, per_row, lead, sign_magnitude=False, epilogue=False):
    lo = -((1 << (k - 1)) - 1) if sign_magnitude else -(1 << (k - 1))
    hi = (1 << (k - 1)) - 1
    q = rng.integers(lo, hi + 1, (N, K))
    q.flat[: min(q.size, 2)] = [lo, hi][: min(q.size, 2)]
    alpha = rng.uniform(0.01, 1.0, (N, 1) if per_row else (1, 1)).astype(np.float32)
    w = (q.astype(np.float32) * alpha).astype(np.float32)
    nodes = [h.make_node("MatMul", ["x", "W"], ["z" if epilogue else "y"])]
    inits = [("W", np.ascontiguousarray(w.T))]
    if epilogue:
        nodes += [h.make_node("Add", ["z", "b"], ["zb"]), h.make_node("Relu", ["zb"], ["y"])]
        inits.append(("b", rng.standard_normal(N).astype(np.float32)))
    m = reports.model(nodes, [("x", T.FLOAT, [*lead, K])], [("y", T.FLOAT, [*lead, N])], inits)
    x = rng.standard_normal((*lead, K)).astype(np.float32)
    ref = (x.astype(np.float64) @ q.T.astype(np.float64)) * alpha.reshape(-1).astype(np.float64)
    if epilogue:
        ref = np.maximum(ref + inits[1][1], 0)
    return m, x, ref


CASES = {
    # name: (N, K, k, per_row α, input shape's leading dims)
    "k4_128x512": (128, 512, 4, True, (1,)),
    "k4_rows_not_16": (40, 37, 4, True, (1,)),
    "k4_tail_only": (20, 5, 4, False, (1,)),
    "k3_three_rows": (33, 100, 3, True, (3,)),
    "k2_single_alpha": (16, 33, 2, False, (1,)),
    "k1": (10, 70, 1, True, (1,)),
    "k5_seven_rows": (24, 64, 5, True, (7,)),
    "k8": (9, 41, 8, True, (2,)),
    "k4_3d_input": (48, 96, 4, True, (2, 3)),
    "k4_one_row_out": (1, 64, 4, True, (1,)),
    "k4_32_rows_tail": (64, 100, 4, True, (32,)),
    "k2_odd_rows": (48, 64, 2, True, (13,)),
    # input rows over several leading axes whose blocks of rows would straddle two of them
    "k4_3x2_input": (16, 32, 4, True, (3, 2)),
    "k4_2x7_input": (24, 40, 4, True, (2, 7)),
    "k4_2x2x3_input": (16, 33, 4, False, (2, 2, 3)),
    "k3_3x2x1_input": (20, 64, 3, True, (3, 2, 1)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_packed_gemv_matches_onnxruntime(case):
    N, K, k, per_row, lead = CASES[case]
    rng = np.random.default_rng(sorted(CASES).index(case))
    m, x, ref = _gemm(rng, N, K, k, per_row, lead)
    compiled = tbn_tvm.compile(m, "llvm")
    layer = compiled.report()["layers"][0]
    assert layer["label"].startswith("bitplane"), layer
    assert layer["kernel"] == bitplane_lut.KIND_PACKED, layer
    got = compiled.run(x).reshape(ref.shape)
    scale = np.abs(ref).max()
    np.testing.assert_allclose(got, reports.ort(m, {"x": x})[0], rtol=1e-5, atol=1e-5 * scale)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize("k", [2, 4, 7])
def test_packed_gemv_sign_magnitude_and_epilogue(k):
    """Sign-magnitude integers (no −2^(k−1)) and a fused bias and ReLU."""
    rng = np.random.default_rng(k)
    m, x, ref = _gemm(rng, 30, 50, k, True, (1,), sign_magnitude=True, epilogue=True)
    compiled = tbn_tvm.compile(m, "llvm")
    kinds = [layer.get("kernel") for layer in compiled.report()["layers"]]
    assert bitplane_lut.KIND_PACKED in kinds, kinds
    got = compiled.run(x).reshape(ref.shape)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_many_rows_take_the_decoded_gemm():
    """Above :data:`PACKED_MAX_ROWS` input rows the form ``auto`` decodes the weight once per
    call (a GEMM), and is still right."""
    rows = bitplane_lut.PACKED_MAX_ROWS + 1
    m, x, ref = _gemm(np.random.default_rng(5), 32, 40, 4, True, (rows,))
    compiled = tbn_tvm.compile(m, "llvm")
    assert compiled.report()["layers"][0]["kernel"] == bitplane_lut.KIND_DECODED
    np.testing.assert_allclose(
        compiled.run(x).reshape(ref.shape), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max()
    )


def test_packed_gemv_non_finite_inputs_follow_ieee():
    rng = np.random.default_rng(11)
    m, x, _ = _gemm(rng, 24, 45, 4, True, (2,))
    x[0, [3, 17, 44]] = [np.nan, np.inf, -np.inf]
    x[1, 44] = np.inf  # the last input: in the tail block
    ref = reports.ort(m, {"x": x})[0]
    got = tbn_tvm.compile(m, "llvm").run(x).reshape(ref.shape)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(ref))
    np.testing.assert_array_equal(np.sign(got[np.isinf(ref)]), np.sign(ref[np.isinf(ref)]))
    assert np.isinf(ref[1]).any()  # the second row: ±inf where the weight is nonzero, 0·inf NaN elsewhere


@pytest.mark.parametrize("k,f", [(4, 4), (3, 4), (2, 2), (8, 8)])
def test_packed_gemv_reports_its_layout(k, f):
    """The layer's ``built_bytes`` are the packed fields and scales the build holds (``f`` bits
    per weight: as many bytes as the planes where ``f = k``, the rounding up to a field width
    where not), and the model's built constants add up to them."""
    rng = np.random.default_rng(k)
    N, K = 128, 512
    m, _, _ = _gemm(rng, N, K, k, True, (1,))
    report = tbn_tvm.compile(m, "llvm").report()
    layer = report["layers"][0]
    assert layer["kernel"] == bitplane_lut.KIND_PACKED
    assert layer["built_bytes"] == N * K * f // 8 + 4 * N
    assert report["total"]["built_constant_bytes"] == layer["built_bytes"]
    assert f"packed {f}-bit fields" in layer["kernel_choice"]
    if f == k:  # the planes' bytes (plus their one end word)
        assert layer["bytes"] == layer["built_bytes"] + 4
