"""LoongServe's decode step: merge or scale up short batches, then masters by most-used instance.

A port of ``RouterManager._schedule_decode_batch_list`` and ``pause_strategy.py`` of
LoongServe's repository (loongserve/longserve_server/router/manager.py, commit f6e8fc1), over
this project's plan types. Tokens, not blocks: LoongServe keeps LightLLM's token-granular KV
(the simulator runs it with ``block_size = 1``).

* A batch whose instances lack one free token per request cannot decode. Such batches (most
  short first) absorb batches with room (most room first) until they fit; if none is left they
  scale up onto idle instances (only outside a macro-iteration: ``can_use_extra``). If the
  whole cluster lacks the room, nothing decodes and one request is offloaded (``offload``).
* Masters: the batch's instances sorted by used tokens, most used first; each in turn takes
  the next ``min(need, free tokens, max(need // instances left, 128))`` requests in batch
  order; a compute-bound batch (more than 128 requests per instance left) scales up onto idle
  instances first (again only with ``can_use_extra``).
* Offload (``select_paused_reqs`` with ``Fcfs``): the newest running request loses its KV and
  goes back to the front of the queue (it re-prefills prompt + output: a recompute).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..cost_model import CostModel
from ..state import ClusterState
from ..types import DecodeBatch, ScaleEvent


@dataclass(slots=True)
class DecodeView:
    """A decode batch while LoongServe plans one step (scratch copy of ``BatchState``)."""

    batch_id: int
    instances: list[int]
    req_ids: list[str]
    merged: list[int] = field(default_factory=list)
    added: list[int] = field(default_factory=list)


@dataclass(slots=True)
class DecodeStep:
    decode: list[DecodeBatch] = field(default_factory=list)
    scale_events: list[ScaleEvent] = field(default_factory=list)


def views_of(state: ClusterState, batch_ids=None) -> list[DecodeView]:
    ids = sorted(state.batches) if batch_ids is None else batch_ids
    return [DecodeView(b, sorted(state.batches[b].instances), list(state.batches[b].req_ids))
            for b in ids]


def plan_decode(state: ClusterState, batches: list[DecodeView], used: dict[int, int],
                cap: int, extra: list[int], cost: CostModel, min_comp: int) -> DecodeStep | None:
    """One decode iteration of ``batches`` (None: the cluster lacks room, offload first).

    ``used``: tokens held per instance; ``extra``: idle instances the batches may scale onto
    (empty inside a macro-iteration); consumed in place.
    """
    can, cannot = [], []
    total = 0
    for b in batches:
        room = cap * len(b.instances) - sum(used[i] for i in b.instances) - len(b.req_ids)
        total += room
        (can if room >= 0 else cannot).append(([b], room))
    if total + len(extra) * cap < 0:
        return None
    step = DecodeStep()
    if cannot:
        cannot.sort(key=lambda x: x[1])
        can.sort(key=lambda x: x[1])
        for (short,), room in cannot:
            group = [short]
            while can:
                more, r = can.pop()
                group += more
                room += r
                if room >= 0:
                    break
            if room < 0:
                m = -(-(-room) // cap)
                added, extra[:] = extra[:m], extra[m:]
                _scale_up(short, added)
                room += m * cap
            can.append((group, room))
        for group, _ in can:
            head = group[0]
            for other in group[1:]:
                head.instances = sorted(set(head.instances) | set(other.instances))
                head.req_ids += other.req_ids
                head.merged += [other.batch_id] + other.merged
        batches = [group[0] for group, _ in can]
    for b in batches:
        masters = _masters(b, used, cap, extra, min_comp)
        if b.merged:
            step.scale_events.append(ScaleEvent("merge", b.batch_id, merged_batch_ids=b.merged))
        if b.added:
            step.scale_events.append(ScaleEvent("up", b.batch_id, list(b.added)))
        ctx = sum(state.running[r].running_kv_tokens for r in b.req_ids)
        t = cost.decode_time(len(b.instances), len(b.req_ids), ctx)
        step.decode.append(DecodeBatch(b.batch_id, sorted(b.instances), masters, t))
    return step


def _scale_up(b: DecodeView, added: list[int]) -> None:
    b.instances = b.instances + added
    b.added += added


def _masters(b: DecodeView, used: dict[int, int], cap: int, extra: list[int],
             min_comp: int) -> dict[str, int]:
    """Mini-batches in batch order, most-used instance first (see the module doc)."""
    order = sorted(b.instances, key=lambda i: -used[i])
    need = len(b.req_ids)
    masters: dict[str, int] = {}
    idx = start = 0
    while idx < len(order):
        inst = order[idx]
        left = cap - used[inst]
        if left > 0:
            n_left = len(order) - idx
            added = []
            while need // n_left > min_comp and extra:
                added.append(extra.pop())
                n_left += 1
            if added:
                _scale_up(b, added)
                order += added
            mini = min(need, left, max(need // n_left, min_comp))
            for rid in b.req_ids[start:start + mini]:
                masters[rid] = inst
            start += mini
            need -= mini
        idx += 1
    if need:
        raise ValueError(f"batch {b.batch_id}: {need} requests without a master")
    return masters


def offload_victim(state: ClusterState, batch_ids=None) -> str:
    """The newest running request (``Fcfs.ordering_reqs``: highest request id first)."""
    ids = sorted(state.batches) if batch_ids is None else batch_ids
    reqs = [state.running[r] for b in ids for r in state.batches[b].req_ids]
    return max(reqs, key=lambda r: (r.arrival_time, _id_key(r.req_id))).req_id


def _id_key(rid: str):
    return (0, int(rid), "") if rid.isdigit() else (1, 0, rid)
