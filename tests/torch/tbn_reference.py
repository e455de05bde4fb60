"""Independent numpy re-implementation of the Tiled Bit Network formulas (Gorbett et al., CIKM 2024).

Written from the paper/code description (research/tbn.md §1.2-1.3), not from tbn_tvm.torch:

    n = W.size, q = n / p
    s = sum_k W.flat[k*q:(k+1)*q]             (k = 0..p-1, contiguous row-major chunks)
    t = +1 where s > 0 else -1
    B = concat(t, ..., t).reshape(W.shape)      (p copies)
    alpha_k = mean(|A.flat[k*q:(k+1)*q]|)        (per copy)   or   alpha = mean(|A|)  (single)
    W_hat.flat[k*q:(k+1)*q] = alpha_k * t

Gradients with the identity STE (dL/dB = G_B means dL/dW = G_B, element by element):

    W_hat = B * alpha_expanded, so dL/dW_i = dL/dW_hat_i * alpha_{k(i)}
    dL/dA_i = sign(A_i) / q * sum_{j in chunk k(i)} dL/dW_hat_j * t_j       (per copy)
    dL/dA_i = sign(A_i) / n * sum_j dL/dW_hat_j * t_j                        (single)
"""

from __future__ import annotations

import numpy as np


def tile_bits(w: np.ndarray, p: int) -> np.ndarray:
    flat = w.reshape(-1)
    n = flat.size
    assert n % p == 0
    q = n // p
    s = np.zeros(q, dtype=flat.dtype)
    for k in range(p):  # sequential sum over the chunks, as written in the paper
        s = s + flat[k * q : (k + 1) * q]
    return np.where(s > 0, 1.0, -1.0).astype(w.dtype)


def alphas(a: np.ndarray, p: int, mode: str) -> np.ndarray:
    flat = np.abs(a.reshape(-1))
    q = flat.size // p
    if mode == "per_copy":
        return np.array([flat[k * q : (k + 1) * q].mean() for k in range(p)], dtype=a.dtype)
    return np.array([flat.mean()], dtype=a.dtype)


def tiled_weight(w: np.ndarray, p: int, a: np.ndarray | None, mode: str) -> np.ndarray:
    src = w if a is None else a
    t = tile_bits(w, p)
    al = alphas(src, p, mode)
    pieces = [t * (al[k] if mode == "per_copy" else al[0]) for k in range(p)]
    return np.concatenate(pieces).reshape(w.shape).astype(w.dtype)


def tiled_weight_grads(w: np.ndarray, p: int, a: np.ndarray | None, mode: str, g: np.ndarray):
    """(dL/dW, dL/dA) for L = sum(W_hat * g); dL/dA is None when a is None (then folded into W)."""
    n = w.size
    q = n // p
    src = w if a is None else a
    t = tile_bits(w, p)
    al = alphas(src, p, mode)
    gf = g.reshape(-1).astype(np.float64)
    t_full = np.tile(t, p).astype(np.float64)
    if mode == "per_copy":
        al_full = np.repeat(al.astype(np.float64), q)
        per_copy = np.array([(gf[k * q : (k + 1) * q] * t).sum() for k in range(p)])
        d_src = np.sign(src.reshape(-1)) / q * np.repeat(per_copy, q)
    else:
        al_full = np.full(n, float(al[0]))
        d_src = np.sign(src.reshape(-1)) / n * (gf * t_full).sum()
    d_w = gf * al_full  # straight through B, times the scale
    if a is None:
        return (d_w + d_src).reshape(w.shape), None
    return d_w.reshape(w.shape), d_src.reshape(a.shape)


# ------------------------------------------------------------------------------ layer forwards
def linear(x: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    y = x.astype(np.float64) @ w.astype(np.float64).T
    return y if b is None else y + b


def conv_nd(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None,
    stride,
    padding,
    dilation,
    groups: int,
    padding_mode: str = "zeros",
) -> np.ndarray:
    """Direct N-d convolution (cross-correlation, like torch) for 1-d and 2-d, float64."""
    nd = w.ndim - 2
    x = x.astype(np.float64)
    w = w.astype(np.float64)
    pad = [(0, 0), (0, 0)] + [(pd, pd) for pd in padding]
    mode = {"zeros": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}[padding_mode]
    x = np.pad(x, pad, mode=mode)
    n, c = x.shape[:2]
    o = w.shape[0]
    k = w.shape[2:]
    cin_g, cout_g = c // groups, o // groups
    out_sp = [(x.shape[2 + d] - dilation[d] * (k[d] - 1) - 1) // stride[d] + 1 for d in range(nd)]
    y = np.zeros((n, o, *out_sp))
    for g in range(groups):
        xs = x[:, g * cin_g : (g + 1) * cin_g]
        ws = w[g * cout_g : (g + 1) * cout_g]
        for idx in np.ndindex(*k):
            sl = tuple(
                slice(idx[d] * dilation[d], idx[d] * dilation[d] + stride[d] * (out_sp[d] - 1) + 1, stride[d])
                for d in range(nd)
            )
            patch = xs[(slice(None), slice(None), *sl)]  # [n, cin_g, *out_sp]
            wk = ws[(slice(None), slice(None), *idx)]  # [cout_g, cin_g]
            y[:, g * cout_g : (g + 1) * cout_g] += np.einsum("nc...,oc->no...", patch, wk)
    if b is not None:
        y += b.reshape(1, -1, *([1] * nd))
    return y
