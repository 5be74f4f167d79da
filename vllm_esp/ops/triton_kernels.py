"""Triton backend of ESP attention (GPU): staircase attention over a contiguous or a paged key
source, split along the keys for long contexts, and the n-way LSE merge.

Same signatures and results as the CPU backend (``ops.cpu_attention``) for the device paged
layouts (``NhdPagedKV``, vLLM's ``FLASH_ATTN`` cache ``FlashPagedKV``): one program per tile
of ``BLOCK_M`` rows of one segment, one query head and one key split; it walks the keys up to
the tile's largest limit in ``BLOCK_N`` steps (through the block table when paged), masks
each row at its own limit and keeps an online softmax in float32. On a CPU it runs only under
``TRITON_INTERPRET=1`` (the tests do, with small shapes; the interpreter's half-precision
``tl.dot`` returns garbage, so there the kernel computes in float32, and its native bf16/fp16
products run only on a GPU: ``benchmarks/gpu_check.py``). Importing this module never fails:
without Triton, ``AVAILABLE`` is False and the wrappers raise.
"""

from __future__ import annotations

import os

import numpy as np
import torch

try:  # optional dependency
    import triton
    import triton.language as tl

    AVAILABLE = True
except Exception:  # pragma: no cover - depends on the environment
    triton = tl = None
    AVAILABLE = False

__all__ = ["AVAILABLE", "ragged_attention_triton", "paged_attention_triton",
           "merge_partials_triton"]

_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
BLOCK_M = 16  # query rows per program
BLOCK_N = 32  # keys per inner step
SPLIT_KEYS = 2048  # a tile whose keys exceed this is split along the keys (then merged)

