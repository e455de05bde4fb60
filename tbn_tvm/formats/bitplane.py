"""Bit-wise (bit-plane) weights: every weight is ``α · q`` with ``q`` an integer of ``k`` bits.

Bit-wise weight training (Ivan, 2022; code ``stracini-git/bitwise-weight-training``) learns the
bits of sign-magnitude integer weights ``W = α · (−1)^s · Σ_i b_i 2^i``; exported, such a layer
is a dense constant that is exactly ``α`` times an integer.  This format finds that form: one
``α`` per layer or per output row (``[out, in]`` Linear, ``[O, I/g, *k]`` conv), ``q`` stored
in ``k`` bits (``k ≤ 8``) as two's complement (``−2^(k−1) … 2^(k−1) − 1``) or sign-magnitude
(``−(2^(k−1) − 1) … 2^(k−1) − 1``), whichever needs fewer bits (ties: two's complement).

Buffers: ``planes`` (uint32, ``k·⌈n/32⌉ + 1`` words: plane ``b`` holds bit ``b`` of every code,
packed LSB first in the weight's flat order, :func:`pack_planes`) and ``scales`` (float32, one or one
per row).  Structure kernel: T-MAC's bit-serial look-up (:mod:`tbn_tvm.kernels.bitplane_lut`).
``inspect`` shows ``bitplane k=…``; an all-zero weight (no tiled or binary form: it has no
sign) is found here with ``k = 1`` and shown as ``zero`` (``format``) / ``zero (bitplane k=1)``
(``label``).

Detection is exact, or exact to float32 rounding: a weight that is ``fl32(α'·q)`` for a real
``α'`` (a float64 product cast to float32, as numpy-built and BatchNorm-folded exports write
it) is found with ``α = fl32(α')`` or a neighbour when every decoded ``fl32(α·q)`` is the
stored value or a neighbouring float32 (:func:`~tbn_tvm.formats.base.within_rounding`), and
``inspect`` says so (``bitplane k=…, exact to float32 rounding``); a weight off the grid by
more than that (two ulps) is not bit-plane.

>>> import numpy as np
>>> q = np.array([[3, -2, 0, 1], [-4, 2, 1, -1]], np.float32)
>>> fmt = BitplaneFormat.detect(0.125 * q, "matmul")
>>> fmt.label(), fmt.encoding, bool(np.array_equal(fmt.decode(), 0.125 * q))
('bitplane k=3', 'twos', True)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from tbn_tvm.formats.base import ROUNDED, Buffer, WeightFormat, as_float, within_rounding
from tbn_tvm.formats.bits import pack_bits, unpack_bits

MAX_BITS = 8
#: Largest integer multiple searched when the smallest magnitude is not itself the grid step.
_MAX_STEP_DIVISOR = 1 << (MAX_BITS - 1)
_SAMPLE = 4096  # values a rounded grid is first tried on (:func:`_grid_rounded`)


def _grid(values: np.ndarray) -> tuple[np.float32, np.ndarray] | None:
    """``(α, q)`` with ``values == α * q`` exactly, ``q`` integers of at most ``MAX_BITS`` bits,
    ``α > 0`` as large as possible; None when there is none."""
    v = values.astype(np.float32)
    nz = np.abs(v[v != 0])
    if nz.size == 0:
        return np.float32(1.0), np.zeros_like(v, dtype=np.int64)
    smallest = nz.min()
    largest = nz.max()
    probe = v[: min(v.size, 64)]
    for m in range(1, _MAX_STEP_DIVISOR + 1):
        approx = np.float32(smallest / np.float32(m))
        if not approx > 0 or largest / approx > (1 << MAX_BITS):
            return None
        # smallest / m is the step only up to rounding: the exact step is one of the values
        # w_j / q_j of the largest |q_j| (or an ulp away); try those
        q = np.rint(v / approx)
        if np.abs(q).max() >= (1 << MAX_BITS) or np.any(
            np.abs(np.rint(probe / approx) * approx - probe) > 1e-3 * np.abs(probe) + 1e-30
        ):
            continue
        for alpha in _step_candidates(v, q):
            if np.array_equal((q.astype(np.float32) * alpha).astype(np.float32), v):
                return alpha, q.astype(np.int64)
    return None


def _grid_rounded(values: np.ndarray) -> tuple[np.float32, np.ndarray] | None:
    """``(α, q)`` with ``fl32(q·α)`` within one float32 rounding of every value
    (:func:`~tbn_tvm.formats.base.within_rounding`): the values are ``fl32(α'·q)`` for a real
    ``α'`` (a float64 product cast to float32), ``α = fl32(α')`` or a neighbour; None when
    there is none.  Tried only where :func:`_grid` finds no exact grid."""
    v = values.astype(np.float32)
    v64 = v.astype(np.float64)
    nz = np.abs(v64[v != 0])
    if nz.size == 0:
        return None
    smallest, largest = nz.min(), nz.max()
    # a sample (with the extremes) must pass each step's tests before the whole tensor is tried:
    # the tests are per element or over ranges, so a step the sample fails, the tensor fails
    sample = v64
    if v64.size > 4 * _SAMPLE:
        pick = np.random.default_rng(0).choice(v64.size, _SAMPLE, replace=False)
        sample = np.concatenate([v64[pick], [smallest, largest]])
    for m in range(1, _MAX_STEP_DIVISOR + 1):
        approx = smallest / m
        if largest / approx > (1 << MAX_BITS) + 1:
            return None
        qs = np.rint(sample / approx)
        nzs = qs != 0
        if np.abs(qs).max() >= (1 << MAX_BITS) or not np.array_equal(nzs, sample != 0):
            continue
        rs = sample[nzs] / qs[nzs]
        if rs.size and rs.max() - rs.min() > 2.0**-22 * np.abs(rs).max():
            continue
        q = np.rint(v64 / approx)
        if np.abs(q).max() >= (1 << MAX_BITS) or not np.array_equal(q != 0, v != 0):
            continue
        ratio = v64[q != 0] / q[q != 0]  # α'(1 + ε), |ε| <= 2^-24, on a grid
        if ratio.max() - ratio.min() > 2.0**-22 * np.abs(ratio).max():
            continue
        a = np.float32(abs(np.median(ratio)))
        up, down = [a], [a]
        for _ in range(2):  # α' rounds to a; the best α may be a neighbour or two away
            up.append(np.nextafter(up[-1], np.float32(np.inf)))
            down.append(np.nextafter(down[-1], np.float32(0)))
        cands = [a, up[1], down[1], up[2], down[2]]
        qf = q.astype(np.float32)
        for alpha in cands:
            if alpha > 0 and within_rounding((qf * alpha).astype(np.float32), v):
                return np.float32(alpha), q.astype(np.int64)
    return None


def _step_candidates(v: np.ndarray, q: np.ndarray) -> list[np.float32]:
    order = np.argsort(-np.abs(q), kind="stable")[:3]
    out: list[np.float32] = []
    for j in order:
        if q[j] == 0:
            continue
        a = np.float32(v[j] / np.float32(q[j]))
        for cand in (a, np.nextafter(a, np.float32(np.inf)), np.nextafter(a, np.float32(0))):
            cand = np.float32(abs(cand))
            if cand > 0 and cand not in out:
                out.append(cand)
    return out


def _bits(q: np.ndarray) -> tuple[int, str] | None:
    """Fewest bits for ``q``: (k, "twos") or (k, "sign") with k ≤ MAX_BITS, or None."""
    lo, hi = int(q.min()), int(q.max())
    twos = next(
        (k for k in range(1, MAX_BITS + 1) if -(1 << (k - 1)) <= lo and hi <= (1 << (k - 1)) - 1), None
    )
    mag = max(abs(lo), abs(hi))
    sign = next((k for k in range(2, MAX_BITS + 1) if mag <= (1 << (k - 1)) - 1), None)
    options = [(k, e) for k, e in ((twos, "twos"), (sign, "sign")) if k is not None]
    return min(options, key=lambda t: t[0]) if options else None


@dataclass(frozen=True, eq=False)
class BitplaneFormat(WeightFormat):
    """``w = scale[row] · q``, ``q`` a ``k``-bit integer (see the module docstring)."""

    name: ClassVar[str] = "bitplane"

    shape: tuple[int, ...]
    codes: np.ndarray  # int64 in [0, 2^k), flat
    scales: np.ndarray  # float32, 1 or shape[0]
    k: int
    encoding: str  # "twos" | "sign"
    dtype: str = field(default="float32")
    rounded: bool = False  # decode within one float32 rounding of the weight, not bit for bit

    @classmethod
    def storage_lower_bound(cls, shape: tuple[int, ...], op: str) -> int:
        """At least one bit per weight and one float32 scale."""
        return int(np.prod(shape, dtype=np.int64)) + 32

    @classmethod
    def detect(cls, weight: np.ndarray, op: str = "matmul") -> BitplaneFormat | None:
        w = as_float(weight)
        if w is None or w.dtype != np.float32:
            return None
        best = cls._best(w, cls._grids(w, _grid), rounded=False)
        # no exact grid, or one whose step divides every value several times (a float64
        # product cast to float32 can be an exact multiple of a tiny α, needing 8+ bits):
        # look for one up to float32 rounding; the cheaper wins, the exact one on a tie
        if best is None or np.abs(best.codes_q()[best.codes_q() != 0]).min(initial=1) > 1:
            other = cls._best(w, cls._grids(w, _grid_rounded), rounded=True)
            if other is not None and (best is None or other.storage_bits() < best.storage_bits()):
                best = other
        return best

    @classmethod
    def _best(cls, w: np.ndarray, found, rounded: bool) -> BitplaneFormat | None:
        best = None
        for scales, q in found:
            kb = _bits(q)
            if kb is None:
                continue
            k, enc = kb
            if enc == "twos":
                codes = np.where(q < 0, q + (1 << k), q)
            else:
                codes = np.where(q < 0, (1 << (k - 1)) | -q, q)
            fmt = cls(tuple(int(d) for d in w.shape), codes.astype(np.int64), scales, k, enc, rounded=rounded)
            if best is None or fmt.storage_bits() < best.storage_bits():
                best = fmt
        return best

    @staticmethod
    def _grids(w: np.ndarray, grid) -> list[tuple[np.ndarray, np.ndarray]]:
        """``(scales, q)`` of one grid for the whole weight and of one per row, where ``grid``
        (:func:`_grid` or :func:`_grid_rounded`) finds them."""
        found = []
        layer = grid(w.reshape(-1))
        if layer is not None:
            found.append((np.array([layer[0]], np.float32), layer[1]))
        if w.ndim > 1 and w.shape[0] > 1:
            rows = []
            for r in w.reshape(w.shape[0], -1):  # stop at the first row without a grid
                g = grid(r)
                if g is None:
                    break
                rows.append(g)
            if len(rows) == w.shape[0]:
                found.append(
                    (np.array([r[0] for r in rows], np.float32), np.concatenate([r[1] for r in rows]))
                )
        return found

    # ------------------------------------------------------------------ contract
    @property
    def num_scales(self) -> int:
        return int(self.scales.size)

    @property
    def alpha_kind(self) -> str:
        return "single" if self.num_scales == 1 else "per_channel"

    def buffers(self) -> list[Buffer]:
        return [
            Buffer("planes", pack_planes(self.codes, self.k)),
            Buffer("scales", self.scales.astype(np.float32)),
        ]

    def codes_q(self) -> np.ndarray:
        """The integers ``q`` (flat), from the codes as detected."""
        k = self.k
        if self.encoding == "twos":
            return np.where(self.codes >= (1 << (k - 1)), self.codes - (1 << k), self.codes)
        mag = self.codes & ((1 << (k - 1)) - 1)
        return np.where(self.codes >> (k - 1), -mag, mag)

    def _q_numpy(self) -> np.ndarray:
        c = unpack_planes(pack_planes(self.codes, self.k), self.n, self.k)
        if self.encoding == "twos":
            return np.where(c >= (1 << (self.k - 1)), c - (1 << self.k), c)
        mag = c & ((1 << (self.k - 1)) - 1)
        return np.where(c >> (self.k - 1), -mag, mag)

    def decode(self) -> np.ndarray:
        row = self.n // self.shape[0] if len(self.shape) > 1 else self.n
        i = np.arange(self.n)
        s = self.scales[0] if self.num_scales == 1 else self.scales[i // row]
        return (self._q_numpy().astype(np.float32) * s).astype(np.float32).reshape(self.shape)

    def read(self, bufs: Mapping[str, Any], i):
        from tvm import tirx

        from tbn_tvm.kernels import i64

        planes = bufs["planes"]
        word, shift = tirx.shift_right(i, i64(5)), tirx.Cast("uint32", tirx.bitwise_and(i, i64(31)))
        code = None
        for b in range(self.k):  # bit b of the code from plane b
            w = planes[i64(b * plane_words(self.n)) + word]
            bit = tirx.bitwise_and(tirx.shift_right(w, shift), tirx.const(1, "uint32"))
            term = tirx.Cast("int32", bit if b == 0 else tirx.shift_left(bit, tirx.const(b, "uint32")))
            code = term if code is None else tirx.bitwise_or(code, term)
        k = self.k
        if self.encoding == "twos":
            q = tirx.Select(code >= (1 << (k - 1)), code - (1 << k), code)
        else:
            mag = tirx.bitwise_and(code, tirx.const((1 << (k - 1)) - 1, "int32"))
            q = tirx.Select(code >= (1 << (k - 1)), -mag, mag)
        scales = bufs["scales"]
        if self.num_scales == 1:
            s = scales[i64(0)]
        else:
            row = self.n // self.shape[0]
            s = scales[tirx.floordiv(i, i64(row))]
        return tirx.Cast("float32", q) * s

    @property
    def kind(self) -> str:
        """``"zero"`` for an all-zero weight (every code 0: nothing but its shape is stored
        meaningfully), else ``"bitplane"``; the export metadata of :mod:`tbn_tvm.torch` uses the
        same word for such a layer."""
        return "zero" if not np.any(self.codes) else self.name

    def label(self) -> str:
        if self.kind == "zero":
            return f"zero (bitplane k={self.k})"
        return f"bitplane k={self.k}" + (f", {ROUNDED}" if self.rounded else "")

    def describe(self) -> str:
        if self.kind == "zero":
            return f"zero: every weight is 0 (stored as bitplane k={self.k})"
        enc = "two's complement" if self.encoding == "twos" else "sign-magnitude"
        scales = f"{self.num_scales} {self.alpha_kind} scale{'s' * (self.num_scales > 1)}"
        return f"bitplane k={self.k} ({enc}, {scales}" + (f"; {ROUNDED})" if self.rounded else ")")

    def fields(self) -> dict:
        return {"bits": self.k, "encoding": self.encoding, **({"exact": ROUNDED} if self.rounded else {})}

    def kernel(self, layer):
        from tbn_tvm.kernels import bitplane_lut

        return bitplane_lut.kernel_for(self, layer)


def plane_words(n: int) -> int:
    """Words of one plane of ``n`` codes."""
    return -(-n // 32)


def pack_planes(codes: np.ndarray, k: int) -> np.ndarray:
    """The ``k``-bit codes as ``k`` planes, one after the other in uint32 words: plane ``b``
    starts at word ``b·⌈n/32⌉`` and its bit ``i`` (word ``i // 32``, bit ``i % 32``) is bit ``b``
    of code ``i``; one zero word ends the buffer, so that a kernel may read the word after any
    bit's word (a row's bits re-aligned into words where rows do not start on a word boundary:
    bits past a plane's end are never selected)."""
    codes = np.asarray(codes, dtype=np.int64).reshape(-1)
    if codes.size and (codes.min() < 0 or int(codes.max()) >> k):
        raise ValueError(f"codes do not fit in {k} bits")
    words = plane_words(codes.size)
    out = np.zeros(k * words + 1, np.uint32)
    for b in range(k):
        out[b * words : (b + 1) * words] = pack_bits(((codes >> b) & 1).astype(np.uint8))
    return out


def unpack_planes(planes: np.ndarray, n: int, k: int) -> np.ndarray:
    """Inverse of :func:`pack_planes`: the ``n`` codes (int64)."""
    words = plane_words(n)
    codes = np.zeros(n, np.int64)
    for b in range(k):
        codes |= unpack_bits(planes[b * words : (b + 1) * words], n).astype(np.int64) << b
    return codes
