"""The ESP global manager: LoongServe's four scheduling steps, wired together once per iteration.

``GlobalManager.plan(state, now)`` reads a :class:`ClusterState` (never mutates it) and returns an
:class:`IterationPlan`; the caller executes it and calls ``state.apply_plan(plan)``. Order:

0. decode reservations (decode_plan.py): every decode batch must be able to store its next
   tokens — scale down empty instances, then scale up / merge / (pool full only) preempt;
1. dispatching (dispatch.py): admitted prefill requests, decode batches paused for their KV;
2. elastic instance allocation (allocation.py): compaction and compute pausing;
3. batching (batching.py): the DP over sorted requests × load-sorted instances;
4. scaling plans: keep ranges (keep_ranges.py), the decode batch each prefill joins, masters.

All scratch state (free blocks, planned migrations) lives in local dicts and a ChainMap overlay
over the pool's placement, so planning costs O(requests + instances) besides the DP.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .allocation import allocate
from .batch_joins import BatchJoins
from .batching import plan_groups
from .cost_model import CostModel
from .decode_plan import (
    BatchView,
    PoolView,
    block_need,
    block_supply,
    choose_masters,
    drop_empty_instances,
    fix_shortage,
)
from .dispatch import DispatchInput, dispatch, forget
from .latency import LatencyWeights
from .keep_ranges import pack_keep_ranges
from .state import ClusterState
from .types import DecodeBatch, IterationPlan, PrefillBatch, Request, ScaleEvent


@dataclass(slots=True)
class ManagerConfig:
    """Knobs of the ESP manager; defaults follow the paper's intent, units in comments."""

    max_prefill_time: float | None = None  # seconds per prefill iteration (None: unbounded)
    max_prefill_tokens: int = 1 << 20  # tokens prefilled per iteration
    max_prefill_requests: int = 32  # requests admitted per iteration (bounds the DP)
    admission_fraction: float = 1.0  # share of the pool the worst-case check may promise
    lookahead: int = 8  # requests scanned: this many oldest, then this many shortest
    out_of_order: bool = True  # False: admit strictly in queue order (stop at the first miss)
    slo: LatencyWeights | None = None  # s/token per normalised latency (None: all 1)
    starvation_factor: float = 2.0  # waits beyond this × its alone time end cost deferral
    decode_minibatch: int = 16  # requests per master (compute-efficient mini-batch)
    max_group_size: int | None = None  # instances per prefill group (None: all)
    compaction: bool = True
    pause_decodes: bool = True
    extra: dict = field(default_factory=dict)  # policy-specific settings


