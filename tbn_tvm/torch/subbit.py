"""Sub-bit Neural Networks (SNN): convolutions whose binary kernels come from a small codebook.

Wang, Yang, Sun, Yao, "Sub-bit Neural Networks: Learning to Compress and Accelerate Binary
Neural Networks", ICCV 2021 (code ``yikaiw/SNN``, ``step2/modules/binarize.py`` and
``patterns.py``).  In a :class:`SubBitConv2d` with latent weight ``W`` of shape
``[O, I/g, kh, kw]`` and ``kk = kh·kw``:

1. every ``(o, i)`` kernel ``W[o, i]`` (``kk`` values) is mapped to its nearest codeword of the
   layer's codebook ``C`` (``2^τ`` distinct ±1 kernels, buffer ``codebook`` ``[2^τ, kk]``):
   ``idx(o, i) = argmin_c ‖W[o, i] − C[c]‖₂`` on the latent kernel (``match="latent"``, the
   authors' ``weights2patterns``; equal to ``argmax_c W[o, i]·C[c]``), or on its sign kernel,
   i.e. the Hamming distance ``argmin_c #{j : sign(W[o, i, j]) ≠ C[c, j]}``
   (``match="sign"``); ties go to the lowest codeword index;
2. the binary weight is ``B[o, i] = C[idx(o, i)]``;
3. one scale per output channel, ``α_o = mean |W[o]|`` over ``(I/g, kh, kw)`` (detached, as the
   authors do); the layer convolves with ``Ŵ = α_o · B``.

Backward (training mode) is the authors' straight-through estimator through
``clamp(W, −1, 1)``: ``∂L/∂W = α_o · ∂L/∂Ŵ · 1{|W| ≤ 1}``.

Codebook.  The initial ``2^τ`` codewords are a random sample of the layer's own sign kernels
(``sign(W[o, i])`` with ``0 → −1``; kernels in random order, the first ``2^τ`` distinct
patterns; uniformly random further patterns when the layer has fewer distinct ones).  Every
``refine_every`` training steps (forward passes in training mode with gradients on; 25 like the
authors' code) the codebook is refined (:meth:`SubBitConv2d.refine_codebook`):

* each codeword becomes the sign of the mean of the latent kernels mapped to it
  (``C[c] ← sign(mean_{idx(o,i)=c} W[o, i])``; a zero mean keeps the old sign), the best ±1
  kernel for its cluster under ``match="latent"`` (a Lloyd step of binary k-means);
* an empty codeword (no kernel maps to it) and the later copies of a duplicated one are
  replaced by random sampling as at initialisation, from the layer's sign kernels that are not
  already codewords.

This replaces the authors' gradient step on the real-valued ``patterns`` every 25 iterations
(their ``remove_repetitive_patterns`` / ``conpensate_patterns`` duplicate handling is kept).
The random choices come from a generator seeded by the buffers ``seed`` and ``step``, so
training is reproducible, and identical in every process of a data-parallel run.

Storage (:meth:`SubBitConv2d.storage_bits`): ``τ`` bits per kernel index, ``kk·2^τ`` codebook
bits and 32 bits per ``α_o``: for a 3×3 layer ``τ/9`` bit per weight plus the amortised codebook
and scales.  Export: :meth:`SubBitConv2d.to_dense` is a plain ``nn.Conv2d`` with the constant
``α_o · C[idx(o, i)]`` (``export_onnx(form="dense")``); :meth:`SubBitConv2d.freeze` is the
compact :class:`FrozenSubBit` (``form="tile"``): codebook, indices and scales rebuilt by
``Gather → Mul → Reshape`` into the same constant, with a following BatchNorm left separate.
Either way the compiler's ``codebook`` format re-detects the layer.

>>> import torch
>>> conv = SubBitConv2d(16, 32, 3, padding=1, bias=False, tau=4)
>>> conv(torch.randn(2, 16, 8, 8)).shape
torch.Size([2, 32, 8, 8])
>>> conv.codebook.shape, int(conv.kernel_indices().max()) < 16
(torch.Size([16, 9]), True)
"""

