"""Single-process checks: merge, stripe math, paged partials on both layouts, dispatch.

Property tests simulate the ring in one process (every (query rank, shard rank) hop, then an
LSE merge), which checks the stripe/causal reduction over many shapes cheaply.
"""

import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vllm_esp.ops import (
    NhdPagedKV,
    RingPrefillPlan,
    dense_causal_attention_varlen,
    masked_attention_with_lse,
    merge_partials,
    merge_two,
    paged_attention_with_lse,
    select_backends,
    shard_slot_mapping,
    stripe_counts,
    stripe_hop_attention,
    striped_positions,
)

PROPS = settings(max_examples=12, deadline=None)


def test_merge_of_key_split_equals_attention_over_union():
    torch.manual_seed(0)
    q, k, v = torch.randn(5, 4, 32), torch.randn(20, 2, 32), torch.randn(20, 2, 32)
    full = masked_attention_with_lse(q, k, v, torch.ones(5, 20, dtype=torch.bool), 0.2)
    parts = [masked_attention_with_lse(q, k[a:b], v[a:b], torch.ones(5, b - a, dtype=torch.bool),
                                       0.2) for a, b in ((0, 7), (7, 7), (7, 20))]
    out, lse = merge_partials(torch.stack([p[0] for p in parts]),
                              torch.stack([p[1] for p in parts]))
    torch.testing.assert_close(out, full[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(lse, full[1], atol=1e-6, rtol=0)
    assert torch.isneginf(parts[1][1]).all() and (parts[1][0] == 0).all()


def test_merge_all_empty_gives_zero_and_neg_inf():
    out, lse = merge_partials(torch.randn(3, 2, 2, 8),
                              torch.tensor([float("-inf"), float("inf"), float("-inf")])
                              .view(3, 1, 1).expand(3, 2, 2))
    assert (out == 0).all() and torch.isneginf(lse).all()


def test_vllm_merge_attn_states_agrees():
    from vllm_esp.ops.dispatch import vllm_merge_two

    torch.manual_seed(1)
    oa, ob = torch.randn(6, 4, 64), torch.randn(6, 4, 64)
    la, lb = torch.randn(4, 6), torch.randn(4, 6)
    la[0, 0] = float("-inf")
    lb[1, 2] = la[1, 2] = float("-inf")
    ref = merge_two(oa, la, ob, lb)
    got = vllm_merge_two(oa, la, ob, lb)
    torch.testing.assert_close(got[0], ref[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(got[1], ref[1], atol=1e-6, rtol=0)


@PROPS
@given(k=st.integers(1, 4), lens=st.lists(st.integers(1, 20), min_size=1, max_size=4),
       gqa=st.sampled_from([1, 2, 4]), seed=st.integers(0, 10_000))
def test_simulated_ring_matches_dense(k, lens, gqa, seed):
    g = torch.Generator().manual_seed(seed)
    hkv, d = 2, 16
    q = torch.randn(sum(lens), hkv * gqa, d, generator=g)
    kk = torch.randn(sum(lens), hkv, d, generator=g)
    v = torch.randn(sum(lens), hkv, d, generator=g)
    ref_out, ref_lse = dense_causal_attention_varlen(q, kk, v, lens, 0.3)
    starts = torch.tensor([0] + lens[:-1]).cumsum(0)
    rows = []
    for r in range(k):
        counts = stripe_counts(lens, k, r)
        rows.append(torch.repeat_interleave(starts, torch.tensor(counts))
                    + striped_positions(lens, k, r))
    for r in range(k):
        out = lse = None
        for s in range(k):
            o, l = stripe_hop_attention(q[rows[r]], kk[rows[s]], v[rows[s]],
                                        stripe_counts(lens, k, r), stripe_counts(lens, k, s),
                                        r, s, 0.3)
            out, lse = (o, l) if out is None else merge_two(out, lse, o, l)
        torch.testing.assert_close(out, ref_out[rows[r]].float(), atol=1e-5, rtol=0)
        torch.testing.assert_close(lse, ref_lse[:, rows[r]].float(), atol=1e-5, rtol=0)


@PROPS
@given(k=st.integers(1, 4), lens=st.lists(st.integers(0, 30), min_size=1, max_size=5),
       data=st.data())
def test_shard_slot_mappings_cover_each_kept_token_once(k, lens, data):
    ranges = []
    for n in lens:
        b = data.draw(st.integers(0, n))
        ranges.append((b, data.draw(st.integers(b, n))))
    kept = sum(e - b for b, e in ranges)
    slots = torch.randperm(kept + 5)[:kept]
    plan = RingPrefillPlan(list(range(k)), 0, lens, ranges, slots)
    seen = []
    for src in range(k):
        m = shard_slot_mapping(plan, src)
        assert m is None or m.numel() == sum(stripe_counts(lens, k, src))
        if m is not None:
            seen += m[m >= 0].tolist()
    assert sorted(seen) == sorted(slots.tolist())


def test_plan_validation():
    with pytest.raises(ValueError):
        RingPrefillPlan([0, 1], 2, [3])
    with pytest.raises(ValueError):
        RingPrefillPlan([0, 1], 0, [3], [(0, 4)], torch.arange(4))
    with pytest.raises(ValueError):
        RingPrefillPlan([0, 1], 0, [3], [(0, 2)], None)


def _paged_setup(layout, lens, hq, seed):
    g = torch.Generator().manual_seed(seed)
    bs = layout.block_size
    need = [(n + bs - 1) // bs for n in lens]
    nb = sum(need) + 3
    cache = layout.allocate(nb)
    perm = torch.randperm(nb, generator=g)
    bt = torch.full((len(lens), max(1, max(need))), 10_000, dtype=torch.int32)  # junk padding
    kv, used = [], 0
    for i, n in enumerate(lens):
        blocks = perm[used:used + need[i]]
        used += need[i]
        bt[i, :need[i]] = blocks.to(torch.int32)
        k = torch.randn(n, layout.num_kv_heads, layout.head_dim, generator=g).to(layout.dtype)
        v = torch.randn(n, layout.num_kv_heads, layout.head_dim, generator=g).to(layout.dtype)
        slots = (blocks.repeat_interleave(bs) * bs + torch.arange(bs).repeat(need[i]))[:n]
        layout.write(cache, k, v, slots)
        kv.append((k, v))
    q = torch.randn(len(lens), hq, layout.head_dim, generator=g).to(layout.dtype)
    return cache, bt, kv, q


def test_flash_layout_is_vllms_flash_attn_cache():
    """vLLM 0.32's FLASH_ATTN cache is ``[num_blocks, Hkv, block_size, 2 * D]``, K in the first
    D of the last dim and V in the second (``FlashAttentionImpl.forward``'s docstring and
    split): token slot s of head h sits at ``[s // bs, h, s % bs]``."""
    from vllm_esp.ops import FlashPagedKV

    layout = FlashPagedKV(2, 8, 16, torch.float32)
    cache = layout.allocate(4)
    assert cache.shape == (4, 2, 16, 16)
    k, v = torch.randn(5, 2, 8), torch.randn(5, 2, 8)
    slots = torch.tensor([0, -1, 17, 40, 63])
    layout.write(cache, k, v, slots)
    for t, s in enumerate(slots.tolist()):
        if s < 0:
            continue
        torch.testing.assert_close(cache[s // 16, :, s % 16, :8], k[t], rtol=0, atol=0)
        torch.testing.assert_close(cache[s // 16, :, s % 16, 8:], v[t], rtol=0, atol=0)
    assert int((cache != 0).sum()) == 4 * 2 * 16  # slot -1 wrote nothing
    gk, gv = layout.gather(cache, torch.tensor([1, 2]))  # tokens 16..47
    torch.testing.assert_close(gk[1], k[2], rtol=0, atol=0)
    torch.testing.assert_close(gv[40 - 16], v[3], rtol=0, atol=0)


@pytest.mark.parametrize("layout_name", ["cpu", "nhd", "flash"])
@pytest.mark.parametrize("d,gqa", [(64, 1), (128, 4)])
def test_paged_partial_matches_dense(layout_name, d, gqa):
    from vllm_esp.ops import CpuPagedKV, FlashPagedKV

    hkv = 2
    cls = {"cpu": CpuPagedKV, "nhd": NhdPagedKV, "flash": FlashPagedKV}[layout_name]
    layout = cls(hkv, d, 32, torch.float32)
    lens = [0, 1, 31, 32, 33, 100]
    cache, bt, kv, q = _paged_setup(layout, lens, hkv * gqa, 0)
    out, lse = paged_attention_with_lse(q, cache, layout, bt, torch.tensor(lens), 0.125)
    for i, (k, v) in enumerate(kv):
        if lens[i] == 0:
            assert (out[i] == 0).all() and torch.isneginf(lse[:, i]).all()
            continue
        ro, rl = masked_attention_with_lse(q[i:i + 1], k, v,
                                           torch.ones(1, lens[i], dtype=torch.bool), 0.125)
        torch.testing.assert_close(out[i:i + 1], ro, atol=1e-5, rtol=0)
        torch.testing.assert_close(lse[:, i:i + 1], rl, atol=1e-5, rtol=0)


def test_dispatch_defaults_and_override(monkeypatch):
    monkeypatch.delenv("VLLM_ESP_OPS_BACKEND", raising=False)
    b = select_backends("cpu", NhdPagedKV(1, 8, 16, torch.float32))
    assert (b.hop, b.partial_name, b.merge_name) == ("torch", "torch", "torch")
    assert select_backends("cpu", None, override="vllm").merge_name == "vllm"
    assert select_backends("cpu", NhdPagedKV(1, 8, 16, torch.float32),
                           override="triton").partial_name == "triton"
    with pytest.raises(RuntimeError):
        select_backends("cpu", override="flash_attn")  # not importable without CUDA
    monkeypatch.setenv("VLLM_ESP_OPS_BACKEND", "nonsense")
    with pytest.raises(ValueError):
        select_backends("cpu")


def test_flash_attn_hop_path_with_stand_in(monkeypatch):
    """The varlen plumbing (cu_seqlens, row gather, LSE layout) with a torch stand-in."""
    from vllm_esp.ops import flash_attn_path

    def fake_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                    softmax_scale, causal, return_softmax_lse):
        assert causal and return_softmax_lse and torch.equal(cu_seqlens_q, cu_seqlens_k)
        lens = (cu_seqlens_q[1:] - cu_seqlens_q[:-1]).tolist()
        o, l = dense_causal_attention_varlen(q, k, v, lens, softmax_scale, torch.float32)
        return o, l, None  # flash-attn 2 varlen: (out, softmax_lse [H, T], ...)

    monkeypatch.setattr(flash_attn_path, "_OVERRIDE", fake_varlen)
    torch.manual_seed(2)
    lens, k = [1, 3, 9], 3
    for r, s in [(0, 2), (2, 0), (1, 1)]:
        cq, cs = stripe_counts(lens, k, r), stripe_counts(lens, k, s)
        q = torch.randn(sum(cq), 4, 16)
        kk, v = torch.randn(sum(cs), 2, 16), torch.randn(sum(cs), 2, 16)
        a = stripe_hop_attention(q, kk, v, cq, cs, r, s, 0.5, backend="flash_attn")
        b = stripe_hop_attention(q, kk, v, cq, cs, r, s, 0.5, backend="torch")
        torch.testing.assert_close(a[0], b[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(a[1], b[1], atol=1e-5, rtol=0)


def test_import_without_optional_packages():
    """Blocking vllm, triton and flash_attn must not break importing ops/comm."""
    code = (
        "import sys\n"
        "for m in ('vllm', 'triton', 'flash_attn'): sys.modules[m] = None\n"
        "import vllm_esp.ops as o, vllm_esp.comm\n"
        "from vllm_esp.ops import triton_kernels, flash_attn_path\n"
        "assert not triton_kernels.AVAILABLE and not flash_attn_path.available()\n"
        "b = o.select_backends('cpu')\n"
        "assert (b.hop, b.partial_name, b.merge_name) == ('torch', 'torch', 'torch')\n"
        "print('ok')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"
