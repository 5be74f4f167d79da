"""LoongServe's striped ring prefill, one layer: the one ring loop of the project.

Per layer, on member ``r`` of a ring of ``k`` instances (``ops.step.RingBatchStep``):

    shard = own (K, V) rows
    for hop h in 0..k-1:
        post the ring shift of shard to r+1 / from r-1          (not on the last hop)
        write the shard's rows that fall in my keep ranges into my paged cache
        partial = attention(my rows, shard of member (r - h) mod k)   (staircase by position)
        (out, lse) = merge(out, lse, partial)                         (online softmax, fp32)
        shard = the received shard

Members compute any rows (*stripes*): each row's key limit on a shard comes from global
positions (``ops.keys.by_position``), so LoongServe's ``t % k`` striping and the weighted
stripes of unequal chunks are one scheme. The transfer of hop ``h + 1`` is in flight while
hop ``h`` computes; every shard visits every member, so any keep-range placement costs no
extra bytes (proactive migration). Requests of one batched ring share each message.
"""

from __future__ import annotations

import torch

from vllm_esp.ops.dispatch import SpanKernels
from vllm_esp.ops.step import RingBatchStep

__all__ = ["ring_layer", "RING_TAG"]

RING_TAG = 22  # communicator tag of ring shards


def ring_layer(batch: RingBatchStep, comm, kernels: SpanKernels, layout, kv_cache: torch.Tensor,
               query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               output: torch.Tensor, scale: float) -> None:
    """Attention of this member's rows over the whole batch's K/V, written to ``output``.

    ``query/output [T, Hq, D]`` and ``key/value [T, Hkv, D]`` are the forward's rows; the
    batch's rows are ``batch.rows`` of them. ``comm`` needs ``ring_shift`` (an
    ``ESPCommunicator``) when the ring has more than one member.
    """
    k, r = len(batch.group), batch.me
    q = query[batch.rows]
    shard = [key[batch.rows].contiguous(), value[batch.rows].contiguous()]
    out = lse = None
    for h in range(k):
        src = (r - h) % k
        pending = None
        if h < k - 1:
            n_next = batch.shard_rows[(r - h - 1) % k]
            bufs = [shard[0].new_empty((n_next, *shard[0].shape[1:])),
                    shard[1].new_empty((n_next, *shard[1].shape[1:]))]
            pending = comm.ring_shift(shard, bufs, batch.group, tag=RING_TAG)
        slots = batch.keep_slots[src]
        if slots is not None:
            layout.write(kv_cache, shard[0], shard[1], slots)
        o, l = kernels.ragged(q, shard[0], shard[1], batch.segments[src], scale)
        if out is None:
            out, lse = o, l
        else:
            out, lse = kernels.merge(torch.stack([out, o]), torch.stack([lse, l]))
        if pending is not None:
            shard = pending.wait_one()
    output[batch.rows] = out.to(output.dtype)
