"""``y = x @ W`` with W read from a compact weight format (decode fused into the reduction).

The stored matmul operand is ``W[k, n]`` (``[in, out]``).  The format describes either that
array's own flat order (``order="stored"``: flat index ``k*N + n``) or its transpose, the
``[out, in]`` Linear weight (``order="transposed"``: flat index ``n*K + k``).
"""

from __future__ import annotations

from tbn_tvm.kernels import Layer, finish, i64, shape64, widen


def flat_index(order: str, k, n, K: int, N: int):
    """Flat element index of ``W[k, n]`` in the format's order."""
    if order == "transposed":
        return n * i64(K) + k
    if order == "stored":
        return k * i64(N) + n
    raise ValueError(f"unknown weight order {order!r}")


def dense_te(layer: Layer, fmt) -> list:
    """TE tensors ``[X, *buffers, Y]`` computing ``Y[..., n] = sum_k X[..., k] * W[k, n]``."""
    from tvm import te

    *lead, K = layer.x_shape
    N = layer.out_shape[-1]
    X = te.placeholder(shape64([*lead, K]), layer.dtype, name="x")
    bufs = fmt.placeholders()
    k = te.reduce_axis((i64(0), i64(K)), name="k")

    def body(*idx):
        *m, n = idx
        w = fmt.read(bufs, flat_index(layer.order, k, n, K, N))
        return te.sum(widen(X[(*m, k)], layer) * widen(w, layer), axis=k)

    Y = te.compute(shape64([*lead, N]), body, name="tbn_dense")
    return [X, *bufs.values(), finish(Y, layer, "tbn_dense_cast")]
