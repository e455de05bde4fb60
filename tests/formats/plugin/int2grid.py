"""A test-only weight format: every weight is ``alpha * q`` with ``q`` a 2-bit two's-complement
integer (-2, -1, 0 or 1) and one ``alpha > 0``; 2 bits per weight plus one float.

It exists to prove the format contract: ``tests/formats/test_format_contract.py`` copies the
package, drops this file into ``tbn_tvm/formats/`` and adds one line to ``FORMATS``, and the
format then compiles and runs on llvm and Cortex-M with no other edit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from tbn_tvm.formats.base import Buffer, WeightFormat, as_float
from tbn_tvm.formats.bits import pack_fields, tir_field, unpack_fields


@dataclass(frozen=True, eq=False)
class Int2GridFormat(WeightFormat):
    """``w = alpha * q``, ``q`` in {-2, -1, 0, 1}: buffers ``codes`` (2-bit fields) and ``alpha``."""

    name: ClassVar[str] = "int2grid"

    shape: tuple[int, ...]
    codes: np.ndarray  # int64 in 0..3 (two's complement of q), flat
    alpha: float
    dtype: str = "float32"

    @classmethod
    def detect(cls, weight: np.ndarray, op: str = "matmul") -> Int2GridFormat | None:
        w = as_float(weight)
        if w is None or w.dtype != np.float32:
            return None
        mags = np.abs(w[w != 0])
        if mags.size == 0:
            return None
        alpha = np.float32(mags.min())
        q = w / alpha
        if not np.all(np.isin(q, (-2.0, -1.0, 0.0, 1.0))) or not np.array_equal(
            (alpha * q).astype(np.float32), w
        ):
            return None
        codes = np.where(q < 0, q + 4, q).astype(np.int64).reshape(-1)
        return cls(tuple(int(d) for d in w.shape), codes, float(alpha))

    def buffers(self) -> list[Buffer]:
        return [
            Buffer("codes", pack_fields(self.codes, 2)),
            Buffer("alpha", np.array([self.alpha], np.float32)),
        ]

    def read(self, bufs, i):
        from tvm import tirx

        from tbn_tvm.kernels import i64

        code = tirx.Cast("int32", tir_field(bufs["codes"], i, 2))
        q = tirx.Select(code >= 2, code - 4, code)
        return tirx.Cast("float32", q) * bufs["alpha"][i64(0)]

    def decode(self) -> np.ndarray:
        codes = unpack_fields(pack_fields(self.codes, 2), 2, self.n)
        q = np.where(codes >= 2, codes - 4, codes).astype(np.float32)
        return (np.float32(self.alpha) * q).reshape(self.shape)

    def label(self) -> str:
        return "int2grid"
