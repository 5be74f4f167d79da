"""Multi-master distributed decode (``ops.span_layer``: span queries of one row) over spawned
gloo ranks vs dense attention."""

import pytest
import torch

from tests.ops._workers import decode_worker
from vllm_esp.ops import masked_attention_with_lse


def dense_decode(masters, kv_lens, hq, hkv, d, dtype, seed):
    """Same generator order as decode_worker: q, then K,V per request."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(len(masters), hq, d, generator=g).to(dtype)
    outs, lses = [], []
    for row in kv_lens:
        t = sum(row)
        k = torch.randn(t, hkv, d, generator=g).to(dtype)
        v = torch.randn(t, hkv, d, generator=g).to(dtype)
        o, l = masked_attention_with_lse(q[len(outs):len(outs) + 1], k, v,
                                         torch.ones(1, t, dtype=torch.bool), d ** -0.5,
                                         torch.float64)
        outs.append(o)
        lses.append(l)
    return torch.cat(outs), torch.cat(lses, dim=1)


def run_decode(world, group, masters, kv_lens, hq, hkv, d, dtype, seed):
    args = [None] * world.size
    for rank in group:
        args[rank] = (group, masters, kv_lens, hq, hkv, d, dtype, seed)
    return world.run(decode_worker, args)


CASES = [
    # group, masters (index in group), kv_lens[i][j]
    ([1], [0, 0], [[5], [40]]),
    ([3, 0], [0, 1, 0], [[3, 0], [0, 7], [33, 65]]),  # empty partitions on master and peer
    ([0, 2, 3], [2, 0, 1, 2], [[1, 1, 1], [0, 0, 9], [70, 0, 2], [4, 50, 0]]),
    ([2, 1, 3, 0], [0, 3, 3, 1, 2], [[10, 20, 30, 40], [0, 0, 0, 1], [1, 0, 0, 0],
                                     [64, 64, 1, 0], [0, 33, 2, 5]]),  # one spread over all
]


@pytest.mark.parametrize("group,masters,kv_lens", CASES)
@pytest.mark.parametrize("gqa,d", [(1, 64), (4, 128), (8, 64)])
def test_decode_fp32_matches_dense(esp_world, group, masters, kv_lens, gqa, d):
    hkv = 1 if gqa == 8 else 2
    hq = hkv * gqa
    res = run_decode(esp_world, group, masters, kv_lens, hq, hkv, d, torch.float32, seed=5)
    ref_out, ref_lse = dense_decode(masters, kv_lens, hq, hkv, d, torch.float32, 5)
    seen = []
    for rank in group:
        mine, out, _ = res[rank]
        seen += mine
        if mine:
            torch.testing.assert_close(out, ref_out[mine].float(), atol=1e-5, rtol=0)
    assert sorted(seen) == list(range(len(masters)))


def test_decode_bf16(esp_world):
    group, masters, kv_lens = CASES[3]
    res = run_decode(esp_world, group, masters, kv_lens, 4, 2, 64, torch.bfloat16, seed=9)
    ref_out, _ = dense_decode(masters, kv_lens, 4, 2, 64, torch.bfloat16, 9)
    for rank in group:
        mine, out, _ = res[rank]
        assert out.dtype == torch.bfloat16
        torch.testing.assert_close(out.float(), ref_out[mine].float(), atol=2e-2, rtol=0)


def test_decode_bytes_do_not_grow_with_context(esp_world):
    group, masters = [0, 1, 2], [0, 1, 2, 0]
    short = [[8, 8, 8], [0, 16, 8], [4, 4, 16], [24, 0, 0]]
    long = [[x * 8 for x in row] for row in short]  # 8x the context, same placement pattern
    hq, hkv, d = 4, 2, 64
    b_short = [r[2] for r in run_decode(esp_world, group, masters, short, hq, hkv, d,
                                        torch.float32, 1) if r is not None]
    b_long = [r[2] for r in run_decode(esp_world, group, masters, long, hq, hkv, d,
                                       torch.float32, 1) if r is not None]
    assert b_short == b_long
    # exact: per (request, peer holding it): query + output (fp32) + fp32 LSE
    pairs = sum(1 for i, row in enumerate(short) for j, n in enumerate(row)
                if n > 0 and j != masters[i])
    assert sum(b_short) == pairs * (hq * d * 4 * 2 + hq * 4)


def test_decode_member_without_role(esp_world):
    """A member that masters nothing and holds nothing sends and receives nothing."""
    group, masters, kv_lens = [1, 0, 3], [0, 2], [[5, 0, 7], [0, 0, 40]]
    res = run_decode(esp_world, group, masters, kv_lens, 4, 2, 64, torch.float32, seed=4)
    ref_out, _ = dense_decode(masters, kv_lens, 4, 2, 64, torch.float32, 4)
    assert res[0][0] == [] and res[0][2] == 0 and res[0][1].shape[0] == 0
    for rank in (1, 3):
        mine, out, _ = res[rank]
        torch.testing.assert_close(out, ref_out[mine], atol=1e-5, rtol=0)
