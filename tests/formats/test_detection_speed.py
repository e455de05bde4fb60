"""Weight-format detection stays linear in the model (issue 21): a format that cannot beat the
form already found is not searched, and inspect and the compiler's pass detect each weight
once per compile.  The formats found are the same as an exhaustive search's."""

from __future__ import annotations

import numpy as np
import pytest

from tbn_tvm import formats
from tbn_tvm.formats.bitplane import BitplaneFormat
from tbn_tvm.formats.codebook import CodebookFormat


def _tiled(shape, p, rng):
    n = int(np.prod(shape))
    tile = np.where(rng.random(n // p) < 0.5, -1.0, 1.0).astype(np.float32)
    alphas = rng.uniform(0.5, 1.5, p).astype(np.float32)
    return (np.tile(tile, p) * np.repeat(alphas, n // p)).reshape(shape)


def _exhaustive(weight, op):
    """The cheapest exact form over every format (no pruning): the registry's rule."""
    found = [f for f in (cls.detect(weight, op) for cls in formats.format_classes()) if f is not None]
    dense = 8 * weight.dtype.itemsize * weight.size
    found = [f for f in found if f.storage_bits() < dense]
    return min(found, key=lambda f: f.storage_bits()) if found else None


def test_tiled_weight_skips_the_bitplane_search(monkeypatch):
    """A weight found tiled at 1/8 bit per weight never reaches the bit-plane search (a
    per-row exhaustive grid search: 72 s of the 81 s inspect of a 4096x4096x2 tiled MLP)."""
    w = _tiled((512, 256), 8, np.random.default_rng(0))

    def refuse(*args, **kwargs):
        raise AssertionError("bit-plane detection ran on a weight already found tiled")

    monkeypatch.setattr(BitplaneFormat, "detect", classmethod(refuse))
    monkeypatch.setattr(formats, "_DETECTED", {})
    found = formats.detect_layer_weight(np.ascontiguousarray(w.T), "matmul")
    assert found.format.label() == "tiled p=8 L=16384" and found.order == "transposed"


@pytest.mark.parametrize(
    "make,op",
    [
        (lambda rng: _tiled((32, 64), 4, rng), "matmul"),
        (lambda rng: _tiled((16, 8, 3, 3), 4, rng), "conv"),
        (lambda rng: 0.25 * rng.integers(-7, 8, (24, 40)).astype(np.float32), "matmul"),  # bit-plane
        (lambda rng: rng.standard_normal((24, 40)).astype(np.float32), "matmul"),  # dense
        (lambda rng: np.where(rng.random((12, 6, 3, 3)) < 0.5, -0.5, 0.5).astype(np.float32), "conv"),
    ],
)
def test_pruned_search_finds_the_exhaustive_form(make, op, monkeypatch):
    monkeypatch.setattr(formats, "_DETECTED", {})
    w = make(np.random.default_rng(3))
    stored = np.ascontiguousarray(w.T) if op == "matmul" else w  # x @ W operand: [in, out]
    got = formats.detect_layer_weight(stored, op)
    want = _exhaustive(w, op)
    if want is None:
        assert not got.compact
    else:
        assert type(got.format) is type(want) and got.format.storage_bits() == want.storage_bits()
        assert np.array_equal(got.format.decode(), w)


def test_storage_lower_bounds_hold():
    rng = np.random.default_rng(1)
    q = 0.5 * rng.integers(-1, 2, (8, 20)).astype(np.float32)
    bp = BitplaneFormat.detect(q, "matmul")
    assert bp.storage_bits() >= BitplaneFormat.storage_lower_bound(q.shape, "matmul")
    book = np.where(rng.random((4, 9)) < 0.5, -1.0, 1.0)
    idx = rng.integers(0, 4, size=(16, 8))
    w = (book[idx].reshape(16, 8, 3, 3) * rng.uniform(0.1, 1, (16, 1, 1, 1))).astype(np.float32)
    cb = CodebookFormat.detect(w, "conv")
    assert cb.storage_bits() >= CodebookFormat.storage_lower_bound(w.shape, "conv")


def test_each_weight_is_detected_once(monkeypatch):
    """The second detection of the same contents (inspect, then the compiler's pass) is a
    look-up; a dense result keeps no copy of the weight."""
    monkeypatch.setattr(formats, "_DETECTED", {})
    w = np.ascontiguousarray(_tiled((64, 32), 4, np.random.default_rng(2)).T)
    first = formats.detect_layer_weight(w, "matmul")
    calls = []
    original = formats._detect_layer_weight
    monkeypatch.setattr(formats, "_detect_layer_weight", lambda *a: calls.append(a) or original(*a))
    again = formats.detect_layer_weight(w.copy(), "matmul")
    assert not calls and again.format is first.format and again.order == first.order
    dense = np.random.default_rng(4).standard_normal((16, 8)).astype(np.float32)
    d1 = formats.detect_layer_weight(dense, "matmul")
    d2 = formats.detect_layer_weight(dense.copy(), "matmul")
    assert not d1.compact and not d2.compact and np.array_equal(d2.format.decode(), dense.T)
    assert all(entry[0] is None or entry[0].compact for entry in formats._DETECTED.values())
