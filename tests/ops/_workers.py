"""Functions run inside the spawned ESP test world (module level so they pickle by name)."""

from __future__ import annotations

import torch

from vllm_esp.ops import (
    CpuPagedKV,
    DecodePlan,
    RingPrefillPlan,
    distributed_decode_attention,
    ring_prefill_attention,
    striped_positions,
)
from vllm_esp.ops.dispatch import vllm_merge_two
from vllm_esp.ops.merge import merge_two


def make_qkv(seed, total, hq, hkv, d, dtype):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(total, hq, d, generator=g).to(dtype)
    k = torch.randn(total, hkv, d, generator=g).to(dtype)
    v = torch.randn(total, hkv, d, generator=g).to(dtype)
    return q, k, v


def local_rows(seq_lens, k, r):
    """Row indices (into the packed full batch) of rank r's striped tokens."""
    pos = striped_positions(seq_lens, k, r)
    starts = torch.repeat_interleave(
        torch.tensor([0] + list(torch.tensor(seq_lens).cumsum(0)[:-1].tolist())),
        torch.tensor([len(range(r, n, k)) for n in seq_lens]),
    ) if seq_lens else torch.zeros(0, dtype=torch.int64)
    return starts + pos


def ring_prefill_worker(comm, group, seq_lens, hq, hkv, d, dtype, seed, keep=None,
                        block_size=32, num_blocks=0, merge="torch"):
    """Run one ring-prefill layer; return (out, lse, cache, bytes sent)."""
    k = len(group)
    r = group.index(comm.rank)
    q, kk, vv = make_qkv(seed, sum(seq_lens), hq, hkv, d, dtype)
    rows = local_rows(seq_lens, k, r)
    keep_ranges = keep_slots = cache = layout = None
    if keep is not None:
        keep_ranges, keep_slots = keep[r]
        layout = CpuPagedKV(hkv, d, block_size, dtype)
        cache = layout.allocate(num_blocks)
    plan = RingPrefillPlan(group, r, seq_lens, keep_ranges, keep_slots)
    out, lse = ring_prefill_attention(
        q[rows], kk[rows], vv[rows], plan, comm, d ** -0.5, kv_cache=cache, kv_writer=layout,
        merge_fn=vllm_merge_two if merge == "vllm" else merge_two, return_lse=True)
    return out, lse, cache, comm.bytes_by_op["ring_shift"]


def decode_worker(comm, group, masters, kv_lens, hq, hkv, d, dtype, seed, block_size=32):
    """Each member stores its share of every request's KV (random slots), then decodes."""
    r = group.index(comm.rank)
    n_req = len(masters)
    g = torch.Generator().manual_seed(seed)
    # every member regenerates the same full data: q per request, KV per request
    q = torch.randn(n_req, hq, d, generator=g).to(dtype)
    totals = [sum(row) for row in kv_lens]
    kvs = [(torch.randn(t, hkv, d, generator=g).to(dtype),
            torch.randn(t, hkv, d, generator=g).to(dtype)) for t in totals]
    layout = CpuPagedKV(hkv, d, block_size, dtype)
    need = [(row[r] + block_size - 1) // block_size for row in kv_lens]
    num_blocks = max(1, sum(need)) + 2
    cache = layout.allocate(num_blocks)
    perm = torch.randperm(num_blocks, generator=torch.Generator().manual_seed(seed + 100 + r))
    max_blocks = max(1, max(need))
    block_table = torch.zeros(n_req, max_blocks, dtype=torch.int32)
    used = 0
    for i, row in enumerate(kv_lens):
        begin = sum(row[:r])  # this member stores tokens [begin, begin + row[r]) of request i
        n = row[r]
        if n == 0:
            continue
        blocks = perm[used:used + need[i]]
        used += need[i]
        block_table[i, :need[i]] = blocks.to(torch.int32)
        slots = (blocks.repeat_interleave(block_size) * block_size
                 + torch.arange(block_size).repeat(need[i]))[:n]
        layout.write(cache, kvs[i][0][begin:begin + n], kvs[i][1][begin:begin + n], slots)
    plan = DecodePlan(group, r, masters, kv_lens, block_table)
    mine = plan.requests_of(r)
    out, lse = distributed_decode_attention(q[mine], cache, layout, plan, comm, d ** -0.5,
                                            return_lse=True)
    return mine, out, lse, comm.bytes_sent
