"""Attention for requests whose KV spans instances, one call per layer on every involved
instance (worker side).

The asking instance (the one computing a local view's tokens) holds a contiguous chunk of the
request; the chunks before it live on peers. Per layer:

1. the asker posts its query rows to every peer holding an earlier chunk; each peer posts
   receives for the queries it serves (shapes from the plan);
2. the asker computes its local part: causal attention over its own chunk, read back from the
   paged cache after vLLM wrote this step's K/V (query ``i`` of ``n`` sees local keys
   ``< local_len - n + i + 1``);
3. each peer computes full (unmasked: every key precedes every query) attention of the
   received queries over its chunk and sends back ``(out, lse)``;
4. the asker merges its part with the peers' by log-sum-exp and overwrites its output rows.

Bytes per layer per (request, peer): ``n·Hq·D`` query + ``n·Hq·D`` output + ``n·Hq`` LSE,
independent of the chunk sizes. The same function runs inside the attention backend (an
instance with a forward) and in a layer walk (an instance with nothing scheduled that only
serves), so every instance enters every layer in the same order and gloo's FIFO matching per
(peer, tag) pairs the messages.

Ring prefills (``ring_layer``) come first in each layer: see ``span_plan.RingPrefill``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Protocol

import torch

from vllm_esp.integration.span_plan import ESPStepPlan, PeerChunk, RingPrefill
from vllm_esp.ops.merge import merge_partials
from vllm_esp.ops.reference import masked_attention_with_lse

QUERY_TAG = 20
PARTIAL_TAG = 21
RING_TAG = 22
QUERY_BLOCK = 512  # query rows per masked-attention block (bounds the score matrix)


@dataclass
class StepContext:
    """What one instance's runner knows about the ESP part of the current step."""

    plan: ESPStepPlan
    instance: int
    comm: object  # ESPCommunicator over the cross-instance group of this TP rank
    device: torch.device = torch.device("cpu")  # of this worker's KV cache and activations
    rows: dict[str, tuple[int, int]] = field(default_factory=dict)  # req id -> [start, end)
    # per ring prefill (by index in plan.rings): each member's positions, as int64 tensors
    _ring_positions: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    _keep_slots: dict[tuple[int, int, int], torch.Tensor | None] = field(default_factory=dict)

    def ring_positions(self, index: int) -> list[torch.Tensor]:
        if index not in self._ring_positions:
            self._ring_positions[index] = [
                torch.tensor(p, dtype=torch.int64, device=self.device)
                for p in self.plan.rings[index].positions()]
        return self._ring_positions[index]

    def keep_slots(self, index: int, me: int, src: int, block_size: int) -> torch.Tensor | None:
        """Local cache slot of each token of member ``src``'s shard that falls in member
        ``me``'s keep range, -1 for the others; None if none does."""
        key = (index, me, src)
        if key not in self._keep_slots:
            m = self.plan.rings[index].members[me]
            pos = self.ring_positions(index)[src]
            keep = (pos >= m.keep_begin) & (pos < m.keep_end)
            slots = None
            if bool(keep.any()):
                local = pos[keep] - m.keep_begin
                blocks = torch.tensor(m.block_ids, dtype=torch.int64, device=self.device)
                slots = torch.full_like(pos, -1)
                slots[keep] = blocks[local // block_size] * block_size + local % block_size
            self._keep_slots[key] = slots
        return self._keep_slots[key]


_comm = None  # (communicator, instance id, device), set when the worker joins the ESP group
_current: StepContext | None = None


def set_communicator(comm, instance: int, device: torch.device | str = "cpu") -> None:
    global _comm
    _comm = (comm, instance, torch.device(device))


def begin_step(plan: ESPStepPlan | None) -> StepContext | None:
    global _current
    _current = None
    if plan is None or _comm is None or not plan.involves(_comm[1]):
        return None
    _current = StepContext(plan, _comm[1], _comm[0], _comm[2])
    return _current


def end_step() -> None:
    global _current
    _current = None


def current() -> StepContext | None:
    return _current


class PagedLayout(Protocol):
    """A paged KV layout of ``vllm_esp.ops.kv_cache`` (``CpuPagedKV`` on the CPU engine,
    ``FlashPagedKV`` on the GPU one): what the span attention reads and writes through."""

    head_dim: int
    block_size: int

    def write(self, kv_cache, key, value, slot_mapping) -> None: ...

    def gather(self, kv_cache, block_ids) -> tuple[torch.Tensor, torch.Tensor]: ...


def _local_kv(layout: PagedLayout, kv_cache: torch.Tensor, block_ids: list[int], n: int):
    ids = torch.tensor(block_ids[: -(-n // layout.block_size)], dtype=torch.int64,
                       device=kv_cache.device)
    k, v = layout.gather(kv_cache, ids)
    return k[:n], v[:n]


def _chunk_partial(layout: PagedLayout, kv_cache: torch.Tensor, q: torch.Tensor,
                   chunk: PeerChunk, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Partial attention of ``q`` over an earlier chunk held here (every key precedes every
    query: no mask)."""
    k, v = _local_kv(layout, kv_cache, chunk.block_ids, chunk.num_tokens)
    mask = torch.ones(q.shape[0], chunk.num_tokens, dtype=torch.bool, device=q.device)
    return masked_attention_with_lse(q, k, v, mask, scale)


def span_layer(ctx: StepContext, kv_cache: torch.Tensor, layout: PagedLayout, num_heads: int,
               scale: float, query: torch.Tensor | None = None,
               output: torch.Tensor | None = None, dtype: torch.dtype = torch.float32) -> None:
    """One layer of span attention on this instance (asker and/or server)."""
    me, plan, comm = ctx.instance, ctx.plan, ctx.comm
    asked = plan.asked_by(me)
    # an earlier chunk may be on the asking instance itself (a decode scaled up and later
    # back): that part is computed locally, not sent
    served = [(s, p) for s, p in plan.served_by(me) if s.instance != me]
    head_dim, dev = layout.head_dim, kv_cache.device
    if query is not None:
        dtype = query.dtype

    # 1. queries to the peers; buffers for the queries we serve
    q_send: dict[int, list[torch.Tensor]] = defaultdict(list)
    for s in asked:
        a, b = ctx.rows[s.req_id]
        for p in s.peers:
            if p.instance != me:
                q_send[p.instance].append(query[a:b])
    n_from: dict[int, int] = defaultdict(int)
    for s, _ in served:
        n_from[s.instance] += s.num_query_tokens
    sends = {i: [torch.cat(ts)] for i, ts in q_send.items()}
    recvs = {i: [torch.empty((n, num_heads, head_dim), dtype=dtype, device=dev)]
             for i, n in n_from.items()}
    pend_q = comm.exchange(sends, recvs, tag=QUERY_TAG, op="span_query") \
        if (sends or recvs) else None

    # 2. own local part (overlaps the transfer)
    local = {}
    for s in asked:
        a, b = ctx.rows[s.req_id]
        n, m = b - a, s.local_len
        k, v = _local_kv(layout, kv_cache, s.local_block_ids, m)
        mask = torch.arange(m, device=dev).unsqueeze(0) <= (
            torch.arange(n, device=dev) + (m - n)).unsqueeze(1)
        local[s.req_id] = masked_attention_with_lse(query[a:b], k, v, mask, scale)

    # 3. serve: attention of received queries over our earlier chunk, sent back
    p_send: dict[int, list] = defaultdict(lambda: [[], []])
    if pend_q is not None:
        got = pend_q.wait()
        offset: dict[int, int] = defaultdict(int)
        for s, chunk in served:
            q_in = got[s.instance][0]
            o = offset[s.instance]
            q_s = q_in[o:o + s.num_query_tokens]
            offset[s.instance] += s.num_query_tokens
            out_s, lse_s = _chunk_partial(layout, kv_cache, q_s, chunk, scale)
            p_send[s.instance][0].append(out_s)
            p_send[s.instance][1].append(lse_s)
    sends = {i: [torch.cat(o), torch.cat(l, dim=1)] for i, (o, l) in p_send.items()}
    n_to: dict[int, int] = defaultdict(int)
    for s in asked:
        for p in s.peers:
            if p.instance != me:
                n_to[p.instance] += s.num_query_tokens
    recvs = {i: [torch.empty((n, num_heads, head_dim), dtype=dtype, device=dev),
                 torch.empty((num_heads, n), dtype=torch.float32, device=dev)]
             for i, n in n_to.items()}
    pend_p = comm.exchange(sends, recvs, tag=PARTIAL_TAG, op="span_partial") \
        if (sends or recvs) else None

    # 4. merge our part with the peers' and overwrite our rows
    if not asked:
        if pend_p is not None:
            pend_p.wait()
        return
    got = pend_p.wait() if pend_p is not None else {}
    offset = defaultdict(int)
    for s in asked:
        a, b = ctx.rows[s.req_id]
        outs, lses = [local[s.req_id][0]], [local[s.req_id][1]]
        for p in s.peers:
            if p.instance == me:
                out_p, lse_p = _chunk_partial(layout, kv_cache, query[a:b], p, scale)
                outs.append(out_p)
                lses.append(lse_p)
                continue
            o = offset[p.instance]
            outs.append(got[p.instance][0][o:o + (b - a)])
            lses.append(got[p.instance][1][:, o:o + (b - a)])
            offset[p.instance] += b - a
        merged, _ = merge_partials(torch.stack(outs), torch.stack(lses))
        output[a:b] = merged.to(output.dtype)


def ring_layer(ctx: StepContext, kv_cache: torch.Tensor, layout: PagedLayout,
               query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               output: torch.Tensor, scale: float) -> None:
    """One layer of every ring prefill this instance is a member of.

    ``query/output [T, Hq, D]`` and ``key/value [T, Hkv, D]`` are this forward's rows; the
    member's rows hold its stripe (``span_plan.stripes``), with global positions. Rings over
    the same instances in the same order run as one batch (LoongServe's batched ring): per
    hop, one message carries every request's shard. The shard in hand is forwarded to the
    next member while it is attended (causal by global position, per request) and its tokens
    inside this member's keep ranges are written to the cache. Batches run in the order of
    their first ring in the plan, the same on every member.
    """
    for batch in ctx.plan.ring_batches(ctx.instance):
        _ring_prefill(ctx, batch, layout, kv_cache, query, key, value, output, scale)


def _ring_prefill(ctx: StepContext, batch: list[tuple[int, RingPrefill, int]],
                  layout: PagedLayout, kv_cache: torch.Tensor, query: torch.Tensor,
                  key: torch.Tensor, value: torch.Tensor, output: torch.Tensor,
                  scale: float) -> None:
    r = batch[0][2]  # this instance's place in the ring (the same in every ring of the batch)
    group = [m.instance for m in batch[0][1].members]
    k = len(group)
    rows = [ctx.rows[ring.members[r].req_id] for _, ring, _ in batch]
    positions = [ctx.ring_positions(index) for index, _, _ in batch]
    qs = [query[a:b].float() for a, b in rows]
    shard = [torch.cat([key[a:b] for a, b in rows]), torch.cat([value[a:b] for a, b in rows])]
    acc: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(batch)
    for h in range(k):
        src = (r - h) % k
        pending = None
        if h < k - 1:
            n_next = sum(len(p[(r - h - 1) % k]) for p in positions)
            bufs = [shard[0].new_empty((n_next, *shard[0].shape[1:])),
                    shard[1].new_empty((n_next, *shard[1].shape[1:]))]
            pending = ctx.comm.ring_shift(shard, bufs, group, tag=RING_TAG)
        sizes = [len(p[src]) for p in positions]
        for x, ((index, _, _), k_x, v_x) in enumerate(zip(batch, shard[0].split(sizes),
                                                          shard[1].split(sizes))):
            slots = ctx.keep_slots(index, r, src, layout.block_size)
            if slots is not None:
                layout.write(kv_cache, k_x, v_x, slots)
            o_h, l_h = _causal_by_position(qs[x], positions[x][r], k_x, v_x,
                                           positions[x][src], scale)
            acc[x] = (o_h, l_h) if acc[x] is None else merge_partials(
                torch.stack([acc[x][0], o_h]), torch.stack([acc[x][1], l_h]))
        if pending is not None:
            shard = pending.wait_one()
    for (a, b), (out, _) in zip(rows, acc):
        output[a:b] = out.to(output.dtype)


def _causal_by_position(q: torch.Tensor, q_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        k_pos: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of ``q`` (float32) over the keys at or before each query's position, in
    blocks of query rows; keys are sorted by position, so each block reads a prefix of them.
    Returns ``(out [Tq, Hq, D] float32, lse [Hq, Tq])``; rows that see nothing get -inf."""
    out = torch.zeros_like(q)
    lse = torch.full((q.shape[1], q.shape[0]), float("-inf"), device=q.device)
    for qa in range(0, q.shape[0], QUERY_BLOCK):
        qb = min(qa + QUERY_BLOCK, q.shape[0])
        cut = int(torch.searchsorted(k_pos, q_pos[qb - 1], right=True))
        if cut == 0:
            continue
        mask = k_pos[:cut].unsqueeze(0) <= q_pos[qa:qb].unsqueeze(1)
        out[qa:qb], lse[:, qa:qb] = masked_attention_with_lse(q[qa:qb], k[:cut], v[:cut],
                                                              mask, scale)
    return out, lse
