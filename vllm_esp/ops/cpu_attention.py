"""CPU backend of ESP attention: torch's CPU flash attention (which returns the log-sum-exp),
tiled so that transient memory does not grow with the context.

Two entry points, one per key source (see ``ops.keys``), both returning
``(out [rows, Hq, D] float32, lse [Hq, rows] float32)`` with ``out = 0, lse = -inf`` for rows
that see no key:

- ``ragged_attention``: keys in a contiguous tensor (a ring shard). Per tile of ``Q_TILE``
  rows, the keys every row of the tile sees go to the kernel unmasked, as a view (no copy);
  only the band where the staircase climbs inside the tile gets a mask.
- ``paged_attention``: keys in the paged cache. One-row segments (decodes) are batched over
  requests, ``DECODE_TILE_TOKENS`` keys at a time; longer segments read ``KEY_TILE`` keys at a
  time. Either way at most a fixed number of keys is gathered out of the cache at once, and
  partial results are merged by LSE (online softmax).

GQA goes to the kernel as it is (it reads KV head ``h // (Hq / Hkv)``, vLLM's grouping): no
K/V copy per query head. Inputs keep the model's dtype; the kernel accumulates in float32,
and so do the merges.
"""

from __future__ import annotations

import torch

from vllm_esp.ops.keys import KeySegments, Segment
from vllm_esp.ops.merge import merge_two

__all__ = ["ragged_attention", "paged_attention", "Q_TILE", "KEY_TILE", "DECODE_TILE_TOKENS",
           "workspace_bytes"]

Q_TILE = 512  # query rows per kernel call on a contiguous source
KEY_TILE = 2048  # keys gathered from the paged cache at once for one request
DECODE_TILE_TOKENS = 4096  # keys gathered at once over all one-row (decode) segments


def workspace_bytes(num_q_heads: int, num_kv_heads: int, head_dim: int, dtype_bytes: int) -> int:
    """Upper bound of the transient memory of one call beyond its inputs and outputs: the
    gathered K/V tiles, one tile's scores and the band mask (what a profile run reserves)."""
    kv = 2 * max(KEY_TILE, DECODE_TILE_TOKENS) * num_kv_heads * head_dim * dtype_bytes
    scores = 2 * DECODE_TILE_TOKENS * num_q_heads * 4 + Q_TILE * Q_TILE * 4
    partial = 2 * Q_TILE * num_q_heads * (head_dim + 1) * 4
    return kv + scores + partial


