"""Functions run inside the spawned ESP test world (module level so they pickle by name):
the ops' ring prefill and span queries driven by a step plan, as the engine drives them."""

from __future__ import annotations

import numpy as np
import torch

from vllm_esp.ops import (
    CpuPagedKV,
    ESPStepPlan,
    PeerChunk,
    RingMember,
    RingPrefill,
    SpanAttention,
    StepTensors,
    ring_layer,
    select,
    span_layer,
    stripes,
)


def make_qkv(seed, total, hq, hkv, d, dtype):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(total, hq, d, generator=g).to(dtype)
    k = torch.randn(total, hkv, d, generator=g).to(dtype)
    v = torch.randn(total, hkv, d, generator=g).to(dtype)
    return q, k, v


def member_rows(n: int, k: int) -> list[int]:
    """Rows each of ``k`` members computes of an ``n``-token prompt: near-equal chunks, the
    remainder on the last members (the last, the master, always has a row)."""
    base, extra = divmod(n, k)
    return [base + (1 if j >= k - extra else 0) for j in range(k)]


def local_rows(seq_lens, k, r):
    """Row indices (into the packed full batch) of member r's stripe rows."""
    starts = np.concatenate([[0], np.cumsum(seq_lens)[:-1]]).astype(np.int64)
    parts = [s + stripes(member_rows(n, k))[r] for s, n in zip(starts, seq_lens)]
    return torch.from_numpy(np.concatenate(parts).astype(np.int64))


def ring_plan(group, seq_lens, keep=None, block_size=32):
    """One ring per request over ``group`` (so one batched ring); ``keep[r]`` = (ranges,
    slots) of member r: slots are turned into block ids of whole blocks where they allow."""
    rings = []
    for i, n in enumerate(seq_lens):
        sizes = member_rows(n, len(group))
        members = []
        for r, inst in enumerate(group):
            b, e = keep[r][0][i] if keep is not None else (0, 0)
            members.append(RingMember(instance=inst, req_id=f"r{i}", num_rows=sizes[r],
                                      keep_begin=b, keep_end=e,
                                      block_ids=keep[r][2][i] if keep is not None else [],
                                      token_ids=[]))
        rings.append(RingPrefill(members))
    return ESPStepPlan(rings=rings)


def ring_prefill_worker(comm, group, seq_lens, hq, hkv, d, dtype, seed, keep=None,
                        block_size=32, num_blocks=0):
    """Run one ring-prefill layer; return (out rows, cache, bytes sent)."""
    k = len(group)
    r = group.index(comm.rank)
    q, kk, vv = make_qkv(seed, sum(seq_lens), hq, hkv, d, dtype)
    rows = local_rows(seq_lens, k, r)
    layout = CpuPagedKV(hkv, d, block_size, dtype)
    cache = layout.allocate(max(1, num_blocks))
    plan = ring_plan(group, seq_lens, keep, block_size)
    counts = [len(stripes(member_rows(n, k))[r]) for n in seq_lens]
    offs = np.concatenate([[0], np.cumsum(counts)]).astype(int)
    row_of = {f"r{i}": (int(offs[i]), int(offs[i + 1])) for i in range(len(seq_lens))}
    step = StepTensors.build(plan, comm.rank, row_of, block_size, torch.device("cpu"))
    out = torch.zeros(len(rows), hq, d, dtype=dtype)
    kernels = select("cpu", layout)
    for batch in step.rings:
        ring_layer(batch, comm, kernels, layout, cache, q[rows], kk[rows], vv[rows], out,
                   d ** -0.5)
    return out, cache if num_blocks else None, comm.bytes_by_op["ring_shift"]


def member_blocks(kv_lens, r, seed, block_size):
    """Block ids member ``r`` stores each request's share in (random, deterministic)."""
    need = [(row[r] + block_size - 1) // block_size for row in kv_lens]
    num_blocks = max(1, sum(need)) + 2
    perm = torch.randperm(num_blocks, generator=torch.Generator().manual_seed(seed + 100 + r))
    out, used = [], 0
    for n in need:
        out.append(perm[used:used + n].tolist())
        used += n
    return out, num_blocks


def decode_worker(comm, group, masters, kv_lens, hq, hkv, d, dtype, seed, block_size=32):
    """Each member stores its share of every request's KV (random blocks), then the masters
    decode one token each, asking the other holders for partial attention."""
    r = group.index(comm.rank)
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(len(masters), hq, d, generator=g).to(dtype)
    kvs = [(torch.randn(sum(row), hkv, d, generator=g).to(dtype),
            torch.randn(sum(row), hkv, d, generator=g).to(dtype)) for row in kv_lens]
    layout = CpuPagedKV(hkv, d, block_size, dtype)
    blocks = [member_blocks(kv_lens, j, seed, block_size) for j in range(len(group))]
    cache = layout.allocate(blocks[r][1])
    for i, row in enumerate(kv_lens):
        begin, n = sum(row[:r]), row[r]  # member r stores tokens [begin, begin + n)
        if n:
            ids = torch.tensor(blocks[r][0][i])
            slots = (ids.repeat_interleave(block_size) * block_size
                     + torch.arange(block_size).repeat(len(ids)))[:n]
            layout.write(cache, kvs[i][0][begin:begin + n], kvs[i][1][begin:begin + n], slots)
    spans = []
    for i, (m, row) in enumerate(zip(masters, kv_lens)):
        peers = [PeerChunk(group[j], row[j], blocks[j][0][i]) for j in range(len(group))
                 if j != m and row[j]]
        spans.append(SpanAttention(req_id=f"r{i}", instance=group[m], num_query_tokens=1,
                                   prefix_len=sum(row) - row[m], local_len=row[m],
                                   local_block_ids=blocks[m][0][i], peers=peers))
    plan = ESPStepPlan(spans=spans)
    mine = [i for i, m in enumerate(masters) if m == r]
    rows = {f"r{i}": (j, j + 1) for j, i in enumerate(mine)}
    step = StepTensors.build(plan, comm.rank, rows, block_size, torch.device("cpu"))
    out = torch.zeros(len(mine), hq, d, dtype=dtype)
    if step.spans is not None:
        span_layer(step.spans, comm, select("cpu", layout), layout, cache, hq, d, d ** -0.5,
                   query=q[mine] if mine else None, output=out, dtype=dtype)
    return mine, out, comm.bytes_sent