if AVAILABLE:

    @triton.jit
    def _staircase_kernel(
        q_ptr, k_ptr, v_ptr, out_ptr, lse_ptr,
        lim_ptr, tile_seg_ptr, tile_r0_ptr, tile_r1_ptr, kstart_ptr, bt_ptr,
        scale, keys_per_split, group,
        s_qt, s_qh, s_kb, s_kt, s_kh, s_bt, s_os, s_ot, s_oh, s_ls, s_lh,
        PAGED: tl.constexpr, BLOCK_SIZE: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, IEEE: tl.constexpr,
    ):
        t = tl.program_id(0)
        h = tl.program_id(1)
        sp = tl.program_id(2)
        seg = tl.load(tile_seg_ptr + t)
        r0 = tl.load(tile_r0_ptr + t)
        r1 = tl.load(tile_r1_ptr + t)
        kvh = h // group
        offs_m = r0 + tl.arange(0, BM)
        mmask = offs_m < r1
        lim = tl.load(lim_ptr + offs_m, mask=mmask, other=0)
        k_lo = sp * keys_per_split
        k_hi = tl.minimum(tl.max(lim, axis=0), k_lo + keys_per_split)
        offs_d = tl.arange(0, BLOCK_D)
        dmask = offs_d < HEAD_DIM
        # inputs stay in the model's dtype (fp32 products: IEEE, not tf32); accumulate in fp32
        q = tl.load(q_ptr + offs_m[:, None] * s_qt + h * s_qh + offs_d[None, :],
                    mask=mmask[:, None] & dmask[None, :], other=0.0)
        if IEEE:
            q = q.to(tl.float32)
        m_i = tl.full([BM], float("-inf"), tl.float32)
        l_i = tl.zeros([BM], tl.float32)
        acc = tl.zeros([BM, BLOCK_D], tl.float32)
        kbase = tl.load(kstart_ptr + seg).to(tl.int64)
        for start in range(k_lo, k_hi, BN):
            offs_n = start + tl.arange(0, BN)
            nmask = offs_n < k_hi
            if PAGED:
                blk = tl.load(bt_ptr + seg * s_bt + offs_n // BLOCK_SIZE, mask=nmask,
                              other=0).to(tl.int64)
                rows = blk * s_kb + (offs_n % BLOCK_SIZE).to(tl.int64) * s_kt
            else:
                rows = (kbase + offs_n.to(tl.int64)) * s_kt
            ptrs = rows[:, None] + kvh * s_kh + offs_d[None, :]
            kvm = nmask[:, None] & dmask[None, :]
            kt = tl.load(k_ptr + ptrs, mask=kvm, other=0.0)
            vt = tl.load(v_ptr + ptrs, mask=kvm, other=0.0)
            if IEEE:
                kt = kt.to(tl.float32)
                vt = vt.to(tl.float32)
            if IEEE:
                s = tl.dot(q, tl.trans(kt), input_precision="ieee") * scale
            else:
                s = tl.dot(q, tl.trans(kt)) * scale
            vis = (offs_n[None, :] < lim[:, None]) & nmask[None, :]
            s = tl.where(vis, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = tl.exp(m_i - m_safe)
            p = tl.exp(s - m_safe[:, None])
            l_i = l_i * alpha + tl.sum(p, axis=1)
            if IEEE:
                pv = tl.dot(p, vt, input_precision="ieee")
            else:
                pv = tl.dot(p.to(vt.dtype), vt)
            acc = acc * alpha[:, None] + pv
            m_i = m_new
        has = l_i > 0
        den = tl.where(has, l_i, 1.0)
        o = acc / den[:, None]
        lse = tl.where(has, m_i + tl.log(den), float("-inf"))
        tl.store(out_ptr + sp * s_os + offs_m[:, None] * s_ot + h * s_oh + offs_d[None, :], o,
                 mask=mmask[:, None] & dmask[None, :])
        tl.store(lse_ptr + sp * s_ls + h * s_lh + offs_m, lse, mask=mmask)

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


def _tiles(segs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Per program tile: its segment and row range (device int32), and the longest key range
    of any segment (host), built once per step (cached on ``segs``)."""
    key = ("triton_tiles", BLOCK_M)
    if key not in segs._cache:
        seg, r0, r1 = [], [], []
        for i, s in enumerate(segs):
            for a in range(s.q_start, s.q_end, BLOCK_M):
                seg.append(i)
                r0.append(a)
                r1.append(min(a + BLOCK_M, s.q_end))
        to = [torch.from_numpy(np.array(x, dtype=np.int32)).to(segs.device) for x in (seg, r0, r1)]
        longest = max((s.num_keys for s in segs), default=0)
        segs._cache[key] = (*to, longest)
    return segs._cache[key]


def _launch(q, k, v, segs, scale, paged: bool, block_size: int, strides, bt):
    _need()
    rows, hq, d = q.shape
    seg, r0, r1, longest = _tiles(segs)
    num_tiles = seg.numel()
    splits = max(1, -(-longest // SPLIT_KEYS)) if rows <= 4 * BLOCK_M else 1
    per_split = -(-max(longest, 1) // splits)
    per_split = -(-per_split // BLOCK_N) * BLOCK_N
    out = torch.zeros(splits, rows, hq, d, dtype=torch.float32, device=q.device)
    lse = torch.full((splits, hq, rows), float("-inf"), dtype=torch.float32, device=q.device)
    if num_tiles and rows:
        s_kb, s_kt, s_kh = strides
        kstart = segs.device_array("k_start")
        _staircase_kernel[(num_tiles, hq, splits)](
            q, k, v, out, lse, segs.row_limits(), seg, r0, r1, kstart, bt,
            float(scale), per_split, hq // k.shape[-2],
            q.stride(0), q.stride(1), s_kb, s_kt, s_kh, bt.stride(0),
            out.stride(0), out.stride(1), out.stride(2), lse.stride(0), lse.stride(1),
            PAGED=paged, BLOCK_SIZE=block_size, BM=BLOCK_M, BN=BLOCK_N, HEAD_DIM=d,
            BLOCK_D=max(16, triton.next_power_of_2(d)),
            # the interpreter's half-precision dot is broken (garbage): upcast there
            IEEE=q.dtype == torch.float32 or _INTERPRETED,
        )
    if splits == 1:
        return out[0], lse[0]
    return merge_partials_triton(out, lse)


def ragged_attention_triton(q, k, v, segs, scale):
    """Triton twin of ``cpu_attention.ragged_attention``: keys in ``k, v [Tk, Hkv, D]``."""
    dummy = torch.zeros(1, 1, dtype=torch.int32, device=q.device)
    return _launch(q.contiguous(), k, v, segs, scale, False, 1,
                   (0, k.stride(0), k.stride(1)), dummy)


def paged_attention_triton(q, kv_cache, layout, segs, scale):
    """Triton twin of ``cpu_attention.paged_attention`` for the device layouts (K/V views
    ``[num_blocks, block_size, Hkv, D]`` with a contiguous last dim)."""
    kc, vc = layout.kv_views(kv_cache)
    return _launch(q.contiguous(), kc, vc, segs, scale, True, layout.block_size,
                   (kc.stride(0), kc.stride(1), kc.stride(2)), segs.block_table())


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
