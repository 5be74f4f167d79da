"""ESP attention backends vs the dense oracle (single process, fp32 within 1e-4).

The CPU backend (torch's CPU flash attention, tiled) and the flash-attn path's packing logic
(with a torch stand-in for flash-attn's documented varlen semantics) over GQA ratios 1/4/8,
head_dim 64/80/128, ragged chunks, striped causal staircases (equal and weighted stripes) and
paged partials including empty ones (lse = -inf). Tiles are made small so that every tile
boundary case runs. The Triton backend runs the same checks under the interpreter
(``test_triton_interpret.py``).
"""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vllm_esp.ops import (
    CpuPagedKV,
    FlashPagedKV,
    KeySegments,
    NhdPagedKV,
    dense_causal_attention_varlen,
    keys,
    merge_partials,
    stripes,
)
from vllm_esp.ops import cpu_attention, flash_attn_path
from vllm_esp.ops.reference import (
    masked_attention_with_lse,
    segments_reference_paged,
    segments_reference_ragged,
)

SHAPES = [(g, d) for g in (1, 4, 8) for d in (64, 80, 128)]


@pytest.fixture(autouse=True)
def small_tiles(monkeypatch):
    monkeypatch.setattr(cpu_attention, "Q_TILE", 16)
    monkeypatch.setattr(cpu_attention, "KEY_TILE", 64)
    monkeypatch.setattr(cpu_attention, "DECODE_TILE_TOKENS", 96)


def assert_same(got, ref, atol=1e-4):
    (o, l), (ro, rl) = got, ref
    torch.testing.assert_close(o.float(), ro.float(), atol=atol, rtol=0)
    assert torch.equal(torch.isneginf(l), torch.isneginf(rl))
    fin = torch.isfinite(rl)
    torch.testing.assert_close(l[fin], rl[fin], atol=atol, rtol=0)


def ring_hops(sizes_per_request: list[list[int]], r: int):
    """Member ``r``'s rows vs each source member's shard of a batched ring: the segments of
    every hop (rows and shard rows request-major, as the engine packs them)."""
    k = len(sizes_per_request[0])
    pos = [stripes(s) for s in sizes_per_request]
    q_off = np.concatenate([[0], np.cumsum([len(p[r]) for p in pos])]).astype(int)
    hops = []
    for src in range(k):
        k_off = np.concatenate([[0], np.cumsum([len(p[src]) for p in pos])]).astype(int)
        hops.append(KeySegments([keys.by_position(int(q_off[x]), p[r], p[src],
                                                  k_start=int(k_off[x]))
                                 for x, p in enumerate(pos)]))
    return hops, int(q_off[-1]), [int(sum(len(p[s]) for p in pos)) for s in range(k)]


@pytest.mark.parametrize("gqa,d", SHAPES)
@pytest.mark.parametrize("sizes", [[[40, 40, 40], [7, 7, 7]],  # equal stripes: t % k
                                   [[96, 96, 33], [30, 20, 11]],  # weighted stripes
                                   [[0, 0, 3], [64, 64, 64]]])  # members without rows
def test_cpu_ragged_hops_match_oracle(gqa, d, sizes):
    hkv = 1 if gqa == 8 else 2
    g = torch.Generator().manual_seed(gqa * 1000 + d)
    for r in range(len(sizes[0])):
        hops, rows, shard = ring_hops(sizes, r)
        q = torch.randn(rows, hkv * gqa, d, generator=g)
        for src, segs in enumerate(hops):
            k = torch.randn(shard[src], hkv, d, generator=g)
            v = torch.randn(shard[src], hkv, d, generator=g)
            assert_same(cpu_attention.ragged_attention(q, k, v, segs, 0.1),
                        segments_reference_ragged(q, k, v, segs, 0.1))


@settings(max_examples=15, deadline=None)
@given(k=st.integers(1, 4), lens=st.lists(st.integers(1, 40), min_size=1, max_size=3),
       gqa=st.sampled_from([1, 4]), weighted=st.booleans(), seed=st.integers(0, 10_000))
