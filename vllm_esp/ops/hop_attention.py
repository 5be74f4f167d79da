"""Attention of a rank's striped queries against one visiting striped K/V shard.

Why every hop is a *square* causal problem: query rank ``r`` holds positions ``r + j*k`` and
the visiting shard (from rank ``s``) holds ``s + m*k``. The causal rule
``r + j*k >= s + m*k`` reduces to ``j >= m`` when ``r >= s`` and to ``j >= m + 1`` when
``r < s``. So, per request, after dropping the first query row in the second case (it sees no
key of that shard: ``lse = -inf``), query row ``j'`` attends keys ``0..j'``: a top-left causal
mask on ``n = n_q (- 1)`` queries. Keys past ``n`` are never visible, and the shard always has
at least ``n`` keys, so we cut it to ``n`` and get an ``n x n`` causal block. Square blocks have
no top-left/bottom-right ambiguity, so any causal kernel (torch SDPA-for-CPU, flash-attn varlen)
computes them.
"""

from __future__ import annotations

import torch

from vllm_esp.ops.reference import masked_attention_with_lse

__all__ = ["square_segments", "stripe_hop_attention", "causal_square_attention_torch"]


def square_segments(
    q_counts: list[int], kv_counts: list[int], r: int, s: int
) -> list[tuple[int, int, int]]:
    """Per request with work: ``(q_row_start, kv_row_start, n)`` of its ``n x n`` causal block."""
    drop = 1 if r < s else 0
    segs, qo, ko = [], 0, 0
    for nq, nk in zip(q_counts, kv_counts):
        n = nq - drop
        if n > 0:
            assert nk >= n, "stripe invariant violated: shard shorter than visible queries"
            segs.append((qo + drop, ko, n))
        qo += nq
        ko += nk
    return segs


def causal_square_attention_torch(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal attention of ``q [n, Hq, D]`` on ``k, v [n, Hkv, D]``; ``(out, lse [Hq, n])``.

    CPU tensors use torch's flash-attention-for-CPU kernel (returns LSE, float32 accumulate);
    other devices use the masked reference.
    """
    n, hq, _ = q.shape
    g = hq // k.shape[1]
    if q.device.type == "cpu":
        qb = q.transpose(0, 1).unsqueeze(0)
        kb = k.repeat_interleave(g, dim=1).transpose(0, 1).unsqueeze(0)
        vb = v.repeat_interleave(g, dim=1).transpose(0, 1).unsqueeze(0)
        o, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            qb, kb, vb, 0.0, True, scale=scale
        )[:2]
        return o[0].transpose(0, 1), lse[0].float()
    mask = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
    return masked_attention_with_lse(q, k, v, mask, scale)


def stripe_hop_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_counts: list[int],
    kv_counts: list[int],
    r: int,
    s: int,
    scale: float,
    backend: str = "torch",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Partial attention of rank ``r``'s packed queries on rank ``s``'s packed shard.

    Args:
        q: ``[sum(q_counts), Hq, D]``; k, v: ``[sum(kv_counts), Hkv, D]`` (request-major).
        backend: "torch" or "flash_attn" (varlen, one call for the whole batch).
    Returns:
        ``(out [Tq, Hq, D] float32, lse [Hq, Tq] float32)``; rows that see nothing have
        ``out = 0, lse = -inf``.
    """
    tq, hq, d = q.shape
    out = torch.zeros(tq, hq, d, dtype=torch.float32, device=q.device)
    lse = torch.full((hq, tq), float("-inf"), dtype=torch.float32, device=q.device)
    segs = square_segments(q_counts, kv_counts, r, s)
    if not segs:
        return out, lse
    if backend == "flash_attn":
        from vllm_esp.ops.flash_attn_path import varlen_causal_with_lse

        q_idx = torch.cat([torch.arange(a, a + n) for a, _, n in segs]).to(q.device)
        k_idx = torch.cat([torch.arange(b, b + n) for _, b, n in segs]).to(q.device)
        lens = [n for _, _, n in segs]
        o, l = varlen_causal_with_lse(q[q_idx], k[k_idx], v[k_idx], lens, scale)
        out[q_idx] = o.float()
        lse[:, q_idx] = l.float()
        return out, lse
    if backend != "torch":
        raise ValueError(f"unknown hop attention backend {backend!r}")
    for qa, ka, n in segs:
        o, l = causal_square_attention_torch(q[qa : qa + n], k[ka : ka + n], v[ka : ka + n], scale)
        out[qa : qa + n] = o.float()
        lse[:, qa : qa + n] = l
    return out, lse
