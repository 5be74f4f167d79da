"""Multi-master distributed decode attention (LoongServe §3.2).

Per layer on each member ``r`` of the decode group:

1. As a master, post each query row to every peer holding KV of that request
   (``DECODE_QUERY_TAG``); as a peer, post receives for the queries it will serve.
2. Compute the local partial for this rank's own requests while queries travel.
3. Compute partials for all received queries in one batched call; post them back
   (output in the query dtype, LSE float32; ``DECODE_PARTIAL_TAG``).
4. As a master, stack the partials of all ``k`` members (``lse = -inf`` for members holding
   nothing) and merge by LSE.

Bytes per layer = per (request, peer holding it): ``Hq*D`` query + ``Hq*D`` output elements +
``Hq`` float32 LSE, independent of context length. Peers that hold nothing of a request are
never contacted; members with no role send nothing at all.
"""

from __future__ import annotations

from typing import Callable

import torch

from vllm_esp.comm.communicator import ESPCommunicator
from vllm_esp.ops.merge import merge_partials
from vllm_esp.ops.paged_attention import paged_attention_with_lse
from vllm_esp.ops.plan import DecodePlan

__all__ = ["distributed_decode_attention", "DECODE_QUERY_TAG", "DECODE_PARTIAL_TAG"]

DECODE_QUERY_TAG = 2
DECODE_PARTIAL_TAG = 3


def distributed_decode_attention(
    q: torch.Tensor,
    kv_cache: torch.Tensor,
    layout,
    plan: DecodePlan,
    comm: ESPCommunicator | None,
    scale: float,
    partial_fn: Callable = paged_attention_with_lse,
    merge_fn: Callable = merge_partials,
    return_lse: bool = False,
):
    """Decode attention for this rank's master requests, serving peers' queries on the way.

    Args:
        q: ``[n_mine, Hq, D]`` queries of the requests this rank masters, in batch order
            (``plan.requests_of(plan.rank_in_group)``); ``n_mine`` may be 0 for a pure peer.
        kv_cache, layout: this layer's local paged cache and its layout object.
        plan: the decode plan; ``comm`` may be ``None`` when the group has one member.
        partial_fn: same signature as ``paged_attention_with_lse`` (torch or Triton).
        merge_fn: same signature as ``merge_partials`` (torch or Triton).
    Returns:
        ``out [n_mine, Hq, D]`` in ``q.dtype`` (and ``lse [Hq, n_mine]`` if asked).
    """
    r, kk = plan.rank_in_group, plan.k
    mine = plan.requests_of(r)
    if q.shape[0] != len(mine):
        raise ValueError(f"{q.shape[0]} query rows for {len(mine)} mastered requests")
    hq, d = q.shape[1], q.shape[2]
    local_lens = plan.local_seq_lens()
    row_of = {i: j for j, i in enumerate(mine)}

    # 1. queries out to peers, receive buffers for the queries we serve
    q_sends, q_recvs, served = {}, {}, {}
    for p in range(kk):
        if p == r:
            continue
        rows = [row_of[i] for i in plan.requests_of(r, holder=p)]
        if rows:
            q_sends[plan.group_ranks[p]] = [q[rows]]
        reqs = plan.requests_of(p, holder=r)
        if reqs:
            served[p] = reqs
            q_recvs[plan.group_ranks[p]] = [q.new_empty((len(reqs), hq, d))]
    pend_q = comm.exchange(q_sends, q_recvs, tag=DECODE_QUERY_TAG, op="decode_query") \
        if (q_sends or q_recvs) else None

    # 2. own partial (overlaps the query transfer)
    own_out, own_lse = partial_fn(q, kv_cache, layout, plan.block_table[mine],
                                  local_lens[mine], scale)

    # 3. serve peers' queries in one batch and send partials back
    p_sends, p_recvs = {}, {}
    if pend_q is not None:
        got = pend_q.wait()
        if served:
            order = list(served)
            all_q = torch.cat([got[plan.group_ranks[p]][0] for p in order])
            all_req = [i for p in order for i in served[p]]
            s_out, s_lse = partial_fn(all_q, kv_cache, layout, plan.block_table[all_req],
                                      local_lens[all_req], scale)
            off = 0
            for p in order:
                n = len(served[p])
                p_sends[plan.group_ranks[p]] = [s_out[off:off + n].contiguous(),
                                                s_lse[:, off:off + n].contiguous()]
                off += n
    peer_rows = {}
    for p in range(kk):
        if p == r:
            continue
        reqs = plan.requests_of(r, holder=p)
        if reqs:
            peer_rows[p] = [row_of[i] for i in reqs]
            p_recvs[plan.group_ranks[p]] = [
                q.new_empty((len(reqs), hq, d)),
                torch.empty((hq, len(reqs)), dtype=torch.float32, device=q.device),
            ]
    pend_p = comm.exchange(p_sends, p_recvs, tag=DECODE_PARTIAL_TAG, op="decode_partial") \
        if (p_sends or p_recvs) else None

    # 4. merge: one slot per member; members without tokens keep lse = -inf
    outs = q.new_zeros((kk, len(mine), hq, d))
    lses = torch.full((kk, hq, len(mine)), float("-inf"), dtype=torch.float32, device=q.device)
    outs[r], lses[r] = own_out, own_lse
    if pend_p is not None:
        got = pend_p.wait()
        for p, rows in peer_rows.items():
            o_p, l_p = got[plan.group_ranks[p]]
            outs[p, rows] = o_p
            lses[p][:, rows] = l_p
    out, lse = merge_fn(outs, lses)
    out = out.to(q.dtype)
    return (out, lse) if return_lse else out
