"""Span queries, one layer: rows whose earlier KV lives on other instances (multi-master
distributed decode, and chunk-by-chunk prefill of a spanning request).

Per layer on every instance involved (``ops.step.SpanStep``):

1. an asking instance posts each asked request's query rows to every peer holding an earlier
   chunk; a peer posts receives for the queries it serves (shapes from the plan);
2. the asker attends its own chunk (causal, bottom-right) and any earlier chunk it holds
   itself, from its paged cache, while the queries travel;
3. a peer attends all received queries over the chunks it holds, in one call, and sends back
   ``(out, lse)`` per asker;
4. the asker merges its parts with the peers' by log-sum-exp (a peer with nothing for a row
   contributes ``lse = -inf``) and writes its rows.

Bytes per layer per (request, peer): ``n·Hq·D`` query + ``n·Hq·D`` output + ``n·Hq`` LSE,
independent of the context length. An instance with nothing to compute runs the same
function without a query (it only serves), so every instance enters every layer in the same
order and the per-(peer, tag) FIFO order pairs the messages.
"""

from __future__ import annotations

import torch

from vllm_esp.ops.dispatch import SpanKernels
from vllm_esp.ops.step import SpanStep

__all__ = ["span_layer", "QUERY_TAG", "PARTIAL_TAG"]

QUERY_TAG = 20
PARTIAL_TAG = 21


def span_layer(step: SpanStep, comm, kernels: SpanKernels, layout, kv_cache: torch.Tensor,
               num_heads: int, head_dim: int, scale: float, query: torch.Tensor | None = None,
               output: torch.Tensor | None = None, dtype: torch.dtype = torch.float32) -> None:
    """One layer of span attention on this instance (asker and/or peer)."""
    dev = kv_cache.device
    if query is not None:
        dtype = query.dtype
    sends = {p: [query[rows]] for p, rows in step.q_send.items()}
    recvs = {i: [torch.empty((n, num_heads, head_dim), dtype=dtype, device=dev)]
             for i, n in step.q_recv.items()}
    pend_q = comm.exchange(sends, recvs, tag=QUERY_TAG, op="span_query") \
        if (sends or recvs) else None

    parts = []
    if step.num_asked:
        q_asked = query[step.asked_rows]
        parts.append(kernels.paged(q_asked, kv_cache, layout, step.local, scale))
        if len(step.own_earlier):
            parts.append(kernels.paged(q_asked, kv_cache, layout, step.own_earlier, scale))

    replies = {}
    if pend_q is not None:
        got = pend_q.wait()
        if step.serve_order:
            q_in = torch.cat([got[i][0] for i in step.serve_order])
            o, l = kernels.paged(q_in, kv_cache, layout, step.serve, scale)
            a = 0
            for i in step.serve_order:
                n = step.q_recv[i]
                replies[i] = [o[a:a + n].to(dtype), l[:, a:a + n].contiguous()]
                a += n
    recvs = {p: [torch.empty((n, num_heads, head_dim), dtype=dtype, device=dev),
                 torch.empty((num_heads, n), dtype=torch.float32, device=dev)]
             for p, n in _partial_rows_from(step).items()}
    pend_p = comm.exchange(replies, recvs, tag=PARTIAL_TAG, op="span_partial") \
        if (replies or recvs) else None
    got = pend_p.wait() if pend_p is not None else {}
    if not step.num_asked:
        return
    for (p, _), (rows, at) in step.partial_rows.items():
        o = torch.zeros(step.num_asked, num_heads, head_dim, dtype=torch.float32, device=dev)
        l = torch.full((num_heads, step.num_asked), float("-inf"), dtype=torch.float32,
                       device=dev)
        o[at] = got[p][0][rows].float()
        l[:, at] = got[p][1][:, rows]
        parts.append((o, l))
    out, _ = kernels.merge(torch.stack([o for o, _ in parts]), torch.stack([l for _, l in parts]))
    output[step.asked_rows] = out.to(output.dtype)


def _partial_rows_from(step: SpanStep) -> dict[int, int]:
    """Rows of the reply each peer sends us (all its chunks' partials, in plan order)."""
    n: dict[int, int] = {}
    for p, rows in step.q_send.items():
        n[p] = rows.numel() if isinstance(rows, torch.Tensor) else rows.stop - rows.start
    return n
