"""Bit packing shared by the formats and kernels: numpy pack/unpack and the one TIR bit read.

Bit ``j`` of a packed sequence lives in uint32 word ``j // 32`` at bit position ``j % 32``
(little-endian within the word), so a little-endian byte dump of the words is the sequence
packed LSB-first.

>>> import numpy as np
>>> w = pack_bits(np.array([1, 0, 1, 1], np.uint8))
>>> hex(int(w[0])), unpack_bits(w, 4).tolist()
('0xd', [1, 0, 1, 1])
"""

from __future__ import annotations

import numpy as np


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """Pack 0/1 values into uint32 words (bit ``j`` of word ``k`` is ``bits[32 k + j]``)."""
    bits = np.asarray(bits, dtype=np.uint8).reshape(-1)
    nwords = (bits.size + 31) // 32
    padded = np.zeros(nwords * 32, dtype=np.uint8)
    padded[: bits.size] = bits
    return (
        np.packbits(padded.reshape(nwords, 4, 8), axis=-1, bitorder="little")
        .reshape(nwords, 4)
        .view("<u4")
        .reshape(nwords)
        .astype(np.uint32)
    )


def unpack_bits(words: np.ndarray, length: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: the first ``length`` bits as uint8 0/1."""
    b = np.asarray(words, dtype="<u4").view(np.uint8)
    return np.unpackbits(b, bitorder="little")[:length]


def pack_fields(values: np.ndarray, width: int) -> np.ndarray:
    """Pack unsigned integers of ``width`` bits each into uint32 words, value ``i`` occupying bits
    ``i*width .. i*width+width-1`` of the packed sequence (LSB first, as :func:`pack_bits`).

    When ``width`` does not divide 32 a field may straddle two words; one zero word is then
    appended so that :func:`tir_field` may always read the word after a field's first."""
    values = np.asarray(values, dtype=np.uint64).reshape(-1)
    if width < 1 or width > 32 or (values.size and int(values.max()) >> width):
        raise ValueError(f"values do not fit in {width} bits")
    bits = ((values[:, None] >> np.arange(width, dtype=np.uint64)) & 1).astype(np.uint8)
    words = pack_bits(bits.reshape(-1))
    if 32 % width:
        words = np.concatenate([words, np.zeros(1, np.uint32)])
    return words


def unpack_fields(words: np.ndarray, width: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_fields`."""
    bits = unpack_bits(words, width * count).reshape(count, width).astype(np.uint64)
    return (bits << np.arange(width, dtype=np.uint64)).sum(axis=1).astype(np.int64)


def tir_bit(words, j):
    """TIR: bit ``j`` (int64 PrimExpr) of the packed ``words`` (uint32 buffer/tensor), as uint32."""
    from tvm import tirx

    from tbn_tvm.kernels import i64

    word = words[tirx.shift_right(j, i64(5))]
    shift = tirx.Cast("uint32", tirx.bitwise_and(j, i64(31)))
    return tirx.bitwise_and(tirx.shift_right(word, shift), tirx.const(1, "uint32"))


def tir_field(words, i, width: int):
    """TIR: the ``width``-bit unsigned field ``i`` (int64 PrimExpr) of ``words`` packed by
    :func:`pack_fields`, as uint32.  A field may straddle two words."""
    from tvm import tirx

    from tbn_tvm.kernels import i64

    if width == 1:
        return tir_bit(words, i)
    start = i * i64(width)
    w = tirx.shift_right(start, i64(5))
    s = tirx.Cast("uint32", tirx.bitwise_and(start, i64(31)))
    mask = tirx.const((1 << width) - 1, "uint32")
    lo = tirx.shift_right(words[w], s)
    if 32 % width == 0:  # fields never straddle a word boundary
        return tirx.bitwise_and(lo, mask)
    hi = tirx.Select(
        s + tirx.const(width, "uint32") > tirx.const(32, "uint32"),
        tirx.shift_left(words[w + i64(1)], tirx.const(32, "uint32") - s),
        tirx.const(0, "uint32"),
    )
    return tirx.bitwise_and(tirx.bitwise_or(lo, hi), mask)
