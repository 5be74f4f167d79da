"""Ring prefill (``ops.ring_layer`` over a step plan) on spawned gloo ranks vs dense causal
attention in one process."""

import pytest
import torch

from tests.ops._workers import local_rows, make_qkv, member_rows, ring_prefill_worker
from vllm_esp.ops import CpuPagedKV, dense_causal_attention_varlen, stripes

GROUPS = {1: [2], 2: [1, 3], 3: [3, 0, 2], 4: [2, 0, 3, 1]}  # arbitrary ordered subsets


def edge_lens(k):
    """Lengths 1, k-1, k, k+1 plus a longer one (k-1 == 0 is dropped)."""
    return [n for n in (1, k - 1, k, k + 1, 37) if n > 0]


def run_ring(world, k, seq_lens, hq, hkv, d, dtype, seed, **kw):
    group = GROUPS[k]
    args = [None] * world.size
    for rank in group:
        args[rank] = (group, seq_lens, hq, hkv, d, dtype, seed) + tuple(kw.values())
    res = world.run(ring_prefill_worker, args)
    return group, res


def check_against_dense(group, res, seq_lens, hq, hkv, d, dtype, seed, atol):
    q, k, v = make_qkv(seed, sum(seq_lens), hq, hkv, d, dtype)
    ref_out, _ = dense_causal_attention_varlen(q, k, v, seq_lens, d ** -0.5,
                                               compute_dtype=torch.float32
                                               if sum(seq_lens) > 1000 else torch.float64)
    for r, rank in enumerate(group):
        rows = local_rows(seq_lens, len(group), r)
        torch.testing.assert_close(res[rank][0].float(), ref_out[rows].float(), atol=atol,
                                   rtol=0)


def shard_rows(seq_lens, k):
    return [sum(len(stripes(member_rows(n, k))[r]) for n in seq_lens) for r in range(k)]


@pytest.mark.parametrize("k", [1, 2, 3, 4])
@pytest.mark.parametrize("gqa,d", [(1, 64), (2, 128), (4, 80), (8, 64)])
def test_ring_prefill_fp32_matches_dense(esp_world, k, gqa, d):
    hkv = 1 if gqa == 8 else 2
    hq = hkv * gqa
    seq_lens = edge_lens(k)
    group, res = run_ring(esp_world, k, seq_lens, hq, hkv, d, torch.float32, seed=k * 10 + gqa)
    check_against_dense(group, res, seq_lens, hq, hkv, d, torch.float32, k * 10 + gqa, 1e-5)
    # bytes: each rank sends every shard but the one of its successor, K and V
    elt = hkv * d * 4 * 2
    counts = shard_rows(seq_lens, k)
    for r, rank in enumerate(group):
        expect = sum(c for s, c in enumerate(counts) if s != (r + 1) % k) * elt
        assert res[rank][2] == expect
    assert sum(res[rank][2] for rank in group) == (k - 1) * sum(counts) * elt


def test_ring_prefill_long_request_4k(esp_world):
    seq_lens = [4000, 3, 1]
    group, res = run_ring(esp_world, 4, seq_lens, 2, 1, 64, torch.float32, seed=7)
    check_against_dense(group, res, seq_lens, 2, 1, 64, torch.float32, 7, 1e-5)


BF16_ATOL = 2e-2  # bf16 inputs/outputs, float32 accumulation; 1 bf16 ulp at |x|~2 is 1.6e-2


def test_ring_prefill_bf16(esp_world):
    seq_lens = [1, 2, 3, 4, 5, 130]
    group, res = run_ring(esp_world, 3, seq_lens, 4, 2, 64, torch.bfloat16, seed=3)
    check_against_dense(group, res, seq_lens, 4, 2, 64, torch.bfloat16, 3, BF16_ATOL)
    assert res[group[0]][0].dtype == torch.bfloat16


def random_keep(seq_lens, k, block_size, num_blocks, seed):
    """Split each request into k contiguous (possibly empty) keep ranges, each on random
    blocks of its member: per member (ranges, the slot of every kept token, block ids)."""
    g = torch.Generator().manual_seed(seed)
    keep = [([], [], []) for _ in range(k)]
    perms = [torch.randperm(num_blocks, generator=g).tolist() for _ in range(k)]
    used = [0] * k
    for n in seq_lens:
        cuts = sorted(torch.randint(0, n + 1, (k - 1,), generator=g).tolist())
        bounds = [0] + cuts + [n]
        for r in range(k):
            b, e = bounds[r], bounds[r + 1]
            nb = -(-(e - b) // block_size)
            blocks = perms[r][used[r]:used[r] + nb]
            used[r] += nb
            slots = [blocks[t // block_size] * block_size + t % block_size for t in range(e - b)]
            keep[r][0].append((b, e))
            keep[r][1].append(torch.tensor(slots, dtype=torch.int64))
            keep[r][2].append(blocks)
    return [(rngs, torch.cat(sl), ids) for rngs, sl, ids in keep]


@pytest.mark.parametrize("k,dtype", [(2, torch.float32), (3, torch.bfloat16),
                                     (4, torch.float32)])
def test_keep_range_writes_equal_direct_write(esp_world, k, dtype):
    seq_lens = edge_lens(k) + [70]
    hq, hkv, d, bs, nb = 4, 2, 64, 32, 12
    keep = random_keep(seq_lens, k, bs, nb, seed=k)
    group, res = run_ring(esp_world, k, seq_lens, hq, hkv, d, dtype, seed=11,
                          keep=keep, block_size=bs, num_blocks=nb)
    check_against_dense(group, res, seq_lens, hq, hkv, d, dtype, 11,
                        1e-5 if dtype == torch.float32 else BF16_ATOL)
    _, kf, vf = make_qkv(11, sum(seq_lens), hq, hkv, d, dtype)
    starts = torch.tensor([0] + seq_lens[:-1]).cumsum(0).tolist()
    layout = CpuPagedKV(hkv, d, bs, dtype)
    total_kept = 0
    for r, rank in enumerate(group):
        ranges, slots, _ = keep[r]
        rows = torch.cat([torch.arange(s + b, s + e) for s, (b, e) in zip(starts, ranges)])
        direct = layout.allocate(nb)
        layout.write(direct, kf[rows], vf[rows], slots)
        assert torch.equal(res[rank][1], direct)
        total_kept += rows.numel()
    assert total_kept == sum(seq_lens)


def test_ring_prefill_members_without_rows(esp_world):
    """k=4 with requests of 1 and 2 tokens: the first members compute no row but relay."""
    seq_lens = [1, 2, 1]
    group, res = run_ring(esp_world, 4, seq_lens, 4, 2, 64, torch.float32, seed=21)
    check_against_dense(group, res, seq_lens, 4, 2, 64, torch.float32, 21, 1e-5)
    assert res[group[0]][0].shape[0] == 0 and res[group[1]][0].shape[0] == 0
    # empty shards are not sent, relayed ones are: the group total is still (k-1)*|K,V|
    assert sum(res[rank][2] for rank in group) == 3 * sum(seq_lens) * 2 * 2 * 64 * 4