class GlobalManager:
    """The ESP policy (LoongServe's global manager)."""

    name = "esp"

    def __init__(self, cost: CostModel, cfg: ManagerConfig | None = None):
        self.cost = cost
        self.cfg = cfg or ManagerConfig()
        self.memo: dict = {}  # dispatch's per-request constants (req_id -> tuple)

    def plan(self, state: ClusterState, now: float) -> IterationPlan:
        plan = IterationPlan()
        view = PoolView(state.pool, {})
        free = {i: state.pool.free_blocks(i) for i in state.pool.capacity}
        idle = state.idle_instances()
        batches = self._reserve_decodes(state, view, free, idle, plan)
        gone = set(plan.preempted)
        running = {rid: r for rid, r in state.running.items() if rid not in gone} if gone \
            else state.running
        pinned = {b.batch_id for b in batches if b.added or b.merged_from}
        pausable = [b for b in batches if b.batch_id not in pinned]

        disp = dispatch(
            DispatchInput(state.waiting, running, free, list(idle), pausable,
                          sum(state.pool.capacity.values()), state.block_size, now,
                          state.shortest_waiting(2 * self.cfg.lookahead), self.memo),
            self.cost, self.cfg,
        )
        plan.rejected = disp.rejected
        forget(self.memo, state.waiting, state.running)
        paused_ids = {b.batch_id for b in disp.paused}
        runnable = [b for b in pausable if b.batch_id not in paused_ids]
        base = list(idle) + [i for b in disp.paused for i in sorted(b.instances)]
        alloc = allocate(disp.admitted, base, runnable, view, free, running, self.cost, self.cfg)
        plan.migrations = alloc.migrations
        for b in runnable + alloc.paused:
            if b.removed:
                plan.scale_events.append(ScaleEvent("down", b.batch_id, list(b.removed)))
        paused = disp.paused + alloc.paused
        plan.paused_batch_ids = sorted(b.batch_id for b in paused)

        self._plan_prefills(state, disp.admitted, alloc.instances, free, paused, plan)
        self._plan_decodes(view, free, [b for b in batches if b in runnable or b.batch_id in pinned],
                           state.running, plan)
        times = [b.predicted_time for b in plan.prefill] + [d.predicted_time for d in plan.decode]
        plan.predicted_time = sum(self.cost.migration_time(m.num_tokens) for m in plan.migrations)
        plan.predicted_time += max(times, default=0.0)
        return plan

    # ---- step 0 --------------------------------------------------------------------------
    def _reserve_decodes(self, state, view, free, idle, plan) -> list[BatchView]:
        batches = [BatchView(b.batch_id, set(b.instances), list(b.req_ids))
                   for b in sorted(state.batches.values(), key=lambda b: b.batch_id)]
        for b in batches:
            drop_empty_instances(view, b)
            if b.removed:
                plan.scale_events.append(ScaleEvent("down", b.batch_id, list(b.removed)))
                idle.extend(b.removed)
                b.removed = []
        alive = {id(b): b for b in batches}  # insertion-ordered; merged batches leave
        for b in batches:
            if id(b) not in alive or block_need(view, b) <= block_supply(free, b):
                continue  # merged away, or has room: the common fast path
            others = [o for o in alive.values() if o is not b]
            victims = fix_shortage(view, free, b, idle, others)
            kept = {id(o) for o in others}
            alive = {k: o for k, o in alive.items() if o is b or k in kept}
            plan.preempted.extend(victims)
            if b.merged_from:
                plan.scale_events.append(ScaleEvent("merge", b.batch_id, merged_batch_ids=list(b.merged_from)))
            if b.added:
                plan.scale_events.append(ScaleEvent("up", b.batch_id, list(b.added)))
        return [b for b in alive.values() if b.req_ids]

    # ---- steps 3 and 4a ------------------------------------------------------------------
    def _plan_prefills(self, state, admitted: list[Request], instances, free, paused, plan) -> None:
        if not admitted or not instances:
            return
        reqs = sorted(admitted, key=lambda r: (r.prefill_len, r.req_id))
        insts = sorted(instances, key=lambda i: (state.pool.capacity[i] - free[i], i))
        groups = []
        while reqs:
            _, groups = plan_groups([r.prefill_len for r in reqs], [free[i] for i in insts],
                                    state.block_size, self.cost, self.cfg.max_group_size)
            if groups:
                break
            reqs.pop()  # the longest cannot be placed under max_group_size: retry later
        joins = BatchJoins({i: b.batch_id for b in paused for i in b.instances},
                           state.next_batch_id)
        for g in groups:
            group = insts[g.i0:g.i1]
            members = reqs[g.r0:g.r1]
            gfree = {i: free[i] for i in group}
            keep = pack_keep_ranges([(r.req_id, r.prefill_len) for r in members], gfree, state.block_size)
            free.update(gfree)
            target = joins.target(kr.instance_id for rs in keep.values() for kr in rs)
            plan.prefill.append(PrefillBatch(list(group), [r.req_id for r in members], keep, g.time, target))
        plan.scale_events.extend(joins.finish(plan.prefill))

    # ---- step 4b -------------------------------------------------------------------------
    def _plan_decodes(self, view, free, batches: list[BatchView], running, plan) -> None:
        for b in batches:
            masters = choose_masters(view, free, b, self.cfg.decode_minibatch)
            ctx = sum(running[r].running_kv_tokens for r in b.req_ids)  # = its KV tokens
            t = self.cost.decode_time(len(b.instances), len(b.req_ids), ctx)
            plan.decode.append(DecodeBatch(b.batch_id, sorted(b.instances), masters, t))
