"""CPU backend of ESP attention: torch's CPU flash attention (which returns the log-sum-exp),
tiled so that transient memory does not grow with the context.

Two entry points, one per key source (see ``ops.keys``), both returning
``(out [rows, Hq, D] float32, lse [Hq, rows] float32)`` with ``out = 0, lse = -inf`` for rows
that see no key:

- ``ragged_attention``: keys in a contiguous tensor (a ring shard), passed as views (no copy).
  A staircase that climbs one key per row (equal stripes: LoongServe's ``t % k``) is the
  keys all its rows see plus one causal square: two kernel calls, the kernel's own causal
  skipping. Any other staircase (weighted stripes) goes by tiles of ``Q_TILE`` rows: the keys
  every row of the tile sees unmasked, the band where the staircase climbs with a mask.
- ``paged_attention``: keys in the paged cache. Segments of at most ``FEW_ROWS`` rows
  (decodes, served decode queries) are computed with matmuls on strided views of the cache
  blocks themselves (a run of consecutive block ids is read in place; scattered blocks are
  gathered ``DECODE_TILE_TOKENS`` keys at a time); longer segments gather ``KEY_TILE`` keys at
  a time for the kernel. Partial results are merged by LSE (online softmax).

GQA goes to the kernel as it is (it reads KV head ``h // (Hq / Hkv)``, vLLM's grouping): no
K/V copy per query head. Inputs keep the model's dtype; the kernel accumulates in float32,
and so do the merges.
"""

from __future__ import annotations

import numpy as np
import torch

from vllm_esp.ops.keys import KeySegments, Segment
from vllm_esp.ops.merge import merge_two

__all__ = ["ragged_attention", "paged_attention", "Q_TILE", "KEY_TILE", "DECODE_TILE_TOKENS",
           "workspace_bytes"]

Q_TILE = 512  # query rows per kernel call on a contiguous source
KEY_TILE = 2048  # keys gathered from the paged cache at once for one request
DECODE_TILE_TOKENS = 4096  # keys read at once by the few-row path
FEW_ROWS = 8  # segments with at most this many rows take the matmul path


def workspace_bytes(num_q_heads: int, num_kv_heads: int, head_dim: int, dtype_bytes: int) -> int:
    """Upper bound of the transient memory of one call beyond its inputs and outputs: the
    gathered K/V tiles, one tile's scores and the band mask (what a profile run reserves)."""
    kv = 2 * max(KEY_TILE, DECODE_TILE_TOKENS) * num_kv_heads * head_dim * dtype_bytes
    scores = 2 * DECODE_TILE_TOKENS * num_q_heads * 4 + Q_TILE * Q_TILE * 4
    partial = 2 * Q_TILE * num_q_heads * (head_dim + 1) * 4
    return kv + scores + partial


def _flash(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
           mask: torch.Tensor | None = None, causal: bool = False
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """``q [n, Hq, D]`` over ``k, v [m, Hkv, D]`` (views with a contiguous last dim), with an
    optional additive ``mask [n, m]``. Returns ``(out [n, Hq, D] float32, lse [Hq, n])``.
    ``causal``: top-left causal (pass square blocks only). (The kernel silently misreads
    inputs whose last dim is strided: those are copied.)"""
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    o, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        q.transpose(0, 1).unsqueeze(0), k.transpose(0, 1).unsqueeze(0),
        v.transpose(0, 1).unsqueeze(0), 0.0, causal, attn_mask=mask, scale=scale)[:2]
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


def _diagonal(s: Segment) -> tuple[int, int] | None:
    """``(z, c)`` when rows ``z..n`` see ``c, c+1, ...`` keys (one more per row, c >= 1) and
    the rows before ``z`` none; None for any other staircase."""
    key = "diagonal"
    if key not in s._tiles:
        lim, found = s.limits, None
        z = int(np.searchsorted(lim, 0, side="right"))
        if z < len(lim) and bool((np.diff(lim[z:]) == 1).all()):
            found = (z, int(lim[z]))
        s._tiles[key] = found
    return s._tiles[key]


