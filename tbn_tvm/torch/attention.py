"""Tiled attention projections: ``nn.MultiheadAttention`` with tiled (or binary) weights.

``nn.MultiheadAttention`` does not call its projections as modules: it passes its packed
``in_proj_weight`` (``[3E, E]``: the Q, K and V projections stacked) and ``out_proj.weight`` to
``F.multi_head_attention_forward``.  Replacing ``out_proj`` by a tiled layer would change
nothing (the latent weight would be used as it is), so :class:`TiledMultiheadAttention` holds
the two projections as layers — ``in_proj`` (``[3E, E]``, tiled as **one** weight, as the ONNX
exporter writes a self-attention's packed projection: one MatMul with the whole constant) and
``out_proj`` (``[E, E]``) — and passes their weights (``B̂`` of a tiled layer, the plain weight
of a dense one) to the same function.  Its forward takes and returns what
``nn.MultiheadAttention``'s does; only ``kdim == vdim == embed_dim`` (one packed projection)
is handled.

>>> import torch
>>> from torch import nn
>>> mha = nn.MultiheadAttention(32, 4, batch_first=True)
>>> tiled = TiledMultiheadAttention.from_mha(mha, p_in=4, p_out=2)
>>> x = torch.randn(2, 5, 32)
>>> out, weights = tiled(x, x, x)
>>> out.shape, weights.shape, tiled.in_proj.p, tiled.out_proj.p
(torch.Size([2, 5, 32]), torch.Size([2, 5, 5]), 4, 2)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tbn_tvm.torch.layers import AlphaMode, AlphaSource, FrozenTiled, TiledLayer, TiledLinear, TilingError

__all__ = ["TiledMultiheadAttention", "projection"]


def projection(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(weight, bias)`` a projection computes with: ``B̂`` of a :class:`TiledLinear` (STE in
    training), the rebuilt weight of its :class:`FrozenTiled` inference form, or the weight of a
    dense ``nn.Linear``."""
    if isinstance(layer, TiledLayer):
        return layer.binary_weight(), layer.bias
    if isinstance(layer, FrozenTiled):
        return layer.weight(), layer.bias
    return layer.weight, layer.bias


