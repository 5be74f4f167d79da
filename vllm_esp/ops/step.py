"""One instance's view of a step's ESP plan, made into index tensors once per step.

``StepTensors.build`` runs once per engine step on each involved worker (after the runner
knows each request's rows in its forward). It does all the host arithmetic of the step
(stripes, staircases, keep-range slots, who sends which rows to whom) and makes the device
tensors the layers index with. Layers then only launch kernels and transfers: no host
arithmetic, no device-to-host syncs per layer or per ring hop.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from vllm_esp.ops import keys
from vllm_esp.ops.keys import KeySegments
from vllm_esp.ops.plan import ESPStepPlan, RingPrefill

__all__ = ["StepTensors", "RingBatchStep", "SpanStep", "rows_index"]


def rows_index(ranges: list[tuple[int, int]], device) -> torch.Tensor | slice:
    """Rows ``ranges`` of a forward: a slice when they are one contiguous range (a view, no
    copy), else an int64 index tensor on ``device``."""
    ranges = [(a, b) for a, b in ranges if b > a]
    if not ranges:
        return slice(0, 0)
    merged = [list(ranges[0])]
    for a, b in ranges[1:]:
        if a == merged[-1][1]:
            merged[-1][1] = b
        else:
            merged.append([a, b])
    if len(merged) == 1:
        return slice(*merged[0])
    idx = np.concatenate([np.arange(a, b) for a, b in merged])
    return torch.from_numpy(idx.astype(np.int64)).to(device)


@dataclass
class RingBatchStep:
    """This instance's part of one (batched) ring prefill: rings over the same members."""

    group: list[int]  # member instances in ring order
    me: int  # this instance's index in ``group``
    rows: torch.Tensor | slice  # this member's rows (all requests of the batch) in the forward
    shard_rows: list[int]  # rows of each member's shard (what arrives from it)
    segments: list[KeySegments]  # per source member: my rows vs its shard (ragged)
    keep_slots: list[torch.Tensor | None]  # per source member: cache slot per shard row, -1 skip


@dataclass
class SpanStep:
    """This instance's span queries (as asker) and the chunks it serves (as peer)."""

    asked_rows: torch.Tensor | slice  # rows of every asked request, in plan order
    num_asked: int
    local: KeySegments  # asked rows vs the local chunk (paged, causal); rows of asked_rows
    own_earlier: KeySegments  # asked rows vs earlier chunks held here (paged, full)
    q_send: dict[int, torch.Tensor | slice]  # peer -> forward rows whose queries go to it
    # (peer, n): the n-th chunk of a request held on that peer (almost always n = 0) ->
    # (rows of the peer's reply, positions in the asked rows they belong to)
    partial_rows: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]]
    q_recv: dict[int, int]  # asker -> query rows it sends us (in plan order)
    serve: KeySegments  # received queries (askers concatenated) vs our chunks (paged, full)
    serve_order: list[int]  # askers in the order their queries are concatenated


@dataclass
class StepTensors:
    instance: int
    rings: list[RingBatchStep] = field(default_factory=list)
    spans: SpanStep | None = None

    @classmethod
    def build(cls, plan: ESPStepPlan, instance: int, rows: dict[str, tuple[int, int]],
              block_size: int, device: torch.device) -> "StepTensors":
        """``rows``: request id -> ``[start, end)`` rows of the forward (empty if this
        instance runs no forward this step: it only serves)."""
        step = cls(instance)
        for batch in plan.ring_batches(instance):
            step.rings.append(_ring_batch(batch, rows, block_size, device))
        if plan.asked_by(instance) or plan.served_by(instance):
            step.spans = _span_step(plan, instance, rows, device)
        return step


