"""Dense torch references: the ground truth every distributed path is tested against.

These are deliberately simple (explicit masks, float32 or float64 math) and quadratic in
memory; they are for tests and for small shapes, not for serving.
"""

from __future__ import annotations

import torch

__all__ = ["masked_attention_with_lse", "dense_causal_attention_varlen",
           "segments_reference_ragged", "segments_reference_paged"]


def masked_attention_with_lse(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    scale: float,
    compute_dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of ``q [Tq, Hq, D]`` over ``k, v [Tk, Hkv, D]`` where ``mask [Tq, Tk]`` is True.

    GQA: query head ``h`` reads KV head ``h // (Hq // Hkv)`` (vLLM's grouping).
    Rows with no visible key return ``out = 0, lse = -inf``.
    Returns ``(out [Tq, Hq, D] in q.dtype, lse [Hq, Tq] float32)``.
    """
    tq, hq, d = q.shape
    hkv = k.shape[1]
    if hq % hkv:
        raise ValueError(f"{hq} query heads are not a multiple of {hkv} KV heads")
    g = hq // hkv
    qf = q.to(compute_dtype).transpose(0, 1)  # [Hq, Tq, D]
    kf = k.to(compute_dtype).repeat_interleave(g, dim=1).transpose(0, 1)  # [Hq, Tk, D]
    vf = v.to(compute_dtype).repeat_interleave(g, dim=1).transpose(0, 1)
    s = (qf @ kf.transpose(1, 2)) * scale  # [Hq, Tq, Tk]
    s = s.masked_fill(~mask.unsqueeze(0), float("-inf"))
    lse = torch.logsumexp(s, dim=-1)  # [Hq, Tq]; -inf for empty rows
    p = torch.exp(s - torch.where(torch.isneginf(lse), torch.zeros_like(lse), lse).unsqueeze(-1))
    out = (p @ vf).transpose(0, 1)  # [Tq, Hq, D]
    return out.to(q.dtype), lse.float()


def dense_causal_attention_varlen(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    seq_lens: list[int],
    scale: float,
    compute_dtype: torch.dtype = torch.float64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Single-process causal attention over a packed varlen batch (request-major rows).

    Returns ``(out [T, Hq, D], lse [Hq, T])``; the reference for ring prefill.
    """
    outs, lses, start = [], [], 0
    for n in seq_lens:
        sl = slice(start, start + n)
        mask = torch.ones(n, n, dtype=torch.bool).tril()
        o, l = masked_attention_with_lse(q[sl], k[sl], v[sl], mask, scale, compute_dtype)
        outs.append(o)
        lses.append(l)
        start += n
    return torch.cat(outs), torch.cat(lses, dim=1)


def _visible(limits, num_keys: int, device) -> torch.Tensor:
    lim = torch.as_tensor(limits, dtype=torch.int64, device=device).unsqueeze(1)
    return torch.arange(num_keys, device=device).unsqueeze(0) < lim


def segments_reference_ragged(q, k, v, segs, scale):
    """Dense twin of the backends' ``ragged`` call (``ops.dispatch``): per segment, the masked
    reference over its keys ``k[k_start:]``. Float32 out and LSE; -inf for rows outside."""
    out = torch.zeros(q.shape[0], q.shape[1], q.shape[2], dtype=torch.float32, device=q.device)
    lse = torch.full((q.shape[1], q.shape[0]), float("-inf"), dtype=torch.float32,
                     device=q.device)
    for s in segs:
        n = s.num_keys
        ks, vs = k[s.k_start:s.k_start + n], v[s.k_start:s.k_start + n]
        o, l = masked_attention_with_lse(q[s.q_start:s.q_end], ks, vs,
                                         _visible(s.limits, n, q.device), scale)
        out[s.q_start:s.q_end], lse[:, s.q_start:s.q_end] = o.float(), l
    return out, lse


def segments_reference_paged(q, kv_cache, layout, segs, scale):
    """Dense twin of the backends' ``paged`` call: gathers each segment's blocks whole."""
    out = torch.zeros(q.shape[0], q.shape[1], q.shape[2], dtype=torch.float32, device=q.device)
    lse = torch.full((q.shape[1], q.shape[0]), float("-inf"), dtype=torch.float32,
                     device=q.device)
    bs = layout.block_size
    for s in segs:
        n = s.num_keys
        if not n:
            continue
        ids = torch.tensor(s.block_ids[: -(-n // bs)], dtype=torch.int64, device=q.device)
        ks, vs = layout.gather(kv_cache, ids)
        o, l = masked_attention_with_lse(q[s.q_start:s.q_end], ks[:n], vs[:n],
                                         _visible(s.limits, n, q.device), scale)
        out[s.q_start:s.q_end], lse[:, s.q_start:s.q_end] = o.float(), l
    return out, lse