class TiledMultiheadAttention(nn.Module):
    """``nn.MultiheadAttention`` whose projections are layers (see the module docstring).

    Attributes as ``nn.MultiheadAttention``'s (``embed_dim``, ``num_heads``, ``head_dim``,
    ``dropout``, ``batch_first``, ``bias_k``, ``bias_v``, ``add_zero_attn``), plus ``in_proj``
    (``[3E, E]``) and ``out_proj`` (``[E, E]``): :class:`TiledLinear` or ``nn.Linear``.
    ``forward(query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
    average_attn_weights=True, is_causal=False)`` returns ``(output, weights or None)``; shapes
    are ``nn.MultiheadAttention``'s (``[N, L, E]`` with ``batch_first``, else ``[L, N, E]``).
    """

    _qkv_same_embed_dim = True  # what nn.TransformerEncoderLayer asks before its fast path

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        in_proj: nn.Module,
        out_proj: nn.Module,
        *,
        dropout: float = 0.0,
        batch_first: bool = False,
        bias_k: torch.Tensor | None = None,
        bias_v: torch.Tensor | None = None,
        add_zero_attn: bool = False,
    ) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise TilingError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim, self.kdim, self.vdim = embed_dim, embed_dim, embed_dim
        self.num_heads, self.head_dim = num_heads, embed_dim // num_heads
        self.dropout, self.batch_first, self.add_zero_attn = dropout, batch_first, add_zero_attn
        self.in_proj, self.out_proj = in_proj, out_proj
        self.bias_k = None if bias_k is None else nn.Parameter(bias_k.detach().clone())
        self.bias_v = None if bias_v is None else nn.Parameter(bias_v.detach().clone())

    @property
    def in_proj_bias(self) -> torch.Tensor | None:
        """The packed Q/K/V bias (``None`` without bias), as ``nn.MultiheadAttention`` names it."""
        return self.in_proj.bias

    @classmethod
    def from_mha(
        cls,
        mha: nn.MultiheadAttention,
        p_in: int | None,
        p_out: int | None,
        alpha: AlphaMode = "per_copy",
        alpha_source: AlphaSource = "A",
        copy_weight: bool = True,
    ) -> TiledMultiheadAttention:
        """A tiled copy of ``mha`` (its weights and biases by default): the packed in-projection
        tiled with ``p_in``, the out-projection with ``p_out`` (``None``: that projection stays a
        dense ``nn.Linear``).  Raises :class:`TilingError` for an attention with separate
        ``kdim``/``vdim`` projections or a ``p`` that does not divide a projection's size."""
        if not mha._qkv_same_embed_dim or mha.in_proj_weight is None:
            raise TilingError(
                "only MultiheadAttention with kdim == vdim == embed_dim (one packed projection)"
            )
        e = mha.embed_dim
        dense_in = nn.Linear(e, 3 * e, bias=mha.in_proj_bias is not None)
        dense_in = dense_in.to(device=mha.in_proj_weight.device, dtype=mha.in_proj_weight.dtype)
        with torch.no_grad():
            dense_in.weight.copy_(mha.in_proj_weight)
            if mha.in_proj_bias is not None:
                dense_in.bias.copy_(mha.in_proj_bias)
        dense_out = mha.out_proj

        def make(dense: nn.Linear, p: int | None) -> nn.Module:
            if p is None:
                plain = nn.Linear(dense.in_features, dense.out_features, bias=dense.bias is not None)
                plain = plain.to(device=dense.weight.device, dtype=dense.weight.dtype)
                plain.load_state_dict(dense.state_dict())
                return plain
            return TiledLinear.from_dense(
                dense, p, alpha=alpha, alpha_source=alpha_source, copy_weight=copy_weight
            )

        new = cls(
            e,
            mha.num_heads,
            make(dense_in, p_in),
            make(dense_out, p_out),
            dropout=mha.dropout,
            batch_first=mha.batch_first,
            bias_k=mha.bias_k,
            bias_v=mha.bias_v,
            add_zero_attn=mha.add_zero_attn,
        )
        new.train(mha.training)
        return new

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:  # noqa: D102
        key_padding_mask = F._canonical_mask(
            mask=key_padding_mask,
            mask_name="key_padding_mask",
            other_type=F._none_or_dtype(attn_mask),
            other_name="attn_mask",
            target_type=query.dtype,
        )
        attn_mask = F._canonical_mask(
            mask=attn_mask,
            mask_name="attn_mask",
            other_type=None,
            other_name="",
            target_type=query.dtype,
            check_other=False,
        )
        batched = query.dim() == 3
        if self.batch_first and batched:  # keep the "is" relations: they pick the packed path
            if key is value:
                if query is key:
                    query = key = value = query.transpose(1, 0)
                else:
                    query, key = (x.transpose(1, 0) for x in (query, key))
                    value = key
            else:
                query, key, value = (x.transpose(1, 0) for x in (query, key, value))
        in_w, in_b = projection(self.in_proj)
        out_w, out_b = projection(self.out_proj)
        out, weights = F.multi_head_attention_forward(
            query,
            key,
            value,
            self.embed_dim,
            self.num_heads,
            in_w,
            in_b,
            self.bias_k,
            self.bias_v,
            self.add_zero_attn,
            self.dropout,
            out_w,
            out_b,
            training=self.training,
            key_padding_mask=key_padding_mask,
            need_weights=need_weights,
            attn_mask=attn_mask,
            average_attn_weights=average_attn_weights,
            is_causal=is_causal,
        )
        if self.batch_first and batched:
            return out.transpose(1, 0), weights
        return out, weights

    def extra_repr(self) -> str:  # noqa: D102
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, batch_first={self.batch_first}"