def _ring_batch(batch: list[tuple[int, RingPrefill, int]], rows, block_size: int,
                device) -> RingBatchStep:
    r = batch[0][2]
    group = [m.instance for m in batch[0][1].members]
    k = len(group)
    positions = [ring.positions() for _, ring, _ in batch]
    mine = [rows[ring.members[r].req_id] for _, ring, _ in batch]
    for (a, b), pos in zip(mine, positions):
        if b - a != len(pos[r]):
            raise RuntimeError(f"ESP ring prefill: {b - a} rows scheduled for a stripe of "
                               f"{len(pos[r])} tokens")
    q_off = np.concatenate([[0], np.cumsum([len(p[r]) for p in positions])])
    segments, slots, sizes = [], [], []
    for src in range(k):
        k_off = np.concatenate([[0], np.cumsum([len(p[src]) for p in positions])])
        segs = [keys.by_position(int(q_off[x]), p[r], p[src], k_start=int(k_off[x]))
                for x, p in enumerate(positions)]
        segments.append(KeySegments(segs, device))
        sizes.append(int(k_off[-1]))
        slots.append(_keep_slots([ring.members[r] for _, ring, _ in batch],
                                 [p[src] for p in positions], block_size, device))
    return RingBatchStep(group, r, rows_index(mine, device), sizes, segments, slots)


def _keep_slots(members, shard_positions: list[np.ndarray], block_size: int,
                device) -> torch.Tensor | None:
    """Cache slot of each shard row that falls in this member's keep range, -1 for the
    others; None when no row of the shard is kept here."""
    parts, kept = [], False
    for m, pos in zip(members, shard_positions):
        slot = np.full(len(pos), -1, dtype=np.int64)
        inside = (pos >= m.keep_begin) & (pos < m.keep_end)
        if inside.any():
            kept = True
            local = pos[inside] - m.keep_begin
            blocks = np.asarray(m.block_ids, dtype=np.int64)
            slot[inside] = blocks[local // block_size] * block_size + local % block_size
        parts.append(slot)
    if not kept:
        return None
    return torch.from_numpy(np.concatenate(parts)).to(device)


def _span_step(plan: ESPStepPlan, me: int, rows, device) -> SpanStep:
    asked = plan.asked_by(me)
    ranges = [rows[s.req_id] for s in asked]
    offsets = np.concatenate([[0], np.cumsum([b - a for a, b in ranges])]).astype(int)
    local, own, send, part_rows = [], [], {}, {}
    sent: dict[int, int] = {}  # peer -> query rows sent to it so far
    for s, (a, b), off in zip(asked, ranges, offsets):
        at = int(off)  # segments index the asked rows (gathered once per layer)
        local.append(keys.causal(at, b - a, s.local_len, block_ids=s.local_block_ids)
                     if s.local_len >= b - a else  # (no local keys: only a test builds that)
                     keys.full(at, b - a, s.local_len, block_ids=s.local_block_ids))
        seen: dict[int, int] = {}
        for p in s.peers:
            if p.instance == me:  # an earlier chunk here (a decode that came back): local
                own.append(keys.full(at, b - a, p.num_tokens, block_ids=p.block_ids))
                continue
            send.setdefault(p.instance, []).append((a, b))
            n = seen.get(p.instance, 0)
            seen[p.instance] = n + 1
            first = sent.get(p.instance, 0)
            sent[p.instance] = first + b - a
            got, at = part_rows.setdefault((p.instance, n), ([], []))
            got.append(np.arange(first, first + b - a))
            at.append(np.arange(off, off + b - a))
    served = [(s, p) for s, p in plan.served_by(me) if s.instance != me]
    order: list[int] = []
    by_asker: dict[int, list] = {}
    for s, p in served:
        if s.instance not in by_asker:
            order.append(s.instance)
            by_asker[s.instance] = []
        by_asker[s.instance].append((s, p))
    serve, q_recv, q = [], {}, 0
    for asker in order:
        q_recv[asker] = sum(s.num_query_tokens for s, _ in by_asker[asker])
        for s, p in by_asker[asker]:
            serve.append(keys.full(q, s.num_query_tokens, p.num_tokens, block_ids=p.block_ids))
            q += s.num_query_tokens
    return SpanStep(
        asked_rows=rows_index(ranges, device), num_asked=int(offsets[-1]),
        local=KeySegments(local, device), own_earlier=KeySegments(own, device),
        q_send={i: rows_index(r, device) for i, r in send.items()},
        partial_rows={key: (_index(got, device), _index(at, device))
                      for key, (got, at) in part_rows.items()},
        q_recv=q_recv, serve=KeySegments(serve, device), serve_order=order)


def _index(parts: list[np.ndarray], device) -> torch.Tensor:
    return torch.from_numpy(np.concatenate(parts).astype(np.int64)).to(device)
