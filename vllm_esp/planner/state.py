"""Cluster state the planner reads, and ``apply_plan`` that advances it by one iteration.

The engine scheduler and the simulator each own one :class:`ClusterState`. Per iteration they
call ``policy.plan(state, now)`` (read-only), execute the plan, then ``state.apply_plan(plan)``
and ``state.finish(req_id)`` for requests that stopped. Keeping the mutation here (not in the
policies) means every policy is charged for KV exactly the same way.

A decode batch (:class:`BatchState`) is a set of instances plus the running requests whose KV
lives only on those instances. Batches never share instances, so one iteration can run each
batch on its own ESP group.

The waiting queue is a list in queue order plus two indexes kept in step with it (by id, and
by prefill length for ``shortest_waiting``), so an iteration costs no pass over the whole
queue unless requests leave it.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from .kv_pool import KVPool
from .types import Instance, IterationPlan, Request


@dataclass(slots=True)
class BatchState:
    """A decode batch between iterations."""

    batch_id: int
    instances: set[int] = field(default_factory=set)
    req_ids: list[str] = field(default_factory=list)  # in join order


class ClusterState:
    """Requests, decode batches and the distributed KV pool of one ESP deployment."""

    def __init__(self, instances: list[Instance], block_size: int):
        self.instances = list(instances)
        self.block_size = block_size  # tokens per KV block
        self.pool = KVPool({i.instance_id: i.num_blocks for i in instances}, block_size)
        self.waiting: list[Request] = []  # queue order (arrival; preempted go to the front)
        self._waiting_ids: dict[str, Request] = {}  # the same requests by id
        self._by_len: list[tuple] = []  # (prefill_len, arrival, seq, req_id), sorted
        self._len_key: dict[str, tuple] = {}
        self._seq = 0
        self.running: dict[str, Request] = {}
        self.batches: dict[int, BatchState] = {}
        self.next_batch_id = 0

    # ---- lifecycle -----------------------------------------------------------------------
    def add_request(self, req: Request) -> None:
        self.waiting.append(req)
        self._index(req)

    def _index(self, req: Request) -> None:
        if req.req_id in self._waiting_ids:
            raise ValueError(f"request {req.req_id} is already waiting")
        self._waiting_ids[req.req_id] = req
        key = (req.prefill_len, req.arrival_time, self._seq, req.req_id)
        self._seq += 1
        self._len_key[req.req_id] = key
        bisect.insort(self._by_len, key)

    def _leave_queue(self, req_ids) -> None:
        """Take ``req_ids`` (those waiting) off the queue: one pass over it, only if needed."""
        gone = {rid for rid in req_ids if rid in self._waiting_ids}
        if not gone:
            return
        for rid in gone:
            del self._waiting_ids[rid]
            key = self._len_key.pop(rid)
            del self._by_len[bisect.bisect_left(self._by_len, key)]
        self.waiting = [r for r in self.waiting if r.req_id not in gone]

    def waiting_request(self, req_id: str) -> Request | None:
        return self._waiting_ids.get(req_id)

    def shortest_waiting(self, k: int) -> list[Request]:
        """The ``k`` waiting requests with the shortest prefill (older first on ties)."""
        return [self._waiting_ids[key[3]] for key in self._by_len[:k]]

    def share_queue(self, other: "ClusterState") -> None:
        """Make this state (a partial view) read ``other``'s waiting queue and indexes."""
        self.waiting, self._waiting_ids = other.waiting, other._waiting_ids
        self._by_len, self._len_key = other._by_len, other._len_key

    def view_of(self, instance_ids: set[int]) -> "ClusterState":
        """A state holding only ``instance_ids``, the decode batches entirely on them with their
        requests and KV, and the whole waiting queue. Shares (does not copy) placements and
        requests: policies read it; plans made on it are applied to this full state."""
        view = ClusterState.__new__(ClusterState)
        view.instances = [i for i in self.instances if i.instance_id in instance_ids]
        view.block_size = self.block_size
        pool = view.pool = KVPool.__new__(KVPool)
        pool.block_size = self.block_size
        pool.capacity = {i: self.pool.capacity[i] for i in instance_ids}
        pool.used = {i: self.pool.used[i] for i in instance_ids}
        view.batches = {bid: b for bid, b in self.batches.items() if b.instances <= instance_ids}
        placement, running = {}, {}
        for b in view.batches.values():
            for rid in b.req_ids:
                running[rid] = self.running[rid]
                if rid in self.pool.placement:
                    placement[rid] = self.pool.placement[rid]
        pool.placement = placement
        view.running = running
        view.share_queue(self)
        view.next_batch_id, view._seq = self.next_batch_id, self._seq
        return view

    def finish(self, req_id: str) -> None:
        """Forget a request (finished or aborted) and free its KV."""
        self.pool.free(req_id)
        self.running.pop(req_id, None)
        self._leave_queue([req_id])
        for b in list(self.batches.values()):
            if req_id in b.req_ids:
                b.req_ids.remove(req_id)
                if not b.req_ids:
                    del self.batches[b.batch_id]

    def new_batch_id(self) -> int:
        bid = self.next_batch_id
        self.next_batch_id += 1
        return bid

    # ---- views ---------------------------------------------------------------------------
    def batch_of_instance(self) -> dict[int, int]:
        return {i: b.batch_id for b in self.batches.values() for i in b.instances}

    def idle_instances(self) -> list[int]:
        owned = self.batch_of_instance()
        return [i.instance_id for i in self.instances if i.instance_id not in owned]

    # ---- one iteration -------------------------------------------------------------------
    def apply_plan(self, plan: IterationPlan) -> None:
        """Advance the state by the effects of ``plan`` (in the order the engine performs them)."""
        self._leave_queue(plan.rejected)
        self._preempt(plan.preempted)
        for m in plan.migrations:
            self.pool.move(m.req_id, m.src, m.dst, m.num_tokens)
        for ev in plan.scale_events:
            self._apply_scale(ev)
        self._apply_prefills(plan)
        for d in plan.decode:
            for rid, master in d.masters.items():
                self.pool.add(rid, master, 1)
                self.running[rid].output_len += 1
        self.next_batch_id = max([self.next_batch_id] + [b + 1 for b in self.batches])

    def _preempt(self, req_ids: list[str]) -> None:
        front = []
        for rid in req_ids:
            req = self.running.pop(rid)
            self.pool.free(rid)
            for b in list(self.batches.values()):
                if rid in b.req_ids:
                    b.req_ids.remove(rid)
                    if not b.req_ids:
                        del self.batches[b.batch_id]
            front.append(req)
        if front:
            self.waiting = front + self.waiting
            for req in front:
                self._index(req)

    def _apply_scale(self, ev) -> None:
        b = self.batches.setdefault(ev.batch_id, BatchState(ev.batch_id))
        if ev.kind == "up":
            b.instances.update(ev.instances)
        elif ev.kind == "down":
            b.instances.difference_update(ev.instances)
        elif ev.kind == "merge":
            for other in ev.merged_batch_ids:
                o = self.batches.pop(other)
                b.instances |= o.instances
                b.req_ids.extend(o.req_ids)
        else:
            raise ValueError(f"unknown scale event {ev.kind!r}")

    def _apply_prefills(self, plan: IterationPlan) -> None:
        by_id = self._waiting_ids
        done = []
        for pb in plan.prefill:
            b = self.batches.setdefault(pb.decode_batch_id, BatchState(pb.decode_batch_id))
            for rid in pb.req_ids:
                req = by_id[rid]
                for kr in pb.keep[rid]:
                    self.pool.add(rid, kr.instance_id, kr.num_tokens)
                    b.instances.add(kr.instance_id)
                req.output_len += 1
                self.running[rid] = req
                b.req_ids.append(rid)
                done.append(rid)
        self._leave_queue(done)
