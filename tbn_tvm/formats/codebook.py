"""SNN kernel codebooks: every ``k×k`` sign kernel of a conv layer is one of ``2^τ`` codewords.

Sub-bit Neural Networks (Wang, Yang, Sun, Yao, ICCV 2021; code ``yikaiw/SNN``) learn, per conv
layer, a codebook of ``2^τ`` binary kernels (``τ < k·k``) and store each ``(out, in)`` kernel as a
``τ``-bit index: ``τ/9`` bit per weight of a 3×3 conv, plus ``9·2^τ`` bits of codebook and one
scale per output channel.  This format finds that structure in a dense conv constant
``[O, I/g, kh, kw]``: ``w[o, i] = scale[o] · codeword[index[o, i]]`` with ±1 codewords, for the
smallest ``τ`` that indexes the distinct kernels the layer uses (only those are stored: the
codebook may hold fewer than ``2^τ`` entries).  1×1 and depthwise convolutions qualify when the
form is cheaper than binary (the registry keeps the cheapest exact form).

Buffers: ``codebook`` (the codewords' sign bits, codeword ``c`` at bits ``c·kk .. c·kk+kk−1``),
``indices`` (``τ``-bit fields, one per ``(o, i)``), ``scales`` (float32, one per output channel).
Structure kernel: the look-up convolution (:mod:`tbn_tvm.kernels.lut_conv`): per input patch the
dot products with each codeword once, then each output channel adds the ones its indices pick.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> book = np.where(rng.random((4, 9)) < 0.5, -1.0, 1.0)
>>> idx = rng.integers(0, 4, size=(16, 8))
>>> w = (book[idx].reshape(16, 8, 3, 3) * rng.uniform(0.1, 1, (16, 1, 1, 1))).astype(np.float32)
>>> fmt = CodebookFormat.detect(w, "conv")
>>> fmt.label(), bool(np.array_equal(fmt.decode(), w))
('codebook τ=2', True)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from tbn_tvm.formats.base import ROUNDED, Buffer, WeightFormat, as_float, within_rounding
from tbn_tvm.formats.bits import pack_bits, pack_fields, tir_bit, tir_field, unpack_bits, unpack_fields


@dataclass(frozen=True, eq=False)
class CodebookFormat(WeightFormat):
    """``w[o, i] = scales[o] · codewords[indices[o, i]]`` (see the module docstring)."""

    name: ClassVar[str] = "codebook"

    shape: tuple[int, ...]  # [O, I/g, *kernel]
    codewords: np.ndarray  # uint8 0/1, [C, kk] (1 means +1), C <= 2^tau
    indices: np.ndarray  # int64, [O * I/g]
    scales: np.ndarray  # float32, [O]
    tau: int
    dtype: str = field(default="float32")
    rounded: bool = False  # decode within one float32 rounding of the weight, not bit for bit

    @classmethod
    def storage_lower_bound(cls, shape: tuple[int, ...], op: str) -> int:
        """At least one index bit per ``(out, in)`` kernel and a float32 scale per output channel."""
        if op != "conv" or len(shape) < 3:
            return 0
        return int(shape[0]) * int(shape[1]) + 32 * int(shape[0])

    @classmethod
    def detect(cls, weight: np.ndarray, op: str = "conv") -> CodebookFormat | None:
        if op != "conv":
            return None
        w = as_float(weight)
        if w is None or w.dtype != np.float32 or w.ndim < 3:
            return None
        O, Ig = w.shape[0], w.shape[1]
        kk = math.prod(w.shape[2:])
        rows = w.reshape(O, -1)
        mags = np.abs(rows)
        scales = mags[:, 0].copy()
        rounded = False
        if not np.all(mags == scales[:, None]):
            # one scale per filter only up to float32 rounding (a float64 product cast per
            # element): the filter's median magnitude, every value within a rounding of it
            scales = np.median(mags, axis=1).astype(np.float32)
            signs = np.where(rows > 0, np.float32(1), np.float32(-1))
            if not within_rounding(signs * scales[:, None], rows):
                return None
            rounded = True
        if not np.all(scales > 0):
            return None
        signs = (rows > 0).reshape(O * Ig, kk).astype(np.uint8)
        packed = np.packbits(signs, axis=1)
        uniq, inverse = np.unique(packed, axis=0, return_inverse=True)
        count = uniq.shape[0]
        tau = max(1, math.ceil(math.log2(count)))
        if tau >= kk:
            return None
        codewords = np.unpackbits(uniq, axis=1)[:, :kk].astype(np.uint8)
        return cls(
            tuple(int(d) for d in w.shape),
            codewords,
            inverse.reshape(-1).astype(np.int64),
            scales,
            tau,
            rounded=rounded,
        )

    # ------------------------------------------------------------------ facts
    @property
    def kernel_size(self) -> int:
        return math.prod(self.shape[2:])

    @property
    def num_codewords(self) -> int:
        return int(self.codewords.shape[0])

    @property
    def num_scales(self) -> int:
        return int(self.scales.size)

    @property
    def alpha_kind(self) -> str:
        return "per_channel"

    # ------------------------------------------------------------------ contract
    def buffers(self) -> list[Buffer]:
        return [
            Buffer("codebook", pack_bits(self.codewords.reshape(-1))),
            Buffer("indices", pack_fields(self.indices, self.tau)),
            Buffer("scales", self.scales.astype(np.float32)),
        ]

    def decode(self) -> np.ndarray:
        bits = unpack_bits(pack_bits(self.codewords.reshape(-1)), self.codewords.size).reshape(
            self.codewords.shape
        )
        idx = unpack_fields(pack_fields(self.indices, self.tau), self.tau, self.indices.size)
        signs = np.where(bits[idx] == 1, 1.0, -1.0).astype(np.float32).reshape(self.shape[0], -1)
        return (signs * self.scales[:, None]).astype(np.float32).reshape(self.shape)

    def read(self, bufs: Mapping[str, Any], i):
        from tvm import tirx

        from tbn_tvm.kernels import i64

        kk = self.kernel_size
        pair = tirx.floordiv(i, i64(kk))
        j = tirx.floormod(i, i64(kk))
        idx = tirx.Cast("int64", tir_field(bufs["indices"], pair, self.tau))
        bit = tir_bit(bufs["codebook"], idx * i64(kk) + j)
        row = self.n // self.shape[0]
        s = bufs["scales"][tirx.floordiv(i, i64(row))]
        return tirx.Select(bit == tirx.const(1, "uint32"), s, -s)

    def label(self) -> str:
        return f"codebook τ={self.tau}" + (f", {ROUNDED}" if self.rounded else "")

    def describe(self) -> str:
        return (
            f"codebook τ={self.tau} ({self.num_codewords} codewords of {self.kernel_size} signs, "
            f"{self.num_scales} per-channel scales" + (f"; {ROUNDED})" if self.rounded else ")")
        )

    def fields(self) -> dict:
        return {
            "tau": self.tau,
            "codewords": self.num_codewords,
            **({"exact": ROUNDED} if self.rounded else {}),
        }

    def kernel(self, layer):
        from tbn_tvm.kernels import codeword_conv, lut_conv, rows

        k = codeword_conv.kernel_for(self, layer)
        if k is None and layer.simd:
            k = lut_conv.kernel_for(self, layer)
        if k is not None or layer.simd or layer.op not in ("conv1d", "conv2d") or layer.groups != 1:
            return k
        if layer.dtype != "float32" or not layer.reuse_rows:
            return None
        # Where the codeword look-up does not pay (fewer output channels than codewords) an
        # MCU runs the filters as sign rows: their bits assembled into words once per call
        # (O·K/8 bytes), then the look-up-table convolution of the tiled format
        O, K = self.shape[0], self.n // self.shape[0]
        plan = rows.RowPlan(rows=O, row_length=K, tile_length=O * K, scale_chunk=K, num_scales=O)
        g = rows.lut_group(plan) or 4
        kern = rows.conv_rows_lut_te(layer, self, plan, g, words_of=self._row_words)
        built = rows.make_kernel(rows.KIND_CONV_LUT, kern, plan, group=g)
        if codeword_conv.applies(self, layer):  # say why the codeword convolution lost
            from tbn_tvm.kernels.cost import codebook_choice

            built.info["why"] = codebook_choice(layer, self)[1]
        return built

    def _row_words(self, bufs):
        """``W[o, c]``: bits ``32c .. 32c+31`` of filter ``o``'s signs (its ``Cin·k·k``
        codeword bits in the weight's flat order), as one uint32 word.  Each word is put
        together from the whole codewords that overlap it (``⌈32/kk⌉ + 1`` of them, shifted
        into place: disjoint bits, so their sum is their OR), not bit by bit; kernels of
        more than 31 taps go bit by bit."""
        from tvm import te, tirx

        from tbn_tvm.kernels import i64, rows, shape64

        O, K, kk = self.shape[0], self.n // self.shape[0], self.kernel_size
        P = K // kk  # codewords per filter
        C = -(-K // 32)
        zero = tirx.const(0, "uint32")
        if kk > 31:
            j = te.reduce_axis((i64(0), i64(32)), name="j")

            def word(o, c):
                k = tirx.min(c * i64(32) + j, i64(K - 1))
                i = o * i64(P) + tirx.floordiv(k, i64(kk))
                idx = tirx.Cast("int64", tir_field(bufs["indices"], i, self.tau))
                bit = tir_bit(bufs["codebook"], idx * i64(kk) + tirx.floormod(k, i64(kk)))
                inside = c * i64(32) + j < i64(K)
                term = tirx.shift_left(bit, tirx.Cast("uint32", j))
                return te.sum(tirx.Select(inside, term, zero), axis=j)

            return te.compute(shape64([O, C]), word, name=rows.BLOCK_ROW_WORDS)
        q = te.reduce_axis((i64(0), i64(-(-32 // kk) + 1)), name="q")

        def word(o, c):
            p = tirx.floordiv(c * i64(32), i64(kk)) + q  # a codeword overlapping word c
            pc = tirx.min(p, i64(P - 1))
            idx = tirx.Cast("int64", tir_field(bufs["indices"], o * i64(P) + pc, self.tau))
            chunk = tir_field(bufs["codebook"], idx, kk)
            off = pc * i64(kk) - c * i64(32)  # where its bit 0 lands in the word: -kk < off
            left = tirx.shift_left(chunk, tirx.Cast("uint32", tirx.max(tirx.min(off, i64(31)), i64(0))))
            right = tirx.shift_right(chunk, tirx.Cast("uint32", tirx.max(tirx.min(-off, i64(31)), i64(0))))
            term = tirx.Select(off >= i64(0), left, right)
            return te.sum(tirx.Select(tirx.all(p < i64(P), off < i64(32)), term, zero), axis=q)

        return te.compute(shape64([O, C]), word, name=rows.BLOCK_ROW_WORDS)
