"""``y = x @ W`` with W read from a compact weight format (decode fused into the reduction).

The stored matmul operand is ``W[k, n]`` (``[in, out]``).  The format describes either that
array's own flat order (``order="stored"``: flat index ``k*N + n``) or its transpose, the
``[out, in]`` Linear weight (``order="transposed"``: flat index ``n*K + k``).
"""

from __future__ import annotations

from collections.abc import Sequence

from tbn_tvm.kernels import i64, shape64


def flat_index(order: str, k, n, K: int, N: int):
    """Flat element index of ``W[k, n]`` in the format's order."""
    if order == "transposed":
        return n * i64(K) + k
    if order == "stored":
        return k * i64(N) + n
    raise ValueError(f"unknown weight order {order!r}")


def dense_te(x_shape: Sequence[int], fmt, order: str, dtype: str = "float32"):
    """TE tensors ``[X, words, scales, Y]`` computing ``Y[..., n] = sum_k X[..., k] * W[k, n]``."""
    from tvm import te

    *lead, K = (int(d) for d in x_shape)
    N = fmt.shape[0] if order == "transposed" else fmt.shape[1]
    X = te.placeholder(shape64([*lead, K]), dtype, name="x")
    P = te.placeholder(shape64([fmt.num_words]), "uint32", name="tile_words")
    A = te.placeholder(shape64([fmt.num_scales]), "float32", name="scales")
    k = te.reduce_axis((i64(0), i64(K)), name="k")

    def body(*idx):
        *m, n = idx
        w = fmt.tir_read(P, A, flat_index(order, k, n, K, N))
        return te.sum(X[(*m, k)] * w, axis=k)

    Y = te.compute(shape64([*lead, N]), body, name="tbn_dense")
    return [X, P, A, Y]


def make_dense(name: str, x_shape: Sequence[int], fmt, order: str):
    """A PrimFunc named ``name`` for :func:`dense_te`."""
    from tvm import te

    return te.create_prim_func(dense_te(x_shape, fmt, order)).with_attr("global_symbol", name)
