"""Tiled Bit Network weights: one short ±1 tile repeated along the flattened weight, with scales.

A weight of ``n`` elements (flattened row-major in the framework layout: ``[out, in]`` for a
Linear/Gemm, ``[O, I/groups, kh, kw]`` for Conv2d, ``[O, I, k]`` for Conv1d, ``[I, O/groups,
kh, kw]`` for ConvTranspose) is *tiled* when

    w[i] = scale[i // S] * (+1 if tile[i % L] else -1)        for every i < n

for a bit tile of length ``L`` (the paper's ``n/p``) and scales that are constant over chunks of
``S`` elements.  This one form covers what the exporters write:

* the paper's layer (Gorbett et al., CIKM 2024): ``L = n/p``, one α per copy (``S = L``) or a
  single α (``S = n``);
* a plain binary-weight layer (``p = 1``): no repetition, ``L = n``, with one scale, one per
  output row (neighbouring rows may share it) or one per chunk;
* BatchNorm folded into a tiled layer: each output row gets its own scale (``S`` = the row
  length, or a divisor of it when per-copy α's and per-row scales meet); a negative gamma flips
  the row's signs and gives a negative scale;
* a tile whose length does not divide the row length or even ``n`` (the last copy is cut short).

Detection is exact: the stored weight must equal the decoded one bit for bit, otherwise the
layer stays dense.  Nothing is ever approximated.  float32 and float16 weights are accepted (the
scales keep the weight's dtype).

>>> import numpy as np
>>> tile = np.array([1, -1, -1, 1, 1, -1], np.float32)
>>> w = np.concatenate([0.5 * tile, 0.25 * tile]).reshape(3, 4)     # p = 2, an α per copy
>>> fmt = detect(w)
>>> fmt.kind, fmt.tile_length, fmt.p, fmt.alpha_kind
('tiled', 6, 2.0, 'per_copy')
>>> bool(np.array_equal(fmt.decode(), w))
True
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from tbn_tvm.formats.base import ROUNDED, Buffer, WeightFormat, as_float, within_rounding
from tbn_tvm.formats.bits import pack_bits, tir_bit, unpack_bits

__all__ = ["TiledFormat", "detect", "pack_bits", "unpack_bits", "smallest_period"]

#: A sign sequence counts as *tiled* when at least two copies of its tile fit in it.
MAX_TILE_FRACTION = 0.5

#: How many leading bits are searched for first when looking for the period (speed only).
_PROBE_BITS = 256


@dataclass(frozen=True, eq=False)
class TiledFormat(WeightFormat):
    """An exact tile + scales description of one weight tensor (see the module docstring).

    Buffers: ``tile`` (uint32 words, bit ``j`` = ``tile[j]``, 1 meaning +1) and ``scales`` (one
    per chunk of :attr:`scale_chunk` elements, in the weight's dtype; negative where BatchNorm
    with gamma < 0 was folded in)."""

    name: ClassVar[str] = "tiled"

    shape: tuple[int, ...]
    tile: np.ndarray  # uint8 0/1, length L (1 means +1)
    scales: np.ndarray  # length ceil(n / S), any sign, never zero
    scale_chunk: int  # S
    dtype: str = field(default="float32")
    rounded: bool = False  # decode within one float32 rounding of the weight, not bit for bit

    # ----------------------------------------------------------------- derived facts
    @property
    def tile_length(self) -> int:
        return int(self.tile.size)

    @property
    def kind(self) -> str:
        """``"tiled"`` when the tile repeats, ``"binary"`` for a plain ±1 layer (p = 1)."""
        return "tiled" if self.tile_length <= MAX_TILE_FRACTION * self.n else "binary"

    @property
    def p(self) -> float:
        """The compression factor: how many (possibly partial) copies of the tile make the weight."""
        return self.n / self.tile_length

    @property
    def row_length(self) -> int:
        return self.n // self.shape[0] if len(self.shape) > 1 else self.n

    @property
    def num_scales(self) -> int:
        return int(self.scales.size)

    @property
    def alpha_kind(self) -> str:
        """How the scales are laid out: single, per_copy, per_channel or per_chunk."""
        if self.num_scales == 1:
            return "single"
        if self.scale_chunk % self.tile_length == 0 and self.kind == "tiled":
            return "per_copy"
        if self.scale_chunk == self.row_length:
            return "per_channel"
        return "per_chunk"

    @property
    def num_words(self) -> int:
        return (self.tile_length + 31) // 32

    # ----------------------------------------------------------------- the format contract
    @classmethod
    def detect(cls, weight: np.ndarray, op: str = "matmul") -> TiledFormat | None:
        return detect(weight)

    def buffers(self) -> list[Buffer]:
        return [Buffer("tile", pack_bits(self.tile)), Buffer("scales", self.scales.astype(self.dtype))]

    def pack(self) -> tuple[np.ndarray, np.ndarray]:
        """The run-time buffers as arrays: ``(tile words uint32, scales)``."""
        tile, scales = self.buffers()
        return tile.data, scales.data

    def read(self, bufs: Mapping[str, Any], i):
        from tvm import tirx

        from tbn_tvm.kernels import i64

        j = i if self.tile_length == self.n else tirx.floormod(i, i64(self.tile_length))
        bit = tir_bit(bufs["tile"], j)
        scales = bufs["scales"]
        s = scales[i64(0)] if self.num_scales == 1 else scales[tirx.floordiv(i, i64(self.scale_chunk))]
        return tirx.Select(bit == tirx.const(1, "uint32"), s, -s)

    def decode(self) -> np.ndarray:
        i = np.arange(self.n)
        signs = np.where(self.tile[i % self.tile_length] == 1, 1.0, -1.0).astype(self.dtype)
        return (self.scales.astype(self.dtype)[i // self.scale_chunk] * signs).reshape(self.shape)

    def _name(self) -> str:
        """``binary`` or ``tiled p=… L=…`` (``p`` to two decimals when not whole)."""
        if self.kind == "binary":
            return "binary"
        p = self.p
        ptxt = f"{p:g}" if float(p).is_integer() else f"{p:.2f}"
        return f"tiled p={ptxt} L={self.tile_length}"

    def label(self) -> str:
        return self._name() + (f", {ROUNDED}" if self.rounded else "")

    def describe(self) -> str:
        scales = f"{self.alpha_kind} scale{'s' * (self.num_scales > 1)}"
        rounding = f"; {ROUNDED}" if self.rounded else ""
        count = "" if self.kind == "binary" else f"{self.num_scales} "
        return f"{self._name()} ({count}{scales}{rounding})"

    def fields(self) -> dict:
        return {"tile_length": self.tile_length, **({"exact": ROUNDED} if self.rounded else {})}

    def kernel(self, layer):
        from tbn_tvm.kernels import rows

        return rows.kernel_for(self, layer)


def smallest_period(bits: np.ndarray, max_period: int) -> int | None:
    """Smallest ``L <= max_period`` with ``bits[i] == bits[i - L]`` for all ``i >= L``, or None.

    The period need not divide ``len(bits)``.  Candidates come from a fast byte search for the
    leading bits; each candidate is then verified over the whole sequence.
    """
    n = bits.size
    if n < 2 or max_period < 1:
        return None
    raw = bits.astype(np.uint8).tobytes()
    probe = raw[: min(_PROBE_BITS, n - min(max_period, n - 1))]
    if not probe:
        return None
    pos = raw.find(probe, 1)
    while pos != -1 and pos <= max_period:
        if np.array_equal(bits[pos:], bits[: n - pos]):
            return pos
        pos = raw.find(probe, pos + 1)
    return None


def _divisors(n: int) -> list[int]:
    small = [d for d in range(1, int(n**0.5) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def period_with_chunk_flips(bits: np.ndarray, chunk: int, max_period: int) -> tuple[int, np.ndarray] | None:
    """Smallest tile length ``L`` (a divisor of ``n``, ``L <= max_period``) for which the bits are
    periodic once every chunk of ``chunk`` bits may be inverted as a whole, with the inversion
    flags (one per chunk, the first chunk never inverted), or None.

    For ``i >= L``: ``b[i] ^ f[c(i)] == b[i-L] ^ f[c(i-L)]``, i.e. ``b[i] ^ b[i-L]`` must be one
    constant per pair of chunks, and the flags follow by propagating those parities.
    """
    n = bits.size
    nchunks = -(-n // chunk)
    for L in _divisors(n):
        if L > max_period:
            break
        # cheap rejection on a prefix first, then the whole sequence
        if _flip_parities(bits, L, chunk, nchunks, min(n - L, 4096)) is None:
            continue
        parities = _flip_parities(bits, L, chunk, nchunks, n - L)
        if parities is None:
            continue
        flips = _solve_parities(nchunks, *parities)
        if flips is not None:
            return L, flips
    return None


def _solve_parities(nchunks: int, a_s, b_s, pars) -> np.ndarray | None:
    """Flags ``f`` with ``f[a] ^ f[b] == par`` for every constraint (union-find with parity), the
    root of each group taken as not inverted (chunk 0 first), or None if inconsistent."""
    parent = list(range(nchunks))
    rel = [0] * nchunks  # parity to parent

    def find(x: int) -> tuple[int, int]:
        path = []
        while parent[x] != x:
            path.append(x)
            x = parent[x]
        root, acc = x, 0
        for node in reversed(path):  # compress, accumulating parity from the root down
            acc ^= rel[node]
            rel[node], parent[node] = acc, root
        return root, (rel[path[0]] if path else 0)

    for a, b, par in zip(a_s.tolist(), b_s.tolist(), pars.tolist()):
        ra, pa = find(a)
        rb, pb = find(b)
        if ra == rb:
            if pa ^ pb != par:
                return None
        elif ra < rb:
            parent[rb], rel[rb] = ra, pa ^ pb ^ par
        else:
            parent[ra], rel[ra] = rb, pa ^ pb ^ par
    return np.array([find(c)[1] for c in range(nchunks)], dtype=np.uint8)


def _flip_parities(bits: np.ndarray, L: int, chunk: int, nchunks: int, m: int):
    """For positions ``L .. L+m``: the (chunk, earlier chunk, parity) runs, or None when the
    parity is not constant within a run."""
    e = bits[L : L + m] ^ bits[:m]
    idx = np.arange(m)
    ci, cj = (idx + L) // chunk, idx // chunk
    pair = ci * nchunks + cj
    starts = np.flatnonzero(np.concatenate([[True], pair[1:] != pair[:-1]]))
    first = e[starts]
    if not np.array_equal(e, np.repeat(first, np.diff(np.append(starts, m)))):
        return None
    return ci[starts], cj[starts], first


def detect(weight: np.ndarray) -> TiledFormat | None:
    """Find the exact tile + scales form of ``weight`` (framework layout), or None.

    Returns a :class:`TiledFormat` whose :meth:`~TiledFormat.decode` equals ``weight`` exactly, and
    whose storage is smaller than the dense weight.  A tile that repeats is ``kind == "tiled"``
    (scales constant per copy, per row, or per piece of both); a ±1 weight without repetition is
    ``kind == "binary"`` with one scale, one per output row or one per chunk — the cheapest exact
    form of a binary layer, of BatchNorm folding, or of a tile broken by a flipped sign whose
    per-copy α's line up with rows.  Anything else (zeros, non-finite values, scales that change
    too often to save space) gives None: the caller keeps the layer dense.
    """
    w = as_float(weight)
    if w is None:
        return None
    flat = w.reshape(-1)
    mags = np.abs(flat)
    if not np.all(mags > 0):
        return None
    n = flat.size
    elem_bits = 8 * w.dtype.itemsize
    # scales: |w| is constant on chunks of S elements, S = gcd of every change point (the last
    # chunk may be cut short: a weight ending in a partial copy with its own α)
    chunk, scales = _chunks(mags, mags[1:] != mags[:-1])
    rounded = False
    if elem_bits * scales.size >= (elem_bits - 1) * n and w.dtype == np.float32:
        # magnitudes that differ only by float32 rounding (a scale product cast from float64
        # per element): chunks of neighbouring float32 values, each chunk's median its scale
        gap = np.abs(np.diff(mags.astype(np.float64)))
        chunk, scales = _chunks(mags, gap > np.spacing(np.maximum(mags[1:], mags[:-1])).astype(np.float64))
        if elem_bits * scales.size < (elem_bits - 1) * n:  # few enough: each chunk's median
            whole = n // chunk * chunk
            scales = np.median(mags[:whole].reshape(-1, chunk), axis=1)
            if whole < n:
                scales = np.append(scales, np.median(mags[whole:]))
            scales = scales.astype(np.float32)
        rounded = True
    if elem_bits * scales.size >= (elem_bits - 1) * n:  # the scales alone cost about as much as the weight
        return None
    bits = (flat > 0).astype(np.uint8)
    period = smallest_period(bits, int(MAX_TILE_FRACTION * n))
    if period is None and scales.size > 1:
        # a negative scale flips a whole chunk's signs (BatchNorm with gamma < 0 folded in):
        # look for a tile once each chunk's sign is factored out
        found = period_with_chunk_flips(bits, chunk, int(MAX_TILE_FRACTION * n))
        if found is not None:
            period, flips = found
            bits = bits ^ np.repeat(flips, chunk)[:n]
            scales = np.where(flips == 1, -scales, scales)
    tile = bits[:period] if period else bits
    fmt = TiledFormat(
        shape=tuple(int(d) for d in w.shape),
        tile=tile.copy(),
        scales=scales.astype(w.dtype),
        scale_chunk=chunk,
        dtype=str(w.dtype),
        rounded=rounded,
    )
    if fmt.storage_bits() >= elem_bits * n:
        return None
    if rounded and not within_rounding(fmt.decode(), w):
        return None
    return fmt


def _chunks(mags: np.ndarray, changed: np.ndarray) -> tuple[int, np.ndarray]:
    """``(S, scales)``: ``S`` the gcd of the change points (``changed[i]``: ``mags[i + 1]``
    starts a new value; ``n`` without any), the scales every ``S`` elements."""
    change = np.flatnonzero(changed) + 1
    chunk = int(np.gcd.reduce(change.astype(np.int64))) if change.size else int(mags.size)
    return chunk, mags[::chunk]