def _flash(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
           mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``q [n, Hq, D]`` over ``k, v [m, Hkv, D]`` (views with a contiguous last dim), with an
    optional additive ``mask [n, m]``. Returns ``(out [n, Hq, D] float32, lse [Hq, n])``.
    (The kernel silently misreads inputs whose last dim is strided: those are copied.)"""
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    o, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        q.transpose(0, 1).unsqueeze(0), k.transpose(0, 1).unsqueeze(0),
        v.transpose(0, 1).unsqueeze(0), 0.0, False, attn_mask=mask, scale=scale)[:2]
    return o[0].transpose(0, 1).float(), lse[0].float()


def _band_mask(limits, first_key: int, num_keys: int, dtype: torch.dtype) -> torch.Tensor:
    """Additive mask: row r sees key ``first_key + j`` iff it is below ``limits[r]``."""
    lim = torch.from_numpy(limits - first_key).unsqueeze(1)
    visible = torch.arange(num_keys).unsqueeze(0) < lim
    return torch.zeros(visible.shape, dtype=dtype).masked_fill_(~visible, float("-inf"))


def _accumulate(out, lse, a: int, b: int, o: torch.Tensor, l: torch.Tensor) -> None:
    """Merge a partial for rows ``[a, b)`` into the running ``(out, lse)``."""
    out[a:b], lse[:, a:b] = merge_two(out[a:b], lse[:, a:b], o, l)


def _empty(q: torch.Tensor, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    out = torch.zeros(rows, q.shape[1], q.shape[2], dtype=torch.float32, device=q.device)
    lse = torch.full((q.shape[1], rows), float("-inf"), dtype=torch.float32, device=q.device)
    return out, lse


def ragged_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, segs: KeySegments,
                     scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of each segment's rows of ``q [T, Hq, D]`` over its keys in ``k, v
    [Tk, Hkv, D]`` (``k_start`` onwards, as far as its limits reach)."""
    out, lse = _empty(q, q.shape[0])
    for s in segs:
        _ragged_segment(q, k, v, s, scale, out, lse)
    return out, lse


def _ragged_segment(q, k, v, s: Segment, scale, out, lse) -> None:
    base, k0 = s.q_start, s.k_start
    for qa, qb, lo, rb, hi in s.query_tiles(Q_TILE):
        a, b = base + qa, base + qb
        if lo:
            out[a:b], lse[:, a:b] = _flash(q[a:b], k[k0:k0 + lo], v[k0:k0 + lo], scale)
        if hi > lo and rb < qb:
            mask = _band_mask(s.limits[rb:qb], lo, hi - lo, q.dtype)
            o, l = _flash(q[base + rb:b], k[k0 + lo:k0 + hi], v[k0 + lo:k0 + hi], scale, mask)
            _accumulate(out, lse, base + rb, b, o, l)


def paged_attention(q: torch.Tensor, kv_cache: torch.Tensor, layout, segs: KeySegments,
                    scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of each segment's rows of ``q [T, Hq, D]`` over its blocks of the paged
    ``kv_cache`` (read through ``layout``, an ``ops.kv_cache`` layout)."""
    out, lse = _empty(q, q.shape[0])
    decodes = [i for i, s in enumerate(segs) if s.num_rows == 1 and s.num_keys]
    if decodes:
        _paged_decodes(q, kv_cache, layout, segs, decodes, scale, out, lse)
    for i, s in enumerate(segs):
        if s.num_rows > 1:
            _paged_segment(q, kv_cache, layout, segs.block_ids(i), s, scale, out, lse)
    return out, lse


def _paged_segment(q, kv_cache, layout, blocks: torch.Tensor, s: Segment, scale, out,
                   lse) -> None:
    bs, base = layout.block_size, s.q_start
    tile = max(bs, KEY_TILE // bs * bs)
    for ka, kb, r0, r1 in s.key_tiles(tile):
        k_t, v_t = layout.gather(kv_cache, blocks[ka // bs: -(-kb // bs)])
        k_t, v_t = k_t[:kb - ka], v_t[:kb - ka]
        if r1 < s.num_rows:
            o, l = _flash(q[base + r1:s.q_end], k_t, v_t, scale)
            _accumulate(out, lse, base + r1, s.q_end, o, l)
        if r0 < r1:
            mask = _band_mask(s.limits[r0:r1], ka, kb - ka, q.dtype)
            o, l = _flash(q[base + r0:base + r1], k_t, v_t, scale, mask)
            _accumulate(out, lse, base + r0, base + r1, o, l)


def _paged_decodes(q, kv_cache, layout, segs: KeySegments, which: list[int], scale, out,
                   lse) -> None:
    """One query row per segment, batched: blocks ``[b0, b1)`` of every request still long
    enough, gathered together, attended with one einsum (GQA as a view), merged online."""
    bs = layout.block_size
    rows = torch.tensor([segs.segments[i].q_start for i in which], device=q.device)
    lens = [segs.segments[i].num_keys for i in which]
    table = segs.block_table()[which].long()
    lens_t = torch.tensor(lens, device=q.device)
    most = -(-max(lens) // bs)
    step = max(1, DECODE_TILE_TOKENS // (bs * len(which)))
    hq, d = q.shape[1], q.shape[2]
    qd = q[rows].float()  # [R, Hq, D]
    acc, acc_lse = _empty(q, len(which))
    for b0 in range(0, most, step):
        b1 = min(b0 + step, most)
        live = [j for j, n in enumerate(lens) if n > b0 * bs]
        idx = torch.tensor(live, device=q.device)
        k, v = layout.gather_blocks(kv_cache, table[idx, b0:b1])  # [A, nb, Hkv, bs, D]
        a, nb, hkv = k.shape[0], k.shape[1], k.shape[2]
        qg = qd[idx].view(a, hkv, hq // hkv, d)
        s = torch.einsum("ahgd,anhtd->ahgnt", qg, k.float()).reshape(a, hkv, -1, nb * bs)
        tok = b0 * bs + torch.arange(nb * bs, device=q.device)
        s = s.mul_(scale).masked_fill_(
            (tok.unsqueeze(0) >= lens_t[idx].unsqueeze(1)).view(a, 1, 1, -1), float("-inf"))
        m = s.amax(dim=-1, keepdim=True)  # every live row sees >= 1 key of this tile
        p = torch.exp(s - m)
        den = p.sum(dim=-1)
        o = torch.einsum("ahgnt,anhtd->ahgd", p.view(a, hkv, -1, nb, bs), v.float())
        o = (o / den.unsqueeze(-1)).reshape(a, hq, d)
        l = (m.squeeze(-1) + torch.log(den)).reshape(a, hq).transpose(0, 1)
        acc[idx], acc_lse[:, idx] = merge_two(acc[idx], acc_lse[:, idx], o, l)
    out[rows], lse[:, rows] = acc, acc_lse
