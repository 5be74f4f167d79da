"""The engine's ESP attention (``ops.ring_layer`` / ``ops.span_layer`` over the step tensors
of an engine-shaped plan) run inside the spawned ESP test world, on a given paged layout
(module level so it pickles by name)."""

from __future__ import annotations

import torch

from vllm_esp.ops import (
    CpuPagedKV,
    ESPStepPlan,
    FlashPagedKV,
    PeerChunk,
    RingMember,
    RingPrefill,
    SpanAttention,
    StepTensors,
    masked_attention_with_lse,
    ring_layer,
    select,
    span_layer,
    stripes,
)

HQ, HKV, D, BS = 4, 2, 32, 16
SCALE = D ** -0.5
# two requests prefilled together on instances 0 and 1: chunk 0 on 0, chunk 1 (master) on 1
REQUESTS = {"A": (70, 48), "B": (45, 32)}  # name -> (prompt length, chunk 0 end)


def _layout(name: str):
    cls = {"cpu": CpuPagedKV, "flash": FlashPagedKV}[name]
    return cls(HKV, D, BS, torch.float32)


def _qkv(name: str, n: int):
    g = torch.Generator().manual_seed(sum(map(ord, name)))
    return (torch.randn(n, HQ, D, generator=g), torch.randn(n, HKV, D, generator=g),
            torch.randn(n, HKV, D, generator=g))


def _blocks(instance: int, name: str, tokens: int) -> list[int]:
    """Distinct, shuffled-looking block ids per (instance, request)."""
    base = {"A": 3, "B": 20}[name] + 7 * instance
    return [base + 2 * i for i in range(-(-tokens // BS))]


def _plan() -> ESPStepPlan:
    rings = []
    for name, (n, cut) in REQUESTS.items():
        sizes = [cut, n - cut]
        members = [RingMember(instance=j, req_id=f"{name}{'#0' if j == 0 else ''}",
                              num_rows=sizes[j], keep_begin=b, keep_end=e,
                              block_ids=_blocks(j, name, e - b), token_ids=[])
                   for j, (b, e) in enumerate(((0, cut), (cut, n)))]
        rings.append(RingPrefill(members))
    return ESPStepPlan(rings=rings)


def ring_then_decode(comm, layout_name: str) -> dict:
    """Prefill both requests as one batched ring, then decode one token of each on the
    master (instance 1), which asks instance 0 for partial attention over chunk 0."""
    me = comm.rank
    layout = _layout(layout_name)
    cache = layout.allocate(64)
    plan = _plan()
    kernels = select("cpu", layout)
    rows, q_rows, k_rows, v_rows, a = {}, [], [], [], 0
    for name, (n, cut) in REQUESTS.items():
        pos = stripes([cut, n - cut])[me]
        q, k, v = _qkv(name, n)
        rows[plan.rings[len(rows)].members[me].req_id] = (a, a + len(pos))
        a += len(pos)
        q_rows.append(q[pos])
        k_rows.append(k[pos])
        v_rows.append(v[pos])
    step = StepTensors.build(plan, me, rows, BS, torch.device("cpu"))
    out = torch.zeros(a, HQ, D)
    for batch in step.rings:
        ring_layer(batch, comm, kernels, layout, cache, torch.cat(q_rows), torch.cat(k_rows),
                   torch.cat(v_rows), out, SCALE)
    result = {"hops": comm.calls_by_op["ring_shift"], "prefill_err": 0.0, "cache_err": 0.0,
              "decode_err": 0.0}
    for name, (n, cut) in REQUESTS.items():
        q, k, v = _qkv(name, n)
        pos = stripes([cut, n - cut])[me]
        mask = torch.arange(n).unsqueeze(0) <= torch.from_numpy(pos).unsqueeze(1)
        ref, _ = masked_attention_with_lse(q[pos], k, v, mask, SCALE)
        r0, r1 = rows[f"{name}{'#0' if me == 0 else ''}"]
        result["prefill_err"] = max(result["prefill_err"], float((out[r0:r1] - ref).abs().max()))
        b, e = (0, cut) if me == 0 else (cut, n)  # this instance's keep range
        kc, vc = layout.gather(cache, torch.tensor(_blocks(me, name, e - b)))
        result["cache_err"] = max(result["cache_err"], float((kc[:e - b] - k[b:e]).abs().max()),
                                  float((vc[:e - b] - v[b:e]).abs().max()))
    # decode: one new token per request on the master, whose K/V it stores locally
    spans, qd, kd, vd = [], {}, {}, {}
    for name, (n, cut) in REQUESTS.items():
        g = torch.Generator().manual_seed(n)
        qd[name], kd[name], vd[name] = (torch.randn(1, HQ, D, generator=g),
                                        torch.randn(1, HKV, D, generator=g),
                                        torch.randn(1, HKV, D, generator=g))
        local = _blocks(1, name, n - cut + 1)
        if me == 1:
            slot = local[(n - cut) // BS] * BS + (n - cut) % BS
            layout.write(cache, kd[name], vd[name], torch.tensor([slot]))
        spans.append(SpanAttention(req_id=name, instance=1, num_query_tokens=1, prefix_len=cut,
                                   local_len=n - cut + 1, local_block_ids=local,
                                   peers=[PeerChunk(0, cut, _blocks(0, name, cut))]))
    rows = {name: (i, i + 1) for i, name in enumerate(REQUESTS)} if me == 1 else {}
    step = StepTensors.build(ESPStepPlan(spans=spans), me, rows, BS, torch.device("cpu"))
    if me == 0:  # serves the queries over chunk 0
        span_layer(step.spans, comm, kernels, layout, cache, HQ, D, SCALE)
        return result
    query = torch.cat([qd[name] for name in REQUESTS])
    out = torch.zeros_like(query)
    span_layer(step.spans, comm, kernels, layout, cache, HQ, D, SCALE, query=query, output=out)
    for i, (name, (n, _)) in enumerate(REQUESTS.items()):
        _, k, v = _qkv(name, n)
        ref, _ = masked_attention_with_lse(qd[name], torch.cat([k, kd[name]]),
                                           torch.cat([v, vd[name]]),
                                           torch.ones(1, n + 1, dtype=torch.bool), SCALE)
        result["decode_err"] = max(result["decode_err"], float((out[i:i + 1] - ref).abs().max()))
    return result