def test_ring_of_hops_equals_causal_attention(k, lens, gqa, weighted, seed):
    """All hops of one member merged by LSE = causal attention of its rows over the prompt."""
    g = torch.Generator().manual_seed(seed)
    sizes = []
    for n in lens:
        if weighted and n >= k:
            cuts = sorted(torch.randint(0, n, (k - 1,), generator=g).tolist())
            s = np.diff([0] + cuts + [n]).tolist()
            s[-1] = max(s[-1], 1)
            s[0] = n - sum(s[1:])
            sizes.append(s if min(s) >= 0 else [0] * (k - 1) + [n])
        else:
            sizes.append([0] * (k - 1) + [n] if n < k
                         else [n // k] * (k - 1) + [n - n // k * (k - 1)])
    hkv, d = 2, 32
    total = sum(lens)
    q = torch.randn(total, hkv * gqa, d, generator=g)
    kk, v = torch.randn(total, hkv, d, generator=g), torch.randn(total, hkv, d, generator=g)
    ref, ref_lse = dense_causal_attention_varlen(q, kk, v, lens, 0.3, torch.float32)
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(int)
    pos = [stripes(s) for s in sizes]
    rows_of = [np.concatenate([st_ + p[j] for st_, p in zip(starts, pos)]) for j in range(k)]
    for r in range(k):
        hops, _, _ = ring_hops(sizes, r)
        parts = [cpu_attention.ragged_attention(q[rows_of[r]], kk[rows_of[s]], v[rows_of[s]],
                                                hops[s], 0.3) for s in range(k)]
        out, lse = merge_partials(torch.stack([p[0] for p in parts]),
                                  torch.stack([p[1] for p in parts]))
        torch.testing.assert_close(out, ref[rows_of[r]], atol=1e-5, rtol=0)
        torch.testing.assert_close(lse, ref_lse[:, rows_of[r]], atol=1e-5, rtol=0)


def paged_setup(layout, lens, seed):
    """A cache with each request's keys on random blocks, junk everywhere else."""
    g = torch.Generator().manual_seed(seed)
    bs = layout.block_size
    need = [max(1, -(-n // bs)) for n in lens]
    nb = sum(need) + 3
    cache = layout.allocate(nb)
    junk_k = torch.randn(nb * bs, layout.num_kv_heads, layout.head_dim, generator=g)
    layout.write(cache, junk_k.to(layout.dtype), junk_k.to(layout.dtype), torch.arange(nb * bs))
    perm = torch.randperm(nb, generator=g).tolist()
    blocks, used = [], 0
    for n, m in zip(lens, need):
        blocks.append(perm[used:used + m])
        used += m
    return cache, blocks


def paged_segments(lens, blocks):
    """Decode rows (one row each, one with no keys), a multi-row full segment and two causal
    ones (a whole chunk, and the last rows of a chunk), on the given requests' blocks."""
    segs, a = [], 0
    kinds = ["full1", "full1", "full", "causal", "causal_tail", "full1"]
    for n, b, kind in zip(lens, blocks, kinds):
        if kind == "full1":
            segs.append(keys.full(a, 1, n, block_ids=b))
            a += 1
        elif kind == "full":
            segs.append(keys.full(a, 5, n, block_ids=b))
            a += 5
        elif kind == "causal":
            segs.append(keys.causal(a, n, n, block_ids=b))
            a += n
        else:
            segs.append(keys.causal(a, 9, n, block_ids=b))
            a += 9
    return KeySegments(segs), a


LENS = [0, 150, 70, 45, 200, 33]


@pytest.mark.parametrize("layout_cls", [CpuPagedKV, FlashPagedKV, NhdPagedKV])
@pytest.mark.parametrize("gqa,d", SHAPES)
def test_cpu_paged_matches_oracle(layout_cls, gqa, d):
    hkv = 1 if gqa == 8 else 2
    layout = layout_cls(hkv, d, 32, torch.float32)
    cache, blocks = paged_setup(layout, LENS, seed=d + gqa)
    segs, rows = paged_segments(LENS, blocks)
    q = torch.randn(rows, hkv * gqa, d, generator=torch.Generator().manual_seed(1))
    got = cpu_attention.paged_attention(q, cache, layout, segs, 0.1)
    assert_same(got, segments_reference_paged(q, cache, layout, segs, 0.1))
    assert torch.isneginf(got[1][:, 0]).all() and (got[0][0] == 0).all()  # no keys


def test_cpu_backend_bf16_accumulates_in_fp32():
    layout = CpuPagedKV(2, 64, 32, torch.bfloat16)
    cache, blocks = paged_setup(layout, LENS, seed=3)
    segs, rows = paged_segments(LENS, blocks)
    q = torch.randn(rows, 8, 64, generator=torch.Generator().manual_seed(2)).bfloat16()
    got = cpu_attention.paged_attention(q, cache, layout, segs, 0.125)
    assert got[0].dtype == torch.float32  # the caller casts once, after every merge
    assert_same(got, segments_reference_paged(q, cache, layout, segs, 0.125), atol=2e-2)


def fake_flash_varlen(q, k, v, max_seqlen_q, cu_seqlens_q, max_seqlen_k, cu_seqlens_k=None,
                      seqused_k=None, softmax_scale=None, causal=False, block_table=None,
                      return_softmax_lse=False, **_):
    """flash-attn's documented varlen semantics in torch: packed or paged keys (block_table
    with seqused_k; k/v ``[num_blocks, block_size, Hkv, D]``), causal aligned bottom-right,
    GQA, returns ``(out [T, Hq, D], lse [Hq, T])``."""
    assert return_softmax_lse
    outs, lses = [], []
    cq = cu_seqlens_q.tolist()
    for i in range(len(cq) - 1):
        qi = q[cq[i]:cq[i + 1]]
        if block_table is not None:
            n = int(seqused_k[i])
            bs = k.shape[1]
            ids = block_table[i, : -(-n // bs)].long()
            ki = k[ids].reshape(-1, k.shape[2], k.shape[3])[:n]
            vi = v[ids].reshape(-1, v.shape[2], v.shape[3])[:n]
        else:
            ki, vi = k[cu_seqlens_k[i]:cu_seqlens_k[i + 1]], v[cu_seqlens_k[i]:cu_seqlens_k[i + 1]]
        nq, nk = qi.shape[0], ki.shape[0]
        mask = torch.ones(nq, nk, dtype=torch.bool)
        if causal:
            mask = torch.arange(nk).unsqueeze(0) <= (torch.arange(nq) + nk - nq).unsqueeze(1)
        o, l = masked_attention_with_lse(qi, ki, vi, mask, softmax_scale)
        outs.append(o)
        lses.append(l)
    return torch.cat(outs), torch.cat(lses, dim=1)


def test_flash_path_packs_segments_like_the_oracle(monkeypatch):
    """The GPU path's shared logic on the CPU: which segments flash-attn takes (equal-stripe
    hops, full and causal paged partials), how they are packed, and the fallback for the rest
    (weighted stripes, and float32, which flash-attn does not compute), against the oracle.
    bfloat16 inputs, as flash-attn takes them."""
    flash_attn_path.set_override(fake_flash_varlen)
    calls = []

    def fallback_ragged(q, k, v, segs, scale):
        calls.append(len(segs))
        return segments_reference_ragged(q, k, v, segs, scale)

    bf16 = torch.bfloat16
    try:
        g = torch.Generator().manual_seed(4)
        for sizes in ([[40, 40, 40], [9, 9, 9]], [[30, 20, 11], [8, 8, 8]]):
            for r in range(3):
                hops, rows, shard = ring_hops(sizes, r)
                q = torch.randn(rows, 8, 64, generator=g).to(bf16)
                for src, segs in enumerate(hops):
                    k = torch.randn(shard[src], 2, 64, generator=g).to(bf16)
                    v = torch.randn(shard[src], 2, 64, generator=g).to(bf16)
                    got = flash_attn_path.ragged_attention_flash(q, k, v, segs, 0.1,
                                                                 fallback_ragged)
                    assert_same(got, segments_reference_ragged(q, k, v, segs, 0.1), 2e-2)
        assert calls  # the weighted stripes went to the fallback
        calls.clear()
        flash_attn_path.ragged_attention_flash(q.float(), k.float(), v.float(), segs, 0.1,
                                               fallback_ragged)
        assert calls == [len(segs)]  # float32: all of it
        layout = FlashPagedKV(2, 64, 32, bf16)
        cache, blocks = paged_setup(layout, LENS, seed=5)
        segs, rows = paged_segments(LENS, blocks)
        q = torch.randn(rows, 8, 64, generator=g).to(bf16)

        def no_fallback(*a):
            raise AssertionError("flash-attn takes every full and causal paged segment")

        got = flash_attn_path.paged_attention_flash(q, cache, layout, segs, 0.1, no_fallback)
        assert_same(got, segments_reference_paged(q, cache, layout, segs, 0.1), 2e-2)
    finally:
        flash_attn_path.set_override(None)