def _ragged_segment(q, k, v, s: Segment, scale, out, lse) -> None:
    base, k0 = s.q_start, s.k_start
    diag = _diagonal(s)
    if diag is not None:
        z, c = diag
        a, b = base + z, s.q_end
        sq = slice(k0 + c - 1, k0 + c - 1 + b - a)
        o, l = _flash(q[a:b], k[sq], v[sq], scale, causal=True)
        if c > 1:  # keys every row sees, then the causal square
            out[a:b], lse[:, a:b] = _flash(q[a:b], k[k0:k0 + c - 1], v[k0:k0 + c - 1], scale)
            _accumulate(out, lse, a, b, o, l)
        else:
            out[a:b], lse[:, a:b] = o, l
        return
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
    views = layout.block_views(kv_cache)
    short = _short_decodes(segs, layout.block_size)
    if short:
        _batched_decodes(q, kv_cache, layout, segs, short, scale, out, lse)
    for i, s in enumerate(segs):
        if not s.num_keys or not s.num_rows or i in short:
            continue
        if s.num_rows <= FEW_ROWS and views is not None:
            _few_rows(q, views, s, scale, out, lse)
        else:
            _paged_segment(q, kv_cache, layout, segs.block_ids(i), s, scale, out, lse)
    return out, lse


SHORT_BLOCKS = 16  # one-row segments of at most this many blocks are batched together


def _short_decodes(segs: KeySegments, bs: int) -> list[int]:
    """One-row segments short enough to batch (their K/V are gathered together)."""
    key = ("short", bs)
    if key not in segs._cache:
        segs._cache[key] = [i for i, s in enumerate(segs)
                            if s.num_rows == 1 and 0 < s.num_keys <= SHORT_BLOCKS * bs]
    return segs._cache[key]


