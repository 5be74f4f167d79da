"""Triton kernels (GPU path): paged partial attention with LSE, and the n-way LSE merge.

Same signatures and results as the torch references ``paged_attention_with_lse`` (for the
``NhdPagedKV`` layout) and ``merge_partials``. On a CPU they run only under
``TRITON_INTERPRET=1`` (tests do that with small shapes). Importing this module never fails:
without Triton, ``AVAILABLE`` is False and the wrappers raise.
"""

from __future__ import annotations

import torch

try:  # optional dependency
    import triton
    import triton.language as tl

    AVAILABLE = True
except Exception:  # pragma: no cover - depends on the environment
    triton = tl = None
    AVAILABLE = False

__all__ = ["AVAILABLE", "paged_attention_with_lse_triton", "merge_partials_triton"]

if AVAILABLE:

    @triton.jit
    def _paged_attn_kernel(
        q_ptr, k_ptr, v_ptr, bt_ptr, len_ptr, out_ptr, lse_ptr,
        scale, max_blocks, num_q_heads, group,
        s_qb, s_qh, s_kb, s_kt, s_kh, s_bt, s_ob, s_oh, s_lh,
        BLOCK_SIZE: tl.constexpr, BLOCK_T: tl.constexpr, HEAD_DIM: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        # one program per (request, query head); online softmax over the request's blocks
        b = tl.program_id(0)
        h = tl.program_id(1)
        kvh = h // group
        n = tl.load(len_ptr + b)
        offs_d = tl.arange(0, BLOCK_D)
        dmask = offs_d < HEAD_DIM
        offs_t = tl.arange(0, BLOCK_T)
        tmask = offs_t < BLOCK_SIZE
        q = tl.load(q_ptr + b * s_qb + h * s_qh + offs_d, mask=dmask, other=0.0).to(tl.float32)
        m_i = float("-inf")
        l_i = 0.0
        acc = tl.zeros([BLOCK_D], dtype=tl.float32)
        nblk = (n + BLOCK_SIZE - 1) // BLOCK_SIZE
        for j in range(0, nblk):
            blk = tl.load(bt_ptr + b * s_bt + j).to(tl.int64)
            tok = j * BLOCK_SIZE + offs_t
            valid = tmask & (tok < n)
            base = blk * s_kb + kvh * s_kh
            ptrs = base + offs_t[:, None] * s_kt + offs_d[None, :]
            m2 = valid[:, None] & dmask[None, :]
            k = tl.load(k_ptr + ptrs, mask=m2, other=0.0).to(tl.float32)
            v = tl.load(v_ptr + ptrs, mask=m2, other=0.0).to(tl.float32)
            s = tl.sum(k * q[None, :], axis=1) * scale
            s = tl.where(valid, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=0))
            alpha = tl.exp(m_i - m_new)
            p = tl.exp(s - m_new)
            l_i = l_i * alpha + tl.sum(p, axis=0)
            acc = acc * alpha + tl.sum(p[:, None] * v, axis=0)
            m_i = m_new
        has = n > 0
        denom = tl.where(has, l_i, 1.0)
        o = acc / denom
        lse = tl.where(has, m_i + tl.log(denom), float("-inf"))
        tl.store(out_ptr + b * s_ob + h * s_oh + offs_d, o.to(out_ptr.dtype.element_ty),
                 mask=dmask)
        tl.store(lse_ptr + h * s_lh + b, lse)

    @triton.jit
    def _merge_kernel(
        o_ptr, l_ptr, out_ptr, lse_ptr, n_parts,
        s_on, s_ot, s_oh, s_ln, s_lh, s_xt, s_xh, s_yh,
        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        # one program per (token, head): two passes over the n partials (max, then sum)
        t = tl.program_id(0)
        h = tl.program_id(1)
        offs_d = tl.arange(0, BLOCK_D)
        dmask = offs_d < HEAD_DIM
        m = float("-inf")
        for i in range(0, n_parts):
            li = tl.load(l_ptr + i * s_ln + h * s_lh + t)
            li = tl.where(li == float("inf"), float("-inf"), li)
            m = tl.maximum(m, li)
        m_safe = tl.where(m == float("-inf"), 0.0, m)
        den = 0.0
        acc = tl.zeros([BLOCK_D], dtype=tl.float32)
        for i in range(0, n_parts):
            li = tl.load(l_ptr + i * s_ln + h * s_lh + t)
            li = tl.where(li == float("inf"), float("-inf"), li)
            w = tl.exp(li - m_safe)
            o = tl.load(o_ptr + i * s_on + t * s_ot + h * s_oh + offs_d, mask=dmask,
                        other=0.0).to(tl.float32)
            den += w
            acc += w * o
        empty = den == 0.0
        res = acc / tl.where(empty, 1.0, den)
        tl.store(out_ptr + t * s_xt + h * s_xh + offs_d, res.to(out_ptr.dtype.element_ty),
                 mask=dmask)
        tl.store(lse_ptr + h * s_yh + t, tl.where(empty, float("-inf"),
                                                  m_safe + tl.log(tl.where(empty, 1.0, den))))


def _need():
    if not AVAILABLE:
        raise RuntimeError("triton is not installed")


def paged_attention_with_lse_triton(q, kv_cache, layout, block_table, seq_lens, scale):
    """Triton twin of ``paged_attention_with_lse`` for ``NhdPagedKV`` caches."""
    _need()
    b, hq, d = q.shape
    out = torch.zeros(b, hq, d, dtype=q.dtype, device=q.device)
    lse = torch.full((hq, b), float("-inf"), dtype=torch.float32, device=q.device)
    if b == 0:
        return out, lse
    kc, vc = kv_cache[0], kv_cache[1]  # [nb, bs, Hkv, D], contiguous slices
    bt = block_table.to(torch.int32).contiguous()
    lens = seq_lens.to(torch.int32).to(q.device).contiguous()
    q = q.contiguous()
    _paged_attn_kernel[(b, hq)](
        q, kc, vc, bt, lens, out, lse,
        float(scale), bt.shape[1], hq, hq // kc.shape[2],
        q.stride(0), q.stride(1), kc.stride(0), kc.stride(1), kc.stride(2), bt.stride(0),
        out.stride(0), out.stride(1), lse.stride(0),
        BLOCK_SIZE=layout.block_size, BLOCK_T=triton.next_power_of_2(layout.block_size),
        HEAD_DIM=d, BLOCK_D=triton.next_power_of_2(d),
    )
    return out, lse


def merge_partials_triton(outs, lses):
    """Triton twin of ``merge_partials``: ``[n, T, H, D]``, ``[n, H, T]`` -> merged."""
    _need()
    n, t, h, d = outs.shape
    outs = outs.contiguous()
    lses = lses.float().contiguous()
    out = torch.empty(t, h, d, dtype=outs.dtype, device=outs.device)
    lse = torch.empty(h, t, dtype=torch.float32, device=outs.device)
    if t == 0 or h == 0:
        return out, lse
    _merge_kernel[(t, h)](
        outs, lses, out, lse, n,
        outs.stride(0), outs.stride(1), outs.stride(2), lses.stride(0), lses.stride(1),
        out.stride(0), out.stride(1), lse.stride(0),
        HEAD_DIM=d, BLOCK_D=triton.next_power_of_2(d),
    )
    return out, lse
