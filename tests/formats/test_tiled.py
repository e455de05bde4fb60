"""Tiled format: detection, packing and decoding against an independent numpy construction."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tbn_tvm.formats import DenseFormat, detect_layer_weight
from tbn_tvm.formats.tiled import detect, pack_bits, unpack_bits


def make_tiled(shape, p, alpha="per_copy", rng=None, tile_len=None):
    """The paper's construction (research digest §1.2): a ±1 tile of n/p signs repeated p times,
    copy k scaled by alpha_k; or per-output-row scales (BatchNorm folded)."""
    rng = rng or np.random.default_rng(0)
    n = int(np.prod(shape))
    L = tile_len or n // p
    tile = np.where(rng.random(L) < 0.5, -1.0, 1.0).astype(np.float32)
    reps = -(-n // L)
    flat = np.tile(tile, reps)[:n]
    if alpha == "single":
        flat = flat * np.float32(rng.uniform(0.1, 1.0))
    elif alpha == "per_copy":
        a = rng.uniform(0.1, 1.0, reps).astype(np.float32)
        flat = flat * np.repeat(a, L)[:n]
    elif alpha == "per_channel":
        a = rng.uniform(0.1, 1.0, shape[0]).astype(np.float32)
        flat = flat * np.repeat(a, n // shape[0])
    return flat.reshape(shape).astype(np.float32), tile


@pytest.mark.parametrize("alpha", ["single", "per_copy", "per_channel"])
@pytest.mark.parametrize("shape,p", [((128, 784), 4), ((64, 3, 3, 3), 8), ((32, 16, 5), 2), ((10, 128), 1)])
def test_detect_roundtrip(shape, p, alpha):
    w, tile = make_tiled(shape, p, alpha)
    fmt = detect(w)
    assert fmt is not None
    assert np.array_equal(fmt.decode(), w)
    if p == 1:
        assert fmt.kind == "binary"
    else:
        assert fmt.kind == "tiled"
        assert fmt.tile_length == w.size // p
        assert fmt.p == p
        assert np.array_equal(np.where(fmt.tile == 1, 1.0, -1.0), tile)
    expected_alpha = {"single": "single", "per_copy": "per_copy" if p > 1 else "single"}.get(
        alpha, "per_channel"
    )
    assert fmt.alpha_kind == expected_alpha


def test_tile_length_not_dividing_rows_or_n():
    w, _ = make_tiled((6, 100), 0, "single", tile_len=150)  # K=100 and L=150 do not divide each other
    fmt = detect(w)
    assert fmt.tile_length == 150 and fmt.kind == "tiled"
    assert np.array_equal(fmt.decode(), w)
    w, _ = make_tiled((7, 50), 0, "single", tile_len=120)  # n=350 is not a multiple of L
    fmt = detect(w)
    assert fmt.tile_length == 120 and np.array_equal(fmt.decode(), w)


def test_negative_cases_stay_dense():
    rng = np.random.default_rng(1)
    w, _ = make_tiled((32, 64), 4, "per_copy", rng)
    flipped = w.copy()
    flipped[5, 7] *= -1  # one flipped sign breaks the repetition: not tiled, but each copy of
    fmt = detect(flipped)  # 8 rows has one alpha: exactly a binary layer with scales per 512
    assert fmt is not None and fmt.kind == "binary" and fmt.scale_chunk == 512
    assert np.array_equal(fmt.decode(), flipped)
    single, _ = make_tiled((32, 64), 4, "single", rng)
    single[5, 7] *= -1  # with one alpha it is exactly a plain binary layer (p = 1)
    fmt = detect(single)
    assert fmt is not None and fmt.kind == "binary" and fmt.alpha_kind == "single"
    assert np.array_equal(fmt.decode(), single)
    scaled = w.copy()
    scaled[3, 3] *= 1.0001  # one magnitude off: no exact compact form worth having
    fmt = detect(scaled)
    assert fmt is None or np.array_equal(fmt.decode(), scaled)
    assert detect(rng.standard_normal((32, 64)).astype(np.float32)) is None
    zero = w.copy()
    zero[0, 0] = 0
    assert detect(zero) is None
    assert detect(w.astype(np.float64)) is None
    lw = detect_layer_weight(rng.standard_normal((64, 32)).astype(np.float32), "matmul")
    assert isinstance(lw.format, DenseFormat) and lw.format.shape == (32, 64)


def test_matmul_weight_either_layout():
    w, _ = make_tiled((16, 96), 4, "per_copy")  # Linear layout [out, in]
    lw = detect_layer_weight(np.ascontiguousarray(w.T), "matmul")  # stored [in, out]
    assert lw.order == "transposed" and lw.format.p == 4
    assert np.array_equal(lw.format.decode(), w)
    lw = detect_layer_weight(w, "matmul")  # a tile along the stored order itself
    assert lw.order == "stored" and np.array_equal(lw.format.decode(), w)


def test_storage_accounting_matches_paper_mlp():
    """fc1 of the authors' MNIST MLP: 25,088 tile bits = 3,136 bytes + 4 float32 alphas."""
    w, _ = make_tiled((128, 784), 4, "per_copy")
    fmt = detect(w)
    assert fmt.storage_bytes() == 3136 + 16
    assert fmt.num_words == 784


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(1, 12),
    cols=st.integers(1, 40),
    p=st.sampled_from([1, 2, 3, 4, 8]),
    alpha=st.sampled_from(["single", "per_copy", "per_channel"]),
    seed=st.integers(0, 2**31 - 1),
)
def test_property_roundtrip(rows, cols, p, alpha, seed):
    n = rows * cols
    if n % p or n < 2:
        return
    w, _ = make_tiled((rows, cols), p, alpha, np.random.default_rng(seed))
    fmt = detect(w)
    if fmt is None:  # allowed only when the true compact form is not smaller than float32
        n_scales = {"single": 1, "per_copy": p, "per_channel": rows}[alpha]
        true_bits = 32 * (-(-(n // p) // 32)) + 32 * n_scales
        assert true_bits >= 32 * n or 32 * n_scales >= 31 * n
        return
    assert np.array_equal(fmt.decode(), w)
    assert fmt.tile_length <= n // p or p == 1
    words, scales = fmt.pack()
    assert np.array_equal(unpack_bits(words, fmt.tile_length), fmt.tile)
    assert scales.dtype == np.float32 and np.all(scales > 0)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 1), min_size=1, max_size=200))
def test_pack_bits_layout(bits):
    bits = np.array(bits, np.uint8)
    words = pack_bits(bits)
    for i, b in enumerate(bits):  # bit j of word k is bits[32k + j]
        assert (int(words[i // 32]) >> (i % 32)) & 1 == b


@pytest.mark.parametrize("shape,L", [((32, 72), 576), ((10, 40), 100), ((6, 100), 150)])
def test_negative_per_row_scales(shape, L):
    """BatchNorm with gamma < 0 folded into a tiled layer flips whole rows."""
    rng = np.random.default_rng(4)
    n = shape[0] * shape[1]
    tile = np.where(rng.random(L) < 0.5, -1.0, 1.0).astype(np.float32)
    g = rng.uniform(0.2, 1.0, shape[0]) * np.where(rng.random(shape[0]) < 0.5, -1.0, 1.0)
    w = (np.tile(tile, -(-n // L))[:n].reshape(shape) * g[:, None]).astype(np.float32)
    fmt = detect(w)
    assert fmt is not None and fmt.kind == "tiled" and fmt.tile_length == L
    assert fmt.alpha_kind == "per_channel"
    assert np.array_equal(fmt.decode(), w)