def _batched_decodes(q, kv_cache, layout, segs: KeySegments, which: list[int], scale, out,
                     lse) -> None:
    """Short one-row segments in one go, without padding: all their blocks in one list (each
    tagged with its segment), gathered ``DECODE_TILE_TOKENS`` keys at a time, scores by one
    matmul per piece, and the softmax reduced per segment with scatter/index-add (merged
    online across pieces)."""
    bs, dev = layout.block_size, q.device
    key = ("batched", bs)
    if key not in segs._cache:
        ids, owner, first = [], [], []
        for j, i in enumerate(which):
            s = segs.segments[i]
            n = -(-s.num_keys // bs)
            ids += s.block_ids[:n]
            owner += [j] * n
            first += [b * bs for b in range(n)]
        per = max(1, DECODE_TILE_TOKENS // bs)
        pieces = [(torch.tensor(ids[a:a + per], device=dev),
                   torch.tensor(owner[a:a + per], device=dev),
                   torch.tensor(first[a:a + per], device=dev).view(-1, 1, 1, 1)
                   + torch.arange(bs, device=dev).view(1, 1, 1, bs))
                  for a in range(0, len(ids), per)]
        rows = torch.tensor([segs.segments[i].q_start for i in which], device=dev)
        lens = torch.tensor([segs.segments[i].num_keys for i in which], device=dev)
        segs._cache[key] = (rows, lens, pieces)
    rows, lens, pieces = segs._cache[key]
    r, hq, d = len(which), q.shape[1], q.shape[2]
    hkv = layout.num_kv_heads
    g = hq // hkv
    qg = q[rows].float().view(r, hkv, g, d)
    m = torch.full((r, hkv, g), float("-inf"), device=dev)
    den = torch.zeros(r, hkv, g, device=dev)
    acc = torch.zeros(r, hkv, g, d, device=dev)
    for ids, owner, tok in pieces:
        k, v = layout.gather_blocks(kv_cache, ids)  # [nb, Hkv, bs, D]
        sc = torch.matmul(qg[owner], k.float().transpose(-1, -2)).mul_(scale)  # [nb, Hkv, g, bs]
        sc.masked_fill_(tok >= lens[owner].view(-1, 1, 1, 1), float("-inf"))
        m_new = m.scatter_reduce(0, owner.view(-1, 1, 1).expand(-1, hkv, g), sc.amax(dim=-1),
                                 "amax")
        m_safe = torch.where(torch.isneginf(m_new), torch.zeros_like(m_new), m_new)
        alpha = torch.exp(m - m_safe)
        p = torch.exp(sc - m_safe[owner].unsqueeze(-1))
        den = (den * alpha).index_add_(0, owner, p.sum(dim=-1))
        acc = (acc * alpha.unsqueeze(-1)).index_add_(0, owner, torch.matmul(p, v.float()))
        m = m_new
    out[rows] = (acc / den.unsqueeze(-1)).reshape(r, hq, d)
    lse[:, rows] = (m + torch.log(den)).reshape(r, hq).transpose(0, 1)


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


MIN_RUN = 4  # consecutive blocks read in place; shorter runs are gathered together


def _block_runs(ids: list[int], most: int) -> list[tuple[list[int], slice | None]]:
    """Pieces of at most ``most`` of a segment's blocks: ``(block indices in the segment,
    slice of the cache)`` for a run of consecutive ids (read in place), or ``(indices, None)``
    for scattered blocks gathered together. Any order: the softmax is merged online."""
    pieces, loose, a = [], [], 0
    while a < len(ids):
        b = a + 1
        while b < len(ids) and b - a < most and ids[b] == ids[b - 1] + 1:
            b += 1
        if b - a >= MIN_RUN or b - a == len(ids):
            pieces.append((list(range(a, b)), slice(ids[a], ids[b - 1] + 1)))
        else:
            loose.extend(range(a, b))
            if len(loose) >= most:
                pieces.append((loose[:most], None))
                loose = loose[most:]
        a = b
    if loose:
        pieces.append((loose, None))
    return pieces


def _few_rows(q, views, s: Segment, scale, out, lse) -> None:
    """A few rows over their blocks: ``q @ K^T`` per block on views of the cache itself, an
    online softmax over the pieces, ``p @ V`` per block. No copy of K/V when the block ids
    run consecutively."""
    k_all, v_all = views  # [num_blocks, Hkv, bs, D]
    n, hq, d = s.num_rows, q.shape[1], q.shape[2]
    hkv, bs = k_all.shape[1], k_all.shape[2]
    g = hq // hkv
    ids = s.block_ids[: -(-s.num_keys // bs)]
    qg = q[s.q_start:s.q_end].float().view(n, hkv, g, d).permute(1, 2, 0, 3).reshape(hkv, g * n, d)
    lim = torch.from_numpy(np.tile(s.limits, g)).view(1, 1, g * n, 1)  # row j*n+i: row i
    m = torch.full((hkv, g * n), float("-inf"))
    den = torch.zeros(hkv, g * n)
    acc = torch.zeros(hkv, g * n, d)
    for which, sl in _block_runs(ids, max(1, DECODE_TILE_TOKENS // bs)):
        if sl is not None:
            kt, vt = k_all[sl], v_all[sl]
        else:
            idx = torch.tensor([ids[j] for j in which])
            kt, vt = torch.index_select(k_all, 0, idx), torch.index_select(v_all, 0, idx)
        sc = torch.matmul(qg.unsqueeze(0), kt.float().transpose(-1, -2)).mul_(scale)
        first = torch.tensor(which).view(-1, 1, 1, 1) * bs
        tok = first + torch.arange(bs).view(1, 1, 1, bs)
        sc.masked_fill_(tok >= lim, float("-inf"))  # [nb, Hkv, g*n, bs]
        m_new = torch.maximum(m, sc.amax(dim=(0, 3)))
        m_safe = torch.where(torch.isneginf(m_new), torch.zeros_like(m_new), m_new)
        alpha = torch.exp(m - m_safe)
        p = torch.exp(sc - m_safe.view(1, hkv, g * n, 1))
        den = den * alpha + p.sum(dim=(0, 3))
        acc = acc * alpha.unsqueeze(-1) + torch.matmul(p, vt.float()).sum(dim=0)
        m = m_new
    has = den > 0
    o = acc / torch.where(has, den, torch.ones_like(den)).unsqueeze(-1)
    l = torch.where(has, m + torch.log(torch.where(has, den, torch.ones_like(den))),
                    torch.full_like(m, float("-inf")))
    rows = slice(s.q_start, s.q_end)
    out[rows] = o.view(hkv, g, n, d).permute(2, 0, 1, 3).reshape(n, hq, d)
    lse[:, rows] = l.view(hq, n)
