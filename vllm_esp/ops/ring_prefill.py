"""Striped ring prefill attention with proactive keep-range KV writes.

Per layer, on logical rank ``r`` of a ``k``-rank ESP group:

    shard = own (K, V)
    for hop h in 0..k-1:
        post ring shift of shard to r+1 / from r-1        (not on the last hop)
        write the shard's tokens inside this rank's keep ranges into the paged cache
        partial = attention(local queries, shard from rank (r - h) mod k)   (square causal)
        (out, lse) = merge(out, lse, partial)                                (online softmax)
        shard = wait for the received shard

The transfer of hop h+1 is in flight while hop h computes. Each rank sends k-1 shards, so
the whole group moves ``(k-1) * |all K,V of the batch|`` bytes per layer and no extra bytes
for migration: every shard visits every rank anyway (LoongServe's proactive migration).
The running merge is kept in float32 and cast to the query dtype at the end.
"""

from __future__ import annotations

from typing import Protocol

import torch

from vllm_esp.comm.communicator import ESPCommunicator
from vllm_esp.ops.hop_attention import stripe_hop_attention
from vllm_esp.ops.merge import merge_two
from vllm_esp.ops.plan import RingPrefillPlan, shard_slot_mapping

__all__ = ["KVWriter", "ring_prefill_attention", "RING_TAG"]

RING_TAG = 1  # communicator tag of ring-prefill shards


class KVWriter(Protocol):
    """Anything with ``write(kv_cache, key, value, slot_mapping)``: see ``ops.kv_cache``."""

    def write(self, kv_cache: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
              slot_mapping: torch.Tensor) -> None: ...


def ring_prefill_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    plan: RingPrefillPlan,
    comm: ESPCommunicator | None,
    scale: float,
    kv_cache: torch.Tensor | None = None,
    kv_writer: KVWriter | None = None,
    hop_backend: str = "torch",
    merge_fn=merge_two,
    return_lse: bool = False,
):
    """Causal attention of this rank's striped queries over the whole batch's K/V.

    Args:
        q: ``[T_local, Hq, D]`` local queries (request-major, positions per ``plan``).
        k, v: ``[T_local, Hkv, D]`` this rank's K/V shard (after RoPE), same rows as ``q``.
        plan: the batch's ring plan (identical on all members but ``rank_in_group``).
        comm: communicator whose ``rank`` is ``plan.group_ranks[plan.rank_in_group]``;
            may be ``None`` when ``k == 1``.
        kv_cache, kv_writer: this layer's paged cache and its layout; when both are given,
            tokens inside ``plan.keep_ranges`` are written as shards pass.
        hop_backend: "torch" or "flash_attn" (see ``hop_attention``).
        merge_fn: ``(o_a, lse_a, o_b, lse_b) -> (o, lse)``; torch by default.
    Returns:
        ``out [T_local, Hq, D]`` in ``q.dtype`` (and ``lse [Hq, T_local]`` float32 if asked).
    """
    kk, r = plan.k, plan.rank_in_group
    counts = [plan.counts(j) for j in range(kk)]
    if q.shape[0] != sum(counts[r]) or k.shape[0] != q.shape[0]:
        raise ValueError(f"local rows {q.shape[0]} != plan's {sum(counts[r])} for rank {r}")
    if kk > 1 and comm is None:
        raise ValueError("a ring over more than one rank needs a communicator")
    write = kv_cache is not None and kv_writer is not None and plan.keep_ranges is not None
    out = lse = None
    shard_k, shard_v = k.contiguous(), v.contiguous()
    for h in range(kk):
        src = (r - h) % kk
        pending = None
        if h < kk - 1:
            nxt_src = (r - h - 1) % kk
            n_next = sum(counts[nxt_src])
            buf_k = k.new_empty((n_next, *k.shape[1:]))
            buf_v = v.new_empty((n_next, *v.shape[1:]))
            pending = comm.ring_shift([shard_k, shard_v], [buf_k, buf_v], plan.group_ranks,
                                      tag=RING_TAG)
        if write:
            slots = shard_slot_mapping(plan, src)
            if slots is not None:
                kv_writer.write(kv_cache, shard_k, shard_v, slots.to(shard_k.device))
        o_h, l_h = stripe_hop_attention(q, shard_k, shard_v, counts[r], counts[src], r, src,
                                        scale, backend=hop_backend)
        out, lse = (o_h, l_h) if out is None else merge_fn(out, lse, o_h, l_h)
        if pending is not None:
            shard_k, shard_v = pending.wait_one()
    out = out.to(q.dtype)
    return (out, lse) if return_lse else out
