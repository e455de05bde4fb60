"""Row reuse when the tile length does not divide the weight size (reported: silently wrong).

Kernels kept min(rows, L/g) distinct rows but indexed them with (r*K mod L)/g, which goes past
that count when L does not divide n.  Right values: numpy and onnxruntime.
"""

from __future__ import annotations

import numpy as np
import pytest
import reports

tbn_tvm = pytest.importorskip("tbn_tvm.api")

CASES = {
    "lenet_conv1_6x1x5x5_L38": lambda: reports.tiled_conv((6, 1, 5, 5), 38),
    "conv_8x2x3x3_L50_padded": lambda: reports.tiled_conv((8, 2, 3, 3), 50, seed=3, pads=(1, 1, 1, 1)),
    "gemm_8x12_L40": lambda: reports.tiled_gemm((8, 12), 40),
    "gemm_7x50_L120": lambda: reports.tiled_gemm((7, 50), 120, seed=1),
}


@pytest.mark.parametrize("reuse_rows", [True, False])
def test_gemm_5bit_tile_exact_values(reuse_rows):
    m, x, expected = reports.gemm_5bit_tile()
    np.testing.assert_allclose(reports.ort(m, {"x": x})[0], expected, rtol=0, atol=0)
    got = tbn_tvm.compile(m, "llvm", reuse_rows=reuse_rows).run(x)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", sorted(CASES))
def test_host_matches_onnxruntime(name):
    m, x = CASES[name]()
    compiled = tbn_tvm.compile(m, "llvm")
    assert compiled.report()["layers"][0]["format"] == "tiled"
    ref = reports.ort(m, {"x": x})[0]
    np.testing.assert_allclose(compiled.run(x), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


@pytest.mark.qemu
@pytest.mark.parametrize("name", ["lenet_conv1_6x1x5x5_L38", "gemm_8x12_L40"])
def test_cortex_m4_matches_onnxruntime(name):
    m, x = CASES[name]()
    ref = reports.ort(m, {"x": x})[0]
    compiled = tbn_tvm.compile(m, "cortex-m4")
    np.testing.assert_allclose(compiled.run(x), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


@pytest.mark.qemu
def test_cortex_m4_gemm_5bit_tile():
    m, x, expected = reports.gemm_5bit_tile()
    np.testing.assert_allclose(tbn_tvm.compile(m, "cortex-m4").run(x), expected, rtol=1e-6, atol=1e-7)