from __future__ import annotations

import fnmatch
import math
import warnings
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from tbn_tvm.torch.layers import ALPHA_BITS, TilingError, _exporting

__all__ = ["SubBitConv2d", "FrozenSubBit", "subbitify", "sign_kernel_codes", "MatchMode"]

MatchMode = Literal["latent", "sign"]


def _signs(w: torch.Tensor) -> torch.Tensor:
    """``+1`` where ``w > 0``, else ``−1`` (the project's sign: ``0 → −1``)."""
    return torch.where(w > 0, 1.0, -1.0).to(w.dtype)


def sign_kernel_codes(kernels: torch.Tensor) -> torch.Tensor:
    """Integer code of each ±1 (or real) kernel row: bit ``j`` set where element ``j`` is ``> 0``.

    >>> sign_kernel_codes(torch.tensor([[1.0, -1.0, 1.0], [-0.5, 0.0, 2.0]]))
    tensor([5, 4])
    """
    kk = kernels.shape[-1]
    weights = torch.tensor([1 << j for j in range(kk)], dtype=torch.int64)
    return ((kernels.detach().cpu() > 0).to(torch.int64) * weights).sum(-1)


def _code_to_kernel(code: int, kk: int) -> list[float]:
    return [1.0 if (code >> j) & 1 else -1.0 for j in range(kk)]


class SubBitConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose ``k×k`` binary kernels are drawn from a learned codebook of ``2^τ``.

    Same constructor arguments as ``nn.Conv2d`` plus ``tau`` (codebook of ``2^τ`` kernels,
    ``1 ≤ τ ≤ kh·kw``), ``match`` (``"latent"`` or ``"sign"``, see the module docstring),
    ``refine_every`` (refine the codebook every that many training steps; 0: never) and
    ``seed`` (the codebook's random choices; default: drawn from torch's global RNG, so
    ``torch.manual_seed`` makes the layer reproducible).

    Buffers: ``codebook`` ``[2^τ, kh·kw]`` (±1), ``step`` (training steps so far), ``seed``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device=None,
        dtype=None,
        *,
        tau: int = 5,
        match: MatchMode = "latent",
        refine_every: int = 25,
        seed: int | None = None,
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=bias,
            padding_mode=padding_mode,
            device=device,
            dtype=dtype,
        )
        kk = math.prod(self.kernel_size)
        if kk > 62:
            raise TilingError(f"SubBitConv2d supports kernels of at most 62 elements, got {self.kernel_size}")
        if not isinstance(tau, int) or isinstance(tau, bool) or not 1 <= tau <= min(kk, 16):
            raise TilingError(
                f"tau must be an integer in 1..{min(kk, 16)} for {self.kernel_size} kernels, got {tau!r}",
                hint="a codebook of 2^tau kernels cannot exceed the 2^(kh*kw) possible sign kernels",
            )
        if match not in ("latent", "sign"):
            raise TilingError(f"match must be 'latent' or 'sign', got {match!r}")
        if not isinstance(refine_every, int) or refine_every < 0:
            raise TilingError(f"refine_every must be an integer >= 0, got {refine_every!r}")
        self.tau = tau
        self.match = match
        self.refine_every = refine_every
        if seed is None:
            seed = int(torch.randint(0, 2**31 - 1, ()))
        self.register_buffer("codebook", torch.empty(1 << tau, kk, device=device, dtype=self.weight.dtype))
        self.register_buffer("step", torch.zeros((), dtype=torch.int64, device=device))
        self.register_buffer("seed", torch.tensor(int(seed), dtype=torch.int64, device=device))
        self.reset_codebook()

    # -- the quantities of the paper --------------------------------------------------------
    @property
    def kernel_elements(self) -> int:
        """``kk = kh·kw``: the length of a kernel and of a codeword."""
        return math.prod(self.kernel_size)

    @property
    def num_kernels(self) -> int:
        """``O · I/g``: the number of kernels (one index each)."""
        return self.weight.shape[0] * self.weight.shape[1]

    def _kernels(self) -> torch.Tensor:
        return self.weight.reshape(self.num_kernels, self.kernel_elements)

    def alphas(self) -> torch.Tensor:
        """``α_o = mean |W[o]|``, shape ``[O]`` (no gradient)."""
        return self.weight.detach().abs().reshape(self.weight.shape[0], -1).mean(dim=1)

    @torch.no_grad()
    def kernel_indices(self) -> torch.Tensor:
        """``idx(o, i)``: the codeword of every kernel, int64 ``[O, I/g]``."""
        k = self._kernels().detach()
        if self.match == "sign":
            k = _signs(k)
        # argmin ‖k − c‖² = argmin (‖k‖² − 2 k·c + kk) = argmax k·c; argmax keeps the first maximum
        return (k @ self.codebook.t()).argmax(dim=1).reshape(self.weight.shape[0], self.weight.shape[1])

    def binary_weight(self) -> torch.Tensor:
        """``B = C[idx]`` reshaped to ``W.shape`` (±1, no gradient)."""
        return self.codebook[self.kernel_indices().reshape(-1)].reshape(self.weight.shape)

    def subbit_weight(self, ste: bool | None = None) -> torch.Tensor:
        """``Ŵ = α_o · C[idx(o, i)]``; with ``ste`` (default: in training mode, not exporting)
        gradients reach ``W`` through ``clamp(W, −1, 1)``."""
        if ste is None:
            ste = self.training and not _exporting()
        b = self.binary_weight()
        if ste:
            clipped = self.weight.clamp(-1.0, 1.0)
            b = b + (clipped - clipped.detach())  # forward value exactly b
        return self.alphas().reshape(-1, 1, 1, 1) * b

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if self.training and torch.is_grad_enabled() and not _exporting() and self.refine_every:
            with torch.no_grad():
                self.step += 1
            if int(self.step) % self.refine_every == 0:
                self.refine_codebook()
        return self._conv_forward(x, self.subbit_weight(), self.bias)

    def storage_bits(self) -> int:
        """``τ·O·I/g`` index bits + ``kk·2^τ`` codebook bits + 32 per output-channel α (bias not included)."""
        return (
            self.tau * self.num_kernels
            + self.kernel_elements * (1 << self.tau)
            + ALPHA_BITS * self.out_channels
        )

    def extra_repr(self) -> str:  # noqa: D102
        return (
            f"{super().extra_repr()}, tau={self.tau}, match={self.match!r}, refine_every={self.refine_every}"
        )

    # -- the codebook ------------------------------------------------------------------------
    def _generator(self) -> torch.Generator:
        g = torch.Generator()
        g.manual_seed((int(self.seed) * 1_000_003 + int(self.step)) % (2**63 - 1))
        return g

    def _sample_codes(self, taken: set[int], count: int, g: torch.Generator) -> list[int]:
        """``count`` new codes not in ``taken``: the layer's sign kernels in random order, then
        uniformly random patterns."""
        out: list[int] = []
        if count <= 0:
            return out
        codes = sign_kernel_codes(self._kernels())
        for c in codes[torch.randperm(len(codes), generator=g)].tolist():
            if c not in taken:
                taken.add(c)
                out.append(c)
                if len(out) == count:
                    return out
        while len(out) < count:
            c = int(torch.randint(0, 1 << self.kernel_elements, (), generator=g))
            if c not in taken:
                taken.add(c)
                out.append(c)
        return out

    @torch.no_grad()
    def reset_codebook(self) -> None:
        """Initial codebook: ``2^τ`` distinct patterns sampled from the layer's own sign kernels."""
        codes = self._sample_codes(set(), 1 << self.tau, self._generator())
        book = torch.tensor(
            [_code_to_kernel(c, self.kernel_elements) for c in codes], dtype=self.codebook.dtype
        )
        self.codebook.copy_(book)

    @torch.no_grad()
    def refine_codebook(self) -> dict:
        """One refinement step (see the module docstring); returns ``{"moved", "replaced"}``:
        codewords whose pattern changed by re-estimation, and codewords replaced because they
        were empty or duplicates."""
        m, kk = self.codebook.shape
        idx = self.kernel_indices().reshape(-1)
        k = self._kernels().detach()
        counts = torch.bincount(idx, minlength=m)
        sums = torch.zeros(m, kk, dtype=k.dtype, device=k.device).index_add_(0, idx, k)
        mean = sums / counts.clamp(min=1).unsqueeze(1).to(k.dtype)
        old = self.codebook.clone()
        new = torch.where(mean > 0, 1.0, torch.where(mean < 0, -1.0, old)).to(old.dtype)
        moved = int((new != old).any(dim=1).sum())
        codes = sign_kernel_codes(new).tolist()
        keep: set[int] = set()
        replace: list[int] = []
        for j, c in enumerate(codes):
            if counts[j] == 0 or c in keep:
                replace.append(j)
            else:
                keep.add(c)
        if replace:
            fresh = self._sample_codes(keep, len(replace), self._generator())
            for j, c in zip(replace, fresh, strict=True):
                new[j] = torch.tensor(_code_to_kernel(c, kk), dtype=new.dtype)
        self.codebook.copy_(new)
        return {"moved": moved, "replaced": len(replace)}

    # -- conversions ------------------------------------------------------------------------
    @classmethod
    def from_dense(
        cls,
        layer: nn.Conv2d,
        tau: int = 5,
        match: MatchMode = "latent",
        refine_every: int = 25,
        copy_weight: bool = True,
        seed: int | None = None,
    ) -> SubBitConv2d:
        """A sub-bit layer with ``layer``'s shape and options (by default its weight and bias);
        the codebook is sampled from the copied weight."""
        new = cls(
            layer.in_channels,
            layer.out_channels,
            layer.kernel_size,
            stride=layer.stride,
            padding=layer.padding,
            dilation=layer.dilation,
            groups=layer.groups,
            bias=layer.bias is not None,
            padding_mode=layer.padding_mode,
            device=layer.weight.device,
            dtype=layer.weight.dtype,
            tau=tau,
            match=match,
            refine_every=refine_every,
            seed=seed,
        )
        if copy_weight:
            with torch.no_grad():
                new.weight.copy_(layer.weight)
                if layer.bias is not None:
                    new.bias.copy_(layer.bias)
            new.reset_codebook()
        new.train(layer.training)
        return new

    def freeze(self) -> FrozenSubBit:
        """The compact inference form (see :class:`FrozenSubBit`)."""
        return FrozenSubBit(self)

    @torch.no_grad()
    def to_dense(self) -> nn.Conv2d:
        """A plain ``nn.Conv2d`` whose weight is ``α_o · C[idx(o, i)]`` (inference, no grad)."""
        dense = nn.Conv2d(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups,
            bias=self.bias is not None,
            padding_mode=self.padding_mode,
            device=self.weight.device,
            dtype=self.weight.dtype,
        )
        dense.weight.copy_(self.subbit_weight(ste=False))
        if self.bias is not None:
            dense.bias.copy_(self.bias)
        dense.train(self.training)
        return dense


