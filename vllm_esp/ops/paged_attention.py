"""Partial decode attention with LSE over a rank's local paged KV (torch reference).

A decode query attends *all* locally stored tokens of its request: token order inside an
instance does not matter (K is stored after RoPE), so no causal mask is needed. A request with
no local tokens yields ``out = 0, lse = -inf``, so it drops out of the LSE merge.
"""

from __future__ import annotations

import torch

__all__ = ["paged_attention_with_lse"]


def paged_attention_with_lse(
    q: torch.Tensor,
    kv_cache: torch.Tensor,
    layout,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One query token per request over its local paged KV.

    Args:
        q: ``[B, Hq, D]``.
        kv_cache: this layer's cache in ``layout`` (``CpuPagedKV`` or ``NhdPagedKV``).
        block_table: int ``[B, max_blocks]`` physical block ids (entries past a request's
            ``ceil(seq_len / block_size)`` are ignored and may be any value).
        seq_lens: int ``[B]`` local tokens per request (0 allowed).
    Returns:
        ``(out [B, Hq, D] in q.dtype, lse [Hq, B] float32)``.
    """
    b, hq, d = q.shape
    out = torch.zeros(b, hq, d, dtype=q.dtype, device=q.device)
    lse = torch.full((hq, b), float("-inf"), dtype=torch.float32, device=q.device)
    if b == 0:
        return out, lse
    seq_lens = seq_lens.to(torch.int64).cpu()
    max_len = int(seq_lens.max())
    if max_len == 0:
        return out, lse
    bs = layout.block_size
    nblk = (max_len + bs - 1) // bs
    blocks = block_table[:, :nblk].to(torch.int64).clamp(min=0)
    num_blocks = kv_cache.shape[0] if kv_cache.dim() == 4 else kv_cache.shape[1]
    blocks = torch.where(blocks < num_blocks, blocks, torch.zeros_like(blocks))
    k, v = layout.gather_blocks(kv_cache, blocks)  # [B, n, Hkv, bs, D]
    hkv = k.shape[2]
    g = hq // hkv
    cdt = torch.float32
    qg = q.to(cdt).view(b, hkv, g, d)  # query head h reads KV head h // g
    s = torch.einsum("bhgd,bnhtd->bhgnt", qg, k.to(cdt)) * scale  # [B, Hkv, g, n, bs]
    s = s.reshape(b, hkv, g, nblk * bs)
    valid = torch.arange(nblk * bs).unsqueeze(0) < seq_lens.unsqueeze(1)  # [B, S]
    s = s.masked_fill(~valid.to(s.device).view(b, 1, 1, -1), float("-inf"))
    l = torch.logsumexp(s, dim=-1)  # [B, Hkv, g]
    l_safe = torch.where(torch.isneginf(l), torch.zeros_like(l), l)
    p = torch.exp(s - l_safe.unsqueeze(-1)).view(b, hkv, g, nblk, bs)
    o = torch.einsum("bhgnt,bnhtd->bhgd", p, v.to(cdt)).reshape(b, hq, d)
    l = l.reshape(b, hq)
    return o.to(q.dtype), l.transpose(0, 1).contiguous()
