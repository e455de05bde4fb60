"""The fallback: a weight kept as it is, float32, 32 bits per element.

>>> import numpy as np
>>> DenseFormat((4, 3)).storage_bytes()
48
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class DenseFormat:
    """A weight that matched no compact format; it is built as an ordinary constant."""

    shape: tuple[int, ...]
    kind: str = "dense"
    p: float = 1.0
    alpha_kind: str = "none"
    num_scales: int = 0

    @property
    def n(self) -> int:
        return math.prod(self.shape)

    def storage_bits(self) -> int:
        return 32 * self.n

    def storage_bytes(self) -> int:
        return 4 * self.n

    def describe(self) -> str:
        return "dense fp32"
