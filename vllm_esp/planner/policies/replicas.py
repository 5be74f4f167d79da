"""Baseline: independent per-instance replicas — what round-robin data parallel does.

Each request is bound at first sight to instance ``n mod N`` (round robin over arrivals, as a
client-side DP balancer does) and lives there: prefill and decode run on that instance only and
its KV never leaves it. Each replica schedules like vLLM with prefill priority: if its waiting
requests fit (same worst-case admission as ESP, applied to the replica's own cache), it
prefills them this iteration and its decodes wait; otherwise it decodes. When a replica runs out
of blocks it recompute-preempts its newest request (vLLM's rule). A prompt larger than one
instance's cache is rejected — replicas cannot pool memory.
"""

from __future__ import annotations

from ..cost_model import CostModel
from ..decode_plan import BatchView, PoolView, choose_masters, fix_shortage
from ..dispatch import worst_case_blocks
from ..kv_pool import blocks_for
from ..manager import ManagerConfig
from ..state import ClusterState
from ..types import DecodeBatch, IterationPlan, KeepRange, PrefillBatch


class ReplicaPolicy:
    name = "replicas"

    def __init__(self, cost: CostModel, cfg: ManagerConfig | None = None):
        self.cost = cost
        self.cfg = cfg or ManagerConfig()
        self.home: dict[str, int] = {}  # req_id -> instance
        self._next = 0

    def _home_of(self, rid: str, n: int) -> int:
        if rid not in self.home:
            self.home[rid] = self._next % n
            self._next += 1
        return self.home[rid]

    def plan(self, state: ClusterState, now: float) -> IterationPlan:
        plan = IterationPlan()
        insts = [i.instance_id for i in state.instances]
        view = PoolView(state.pool, {})
        free = {i: state.pool.free_blocks(i) for i in insts}
        bs = state.block_size
        queues: dict[int, list] = {i: [] for i in insts}
        for r in state.waiting:
            h = self._home_of(r.req_id, len(insts))
            if blocks_for(r.prefill_len + 1, bs) > state.pool.capacity[h]:
                plan.rejected.append(r.req_id)
            else:
                queues[h].append(r)
        for i in insts:
            b = state.batches.get(i)
            batch = BatchView(i, {i}, list(b.req_ids)) if b else None
            if batch:
                plan.preempted += fix_shortage(view, free, batch, [], [])
            admitted = self._admit(state, i, queues[i], free, plan.preempted)
            if admitted:
                plan.prefill.append(self._prefill(i, admitted, free, bs))
                if batch and batch.req_ids:
                    plan.paused_batch_ids.append(i)
            elif batch and batch.req_ids:
                masters = choose_masters(view, free, batch, len(batch.req_ids))
                ctx = sum(view.placement.get(r, {}).get(i, 0) for r in batch.req_ids)
                t = self.cost.decode_time(1, len(batch.req_ids), ctx)
                plan.decode.append(DecodeBatch(i, [i], masters, t))
        plan.predicted_time = max([p.predicted_time for p in plan.prefill + plan.decode], default=0.0)
        for rid in plan.rejected:
            self.home.pop(rid, None)
        return plan

    def _admit(self, state, inst, queue, free, preempted) -> list:
        """FCFS while the replica's worst case and current free blocks allow."""
        bs = state.block_size
        cap = int(self.cfg.admission_fraction * state.pool.capacity[inst])
        gone = set(preempted)
        running = [r for rid, r in state.running.items() if self.home.get(rid) == inst and rid not in gone]
        worst = sum(worst_case_blocks(r, bs) for r in running)
        out, s1, need = [], 0, 0
        for r in queue:
            w = worst_case_blocks(r, bs)
            n = blocks_for(r.prefill_len, bs)
            empty = not running and not out
            if not (empty or worst + w <= cap) or need + n > free[inst]:
                break
            if out and (len(out) >= self.cfg.max_prefill_requests or s1 + r.prefill_len > self.cfg.max_prefill_tokens):
                break
            out.append(r)
            worst, s1, need = worst + w, s1 + r.prefill_len, need + n
        return out

    def _prefill(self, inst, admitted, free, bs) -> PrefillBatch:
        keep = {r.req_id: [KeepRange(inst, 0, r.prefill_len)] for r in admitted}
        free[inst] -= sum(blocks_for(r.prefill_len, bs) for r in admitted)
        s1 = sum(r.prefill_len for r in admitted)
        s2 = sum(r.prefill_len ** 2 for r in admitted)
        t = self.cost.prefill_time(1, s1, s2)
        return PrefillBatch([inst], [r.req_id for r in admitted], keep, t, inst)
