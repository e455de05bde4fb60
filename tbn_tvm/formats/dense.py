"""The fallback: a weight kept as it is (its own dtype, e.g. 32 bits per float32 element).

>>> DenseFormat((4, 3)).storage_bytes()
48
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from tbn_tvm.formats.base import Buffer, WeightFormat


@dataclass(frozen=True, eq=False)
class DenseFormat(WeightFormat):
    """A weight that matched no compact format; it is built as an ordinary constant."""

    name: ClassVar[str] = "dense"
    compact: ClassVar[bool] = False

    shape: tuple[int, ...]
    dtype: str = "float32"
    values: np.ndarray | None = None

    @classmethod
    def detect(cls, weight: np.ndarray, op: str = "matmul") -> DenseFormat:
        w = np.asarray(weight)
        return cls(tuple(int(d) for d in w.shape), str(w.dtype), w)

    def buffers(self) -> list[Buffer]:
        data = self.values if self.values is not None else np.zeros(self.shape, self.dtype)
        return [Buffer("weight", np.ascontiguousarray(data))]

    def read(self, bufs, i):
        from tvm import tirx

        from tbn_tvm.kernels import i64

        w = bufs["weight"]
        idx, rest = [], i
        for d in reversed(self.shape):
            idx.append(tirx.floormod(rest, i64(d)))
            rest = tirx.floordiv(rest, i64(d))
        return w[tuple(reversed(idx))]

    def decode(self) -> np.ndarray:
        return self.buffers()[0].data

    def storage_bits(self) -> int:
        return 8 * np.dtype(self.dtype).itemsize * self.n

    def label(self) -> str:
        return "dense"

    def describe(self) -> str:
        return f"dense {self.dtype}"
