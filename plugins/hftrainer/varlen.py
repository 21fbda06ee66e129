"""Attention over packed rows, one sequence at a time, for transformers models (shipped as ``plan/hfvarlen.py``).

With packing, TRL's padding-free collator hands the model one flattened row holding every sequence of the
batch, with ``position_ids`` restarting at each sequence and the sequence boundaries (``cu_seq_lens_q``).
transformers' SDPA path turns that into a dense block-diagonal mask over the whole flattened row: attention
quadratic in batch × length, most of it masked out. :func:`register` adds ``"anytune_varlen"`` to
transformers' attention registry: on a CUDA device it runs PyTorch's own variable-length flash-attention
kernel (``torch.nn.attention.varlen.varlen_attn``) over the boundaries; elsewhere (CPU, fp32, dropout) it runs
SDPA causally on each sequence. Both compute exactly what the block-diagonal mask computes; no compilation.
Imports torch and transformers only inside functions.
"""
from __future__ import annotations

from typing import Any

NAME = "anytune_varlen"
"""The ``attn_implementation`` name a model is loaded with."""


def boundaries(query: Any, kwargs: dict) -> tuple[Any, int] | None:
    """``(cu_seq_lens, max_length)`` of the packed row: the collator's when it gave them, else from the
    position ids (a sequence starts where they are 0); None when the batch is not one packed row."""
    import torch

    cu, longest = kwargs.get("cu_seq_lens_q"), kwargs.get("max_length_q")
    if cu is not None and longest is not None:
        return cu.to(device=query.device, dtype=torch.int32), int(longest)
    pos = kwargs.get("position_ids")
    if pos is None or query.shape[0] != 1:
        return None
    pos = pos.reshape(-1)
    starts = (pos == 0).nonzero().flatten()
    cu = torch.cat([starts, torch.tensor([pos.numel()], device=pos.device)]).to(torch.int32)
    return cu, int(cu.diff().max())


def _kernel() -> Any:
    """PyTorch's variable-length flash attention, or None where this torch has none."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


def _flash(varlen_attn: Any, q: Any, k: Any, v: Any, cu: Any, longest: int, scale: float | None) -> Any:
    """``varlen_attn`` on (tokens, heads, dim) tensors, causal, whatever its release's keywords."""
    import inspect

    params = inspect.signature(varlen_attn).parameters
    if "enable_gqa" in params and k.shape[1] != q.shape[1]:
        extra = {"enable_gqa": True}
    else:
        extra = {}
        if k.shape[1] != q.shape[1]:  # a release without grouped-query support: one key/value head per query head
            k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
            v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    causal = {"window_size": (-1, 0)} if "window_size" in params else {"is_causal": True}
    return varlen_attn(q, k, v, cu, cu, longest, longest, scale=scale, **causal, **extra)


def attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, scaling: float | None = None,
              dropout: float = 0.0, **kwargs: Any) -> tuple[Any, None]:
    """transformers' attention-function contract: (batch, heads, length, dim) tensors in, (batch, length, heads,
    dim) out. Causal within each packed sequence; a batch that is not one packed row goes to SDPA as usual."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    found = boundaries(query, kwargs) if attention_mask is None else None
    if found is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    cu, longest = found
    kernel = _kernel()
    if (kernel is not None and query.is_cuda and dropout == 0.0
            and query.dtype in (torch.bfloat16, torch.float16)):
        out = _flash(kernel, query[0].transpose(0, 1), key[0].transpose(0, 1), value[0].transpose(0, 1), cu,
                     longest, scaling)
        return out.unsqueeze(0), None
    bounds = cu.tolist()
    groups = query.shape[1] // key.shape[1]
    k = key.repeat_interleave(groups, dim=1) if groups > 1 else key
    v = value.repeat_interleave(groups, dim=1) if groups > 1 else value
    parts = [torch.nn.functional.scaled_dot_product_attention(
        query[:, :, s:e], k[:, :, s:e], v[:, :, s:e], is_causal=True, scale=scaling,
        dropout_p=dropout if module.training else 0.0) for s, e in zip(bounds[:-1], bounds[1:]) if e > s]
    return torch.cat(parts, dim=2).transpose(1, 2).contiguous(), None


def register() -> str:
    """Add :data:`NAME` to transformers' attention and mask registries (its mask is flash attention's: none
    for a packed row); the name to load a model with."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, flash_attention_mask

    AttentionInterface.register(NAME, attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, flash_attention_mask)
    return NAME
