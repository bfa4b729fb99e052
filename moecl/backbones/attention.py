"""nn.MultiheadAttention with its projections as real nn.Linear calls.

torchvision ViTs and open_clip use nn.MultiheadAttention, whose forward reads
``in_proj_weight`` / ``out_proj.weight`` directly: wrapping ``out_proj`` would do
nothing. Swapping each one for this numerically equivalent module exposes
``q_proj``, ``k_proj``, ``v_proj`` and ``out_proj`` so experts can wrap them.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class UnfusedMultiheadAttention(nn.Module):
    """Drop-in replacement for a (batch_first or not) nn.MultiheadAttention."""

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        if not mha._qkv_same_embed_dim:
            raise ValueError("only nn.MultiheadAttention with kdim == vdim == embed_dim can be unfused")
        d = mha.embed_dim
        self.num_heads = mha.num_heads
        self.batch_first = mha.batch_first
        self.dropout = mha.dropout
        has_bias = mha.in_proj_bias is not None
        weights = mha.in_proj_weight.detach().chunk(3)
        biases = mha.in_proj_bias.detach().chunk(3) if has_bias else (None,) * 3
        for name, w, bias in zip(("q_proj", "k_proj", "v_proj"), weights, biases):
            linear = nn.Linear(d, d, bias=has_bias, device=w.device, dtype=w.dtype)
            linear.weight.data.copy_(w)
            if has_bias:
                linear.bias.data.copy_(bias)
            setattr(self, name, linear)
        self.out_proj = nn.Linear(d, d, bias=mha.out_proj.bias is not None, device=w.device, dtype=w.dtype)
        self.out_proj.load_state_dict(mha.out_proj.state_dict())

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = False,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, None]:
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        n, lq, d = query.shape
        h = self.num_heads

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(n, t.shape[1], h, d // h).transpose(1, 2)

        q, k, v = heads(self.q_proj(query)), heads(self.k_proj(key)), heads(self.v_proj(value))
        mask = _merge_masks(attn_mask, key_padding_mask, q.dtype)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0, is_causal=is_causal and mask is None
        )
        out = self.out_proj(out.transpose(1, 2).reshape(n, lq, d))
        return (out if self.batch_first else out.transpose(0, 1)), None


def _merge_masks(attn_mask: torch.Tensor | None, key_padding_mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """nn.MultiheadAttention's masks (bool = masked out, or additive floats) as one additive mask."""

    def additive(m: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(m, dtype=dtype).masked_fill(m, float("-inf")) if m.dtype == torch.bool else m.to(dtype)

    mask = None
    if attn_mask is not None:
        mask = additive(attn_mask)
    if key_padding_mask is not None:
        pad = additive(key_padding_mask)[:, None, None, :]
        mask = pad if mask is None else mask + pad
    return mask


def unfuse_attention(model: nn.Module) -> int:
    """Replace every nn.MultiheadAttention inside ``model``; returns how many."""
    targets = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)]
    for name, mha in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, UnfusedMultiheadAttention(mha))
    return len(targets)
