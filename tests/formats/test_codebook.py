"""SNN codebook format: detection against weights built from the paper's definition (each k×k
sign kernel one of 2^τ codewords, one scale per output channel), and the look-up conv compiled
on llvm and QEMU against onnxruntime."""

from __future__ import annotations

import math

import numpy as np
import pytest
import reports
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto

from tbn_tvm.formats import detect_layer_weight
from tbn_tvm.formats.codebook import CodebookFormat


def snn_weight(rng, O, I, k, n_codewords, groups=1):
    # distinct codewords (as SNN's duplicate replacement keeps them), drawn without replacement
    # from the 2^(k*k) sign patterns: uniform over the sets, as redrawing until distinct was (that
    # took ~10^6 tries for 16 of the 16 2x2 patterns: minutes)
    codes = rng.choice(2 ** (k * k), size=n_codewords, replace=False)
    book = np.where((codes[:, None] >> np.arange(k * k)) & 1, 1.0, -1.0)
    idx = rng.integers(0, n_codewords, size=(O, I // groups))
    idx.flat[:n_codewords] = np.arange(min(n_codewords, idx.size))  # every codeword used
    alpha = rng.uniform(0.05, 1.0, size=(O, 1, 1, 1))
    return (book[idx].reshape(O, I // groups, k, k) * alpha).astype(np.float32)


@settings(max_examples=40, deadline=None)
@given(
    O=st.integers(2, 24),
    I=st.integers(1, 12),
    k=st.sampled_from([1, 2, 3]),
    n=st.integers(1, 40),
    seed=st.integers(0, 10_000),
)
def test_detect_roundtrip(O, I, k, n, seed):
    rng = np.random.default_rng(seed)
    n = min(n, 2 ** (k * k), O * I)
    w = snn_weight(rng, O, I, k, n)
    fmt = CodebookFormat.detect(w, "conv")
    tau = max(1, math.ceil(math.log2(n)))
    if tau >= k * k:
        assert fmt is None
        return
    assert fmt is not None and fmt.tau == tau and fmt.num_codewords == n
    assert np.array_equal(fmt.decode(), w)


def test_one_kernel_too_many_is_not_tau():
    rng = np.random.default_rng(0)
    w = snn_weight(rng, 64, 16, 3, 32)
    assert CodebookFormat.detect(w, "conv").tau == 5
    extra = w.copy()
    # a 33rd distinct kernel: no longer codebook τ=5
    fresh = np.where(rng.random(9) < 0.5, -1.0, 1.0)
    book = {tuple(np.sign(extra[o, i].reshape(-1))) for o in range(64) for i in range(16)}
    while tuple(fresh) in book:
        fresh = np.where(rng.random(9) < 0.5, -1.0, 1.0)
    extra[7, 3] = (fresh.reshape(3, 3) * np.abs(extra[7, 3])).astype(np.float32)
    fmt = CodebookFormat.detect(extra, "conv")
    assert fmt is not None and fmt.tau == 6 and fmt.num_codewords == 33
    off = w.copy()
    off[0, 0, 0, 0] *= np.float32(1.0001)  # magnitude off: no per-channel scale
    assert CodebookFormat.detect(off, "conv") is None
    assert CodebookFormat.detect(w.reshape(64, 144), "matmul") is None


def test_registry_picks_codebook_for_wide_snn_layers():
    rng = np.random.default_rng(1)
    lw = detect_layer_weight(snn_weight(rng, 64, 32, 3, 32), "conv")
    assert lw.format.label() == "codebook τ=5"
    assert lw.format.storage_bits() < 64 * 32 * 9  # below 1 bit per weight
    assert lw.format.storage_bits() / lw.format.n < 0.7


def _conv_model(w, hw=8, pads=(1, 1, 1, 1), group=1):
    O, Ig, kh, kw = w.shape
    out = hw + pads[0] + pads[2] - kh + 1
    return reports.model(
        [reports.helper.make_node("Conv", ["x", "W"], ["y"], pads=list(pads), group=group)],
        [("x", TensorProto.FLOAT, [1, Ig * group, hw, hw])],
        [("y", TensorProto.FLOAT, [1, O, out, out])],
        [("W", w)],
    )


CASES = {
    "wide_3x3_lut": lambda rng: snn_weight(rng, 64, 16, 3, 16),
    "narrow_3x3_direct": lambda rng: snn_weight(rng, 8, 4, 3, 4),
    "pointwise": lambda rng: snn_weight(rng, 32, 16, 1, 1),
    # as many codewords as filters: the codeword convolution on an MCU (rows of 45 and 20 bits
    # for the sign-row kernel); 5x5 kernels (25-bit codewords, segments of 3 and 2 taps)
    "odd_3x3": lambda rng: snn_weight(rng, 16, 5, 3, 16),
    "odd_2x2": lambda rng: snn_weight(rng, 12, 5, 2, 12),
    "kernel_5x5": lambda rng: snn_weight(rng, 8, 3, 5, 8),
    # few filters, 64 codewords (each used once): the filters as sign rows on an MCU (rows of
    # 576 bits, codewords straddling the 32-bit words)
    "rows_many_codewords": lambda rng: snn_weight(rng, 4, 64, 3, 64),
}


@pytest.mark.parametrize("target", ["llvm", pytest.param("cortex-m4", marks=pytest.mark.qemu)])
@pytest.mark.parametrize("case", sorted(CASES))
def test_compiled_matches_onnxruntime(target, case):
    import tbn_tvm

    rng = np.random.default_rng(3)
    w = CASES[case](rng)
    m = _conv_model(w)
    x = rng.standard_normal((1, w.shape[1], 8, 8)).astype(np.float32)
    ref = reports.ort(m, {"x": x})[0]
    compiled = tbn_tvm.compile(m, target)
    if target == "cortex-m4" and compiled.report()["layers"][0]["label"].startswith("codebook"):
        kernels = [step["kernel"] for step in compiled.report()["steps"]]
        want = "rows_conv_lut" if case.startswith("rows") else "codeword_conv"
        assert any(k.endswith(want) for k in kernels), kernels
    np.testing.assert_allclose(compiled.run(x), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