class FrozenSubBit(nn.Module):
    """Inference form of a :class:`SubBitConv2d`: buffers ``codebook`` (``[2^τ, kh·kw]``, ±1),
    ``indices`` (int32 ``[O·I/g]``) and ``scales`` (``[O, 1]``); the weight is
    ``reshape(codebook[indices] · scales)``, exactly the layer's eval weight.  Exported to ONNX
    it is ``Gather → Mul → Reshape`` in front of the Conv (the compiler folds it)."""

    def __init__(self, layer: SubBitConv2d) -> None:
        super().__init__()
        self.tau = layer.tau
        self.weight_shape = tuple(layer.weight.shape)
        with torch.no_grad():
            self.register_buffer("codebook", layer.codebook.detach().clone())
            self.register_buffer("indices", layer.kernel_indices().reshape(-1).to(torch.int32))
            self.register_buffer("scales", layer.alphas().reshape(-1, 1).clone())
            self.register_buffer("bias", None if layer.bias is None else layer.bias.detach().clone())
        self.stride, self.padding, self.dilation = layer.stride, layer.padding, layer.dilation
        self.groups, self.padding_mode = layer.groups, layer.padding_mode
        self._pad = layer._reversed_padding_repeated_twice
        self.train(False)

    def weight(self) -> torch.Tensor:
        """``α_o · C[idx(o, i)]`` in the layer's shape."""
        kernels = torch.index_select(self.codebook, 0, self.indices).reshape(self.weight_shape[0], -1)
        return (kernels * self.scales).reshape(self.weight_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        w = self.weight()
        if self.padding_mode != "zeros":
            x = torch.nn.functional.pad(x, self._pad, mode=self.padding_mode)
            return torch.nn.functional.conv2d(x, w, self.bias, self.stride, 0, self.dilation, self.groups)
        return torch.nn.functional.conv2d(
            x, w, self.bias, self.stride, self.padding, self.dilation, self.groups
        )

    def storage_bits(self) -> int:
        """As :meth:`SubBitConv2d.storage_bits`."""
        n_kernels = self.weight_shape[0] * self.weight_shape[1]
        return self.tau * n_kernels + self.codebook.numel() + ALPHA_BITS * self.weight_shape[0]

    def extra_repr(self) -> str:  # noqa: D102
        return f"weight={list(self.weight_shape)}, tau={self.tau}"


def subbitify(
    model: nn.Module,
    tau: int = 5,
    *,
    kernel_sizes: Sequence[tuple[int, int]] = ((3, 3),),
    depthwise: bool = False,
    skip_first: bool = True,
    exclude: Sequence[str] = (),
    match: MatchMode = "latent",
    refine_every: int = 25,
    copy_weights: bool = True,
) -> nn.Module:
    """Replace the model's ``nn.Conv2d`` layers by :class:`SubBitConv2d`, **in place**; returns it.

    A layer is converted when it is exactly an ``nn.Conv2d`` (subclasses are left alone), its
    kernel size is in ``kernel_sizes`` (3×3 by default; add ``(1, 1)`` for pointwise convs, whose
    ``τ`` is capped at ``kh·kw``), it is not grouped (``groups == 1``) or, with
    ``depthwise=True``, it is depthwise (``groups == in_channels``), its name matches no glob of
    ``exclude``, and, with ``skip_first`` (default, like the authors' full-precision stem), it is
    not the model's first Conv2d.  With ``copy_weights`` (default) the latent weight and bias
    start from the dense layer and the codebook is sampled from them.

    >>> from torch import nn
    >>> model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.Conv2d(16, 16, 1))
    >>> [type(m).__name__ for m in subbitify(model, tau=4)]
    ['Conv2d', 'ReLU', 'SubBitConv2d', 'Conv2d']
    """
    sizes = {tuple(s) for s in kernel_sizes}
    if isinstance(model, nn.Conv2d):
        raise TilingError(
            "subbitify needs a container model, not a single layer",
            hint="wrap it, e.g. nn.Sequential(conv), or use SubBitConv2d.from_dense",
        )
    convs = [(name, m) for name, m in model.named_modules(remove_duplicate=False) if type(m) is nn.Conv2d]
    first = convs[0][1] if convs else None
    replaced: dict[int, nn.Module] = {}
    for name, m in convs:
        if skip_first and m is first:
            continue
        if tuple(m.kernel_size) not in sizes or any(fnmatch.fnmatchcase(name, p) for p in exclude):
            continue
        if m.groups != 1 and not (depthwise and m.groups == m.in_channels):
            continue
        new = replaced.get(id(m))
        if new is None:
            kk = math.prod(m.kernel_size)
            t = min(tau, kk)
            if t < tau:
                warnings.warn(
                    f"subbitify: layer {name!r} has {kk}-element kernels: tau capped at {t}", stacklevel=2
                )
            new = SubBitConv2d.from_dense(
                m, t, match=match, refine_every=refine_every, copy_weight=copy_weights
            )
            replaced[id(m)] = new
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, new)
    return model
