"""Independent numpy re-implementations of the SNN and bit-wise formulas (no torch).

SNN (Wang et al., ICCV 2021; code yikaiw/SNN ``weights2patterns``): each kernel maps to the
codeword at the smallest L2 distance (latent kernel) or Hamming distance (its sign kernel),
ties to the lowest index; ``Ŵ[o, i] = mean|W[o]| · C[idx(o, i)]``; refinement re-estimates each
used codeword as the sign of the mean of its kernels (zero keeps the old sign).

Bit-wise (Ivan 2022; code stracini-git/bitwise-weight-training ``calculate_number``):
``W = α · (−1)^H(x_{k−1}) · Σ_{i<k−1} H(x_i) 2^i`` with ``H(x) = 1 if x > 0 else 0``.
"""

from __future__ import annotations

import numpy as np


def sign(a: np.ndarray) -> np.ndarray:
    return np.where(a > 0, 1.0, -1.0)


def nearest_codeword(kernels: np.ndarray, codebook: np.ndarray, match: str) -> np.ndarray:
    """``[N, kk]`` kernels, ``[M, kk]`` codebook -> ``[N]`` indices."""
    if match == "latent":
        dist = np.linalg.norm(
            kernels[:, None, :].astype(np.float64) - codebook[None].astype(np.float64), axis=2
        )
    else:
        dist = (sign(kernels)[:, None, :] != codebook[None]).sum(axis=2)
    return dist.argmin(axis=1)  # numpy keeps the first minimum


def snn_weight(w: np.ndarray, codebook: np.ndarray, match: str) -> np.ndarray:
    o, i = w.shape[:2]
    kernels = w.reshape(o * i, -1)
    idx = nearest_codeword(kernels, codebook, match)
    alpha = np.abs(w).reshape(o, -1).mean(axis=1)
    return alpha[:, None, None, None] * codebook[idx].reshape(w.shape)


def snn_grad(w: np.ndarray, upstream: np.ndarray) -> np.ndarray:
    """STE through clamp(W, −1, 1), times the (detached) per-channel α."""
    alpha = np.abs(w).reshape(w.shape[0], -1).mean(axis=1)
    return alpha[:, None, None, None] * upstream * (np.abs(w) <= 1)


def refine_rule(w: np.ndarray, codebook: np.ndarray, match: str) -> tuple[np.ndarray, np.ndarray]:
    """The re-estimated codebook and the mask of codewords to replace (empty or a later duplicate)."""
    o, i = w.shape[:2]
    kernels = w.reshape(o * i, -1).astype(np.float64)
    idx = nearest_codeword(kernels, codebook, match)
    new = codebook.copy()
    replace = np.zeros(len(codebook), bool)
    seen = set()
    for c in range(len(codebook)):
        members = kernels[idx == c]
        if len(members) == 0:
            replace[c] = True
            continue
        mean = members.mean(axis=0)
        new[c] = np.where(mean > 0, 1.0, np.where(mean < 0, -1.0, codebook[c]))
        key = tuple(new[c])
        if key in seen:
            replace[c] = True
        seen.add(key)
    return new, replace


def bitwise_integer(planes: np.ndarray) -> np.ndarray:
    """``[k, *shape]`` latent planes -> the signed integer weight."""
    k = planes.shape[0]
    bits = (planes > 0).astype(np.int64)
    magnitude = sum(bits[i] * (2**i) for i in range(k - 1))
    return np.where(bits[k - 1] == 1, -1, 1) * magnitude


def bitwise_weight(planes: np.ndarray, alpha) -> np.ndarray:
    return (np.asarray(alpha, np.float32) * bitwise_integer(planes).astype(np.float32)).astype(np.float32)


def bitwise_grads(planes: np.ndarray, alpha, upstream: np.ndarray) -> np.ndarray:
    """Straight-through gradients of every plane: ``α·s·2^i·G`` for magnitude bit ``i``,
    ``−α·m·G`` for the sign (the authors' ``to_bit`` / ``to_sign`` backward)."""
    k = planes.shape[0]
    bits = (planes > 0).astype(np.float64)
    s = 1.0 - 2.0 * bits[k - 1]
    magnitude = sum(bits[i] * (2**i) for i in range(k - 1))
    a = np.asarray(alpha, np.float64)
    grads = [a * s * (2**i) * upstream for i in range(k - 1)]
    grads.append(-a * magnitude * upstream)
    return np.stack(grads)
